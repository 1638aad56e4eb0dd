"""Search: spaces, objectives and strategies over Optuna studies (see docs/search.md).

Example:
    >>> from netchisel.search import Space, categorical
    >>> Space({"op": categorical("conv", "skip")}).size()
    2
"""

from netchisel.search.objectives import Objectives, parse_objectives
from netchisel.search.space import Space, categorical, integer, parse_space, real
from netchisel.search.spec import SearchSpec, load_search_spec, parse_search_spec
from netchisel.search.study import SearchResult, run_search

__all__ = [
    "Objectives",
    "SearchResult",
    "SearchSpec",
    "Space",
    "categorical",
    "integer",
    "load_search_spec",
    "parse_objectives",
    "parse_search_spec",
    "parse_space",
    "real",
    "run_search",
]
