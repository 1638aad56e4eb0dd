"""run_layerwise: every group is solved on what the already-solved layers before it produce."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.calib import Calibration, LayerInputs, Layerwise, Solve, run_layerwise
from netchisel.calib.layerwise import block_inputs
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.task import Task, classification_task


def _task(x: Tensor, batch_size: int = 64) -> Task:
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    return classification_task({"train": data}, batch_size=batch_size)


def _ctx(task: Task) -> Context:
    return Context(task, quiet=True)


class Block(nn.Module):
    """q, k and v read one tensor (one group); o reads their mix; a residual around both."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.o(torch.tanh(self.q(x) * self.k(x)) + self.v(x))  # type: ignore[no-any-return]


class Stack(nn.Module):
    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # type: ignore[no-any-return]


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_a_later_layer_reads_the_solved_earlier_layer_exactly() -> None:
    first = nn.Linear(2, 2, bias=False)
    net = nn.Sequential(first, nn.Linear(2, 1, bias=False))
    task = _task(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    seen: dict[str, LayerInputs] = {}

    def solve(group: dict[str, LayerInputs]) -> None:
        seen.update(group)
        if "0" in group:  # "solving" the first layer: it becomes diag(2, 1)
            first.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))

    run = run_layerwise(net, _linears(net), task, solve, Layerwise("demo", 2), _ctx(task))
    # The second layer reads x diag(2, 1) = [[2, 2], [6, -1]], not x W0_original^T.
    assert seen["1"].gram is not None
    assert seen["1"].gram.tolist() == [[40.0, -2.0], [-2.0, 5.0]]
    assert seen["1"].tokens == 2
    assert seen["1"].abs_sum.tolist() == [8.0, 3.0] and seen["1"].abs_max.tolist() == [6.0, 2.0]
    assert run.groups == [["0"], ["1"]] and run.samples == 2


def test_groups_come_in_call_order_and_share_one_input() -> None:
    torch.manual_seed(0)
    model = Stack()
    task = _task(torch.randn(16, 8))
    calls: list[list[str]] = []

    def solve(group: dict[str, LayerInputs]) -> None:
        calls.append(list(group))
        grams = [seen.gram for seen in group.values()]
        assert all(torch.equal(g, grams[0]) for g in grams)  # type: ignore[arg-type]

    layers = _linears(model)
    run = run_layerwise(
        model, dict(reversed(layers.items())), task, solve, Layerwise("demo", 16), _ctx(task)
    )
    expected = [
        group
        for i in range(3)
        for group in ([f"blocks.{i}.q", f"blocks.{i}.k", f"blocks.{i}.v"], [f"blocks.{i}.o"])
    ] + [["head"]]
    assert calls == expected == run.groups
    assert run.blocks is not None and len(run.blocks) == 3


def _solve_by_rounding(model: nn.Module, log: dict[str, Tensor]) -> Solve:
    layers = _linears(model)

    def solve(group: dict[str, LayerInputs]) -> None:
        for name, seen in group.items():
            assert seen.gram is not None
            log[name] = seen.gram.clone()
            weight = layers[name].weight
            weight.copy_((weight * 4).round() / 4)  # a solver that changes what later layers read

    return solve


def test_blockwise_passes_see_what_whole_model_passes_see() -> None:
    torch.manual_seed(0)
    reference = Stack()
    x = torch.randn(20, 8)
    task = _task(x, batch_size=8)
    logs: list[dict[str, Tensor]] = []
    for blocks in (None, ""):
        model = Stack()
        model.load_state_dict(reference.state_dict())
        log: dict[str, Tensor] = {}
        solve = _solve_by_rounding(model, log)
        run = run_layerwise(
            model,
            _linears(model),
            task,
            solve,
            Layerwise("demo", 20, blocks),
            _ctx(task),
        )
        assert (run.blocks is None) == (blocks == "")
        logs.append(log)
    assert logs[0].keys() == logs[1].keys()
    for name in logs[0]:
        assert torch.allclose(logs[0][name], logs[1][name], rtol=1e-5, atol=1e-4), name


