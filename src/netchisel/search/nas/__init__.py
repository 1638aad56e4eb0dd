"""NAS search spaces and the builders that turn their candidates into models.

`NAS_SPACES` maps the name a search spec uses to the function that makes the space; build a
candidate with the builder the space's docstring names (`macro_net` or `cell_net`).
"""

from __future__ import annotations

from collections.abc import Callable

from netchisel.search.nas.cell_ops import CELL_OPS
from netchisel.search.nas.cells import cell_net, cell_space
from netchisel.search.nas.darts import darts_search
from netchisel.search.nas.darts_config import DartsConfig, DartsResult, EpochRecord
from netchisel.search.nas.macro import (
    MOBILENET_KWARGS,
    RESNET_KWARGS,
    TABULAR_KWARGS,
    macro_net,
    macro_space,
    tabular_space,
)
from netchisel.search.nas.proxies import PROXIES, proxy_score
from netchisel.search.nas.proxy_rank import prefilter, rank_candidates
from netchisel.search.space import Space

NAS_SPACES: dict[str, Callable[..., Space]] = {
    "macro": macro_space,
    "cells": cell_space,
    "tabular": tabular_space,
}

__all__ = [
    "CELL_OPS",
    "MOBILENET_KWARGS",
    "NAS_SPACES",
    "PROXIES",
    "RESNET_KWARGS",
    "TABULAR_KWARGS",
    "DartsConfig",
    "DartsResult",
    "EpochRecord",
    "cell_net",
    "cell_space",
    "darts_search",
    "macro_net",
    "macro_space",
    "prefilter",
    "proxy_score",
    "rank_candidates",
    "tabular_space",
]
