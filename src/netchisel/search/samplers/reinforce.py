"""`ReinforceSampler`: a policy-gradient controller (Williams 1992; Zoph & Le 2017).

Zoph & Le's controller is an RNN that emits one decision after another; here the policy is
simpler, one independent softmax per parameter (a categorical's choices; a numeric parameter's
values if it has at most `bins` of them, else `bins` equal bins of its (log) range, sampled
uniformly within the bin).

Stateless: the policy is never stored. Each proposal replays REINFORCE over the completed
trials in trial-number order, from uniform logits: for trial t with reward r_t,
logits += learning_rate * (r_t - baseline) * grad log pi(action_t), then
baseline = decay * baseline + (1 - decay) * r_t (a moving-average baseline, started at the first
reward). The reward is 1 - badness (the fraction of the history strictly better, see
`_population.py`): in [0, 1], whatever the objectives' scale, number or constraints. Replaying
costs O(trials x parameters x bins) per proposal, milliseconds for a thousand trials.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from netchisel.core.errors import ConfigError
from netchisel.search.samplers._population import (
    PopulationSampler,
    Proposer,
    check_at_least,
)
from netchisel.search.samplers._space import cells, decode, encode, index_of, value_at


class ReinforceSampler(PopulationSampler):
    """REINFORCE with a moving-average baseline over independent per-parameter softmaxes.

    The policy starts uniform, so the first trials are random samples; it is learnt from
    `n_startup_trials` completed trials on.

    Args:
        seed: makes the search reproducible; each trial draws from (seed, trial number).
        learning_rate: step of each REINFORCE update on the logits.
        baseline_decay: the moving-average baseline's decay, in [0, 1).
        bins: actions of a numeric parameter with more values than this (or a float).
        n_startup_trials: completed trials before the policy is used.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(sampler=ReinforceSampler(seed=0, n_startup_trials=4))
        >>> study.optimize(lambda t: (t.suggest_int("x", 0, 9) - 7) ** 2, n_trials=20)
        >>> study.best_value
        0.0
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        learning_rate: float = 2.0,
        baseline_decay: float = 0.9,
        bins: int = 10,
        n_startup_trials: int = 10,
    ) -> None:
        check_at_least("learning_rate", learning_rate, 0.0)
        check_at_least("bins", bins, 2)
        check_at_least("n_startup_trials", n_startup_trials, 1)
        if not 0.0 <= baseline_decay < 1.0:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        super().__init__(seed=seed, n_startup=n_startup_trials)
        self._lr = learning_rate
        self._decay = baseline_decay
        self._bins = bins

    def actions(self, dist: BaseDistribution) -> int:
        """The number of actions of a parameter with distribution `dist`."""
        n = cells(dist)
        return n if 0 < n <= self._bins else self._bins

    def action(self, dist: BaseDistribution, value: object) -> int:
        """The action that produced `value`."""
        n = cells(dist)
        if 0 < n <= self._bins:
            return index_of(dist, value)
        return min(int(encode(dist, value) * self._bins), self._bins - 1)

    def policy(
        self, history: list[FrozenTrial], bad: np.ndarray
    ) -> dict[str, tuple[BaseDistribution, np.ndarray]]:
        """Each parameter's newest distribution and its logits after replaying REINFORCE."""
        logits: dict[str, tuple[BaseDistribution, np.ndarray]] = {}
        for t in history:
            for name, dist in t.distributions.items():
                logits[name] = (dist, np.zeros(self.actions(dist)))
        baseline = None
        for t, b in zip(history, bad, strict=True):
            reward = 1.0 - float(b)
            baseline = reward if baseline is None else baseline
            for name, value in t.params.items():
                dist, z = logits[name]
                if t.distributions[name] != dist:
                    continue  # sampled from an older version of this parameter
                p = np.exp(z - z.max())
                grad = -p / p.sum()
                grad[self.action(dist, value)] += 1.0
                z += self._lr * (reward - baseline) * grad
            baseline = self._decay * baseline + (1.0 - self._decay) * reward
        return logits

    def proposer(self, history: list[FrozenTrial], bad: np.ndarray, number: int) -> Proposer:
        """A value for every parameter seen so far, drawn from the replayed policy."""
        policy = sorted(self.policy(history, bad).items())
        return lambda rng: {name: self.draw(dist, z, rng) for name, (dist, z) in policy}

    def draw(self, dist: BaseDistribution, logits: np.ndarray, rng: np.random.Generator) -> Any:
        """A value drawn from the softmax over `logits` (uniformly within a bin)."""
        p = np.exp(logits - logits.max())
        a = int(rng.choice(len(p), p=p / p.sum()))
        if 0 < cells(dist) <= self._bins:
            return value_at(dist, a)
        return decode(dist, (a + rng.random()) / len(p))
