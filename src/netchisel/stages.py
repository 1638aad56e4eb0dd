"""Every stage netchisel has, listed once (as Optuna lists its samplers).

A stage is a config class (its `NAME` is the YAML name) with a handler registered against it
in its family. This table is what recipes, search and the CLI look names up in; only the
pipeline, search, the CLI and `netchisel/__init__.py` import it. A new algorithm is one file
in its family plus one line here.
"""

from __future__ import annotations

from netchisel import distill, dynamic, factorize, prune, quantize
from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError
from netchisel.core.finetune import EvaluateConfig, FinetuneConfig
from netchisel.core.registry import Stage, handler

STAGES: tuple[type[StageConfig], ...] = (
    FinetuneConfig,
    EvaluateConfig,
    prune.UnstructuredConfig,
    prune.IterativeConfig,
    prune.GradualConfig,
    prune.LotteryConfig,
    prune.SparseTrainingConfig,
    prune.PenaltyConfig,
    prune.SensitivityConfig,
    prune.StructuredConfig,
    prune.SparseGPTConfig,
    quantize.RTNConfig,
    quantize.DynamicInt8Config,
    quantize.StaticInt8Config,
    quantize.GPTQConfig,
    quantize.AWQConfig,
    quantize.SmoothQuantConfig,
    quantize.QATConfig,
    quantize.MixedPrecisionConfig,
    quantize.KMeansConfig,
    quantize.BinaryConfig,
    distill.DistillConfig,
    factorize.SVDConfig,
    factorize.TuckerConfig,
    factorize.CPConfig,
    factorize.SeparableConfig,
    dynamic.EarlyExitConfig,
    dynamic.MoEConfig,
    dynamic.WidthConfig,
)
_BY_NAME = {config.NAME: config for config in STAGES}


def get_stage(name: str) -> Stage:
    """The stage called `name`, or a ConfigError listing the known ones.

    Example:
        >>> get_stage("prune.unstructured").config_class.__name__
        'UnstructuredConfig'
    """
    if name not in _BY_NAME:
        raise ConfigError(f"unknown stage {name!r} (known: {', '.join(stage_names())})")
    return handler(_BY_NAME[name])


def stage_names() -> list[str]:
    """All stage names, sorted."""
    return sorted(_BY_NAME)
