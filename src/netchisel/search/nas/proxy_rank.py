"""Rank and filter candidates by a zero-cost proxy before training: score many, train the top k.

`prefilter` puts the k best candidates of a pool at the head of an Optuna study's queue
(`study.enqueue_trial`), so any strategy and any objective that suggests through
`Space.suggest` (a search spec's, `TabularBenchmark.objective`) trains those first, then goes
on sampling as usual. Nothing else in the search changes: a proxy only orders the first trials.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optuna
import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.search.nas.proxies import LossFn, proxy_score
from netchisel.search.space import Candidate, Space

Builder = Callable[..., nn.Module]


def rank_candidates(
    candidates: Iterable[Mapping[str, Any]],
    build: Builder,
    inputs: Tensor,
    targets: Tensor,
    proxy: str,
    *,
    k: int | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> list[tuple[Candidate, float]]:
    """(candidate, score) pairs, best score first (ties keep the given order), the k best
    only when `k` is given: score many, train the top k.

    Each candidate is built as `build(**candidate)` under `torch.manual_seed(seed)` (so its
    initial weights repeat) and scored by `proxy_score`; the global RNG is left as it was.

    Example:
        >>> build = lambda width: nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
        >>> ranked = rank_candidates([{"width": 2}, {"width": 8}], build,
        ...                          torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), "params")
        >>> ranked
        [({'width': 8}, 58.0), ({'width': 2}, 16.0)]
        >>> rank_candidates([{"width": w} for w in (1, 5, 3)], build, torch.zeros(2, 4),
        ...                 torch.zeros(2, dtype=torch.long), "params", k=2)
        [({'width': 5}, 37.0), ({'width': 3}, 23.0)]
    """
    if k is not None and k < 1:
        raise ConfigError(f"rank_candidates needs k >= 1 (or None for all), got {k}")
    scored: list[tuple[Candidate, float]] = []
    for candidate in candidates:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(**candidate)
        score = proxy_score(model, inputs, targets, proxy, seed=seed, loss_fn=loss_fn)
        scored.append((dict(candidate), score))
    return sorted(scored, key=lambda pair: -pair[1])[:k]


def prefilter(
    study: optuna.Study,
    space: Space,
    build: Builder,
    inputs: Tensor,
    targets: Tensor,
    proxy: str,
    k: int,
    *,
    pool: int | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> list[Candidate]:
    """Score a pool of `space`'s candidates and enqueue the k best in `study`; returns them.

    `pool`: how many distinct candidates to draw at random (seeded); None scores every
    candidate of a finite space. Each enqueued trial carries `proxy` and `proxy_score` in its
    user attributes. Run the study as usual afterwards: its first k trials are these.

    Example:
        >>> from netchisel.search.space import integer
        >>> space = Space({"width": integer(1, 4)})
        >>> study = optuna.create_study(direction="maximize")
        >>> prefilter(study, space, lambda width: nn.Linear(2, width), torch.zeros(2, 2),
        ...           torch.zeros(2, dtype=torch.long), "params", 2)
        [{'width': 4}, {'width': 3}]
        >>> study.optimize(lambda t: space.suggest(t)["width"], n_trials=2)
        >>> [t.params["width"] for t in study.trials]
        [4, 3]
    """
    candidates = _pool(space, pool, seed)
    ranked = rank_candidates(candidates, build, inputs, targets, proxy, seed=seed, loss_fn=loss_fn)[
        :k
    ]
    for candidate, score in ranked:
        study.enqueue_trial(candidate, user_attrs={"proxy": proxy, "proxy_score": score})
    return [candidate for candidate, _ in ranked]


def _pool(space: Space, pool: int | None, seed: int) -> list[Candidate]:
    if pool is None:
        return list(space.candidates())
    if pool < 1:
        raise ConfigError(f"prefilter pool must be >= 1 (or None for every candidate), got {pool}")
    rng = random.Random(seed)
    seen: dict[tuple[tuple[str, Any], ...], Candidate] = {}
    for _ in range(pool * 20):  # a finite space may have fewer than `pool` candidates
        candidate = space.sample(rng)
        seen.setdefault(tuple(sorted(candidate.items())), candidate)
        if len(seen) == pool:
            break
    return list(seen.values())