class Counted(nn.Module):
    """A module that counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)  # type: ignore[no-any-return]


def test_a_block_costs_passes_through_itself_not_the_whole_model() -> None:
    torch.manual_seed(0)
    task = _task(torch.randn(20, 8), batch_size=8)  # 3 batches
    for blocks, model_calls, block_calls in (
        # Whole model: a traced call, a chain check, 3 passes stopping at block 0, 3 for the
        # head. Each block: 2 checks, 2 groups x 3 passes, 3 to feed the next, 3 for the head.
        (None, 1 + 1 + 3 + 3, [2 + 2 * 3 + 3 + 3] * 2),
        # Whole-model passes: a traced call, then 3 passes for each of the 5 groups, each
        # stopping at its group's last layer (block 1 is not reached for block 0's groups).
        ("", 1 + 5 * 3, [1 + 5 * 3, 1 + 3 * 3]),
    ):
        stack = Stack(depth=2)
        counted = [Counted(b) for b in stack.blocks]
        stack.blocks = nn.ModuleList(counted)
        model = Counted(stack)
        how = Layerwise("demo", 20, blocks=None if blocks is None else "")
        run_layerwise(model, _linears(model), task, lambda g: None, how, _ctx(task))
        assert model.calls == model_calls
        assert [b.calls for b in counted] == block_calls


def test_block_inputs_hold_one_entry_per_batch_and_stop_the_model_there() -> None:
    head = Counted(nn.Linear(2, 2))
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), head)
    batches = [(torch.ones(b, 2),) for b in (3, 1, 2)]
    cached = block_inputs(net, net[1], batches)
    assert [args[0].shape[0] for args, _ in cached] == [3, 1, 2]
    assert head.calls == 0


def test_one_pass_mode_measures_the_unchanged_model() -> None:
    first = nn.Linear(2, 2, bias=False)
    net = nn.Sequential(first, nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        first.weight.copy_(torch.eye(2))
    task = _task(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    seen: dict[str, LayerInputs] = {}

    def solve(group: dict[str, LayerInputs]) -> None:
        seen.update(group)
        first.weight.mul_(10.0)  # too late to change what layer 1 was measured on

    how = Layerwise("demo", 2, sequential=False, gram=False)
    run_layerwise(net, _linears(net), task, solve, how, _ctx(task))
    assert seen["1"].gram is None
    assert seen["1"].abs_max.tolist() == [3.0, 2.0]  # the inputs themselves (W0 = I)


def test_prepare_runs_once_before_the_first_group() -> None:
    torch.manual_seed(0)
    model = Stack(depth=1)
    task = _task(torch.randn(8, 8))
    events: list[str] = []

    def prepare(calibration: Calibration) -> None:
        events.append(f"prepare {len(calibration.groups)} {calibration.example(2)[0].shape[0]}")

    run_layerwise(
        model,
        _linears(model),
        task,
        lambda group: events.append("solve"),
        Layerwise("demo", 8),
        _ctx(task),
        prepare=prepare,
    )
    assert events == ["prepare 3 2", "solve", "solve", "solve"]


def test_non_finite_inputs_stop_before_the_solver_and_the_mode_comes_back() -> None:
    class Log(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.log()  # NaN for negative inputs

    net = nn.Sequential(nn.Linear(4, 4), Log(), nn.Linear(4, 2)).train()
    task = _task(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))
    solved: list[str] = []
    with pytest.raises(ModelError, match="demo: layer 2: the layer's calibration inputs are not"):
        run_layerwise(
            net, _linears(net), task, lambda g: solved.extend(g), Layerwise("demo", 16), _ctx(task)
        )
    assert solved == ["0"] and net.training


def test_a_layer_the_model_never_calls_is_named() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)  # type: ignore[no-any-return]

    model, task = Skip(), _task(torch.randn(4, 2))
    with pytest.raises(ConfigError, match="demo: layer unused is never called by the model"):
        run_layerwise(
            model, _linears(model), task, lambda g: None, Layerwise("demo", 4), _ctx(task)
        )
