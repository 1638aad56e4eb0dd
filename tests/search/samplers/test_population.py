"""The population pieces the evolutionary samplers share: ranking trials by badness."""

from __future__ import annotations

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import create_trial

from netchisel.search.samplers._population import badness, pareto_fronts


def test_badness_ranks_feasible_first_then_value_or_front() -> None:
    ts = [
        create_trial(value=5.0),
        create_trial(value=9.0),  # maximize: the best
        create_trial(value=99.0, user_attrs={"constraints": [0.5, -1.0]}),
        create_trial(value=99.0, system_attrs={"constraints": [2.0]}),
        create_trial(value=5.0),
    ]
    assert badness(ts, [StudyDirection.MAXIMIZE]).tolist() == [0.2, 0.0, 0.6, 0.8, 0.2]
    two = [create_trial(values=v) for v in ([1, 2], [2, 1], [2, 2], [3, 3], [1, 2])]
    assert pareto_fronts(np.array([t.values for t in two])).tolist() == [0, 0, 1, 2, 0]
    # Maximizing the second: [3, 3] joins the front, [2, 2] beats [2, 1].
    directions = [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]
    assert badness(two, directions).tolist() == [0.0, 0.8, 0.6, 0.0, 0.0]
