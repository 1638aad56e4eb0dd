"""Wanda (Sun et al. 2023) through `prune.unstructured`: importance "wanda", group "row"."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from netchisel.core.errors import ConfigError
from netchisel.core.task import Task, classification_task, language_model_task
from netchisel.prune import UnstructuredConfig, prune_
from netchisel.prune.importance import collect_stats
from netchisel.zoo.models import gpt

BLOCK_LAYERS = (r"blocks\..*",)


class _Tokens(nn.Module):
    """A Linear over (batch, tokens, features) inputs, as inside a transformer."""

    def __init__(self, inputs: int = 16, outputs: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(inputs, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).mean(dim=1)  # type: ignore[no-any-return]


def _token_task(samples: int = 48) -> tuple[Task, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 10, 16, generator=g)
    x[..., 3] *= 20.0  # an outlier feature, which magnitude pruning ignores and Wanda does not
    data = TensorDataset(x, torch.zeros(samples, dtype=torch.long))
    return classification_task({"train": data, "val": data}, batch_size=16), x


def _manual_scores(weight: Tensor, x: Tensor) -> Tensor:
    # |W_ij| * ||X_j||_2, the norm over every calibration token (all samples and positions).
    return weight.abs() * x.reshape(-1, x.shape[-1]).norm(dim=0)[None, :]


def test_input_norms_are_over_every_token_of_the_calibration_set() -> None:
    task, x = _token_task()
    model = _Tokens()
    stats = collect_stats(model, {"proj": model.proj}, task, "activations", samples=48)
    assert stats["proj"].samples == 48
    assert stats["proj"].input_sq is not None
    assert torch.allclose(stats["proj"].input_sq, x.pow(2).sum(dim=(0, 1)), rtol=1e-5)


def test_every_row_loses_its_lowest_weight_times_norm() -> None:
    task, x = _token_task()
    model = _Tokens()
    dense = model.proj.weight.detach().clone()
    prune_(
        model,
        UnstructuredConfig(sparsity=0.5, importance="wanda", group="row", calibration_samples=48),
        task,
    )
    weight = model.proj.weight
    assert ((weight == 0).sum(dim=1) == 8).all()  # 50 % of every row's 16 inputs
    scores = _manual_scores(dense, x)
    for row in range(weight.shape[0]):
        pruned, kept = scores[row][weight[row] == 0], scores[row][weight[row] != 0]
        assert pruned.max() <= kept.min()
    assert torch.equal(weight[weight != 0], dense[weight != 0])  # no weight update


def test_n_of_m_keeps_the_best_of_every_m_inputs() -> None:
    task, x = _token_task()
    model = _Tokens()
    dense = model.proj.weight.detach().clone()
    prune_(model, UnstructuredConfig(importance="wanda", pattern="4:8"), task)
    keep = (model.proj.weight != 0).reshape(8, 2, 8)
    assert (keep.sum(dim=2) == 4).all()
    groups = _manual_scores(dense, x).reshape(8, 2, 8)
    assert (
        groups.masked_fill(~keep, torch.inf).amin(2) >= groups.masked_fill(keep, 0).amax(2)
    ).all()


def test_wanda_keeps_the_output_better_than_magnitude_on_outlier_features() -> None:
    task, x = _token_task()
    dense = _Tokens()
    ours, magnitude = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_(ours, UnstructuredConfig(importance="wanda", group="row"), task)
    prune_(magnitude, UnstructuredConfig(importance="l1", group="row"))

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float(((model.proj(x) - dense.proj(x)) ** 2).sum())  # type: ignore[operator]

    assert error(ours) < 0.5 * error(magnitude)


def test_on_a_small_lm_only_block_layers_are_pruned_per_row() -> None:
    torch.manual_seed(0)
    model = gpt(n_layer=1, n_head=2, n_embd=32, block_size=16)
    tokens = torch.randint(0, 256, (32, 17), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    task = language_model_task({"train": data, "val": data}, batch_size=16)
    head = model.head.weight.detach().clone()  # type: ignore[union-attr]
    prune_(
        model,
        UnstructuredConfig(importance="wanda", group="row", layers=BLOCK_LAYERS),
        task,
    )
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks."):
            per_row = (module.weight == 0).sum(dim=1)
            assert (per_row == module.in_features // 2).all(), name
    assert torch.equal(model.head.weight, head)  # type: ignore[union-attr]


def test_wanda_without_a_task_is_an_error() -> None:
    model = _Tokens()
    before = model.proj.weight.detach().clone()
    with pytest.raises(ConfigError, match="needs activations"):
        prune_(model, UnstructuredConfig(importance="wanda", group="row"))
    assert torch.equal(model.proj.weight, before)
