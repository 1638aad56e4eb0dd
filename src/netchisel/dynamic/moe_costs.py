"""What a mixture-of-experts model costs: exact MACs per expert, active MACs per token, and the
expected MACs per sample under the routing measured on a data split.

An expert `Linear(d, h) - act - Linear(h, d)` costs `d*h + h*d` MACs per token it serves (the
bias and the activation are FLOPs, not MACs); the router costs `d*E` per token. The active
FFN MACs per token are the router's plus those of the k experts a token is sent to (for
experts of one width: router + k * expert). The expected MACs per sample are the MACs of
everything outside the experts (from `netchisel.measure.count_flops` on one sample, the
experts' own MACs taken out) plus, for each expert, the tokens per sample it served on the
split (`measure_routing`, dropped tokens included as not served) times its MACs per token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.task import Task
from netchisel.dynamic.moe_layer import MoEFeedForward
from netchisel.measure.flops import count_flops


def expert_macs(layer: MoEFeedForward) -> list[int]:
    """MACs per token of each expert (its two Linears).

    Example:
        >>> from netchisel.dynamic.moe_layer import make_expert
        >>> experts = [make_expert(4, 3, 4, nn.GELU()), make_expert(4, 5, 4, nn.GELU())]
        >>> expert_macs(MoEFeedForward(nn.Linear(4, 2), experts, None))
        [24, 40]
    """
    return [
        sum(m.in_features * m.out_features for m in e.modules() if isinstance(m, nn.Linear))
        for e in layer.experts
    ]


def router_macs(layer: MoEFeedForward) -> int:
    """MACs per token of the router (a Linear d -> E)."""
    return int(layer.router.in_features * layer.router.out_features)


def moe_layers(model: nn.Module) -> dict[str, MoEFeedForward]:
    """The model's MoE layers by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoEFeedForward)}


def _samples(inputs: Iterable[Tensor]) -> int:
    first = next(iter(inputs))
    return int(first.shape[0]) if first.dim() > 0 else 1


def measure_routing(model: nn.Module, task: Task, split: str = "val") -> dict[str, Any]:
    """Run `model` (eval) over a split and sum every MoE layer's routing: per layer the
    assignments (`load`) and served tokens (`kept`) per expert, `dropped` assignments,
    `tokens`, the router's mean per-token entropy (nats) and the split's `samples`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> from netchisel.dynamic.moe_layer import make_expert
        >>> moe = MoEFeedForward(nn.Linear(2, 2), [make_expert(2, 2, 2, nn.ReLU())] * 2, None)
        >>> net = nn.Sequential(moe, nn.Linear(2, 2))
        >>> data = TensorDataset(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
        >>> r = measure_routing(net, classification_task({"val": data}, batch_size=4))
        >>> r["samples"], r["layers"]["0"]["tokens"], sum(r["layers"]["0"]["kept"])
        (10, 10, 10)
    """
    layers = moe_layers(model)
    totals: dict[str, dict[str, Any]] = {
        name: {
            "tokens": 0,
            "load": [0] * m.num_experts,
            "kept": [0] * m.num_experts,
            "dropped": 0,
            "entropy_sum": 0.0,
        }
        for name, m in layers.items()
    }
    samples = 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    for layer in layers.values():
        layer.track_entropy = True
    try:
        with torch.no_grad():
            for batch in task.loader(split):
                inputs = tuple(t.to(device) for t in task.inputs_of(batch))
                model(*inputs)
                samples += _samples(inputs)
                for name, layer in layers.items():
                    total, stats = totals[name], layer.stats
                    total["tokens"] += stats["tokens"]
                    total["dropped"] += stats["dropped"]
                    total["entropy_sum"] += stats["entropy_sum"]
                    for key in ("load", "kept"):
                        total[key] = [a + b for a, b in zip(total[key], stats[key], strict=True)]
    finally:
        for layer in layers.values():
            layer.track_entropy = False
        model.train(was_training)
    out: dict[str, Any] = {"split": split, "samples": samples, "layers": {}}
    for name, total in totals.items():
        entropy = total.pop("entropy_sum")
        total["router_entropy"] = entropy / max(total["tokens"], 1)
        out["layers"][name] = total
    return out


def load_cv(load: list[int]) -> float:
    """Coefficient of variation of the experts' loads (population std / mean; 0 = even).

    Example:
        >>> load_cv([5, 5, 5, 5]), round(load_cv([10, 0, 10, 0]), 3)
        (0.0, 1.0)
    """
    mean = sum(load) / len(load)
    if mean == 0:
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in load) / len(load)) / mean


def load_entropy(load: list[int]) -> float:
    """Entropy (nats) of the share of assignments each expert gets (ln E = even).

    Example:
        >>> round(load_entropy([1, 1, 1, 1]), 4), load_entropy([4, 0, 0, 0])
        (1.3863, 0.0)
    """
    total = sum(load)
    return 0.0 - sum(x / total * math.log(x / total) for x in load if x > 0) if total else 0.0


def moe_costs(
    model: nn.Module, example_inputs: Any, routing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per MoE layer: MACs per token of each expert and of the router, the active FFN MACs
    per token (router + the k experts, dropping nothing) and, from `routing`
    (`measure_routing`'s result), the served tokens per sample and the layer's expected MACs
    per sample; then the model's MACs on the first sample of `example_inputs` (exact, from
    `count_flops`), outside the experts, and its expected MACs per sample."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    one = tuple(t[:1] for t in inputs)
    layers = moe_layers(model)
    count = count_flops(model, one if len(one) > 1 else one[0])
    in_experts = 0
    rows: dict[str, Any] = {}
    for name, layer in layers.items():
        per_expert = expert_macs(layer)
        ran = [count.macs_by_module.get(f"{name}.experts.{e}", 0) for e in range(layer.num_experts)]
        in_experts += sum(ran)
        best = sorted(per_expert, reverse=True)[: layer.top_k]
        row: dict[str, Any] = {
            "experts": layer.num_experts,
            "top_k": layer.top_k,
            "capacity_factor": layer.capacity_factor,
            "expert_macs_per_token": per_expert,
            "router_macs_per_token": router_macs(layer),
            "active_macs_per_token": router_macs(layer) + sum(best),
            "all_experts_macs_per_token": router_macs(layer) + sum(per_expert),
        }
        if routing is not None and name in routing.get("layers", {}):
            seen = routing["layers"][name]
            samples = max(int(routing["samples"]), 1)
            served = [k / samples for k in seen["kept"]]
            row["served_tokens_per_sample"] = served
            row["expected_expert_macs_per_sample"] = sum(
                s * m for s, m in zip(served, per_expert, strict=True)
            )
            row["dropped_fraction"] = seen["dropped"] / max(sum(seen["load"]), 1)
            row["load_cv"] = load_cv(seen["load"])
            row["router_entropy"] = seen["router_entropy"]
            row["load_entropy"] = load_entropy(seen["load"])
        rows[name] = row
    outside = count.macs - in_experts
    expected = None
    if routing is not None and all("expected_expert_macs_per_sample" in r for r in rows.values()):
        expected = outside + sum(r["expected_expert_macs_per_sample"] for r in rows.values())
    return {
        "layers": rows,
        "example_macs": count.macs,
        "macs_outside_experts": outside,
        "expected_macs": expected,
        "routing_split": None if routing is None else routing.get("split"),
    }
