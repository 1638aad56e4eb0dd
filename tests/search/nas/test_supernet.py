"""The weight-sharing super-net: sub-networks are macro_net's modules, weights are slices."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.artifact.store import load, save
from netchisel.core.errors import ConfigError
from netchisel.core.modules import builder_of
from netchisel.core.task import Task, classification_task
from netchisel.search.nas import TABULAR_KWARGS, macro_net, macro_space, tabular_space
from netchisel.search.nas.supernet import SuperNet
from netchisel.search.space import Space, categorical

TABLE = Path(__file__).parents[3] / "bench" / "data" / "nas_tabular_digits.json"
# Every op, expansion, group count, kernel, width and depth of the macro space, tiny widths.
MACRO = {"channels": [4, 8], "strides": [1, 2], "stem": 4, "head": 6, "image_size": 8}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tabular() -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(tabular_space(), **TABULAR_KWARGS)


@pytest.fixture(scope="module")
def macro() -> SuperNet:
    torch.manual_seed(0)
    space = macro_space(2, blocks=(1, 2), expansions=(1, 3), groups=(2, 4))
    return SuperNet(space, **MACRO)


def tiny_task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,)))
    return classification_task({"train": data, "val": data}, batch_size=16)


def perturb_(net: SuperNet) -> None:
    """Move every shared tensor, BatchNorm statistics included, away from its init."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.rand(tensor.shape, generator=g))


@pytest.mark.parametrize("which", ["tabular", "macro"])
def test_subnet_is_macro_net_and_matches_the_supernet_forward(
    which: str, request: pytest.FixtureRequest
) -> None:
    net: SuperNet = request.getfixturevalue(which)
    perturb_(net)
    net.eval()
    rng = random.Random(0)
    candidates = [net.largest(), net.smallest()] + [net.space.sample(rng) for _ in range(12)]
    x = torch.randn(3, 1, 8, 8)
    for candidate in candidates:
        sub = net.subnet(candidate).eval()
        built = macro_net(**net.fixed, **candidate)
        assert type(sub) is type(built)
        assert [type(m) for m in sub.modules()] == [type(m) for m in built.modules()]
        assert params(sub) == params(built)
        assert builder_of(sub) == builder_of(built)
        with torch.no_grad():
            assert (sub(x) - net(x, candidate)).abs().max().item() <= 1e-5


def test_a_candidate_takes_channel_prefixes_and_the_kernel_centre(macro: SuperNet) -> None:
    candidate = {**macro.largest(), "width_mult": 0.5, "s1_kernel": 3}
    sub = macro.subnet(candidate)
    shared = dict(macro.shared.named_parameters())["stage1/b1/conv/conv1/weight"]
    assert tuple(shared.shape) == (4, 4, 5, 5)  # width 1, kernel 5
    assert torch.equal(sub.stage1.b1.conv1.weight, shared[:2, :2, 1:4, 1:4])


def test_largest_and_smallest_are_the_extremes_of_the_table() -> None:
    net = SuperNet(tabular_space(), **TABULAR_KWARGS)
    rows = json.loads(TABLE.read_text())["rows"]
    counts = [r["params"] for r in rows]
    assert params(macro_net(**TABULAR_KWARGS, **net.largest())) == max(counts) == 42_938
    assert params(macro_net(**TABULAR_KWARGS, **net.smallest())) == min(counts) == 674


def test_subnet_survives_save_and_load(macro: SuperNet, tmp_path: Path) -> None:
    perturb_(macro)
    candidate = macro.space.sample(random.Random(3))
    sub = macro.subnet(candidate).eval()
    loaded = load(save(sub, tmp_path / "model"))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), sub(x))
    assert params(loaded) == params(sub)


def test_paths_train_only_their_own_weights(tabular: SuperNet) -> None:
    tabular.train().zero_grad()
    path = tabular.smallest()  # separable blocks only
    tabular(torch.randn(4, 1, 8, 8), path).sum().backward()
    grads = [n.split("/") for n, p in tabular.named_parameters() if p.grad is not None]
    touched = {parts[2] for parts in grads if len(parts) > 3}  # stage/block/op/...
    assert "separable" in touched and "conv" not in touched and "grouped" not in touched
    tabular.zero_grad()


def test_bn_recalibration_changes_running_stats_and_nothing_else(tabular: SuperNet) -> None:
    from netchisel.search.nas.supernet_train import inherited

    perturb_(tabular)
    shared = {k: v.clone() for k, v in tabular.state_dict().items()}
    candidate = tabular.largest()
    plain = tabular.subnet(candidate).state_dict()
    model = inherited(tabular, candidate, tiny_task(), 32)
    after = model.state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], after[k])}
    stats = {k for k in plain if k.endswith(("running_mean", "running_var", "batches_tracked"))}
    # stem 1, stage 1: 2 + 2, stage 2: 3 (shortcut) + 2 BatchNorms, all re-estimated
    assert changed == stats and len(stats) == 3 * 10
    assert not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(v, tabular.state_dict()[k]) for k, v in shared.items())


