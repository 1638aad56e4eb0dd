"""The rollback guard with its copy on disk (`spill`): the same guarantee, without the memory.

An error or a Ctrl-C midway through layer k of a layer-wise stage (GPTQ, SparseGPT) leaves
every weight bit-identical to before and no temporary file behind; and the guard's peak
memory stays within two layers' working set where the in-memory copy adds the whole model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import netchisel.prune.sparsegpt as sparsegpt
import netchisel.quantize.gptq as gptq
from netchisel.core import spill as spill_module
from netchisel.core.context import Context
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.state import probed, restored_on_error
from netchisel.core.task import classification_task


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.glob("netchisel-spill-*")]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _bits(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().view(torch.uint8) for k, v in net.state_dict().items()}


def _same_bits(net: nn.Module, bits: dict[str, torch.Tensor]) -> bool:
    state = net.state_dict()
    return state.keys() == bits.keys() and all(
        torch.equal(state[k].view(torch.uint8), v) for k, v in bits.items()
    )


def test_spilled_guard_puts_back_values_grads_tree_dtype_and_masks(tmp_path: Path) -> None:
    net = _net()
    net[0].weight.grad = torch.full_like(net[0].weight, 3.0)
    set_mask(net, "2.weight", torch.ones(16, 16, dtype=torch.bool))
    bits, masks, last = _bits(net), dict(masks_of(net)), net[4]
    with pytest.raises(KeyboardInterrupt), restored_on_error(net, spill=True):
        assert len(_leftovers(tmp_path)) == 1  # the copy is on disk while the block runs
        with torch.no_grad():
            net[0].weight.mul_(-2)
        net[0].weight.grad = None
        set_mask(net, "0.weight", torch.zeros(16, 16, dtype=torch.bool))
        net[2].double()  # `.data` of another dtype
        net[2].bias.data = torch.zeros(3)  # and another shape
        net[4] = nn.Identity()
        raise KeyboardInterrupt
    assert _same_bits(net, bits) and masks_of(net) == masks and net[4] is last
    assert net[2].weight.dtype == torch.float32
    assert torch.equal(net[0].weight.grad, torch.full((16, 16), 3.0))  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == []


def test_spilled_probe_is_undone_and_a_kept_change_leaves_no_file(tmp_path: Path) -> None:
    net = _net()
    bits = _bits(net)
    with probed(net, spill=True), torch.no_grad():
        net[0].weight.zero_()
    assert _same_bits(net, bits) and _leftovers(tmp_path) == []
    with restored_on_error(net, spill=True), torch.no_grad():
        net[0].weight.zero_()
    assert float(net[0].weight.detach().abs().sum()) == 0.0 and _leftovers(tmp_path) == []


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))  # type: ignore[no-any-return]


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(_Block() for _ in range(4))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)  # type: ignore[no-any-return]


def _ctx() -> Context:
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(1))
    task = classification_task({"train": TensorDataset(x, torch.zeros(128, dtype=torch.long))})
    return Context(task, quiet=True)


@pytest.mark.parametrize("stage", ["gptq", "sparsegpt"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_in_layer_k_leaves_every_weight_bit_identical(
    stage: str,
    failure: type[BaseException],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spill_module, "SPILL_ABOVE_BYTES", 0)  # spill=None: on disk
    model, ctx = _Decoder(), _ctx()
    bits, types = _bits(model), [type(m) for m in model.modules()]
    module = gptq if stage == "gptq" else sparsegpt
    solver = getattr(module, f"{stage}_solve")
    calls, k = [], 5  # layer 5 of 9: layers 0-4 already hold their new weights

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(len(_leftovers(tmp_path)))
        if len(calls) == k + 1:
            raise failure("midway")
        return solver(*args, **kwargs)

    monkeypatch.setattr(module, f"{stage}_solve", failing)
    with pytest.raises(failure):
        if stage == "gptq":
            gptq.quantize_gptq(model, gptq.GPTQConfig(bits=4, group_size=32), ctx)
        else:
            sparsegpt.prune_sparsegpt(model, sparsegpt.SparseGPTConfig(sparsity=0.5), ctx)
    assert len(calls) == k + 1
    assert calls[-1] == (2 if stage == "gptq" else 1)  # rollback copy (+ GPTQ's held results)
    assert _same_bits(model, bits) and [type(m) for m in model.modules()] == types
    assert masks_of(model) == {} and _leftovers(tmp_path) == []


_MEMORY = """
import sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from netchisel.calib import Layerwise, run_layerwise
from netchisel.core.context import Context
from netchisel.core.state import restored_on_error
from netchisel.core.task import classification_task

torch.manual_seed(0)
width, depth = 1024, 24
model = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))
layers = {n: m for n, m in model.named_children()}
x = torch.randn(64, width)
task = classification_task({"train": TensorDataset(x, torch.zeros(64, dtype=torch.long))})
ctx = Context(task, quiet=True)

def solve(group):
    for name, seen in group.items():
        layers[name].weight.mul_(0.5)  # changed in place, as GPTQ and SparseGPT do

def peak():  # this process image's high-water mark: ru_maxrss would start at the parent's
    for line in open("/proc/self/status"):  # peak, which exec keeps (a large pytest process)
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

how = Layerwise("demo", 64)
with torch.no_grad():
    model(x)  # warm up: the forward's lazy allocations made
before = peak()
with restored_on_error(model, spill=sys.argv[1] == "disk"):
    run_layerwise(model, layers, task, solve, how, ctx)
print(peak() - before)
"""


def test_the_spilled_guard_keeps_peak_growth_within_two_layers_working_set() -> None:
    on_disk, in_memory = (  # each guard in a fresh process: ru_maxrss only rises
        int(
            subprocess.run(
                [sys.executable, "-c", _MEMORY, where],
                capture_output=True, text=True, check=True, timeout=120,
            ).stdout.split()[-1]
        )
        for where in ("disk", "memory")
    )  # fmt: skip
    model_bytes = 24 * (1024 * 1024 + 1024) * 4  # 100.7 MB
    # One layer's working set in the engine: its weight, X^T X and the batch's product added
    # to it, the inputs and outputs of the 64 samples (12.6 MB); measured: 18.7 MB on disk.
    working_set = 4 * (1024 * 1024 + 2 * 1024 * 1024 + 2 * 64 * 1024)
    assert on_disk <= 2 * working_set, (on_disk, working_set)
    assert in_memory >= 0.9 * model_bytes, in_memory  # the copy the spill saves
