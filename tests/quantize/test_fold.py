"""Folding a per-input-channel scale into the op before: the function is kept, and a fold is
used only where a check on data says so."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from netchisel.quantize.fold import divide_outputs, fold_targets, multiply_inputs
from tests._models import tiny_gpt


def test_folded_scales_leave_the_float_function_unchanged() -> None:
    model = tiny_gpt().eval()
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(tokens)
    block = model.blocks[0]  # type: ignore[index]
    g = torch.Generator().manual_seed(1)
    s1, s2, s3 = (torch.rand(32, generator=g) * 4 + 0.25 for _ in range(3))
    divide_outputs(block.ln_1, s1)  # LayerNorm -> q, k, v
    for layer in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj):
        multiply_inputs(layer, s1)
    divide_outputs(block.attn.v_proj, s2)  # v_proj -> o_proj, through attention
    multiply_inputs(block.attn.o_proj, s2)
    divide_outputs(model.ln_f, s3)  # final LayerNorm -> head
    multiply_inputs(model.head, s3)  # type: ignore[arg-type]
    with torch.no_grad():
        after = model(tokens)
    assert float((after - before).abs().max()) < 1e-4


def test_fold_targets_are_found_and_checked() -> None:
    model = tiny_gpt().eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    groups = [
        ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"],
        ["blocks.0.attn.o_proj"],
        ["blocks.0.mlp.fc_in"],
        ["blocks.0.mlp.fc_out"],
        ["head"],
    ]
    before = copy.deepcopy(model.state_dict())
    found = fold_targets(model, groups, layers, (torch.randint(0, 256, (2, 16)),))  # type: ignore[arg-type]
    assert found == {
        "blocks.0.attn.q_proj": "blocks.0.ln_1",
        "blocks.0.attn.o_proj": "blocks.0.attn.v_proj",
        "blocks.0.mlp.fc_in": "blocks.0.ln_2",
        "blocks.0.mlp.fc_out": None,  # after a GELU: no fold keeps the function
        "head": "ln_f",
    }
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_layernorm_that_also_feeds_a_residual_is_not_folded_into() -> None:
    class PostLN(nn.Module):  # BERT-style: the LayerNorm output is the residual too
        def __init__(self) -> None:
            super().__init__()
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 8)

        def forward(self, x: Tensor) -> Tensor:
            h = self.ln(x)
            return h + self.fc(h)  # type: ignore[no-any-return]

    model = PostLN()
    found = fold_targets(model, [["fc"]], {"fc": model.fc}, (torch.randn(4, 8),))
    assert found == {"fc": None}


class LibraryRMSNorm(nn.Module):
    """An RMSNorm as model libraries write their own (`LlamaRMSNorm`): weight * x / rms(x)."""

    def __init__(self, width: int, plus_one: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.plus_one = plus_one  # Gemma's norm scales by 1 + weight: dividing weight is wrong

    def forward(self, x: Tensor) -> Tensor:
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return normed * (1 + self.weight if self.plus_one else self.weight)


def test_a_library_rmsnorm_is_folded_into_and_a_plus_one_norm_is_not() -> None:
    torch.manual_seed(0)
    check = (torch.randn(8, 16),)
    for plus_one, expected in ((False, "0"), (True, None)):
        net = nn.Sequential(LibraryRMSNorm(16, plus_one), nn.Linear(16, 4))
        before = copy.deepcopy(net.state_dict())
        found = fold_targets(net, [["1"]], {"1": net[1]}, check)
        assert found == {"1": expected}
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
