"""Ranking and filtering candidates by a proxy; the k best go to the head of a study's queue."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from netchisel.artifact.store import load, save
from netchisel.core.errors import ConfigError
from netchisel.search.nas import TABULAR_KWARGS, macro_net, tabular_space
from netchisel.search.nas.proxies import proxy_score
from netchisel.search.nas.proxy_rank import prefilter, rank_candidates


def tabular_build(**candidate: object) -> torch.nn.Module:
    return macro_net(**TABULAR_KWARGS, **candidate)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def test_rank_orders_by_score_and_keeps_ties_in_order() -> None:
    build = lambda width, tag: torch.nn.Linear(3, width)  # noqa: E731
    candidates = [{"width": 1, "tag": "a"}, {"width": 4, "tag": "b"}, {"width": 1, "tag": "c"}]
    ranked = rank_candidates(candidates, build, torch.zeros(2, 3), torch.zeros(2), "params")
    assert ranked == [({"width": 4, "tag": "b"}, 16.0), ({"width": 1, "tag": "a"}, 4.0),
                      ({"width": 1, "tag": "c"}, 4.0)]  # fmt: skip


def test_rank_scores_are_proxy_scores_of_the_seeded_build() -> None:
    x, y = batch()
    candidates = list(tabular_space().candidates())[:3]
    ranked = dict(
        (str(c), s) for c, s in rank_candidates(candidates, tabular_build, x, y, "snip", seed=2)
    )
    torch.manual_seed(2)
    model = tabular_build(**candidates[1])
    assert ranked[str(candidates[1])] == proxy_score(model, x, y, "snip", seed=2)


def test_prefilter_enqueues_the_k_best_of_the_pool_first() -> None:
    x, y = batch()
    space = tabular_space()
    study = optuna.create_study(direction="maximize")
    chosen = prefilter(study, space, tabular_build, x, y, "params", 3, pool=12, seed=0)
    again = prefilter(optuna.create_study(), space, tabular_build, x, y, "params", 3, pool=12)
    assert chosen == again and len(chosen) == 3
    params = [sum(p.numel() for p in tabular_build(**c).parameters()) for c in chosen]
    assert params == sorted(params, reverse=True)
    study.optimize(lambda t: float(len(space.suggest(t))), n_trials=4)
    assert [space.suggest(t) for t in study.trials[:3]] == chosen  # type: ignore[arg-type]
    assert [t.user_attrs["proxy_score"] for t in study.trials[:3]] == [float(p) for p in params]
    assert study.trials[0].user_attrs["proxy"] == "params"


def test_the_top_candidate_is_an_ordinary_module_that_saves_and_loads(tmp_path: Path) -> None:
    x, y = batch()
    candidates = list(tabular_space().candidates())[:6]
    [(best, _)] = rank_candidates(candidates, tabular_build, x, y, "synflow", k=1)
    net = tabular_build(**best).eval()
    directory = save(net, tmp_path / "best")
    assert torch.equal(load(directory)(x), net(x))


def test_bad_k_and_pool_are_one_line() -> None:
    x, y = batch()
    with pytest.raises(
        ConfigError, match=r"rank_candidates needs k >= 1 \(or None for all\), got 0"
    ):
        rank_candidates([{}], tabular_build, x, y, "params", k=0)
    with pytest.raises(ConfigError, match="prefilter pool must be >= 1"):
        prefilter(optuna.create_study(), tabular_space(), tabular_build, x, y, "params", 1, pool=0)
