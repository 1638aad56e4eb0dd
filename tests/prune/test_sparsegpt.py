from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.masks import masks_of
from netchisel.core.task import classification_task, language_model_task
from netchisel.core.train import TrainSettings, fit
from netchisel.prune import UnstructuredConfig, prune_
from netchisel.prune.importance import LayerStats, wanda
from netchisel.prune.select import keep_lowest_pruned, keep_n_of_m, keep_per_row
from netchisel.prune.sparsegpt import (
    SparseGPTConfig,
    output_error,
    prune_sparsegpt,
    sparsegpt_solve,
)
from tests._models import layer_data, lm_task, quiet_context, tiny_gpt

BLOCK_LAYERS = (r"blocks\..*",)


def _reconstruction(weight: Tensor, pruned: Tensor, x: Tensor) -> float:
    return float(((x @ (weight - pruned).T) ** 2).sum())


# -- the solver -------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.37, 0.5, 0.9])
def test_solver_prunes_exactly_the_requested_count(sparsity: float) -> None:
    weight, x = layer_data(16, 64, 512)
    result = sparsegpt_solve(weight, x.T @ x, sparsity, blocksize=24)  # blocks of unequal size
    assert int((~result.keep).sum()) == round(sparsity * weight.numel())
    assert torch.equal(result.weight == 0, ~result.keep)
    assert result.damping == 0.01


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_solver_n_of_m_structure(n: int, m: int) -> None:
    weight, x = layer_data(16, 64, 512)
    result = sparsegpt_solve(weight, x.T @ x, pattern=(n, m), blocksize=32)
    assert (result.keep.reshape(16, -1, m).sum(dim=2) == n).all()
    assert torch.equal(result.weight == 0, ~result.keep)


def test_lazy_block_updates_are_the_column_by_column_math() -> None:
    # With N:M the mask is chosen per group of M whatever the block size, so the block size
    # only regroups the same updates.
    weight, x = layer_data(16, 64, 512)
    one = sparsegpt_solve(weight, x.T @ x, pattern=(2, 4), blocksize=4)
    big = sparsegpt_solve(weight, x.T @ x, pattern=(2, 4), blocksize=64)
    assert torch.equal(one.keep, big.keep)
    assert torch.allclose(one.weight, big.weight, atol=1e-4)


def test_sparse_gpt_reconstructs_better_than_magnitude_and_wanda() -> None:
    weight, x = layer_data(16, 64, 512)
    gram = x.T @ x
    for pattern, keep_mag, keep_wanda in [
        (None, keep_lowest_pruned(weight.abs(), 0.5), None),
        ((2, 4), keep_n_of_m(weight.abs(), 2, 4), None),
    ]:
        ours = sparsegpt_solve(weight, gram, 0.5, pattern=pattern, blocksize=32)
        scores = wanda(weight, LayerStats(input_sq=x.pow(2).sum(dim=0)))
        keep_wanda = keep_per_row(scores, 0.5) if pattern is None else keep_n_of_m(scores, 2, 4)
        err_ours = _reconstruction(weight, ours.weight, x)
        err_mag = _reconstruction(weight, weight * keep_mag, x)
        err_wanda = _reconstruction(weight, weight * keep_wanda, x)
        assert err_ours < 0.6 * err_mag, (pattern, err_ours, err_mag)
        assert err_ours < 0.8 * err_wanda, (pattern, err_ours, err_wanda)
        # output_error is the same quantity, relative, computed from the Gram matrix.
        relative = err_ours / float(((x @ weight.T) ** 2).sum())
        assert output_error(weight, ours.weight, gram) == pytest.approx(relative, rel=1e-3)


def test_rank_deficient_hessian_raises_damping_instead_of_nan() -> None:
    weight, _ = layer_data(16, 64, 512)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))  # rank 3 of 64
    x[:, 10] = 0.0  # a dead input
    x[:, 11] = x[:, 12]  # two inputs that move together
    result = sparsegpt_solve(weight, x.T @ x, 0.5, blocksize=16, damping=1e-9)
    assert torch.isfinite(result.weight).all()
    assert result.damping > 1e-9  # float32 could not factor H so damped; it was raised
    assert int((~result.keep).sum()) == 512


def test_non_finite_inputs_are_an_error() -> None:
    weight, x = layer_data(16, 64, 512)
    x[0, 0] = float("nan")
    with pytest.raises(ModelError, match="not finite"):
        sparsegpt_solve(weight, x.T @ x)


