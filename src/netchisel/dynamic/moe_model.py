"""The model a `dynamic.moe` stage returns: the converted model, with its routing measured.

The converted model (its feed-forward blocks now `MoEFeedForward` layers) is the child
`model` (state-dict keys gain the prefix `model.`); `forward` is its forward. The names of
the converted blocks and the routing measured on the validation split (`measure_routing`:
per-expert served tokens, dropped tokens, router entropy) are plain attributes, so
`netchisel.save` / `netchisel.load` keep them, and `dynamic_costs` (what
`netchisel.measure.profile` reports as `Profile.dynamic`) prices the model under that routing.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.dynamic.loaded import is_int, is_number
from netchisel.dynamic.moe_costs import moe_costs, moe_layers

STAGE = "dynamic.moe"


class MoEModel(nn.Module):
    """A model whose named feed-forward blocks are mixture-of-experts layers.

    Example:
        >>> import torch
        >>> from netchisel.dynamic.moe_layer import MoEFeedForward, make_expert
        >>> moe = MoEFeedForward(nn.Linear(4, 2), [make_expert(4, 8, 4, nn.ReLU())] * 2, None)
        >>> m = MoEModel(nn.Sequential(moe, nn.Linear(4, 3)), ["0"])
        >>> m(torch.zeros(5, 4)).shape, m.dynamic_costs(torch.zeros(5, 4))["example_macs"]
        (torch.Size([5, 3]), 84)
    """

    def __init__(
        self, model: nn.Module, layers: list[str], routing: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.routing: dict[str, Any] | None = routing

    def check_loaded(self) -> None:
        """The attributes a manifest set agree with the model: `layers` name its MoE layers,
        and `routing` (if any) gives each of them E non-negative counts per expert."""
        layers = moe_layers(self.model)
        names = self.layers
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{STAGE}: layers must be a list of names, got {names!r}")
        if sorted(names) != sorted(layers):
            raise ConfigError(
                f"{STAGE}: layers {names} are not the model's MoE layers {sorted(layers)}"
            )
        routing = self.routing
        if routing is None:
            return
        seen = routing.get("layers") if isinstance(routing, dict) else None
        if not (isinstance(seen, dict) and set(seen) <= set(layers)):
            raise ConfigError(f"{STAGE}: routing must map MoE layer names to their counts")
        if not (is_int(routing.get("samples")) and routing["samples"] >= 0):
            raise ConfigError(
                f"{STAGE}: routing samples must be a count, got {routing.get('samples')!r}"
            )
        for name, row in seen.items():
            experts = layers[name].num_experts
            counts = [row.get(k) for k in ("load", "kept")] if isinstance(row, dict) else [None]
            ok = all(
                isinstance(c, list) and len(c) == experts and all(is_int(v) and v >= 0 for v in c)
                for c in counts
            )
            if not (
                ok
                and all(is_int(row.get(k)) and row[k] >= 0 for k in ("tokens", "dropped"))
                and is_number(row.get("router_entropy"))
            ):
                raise ConfigError(
                    f"{STAGE}: routing of {name!r} needs tokens, dropped, router_entropy and "
                    f"{experts} non-negative counts in load and kept"
                )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def dynamic_costs(self, example_inputs: Any) -> dict[str, Any]:
        """MACs per expert and per token of each MoE layer, and the expected MACs per sample
        under the routing measured on the validation split (`moe_costs`)."""
        routing = self.routing
        if routing is not None:  # the layer names in `routing` are the inner model's
            routing = {**routing, "layers": {f"model.{k}": v for k, v in routing["layers"].items()}}
        return moe_costs(self, example_inputs, routing)
