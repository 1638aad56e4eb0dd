"""The search strategies netchisel adds to Optuna, as `optuna.samplers.BaseSampler` subclasses.

Each keeps no history of its own: it reads the completed trials from the study's storage and
draws from (seed, trial number), so it works in any Optuna study, resumes after a kill and
shares a study between workers. See docs/search_strategies.md.
"""

from netchisel.search.samplers.anneal import GeneticAnnealingSampler
from netchisel.search.samplers.de import DifferentialEvolutionSampler
from netchisel.search.samplers.evolution import RegularizedEvolutionSampler
from netchisel.search.samplers.ga import GeneticSampler
from netchisel.search.samplers.reinforce import ReinforceSampler
from netchisel.search.samplers.seeded import TrialSeededSampler

__all__ = [
    "DifferentialEvolutionSampler",
    "GeneticAnnealingSampler",
    "GeneticSampler",
    "RegularizedEvolutionSampler",
    "ReinforceSampler",
    "TrialSeededSampler",
]
