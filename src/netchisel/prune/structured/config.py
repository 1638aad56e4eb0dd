"""`prune.structured`'s settings: what to remove (channels, heads or blocks), how much, and by
which criterion. The stage itself is `apply.py`; see `__init__.py` for how the package splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from netchisel.core.config import StageConfig, check_calibration_samples
from netchisel.core.errors import ConfigError
from netchisel.prune.importance import CRITERIA

IMPORTANCES = (*CRITERIA, "bn_scale")


@dataclass(frozen=True)
class StructuredConfig(StageConfig):
    """What to remove (channels, heads or blocks), how much, and by which criterion.

    - `granularity`: "channels" (conv filters and Linear neurons, Hugging Face's Conv1D
      included, with everything coupled to them), "heads" (whole attention heads: separate
      q/k/v/o projections as in Llama, Mistral, Qwen2, BART, OPT, a fused qkv Linear as in
      timm's ViT, GPT-2's Conv1D c_attn, `nn.MultiheadAttention`, and modules with an
      `n_head`/`num_heads` attribute whose heads the dependency graph holds, as in BERT; with
      grouped-query attention a unit is one key/value head with its query heads, so every
      group keeps the same number of query heads) or "blocks" (whole blocks replaced by
      `nn.Identity`; only blocks whose output has the shape of their input). Groups whose
      channels are a model output, that touch a grouped convolution, or whose cut breaks the
      forward pass are left alone and listed in the record's `skipped` with why.
    - `ratio`: fraction removed in [0, 1): of each group's channels (local; at least this
      fraction, so a group of n keeps floor(n * (1 - ratio)), never fewer than 1), of all
      channels (global), of each attention module's heads, or of the candidate blocks.
    - `target_macs_ratio`: instead of `ratio`, prune until the MACs of one forward are at most
      this fraction of the original's (0.5 = at least 2x fewer), measured with `count_flops`;
      the smallest ratio that gets there is searched and recorded.
    - `importance`: l1, l2, taylor, random, wanda (see `prune/importance.py`; summed over every
      weight slice a channel owns) or bn_scale (|gamma| of the BatchNorms in the group).
    - `scope`: "local" (the ratio in every group; `per_layer` overrides it by regex) or "global"
      (one ranking of mean-normalised scores across groups; each keeps at least `min_keep`).
    - `layers` / `exclude`: regexes (full match) over Conv/Linear names (channels), attention
      module names (heads) or module names (blocks; default: every shape-keeping child of a
      Sequential/ModuleList that has weights). A coupled group is pruned only when every layer
      whose output it changes is chosen, so excluding one layer protects its whole group.
    - `round_to`: kept channel counts are rounded up to a multiple of this (kernels often run
      faster on multiples of 8).
    - `calibration_samples`: training samples the taylor and wanda criteria look at.
    - `input_shape`: the example input to trace when the stage has no task (float zeros).
    - `mode`: only "remove". The other pruning stages can instead freeze what they prune
      (`mode: freeze`); here that is refused with one error: removing channels is what makes
      the model smaller and faster, while a kept-but-frozen channel is still computed and
      stored, and freezing it would mean freezing every tensor coupled to it as well.

    Example:
        >>> StructuredConfig(target_macs_ratio=0.5).granularity
        'channels'
    """

    NAME: ClassVar[str] = "prune.structured"

    ratio: float = 0.5
    target_macs_ratio: float | None = None
    granularity: Literal["channels", "heads", "blocks"] = "channels"
    importance: str = "l1"
    scope: Literal["local", "global"] = "local"
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    per_layer: dict[str, float] = field(default_factory=dict)
    min_keep: float = 0.1
    round_to: int = 1
    calibration_samples: int = 128
    input_shape: tuple[int, ...] | None = None
    mode: str = "remove"

    def validate(self) -> None:
        if self.mode != "remove":
            raise ConfigError(
                f"{STAGE}.mode: {self.mode!r} is not supported, only 'remove': structured "
                "pruning removes channels, which is what makes the model smaller and faster; a "
                "channel kept but frozen is still computed and stored (no MAC, size or latency "
                "change). To freeze pruned weights in place use prune.unstructured, "
                "prune.iterative or prune.gradual with mode: freeze"
            )
        ratios = [("ratio", self.ratio)]
        ratios += [(f"per_layer[{k!r}]", v) for k, v in self.per_layer.items()]
        for name, value in ratios:
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"{STAGE}.{name}: {value} is not in [0, 1) (it is the fraction removed)"
                )
        target = self.target_macs_ratio
        if target is not None and not 0.0 < target <= 1.0:
            raise ConfigError(
                f"{STAGE}.target_macs_ratio: {target} is not in (0, 1] (MACs after / before)"
            )
        if target is not None and self.ratio != 0.5:
            raise ConfigError(
                f"{STAGE}.ratio: {self.ratio} and a target_macs_ratio (which searches the ratio) "
                "exclude each other: drop one of them"
            )
        if target is not None and self.per_layer:
            raise ConfigError(
                f"{STAGE}.per_layer: fixed per-layer ratios and a target_macs_ratio (which "
                "searches one ratio) exclude each other: drop one of them"
            )
        if not 0.0 < self.min_keep <= 1.0:
            raise ConfigError(f"{STAGE}.min_keep: {self.min_keep} is not in (0, 1]")
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"{STAGE}.importance: unknown {self.importance!r} (known: {', '.join(IMPORTANCES)})"
            )
        if self.importance == "bn_scale" and self.granularity == "heads":
            raise ConfigError(
                f"{STAGE}.importance: bn_scale scores the BatchNorm after a conv; attention "
                "heads have none: use l1, l2, taylor, random or wanda"
            )
        if self.per_layer and self.scope == "global":
            raise ConfigError(
                f"{STAGE}.per_layer: per-layer ratios are for local scope; global scope ranks "
                "all groups together (use min_keep to protect small layers)"
            )
        if self.per_layer and self.granularity == "blocks":
            raise ConfigError(f"{STAGE}.per_layer: blocks are removed whole; drop per_layer")
        if self.round_to < 1:
            raise ConfigError(f"{STAGE}.round_to: must be >= 1, got {self.round_to}")
        check_calibration_samples(STAGE, self.calibration_samples)
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(
                f"{STAGE}.input_shape: {list(self.input_shape)} is not a shape such as "
                "[1, 3, 32, 32]"
            )
        patterns = [("layers", p) for p in self.layers or ()]
        patterns += [("exclude", p) for p in self.exclude]
        patterns += [("per_layer", p) for p in self.per_layer]
        for where, pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{STAGE}.{where}: {pattern!r} is not a valid regex ({e})"
                ) from None


STAGE = StructuredConfig.NAME