# -- the stage --------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_stage_prunes_every_block_layer_and_sets_masks(pattern: str) -> None:
    model, task = tiny_gpt(), lm_task()
    dense = copy.deepcopy(model)
    ctx = quiet_context(task)
    prune_sparsegpt(model, SparseGPTConfig(sparsity=0.5, pattern=pattern, layers=BLOCK_LAYERS), ctx)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    pruned = [n for n in linears if n.startswith("blocks.")]
    assert sorted(masks_of(model)) == sorted(f"{n}.weight" for n in pruned)
    for name in pruned:
        w = linears[name].weight
        assert int((w == 0).sum()) == w.numel() // 2
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            assert ((w != 0).reshape(w.shape[0], -1, m).sum(dim=2) == n).all()
    assert torch.equal(model.head.weight, dense.head.weight)  # type: ignore[union-attr]
    assert ctx.records["sparsity"] == 0.5
    assert set(ctx.records["layer_output_error"]) == set(pruned)


def test_blockwise_passes_equal_whole_model_passes() -> None:
    task = lm_task()
    by_block, by_model = tiny_gpt(), tiny_gpt()
    prune_sparsegpt(by_block, SparseGPTConfig(layers=BLOCK_LAYERS), quiet_context(task))
    prune_sparsegpt(by_model, SparseGPTConfig(layers=BLOCK_LAYERS, blocks=""), quiet_context(task))
    for a, b in zip(by_block.parameters(), by_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_later_layers_see_the_pruned_earlier_layers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    task = classification_task({"train": TensorDataset(x, torch.zeros(64, dtype=torch.long))})
    expected = copy.deepcopy(net)
    first = sparsegpt_solve(expected[0].weight, 2 * x.T @ x / 64, 0.5)
    with torch.no_grad():
        expected[0].weight.copy_(first.weight)
        hidden = expected[1](expected[0](x))
    second = sparsegpt_solve(expected[2].weight, 2 * hidden.T @ hidden / 64, 0.5)
    prune_sparsegpt(net, SparseGPTConfig(calibration_samples=64), quiet_context(task))
    assert torch.allclose(net[0].weight, first.weight)
    assert torch.allclose(net[2].weight, second.weight, atol=1e-6)


def test_model_output_closer_to_dense_than_magnitude() -> None:
    task = lm_task()
    dense = tiny_gpt()
    tokens = task.splits["train"].tensors[0]  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = dense(tokens)

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model(tokens) - reference) ** 2).mean())

    ours, magnitude = tiny_gpt(), tiny_gpt()
    prune_sparsegpt(ours, SparseGPTConfig(layers=BLOCK_LAYERS), quiet_context(task))
    prune_(magnitude, UnstructuredConfig(layers=BLOCK_LAYERS))
    assert error(ours) < 0.8 * error(magnitude)


def test_exact_reconstruction_and_refined_masks_bring_the_output_closer() -> None:
    task = lm_task()
    tokens = task.splits["train"].tensors[0]  # type: ignore[attr-defined]
    with torch.no_grad():
        reference = tiny_gpt()(tokens)
    errors = []
    for options in ({}, {"reconstruct": True}, {"refine_steps": 20}):
        model = tiny_gpt()
        config = SparseGPTConfig(layers=BLOCK_LAYERS, **options)  # type: ignore[arg-type]
        ctx = quiet_context(task)
        prune_sparsegpt(model, config, ctx)
        # which layers took ADMM's mask is recorded, only when refine_steps asks for it
        refined = ctx.records.get("refined_masks")
        assert (refined is None) == ("refine_steps" not in options)
        assert refined is None or 0 < len(refined) <= len(ctx.records["layer_output_error"])
        masks = masks_of(model).values()
        assert sum(int((~m.keep).sum()) for m in masks) * 2 == sum(m.keep.numel() for m in masks)
        with torch.no_grad():
            errors.append(float(((model(tokens) - reference) ** 2).mean()))
    # measured 1.48e-4, 1.07e-4 (0.72x), 6.2e-5 (0.58x of reconstruct)
    assert errors[1] < 0.8 * errors[0]
    assert errors[2] < 0.7 * errors[1]


