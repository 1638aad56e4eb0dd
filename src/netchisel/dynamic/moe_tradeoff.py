"""What a report draws of `dynamic.moe` (the record `dynamic`): the task's primary metric
against the expected MACs per sample on the validation split, for the dense model, for each
top-k the experts could run with (a MoEfied model's router ranks every expert, so k can be
changed at inference: the sweep), and for the k chosen; and each layer's expert loads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from netchisel.core.task import Task
from netchisel.dynamic.moe_costs import measure_routing, moe_costs, moe_layers
from netchisel.measure.flops import count_flops


def per_sample_macs(model: nn.Module, task: Task, split: str) -> int:
    """Exact MACs of one forward on one sample of `split` (the dense model's cost).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
        >>> per_sample_macs(nn.Linear(3, 2), classification_task({"val": data}), "val")
        6
    """
    x = task.example_inputs(1, split)
    return count_flops(model, x if len(x) > 1 else x[0]).macs


def moe_trade_off(
    model: nn.Module,
    task: Task,
    split: str,
    dense: dict[str, float],
    sweep_k: bool,
) -> dict[str, Any]:
    """The record: `dense` is {"value": metric, "mean_macs": MACs per sample} before the
    conversion; `model` holds the MoE layers (eval mode; their `top_k` is put back)."""
    metric = task.primary_metric
    layers = moe_layers(model)
    example = task.example_inputs(1, split)

    def point() -> tuple[dict[str, float], dict[str, Any]]:
        routing = measure_routing(model, task, split)
        costs = moe_costs(model, example, routing)
        value = task.evaluate(model, split)[metric]
        return {"value": value, "mean_macs": float(costs["expected_macs"])}, routing

    chosen, routing = point()
    sweep = []
    if sweep_k:
        ks = {layer.top_k for layer in layers.values()}
        experts = min(layer.num_experts for layer in layers.values())
        before = {name: layer.top_k for name, layer in layers.items()}
        try:
            for k in sorted({1, 2, 4, experts} | ks):
                if k > experts:
                    continue
                for layer in layers.values():
                    layer.top_k = k
                sweep.append({"setting": f"top-{k}", **point()[0]})
        finally:
            for name, layer in layers.items():
                layer.top_k = before[name]
    histogram = {}
    for name, seen in routing["layers"].items():
        total = max(sum(seen["load"]), 1)
        for e, load in enumerate(seen["load"]):
            histogram[f"{name} expert {e}"] = load / total / len(routing["layers"])
    return {
        "kind": "moe",
        "split": split,
        "metric": metric,
        "static": dense,
        "chosen": chosen,
        "sweep": sweep,
        "histogram": histogram,
    }