def train(seed: int, sandwich: bool) -> dict[str, torch.Tensor]:
    from netchisel.core.train import TrainSettings
    from netchisel.search.nas.supernet_train import train_supernet

    torch.manual_seed(0)
    net = SuperNet(tabular_space(), **TABULAR_KWARGS)
    settings = TrainSettings(steps=4, lr=1e-2)
    losses = train_supernet(net, tiny_task(), settings, seed=seed, sandwich=sandwich)
    assert len(losses) == 4
    return net.state_dict()


def test_training_is_deterministic_for_a_seed() -> None:
    a, b, c = train(0, False), train(0, False), train(1, False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sandwich_trains_the_largest_and_smallest_paths() -> None:
    torch.manual_seed(0)
    start = SuperNet(tabular_space(), **TABULAR_KWARGS).state_dict()
    after = train(0, True)
    # every step trains the largest path (conv blocks, both blocks of both stages) and the
    # smallest (one separable block per stage): all their weights move
    for stage, block, op in ((1, 2, "conv"), (2, 2, "conv"), (1, 1, "separable")):
        prefix = f"shared.stage{stage}/b{block}/{op}/"
        keys = [k for k in after if k.startswith(prefix) and k.endswith("weight")]
        assert keys and all(not torch.equal(start[k], after[k]) for k in keys), prefix


def test_objective_scores_candidates_with_metrics_and_cache(tabular: SuperNet) -> None:
    import optuna

    from netchisel.measure import count_flops
    from netchisel.search.nas.supernet_train import supernet_objective
    from netchisel.search.objectives import parse_objectives

    goals = parse_objectives(
        {"objectives": ["accuracy", "macs"], "constraints": {"params": {"max": 30_000}}}
    )
    cache: dict[str, dict[str, float]] = {}
    objective = supernet_objective(tabular, tiny_task(), goals, bn_samples=16, cache=cache)
    study = optuna.create_study(
        directions=goals.directions(), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(objective, n_trials=4)
    for trial in study.trials:
        candidate: dict[str, Any] = trial.user_attrs["candidate"]
        model = macro_net(**TABULAR_KWARGS, **candidate)
        assert trial.values[1] == count_flops(model, torch.zeros(1, 1, 8, 8)).macs
        assert trial.user_attrs["constraints"] == [params(model) - 30_000]
        assert 0.0 <= trial.values[0] <= 100.0
    assert len(cache) == len({json.dumps(t.params, sort_keys=True) for t in study.trials})


def test_objective_refuses_bytes_on_disk_before_any_trial(tabular: SuperNet) -> None:
    from netchisel.search.nas.supernet_train import supernet_objective
    from netchisel.search.objectives import parse_objectives

    goals = parse_objectives({"objectives": ["accuracy", "bytes_on_disk"]})
    with pytest.raises(ConfigError, match="bytes_on_disk needs a saved artifact"):
        supernet_objective(tabular, tiny_task(), goals)


def test_winner_is_fine_tuned_or_retrained_as_asked(tabular: SuperNet) -> None:
    from netchisel.core.train import TrainSettings
    from netchisel.search.nas.supernet_train import train_winner

    candidate = tabular.smallest()
    settings = TrainSettings(steps=1, lr=1e-9)
    tuned = train_winner(tabular, candidate, tiny_task(), settings, inherit=True)
    fresh = train_winner(tabular, candidate, tiny_task(), settings, inherit=False, seed=0)
    inherited = tabular.subnet(candidate).state_dict()
    assert (
        builder_of(tuned)
        == builder_of(fresh)
        == builder_of(macro_net(**TABULAR_KWARGS, **candidate))
    )
    w = "stage1.b1.conv.0.weight"
    assert torch.allclose(tuned.state_dict()[w], inherited[w], atol=1e-6)
    assert not torch.allclose(fresh.state_dict()[w], inherited[w], atol=1e-3)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ({"s1_op1": "pool"}, "s1_op1='pool' is outside the space"),
        ({"width_mult": 0.75}, "width_mult=0.75 is outside the space"),
        ({"s1_op2": "conv"}, "'s1_op2' does not exist for this candidate"),
        ({"lr": 0.1}, "'lr' is not a dimension of the space"),
    ],
)
def test_a_candidate_outside_the_space_is_one_line_error(
    tabular: SuperNet, candidate: dict[str, Any], message: str
) -> None:
    good = {"width_mult": 0.5, "s1_blocks": 1, "s1_op1": "conv", "s2_blocks": 1}
    good["s2_op1"] = "conv"
    for call in (tabular.subnet, tabular.activate):
        with pytest.raises(ConfigError, match=message) as error:
            call({**good, **candidate})
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="'s2_op1' is missing"):
        tabular.subnet({k: v for k, v in good.items() if k != "s2_op1"})


def test_bad_supernet_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="'s1_kernel' is not a fixed macro_net kwarg"):
        SuperNet(tabular_space(), s1_kernel=5)
    with pytest.raises(ConfigError, match="'lr' is not a macro_net choice"):
        SuperNet(tabular_space() | Space({"lr": categorical(0.1, 0.01)}))
    with pytest.raises(ConfigError, match="pass a candidate or call activate"):
        SuperNet(tabular_space(), **TABULAR_KWARGS)(torch.zeros(1, 1, 8, 8))


def test_a_candidate_that_is_not_a_mapping_is_one_line(tabular: SuperNet) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of the space's dimensions, got"):
        tabular.subnet(None)  # type: ignore[arg-type]