def test_zeros_stay_zero_through_fine_tuning_and_earlier_masks_are_kept() -> None:
    model, task = tiny_gpt(), lm_task()
    prune_(model, UnstructuredConfig(sparsity=0.3, layers=BLOCK_LAYERS))
    earlier = model.blocks[0].mlp.fc_in.weight == 0  # type: ignore[index, union-attr]
    prune_sparsegpt(model, SparseGPTConfig(sparsity=0.5, layers=BLOCK_LAYERS), quiet_context(task))
    fit(model, task, TrainSettings(steps=2, lr=1e-2, optimizer="sgd"), quiet_context(task))
    weight = model.blocks[0].mlp.fc_in.weight  # type: ignore[index, union-attr]
    assert (weight[earlier] == 0).all()
    assert int((weight == 0).sum()) == weight.numel() // 2


def test_a_failure_midway_leaves_the_model_as_it_was() -> None:
    class Log(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.log()  # NaN for negative inputs: the second layer cannot be solved

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), Log(), nn.Linear(8, 4))
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    task = classification_task({"train": TensorDataset(x, torch.zeros(32, dtype=torch.long))})
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ModelError, match="layer 2: the layer's calibration inputs are not finite"):
        prune_sparsegpt(net, SparseGPTConfig(), quiet_context(task))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert masks_of(net) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.0}, r"prune.sparsegpt.sparsity: 1.0 is not in \[0, 1\)"),
        ({"sparsity": -0.1}, r"prune.sparsegpt.sparsity: -0.1"),
        ({"pattern": "4:2"}, r"prune.sparsegpt.pattern: .*N:M needs 0 < N < M"),
        ({"pattern": "4:4"}, r"prune.sparsegpt.pattern: .*N:M needs 0 < N < M"),
        ({"blocksize": 0}, r"prune.sparsegpt.blocksize: must be >= 1"),
        ({"pattern": "2:4", "blocksize": 6}, r"blocksize: 6 is not a multiple of M=4"),
        ({"damping": 0.0}, r"prune.sparsegpt.damping: must be > 0"),
        ({"calibration_samples": 0}, r"calibration_samples: the calibration set is empty"),
        ({"sparsty": 0.5}, r"unknown key 'sparsty'"),
        ({"refine_steps": -1}, r"prune.sparsegpt.refine_steps: must be >= 0"),
    ],
)
def test_bad_config_is_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SparseGPTConfig.from_dict(options)


def test_bad_input_at_run_time_leaves_the_model_unchanged() -> None:
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="needs a task"):
        prune_sparsegpt(model, SparseGPTConfig(), quiet_context(None))
    with pytest.raises(
        ConfigError, match=r"of 64; 11 layers are not: blocks\.0\.attn\.q_proj \(32\), .* 5 more"
    ):
        prune_sparsegpt(model, SparseGPTConfig(pattern="2:64"), quiet_context(lm_task()))
    with pytest.raises(ConfigError, match="include pattern 'nope' matches no layer"):
        prune_sparsegpt(model, SparseGPTConfig(layers=("nope",)), quiet_context(lm_task()))
    with pytest.raises(ConfigError, match="blocks: the model has no module 'layers'"):
        prune_sparsegpt(model, SparseGPTConfig(blocks="layers"), quiet_context(lm_task()))
    empty = language_model_task(
        {"train": TensorDataset(torch.zeros(0, 16, dtype=torch.long), torch.zeros(0, 16))}
    )
    with pytest.raises(ConfigError, match="gave no calibration samples"):
        prune_sparsegpt(model, SparseGPTConfig(), quiet_context(empty))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert masks_of(model) == {}


def test_convolutions_are_left_dense_and_said_so_or_refused_when_named() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(32, 1, 8, 8)
    task = classification_task({"train": TensorDataset(x, torch.zeros(32).long())}, 16)
    ctx = quiet_context(task)
    prune_sparsegpt(net, SparseGPTConfig(), ctx)
    assert ctx.records["left_dense"] == ["0"] and int((net[0].weight == 0).sum()) == 0
    assert int((net[2].weight == 0).sum()) == 144
    with pytest.raises(ConfigError, match=r"handles Linear layers only; 0 matched `layers`"):
        prune_sparsegpt(net, SparseGPTConfig(layers=("0", "2")), quiet_context(task))


def test_a_sparsity_an_n_of_m_pattern_contradicts_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"pattern '2:4' prunes 2 of every 4, not sparsity 0\.9"):
        SparseGPTConfig(pattern="2:4", sparsity=0.9)
    assert SparseGPTConfig(pattern="1:4", sparsity=0.75).sparsity == 0.75
