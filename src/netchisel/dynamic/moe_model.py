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

from netchisel.dynamic.moe_costs import moe_costs


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

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def dynamic_costs(self, example_inputs: Any) -> dict[str, Any]:
        """MACs per expert and per token of each MoE layer, and the expected MACs per sample
        under the routing measured on the validation split (`moe_costs`)."""
        routing = self.routing
        if routing is not None:  # the layer names in `routing` are the inner model's
            routing = {**routing, "layers": {f"model.{k}": v for k, v in routing["layers"].items()}}
        return moe_costs(self, example_inputs, routing)
