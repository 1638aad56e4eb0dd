"""Profile: everything measured about one model on one input, in one dataclass.

Example:
    >>> import torch
    >>> from torch import nn
    >>> p = profile(nn.Linear(4, 2), torch.zeros(1, 4), latency=False, on_disk=False)
    >>> p.params, p.macs, p.flops
    (10, 8, 18)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from netchisel.measure.energy import EnergyEstimate, estimate_energy
from netchisel.measure.flops import FlopCount, count_flops
from netchisel.measure.latency import Latency, batch_size_of, compare_latency, measure_latency
from netchisel.measure.memory import peak_forward_bytes
from netchisel.measure.size import size_stats

__all__ = [
    "EnergyEstimate",
    "FlopCount",
    "Latency",
    "Profile",
    "compare_latency",
    "count_flops",
    "measure_latency",
    "profile",
]


@dataclass(frozen=True)
class Profile:
    """Params, exact FLOPs/MACs (total and per module), bytes, latency, peak memory, energy.

    FLOPs, MACs, peak memory and energy are for one forward of the example batch; energy is
    per sample and is an estimate. `bytes_on_disk` is the size of the saved artifact.
    """

    batch_size: int
    params: int
    params_nonzero: int
    flops: int
    macs: int
    bytes_in_memory: int
    bytes_by_dtype: dict[str, int]
    bytes_on_disk: int | None
    peak_memory_bytes: int
    energy: EnergyEstimate
    latency: Latency | None
    params_by_module: dict[str, int]
    flops_by_module: dict[str, int]
    macs_by_module: dict[str, int]
    flops_by_op: dict[str, int]
    uncounted_ops: tuple[str, ...]
    # A dynamic model's costs by path (MACs per exit, expected MACs per sample), from its own
    # `dynamic_costs(example_inputs)` method; None for a static model.
    dynamic: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        data = asdict(self)
        data["uncounted_ops"] = list(self.uncounted_ops)
        return data

    def summary(self) -> dict[str, Any]:
        """The headline numbers only (no per-module tables)."""
        return {
            "params": self.params,
            "params_nonzero": self.params_nonzero,
            "flops": self.flops,
            "macs": self.macs,
            "bytes_in_memory": self.bytes_in_memory,
            "bytes_on_disk": self.bytes_on_disk,
            "peak_memory_bytes": self.peak_memory_bytes,
            "energy_uj": self.energy.total_uj,
            "latency_ms": self.latency.median_ms if self.latency else None,
            "batch_size": self.batch_size,
            "expected_macs": self.expected_macs,
        }

    @property
    def expected_macs(self) -> float:
        """MACs per sample: a dynamic model's expectation under its calibration split (its
        `dynamic["expected_macs"]`), a static model's `macs / batch_size`; so a search can
        compare static and dynamic candidates on one number."""
        expected = (self.dynamic or {}).get("expected_macs")
        return float(expected) if expected is not None else self.macs / self.batch_size


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    backend: str = "eager",
    threads: int | None = 1,
    repeats: int = 30,
    warmup: int = 5,
    on_disk: bool = True,
) -> Profile:
    """Measure `model` on `example_inputs` (a tensor, a tuple of inputs, or a dict of kwargs).

    Latency uses `threads` intra-op threads (1 by default, so runs compare) and the batch size
    of the example inputs; `on_disk` saves the model to a temp artifact to weigh it. FLOPs and
    MACs are those of this forward; a model whose cost depends on its input (an early-exit
    model) describes its paths through a `dynamic_costs(example_inputs)` method, whose result
    is `Profile.dynamic`.
    """
    flops = count_flops(model, example_inputs)
    dynamic_costs = getattr(model, "dynamic_costs", None)
    sizes = size_stats(model, on_disk=on_disk)
    peak, activations = peak_forward_bytes(model, example_inputs)
    batch = batch_size_of(example_inputs)
    energy = estimate_energy(
        flops.flops_by_dtype, flops.macs_by_dtype, sizes.bytes_in_memory, activations, batch
    )
    timing = (
        measure_latency(
            model, example_inputs, backend=backend, threads=threads, repeats=repeats, warmup=warmup
        )
        if latency
        else None
    )
    return Profile(
        batch_size=batch,
        params=sizes.params,
        params_nonzero=sizes.params_nonzero,
        flops=flops.flops,
        macs=flops.macs,
        bytes_in_memory=sizes.bytes_in_memory,
        bytes_by_dtype=sizes.bytes_by_dtype,
        bytes_on_disk=sizes.bytes_on_disk,
        peak_memory_bytes=peak,
        energy=energy,
        latency=timing,
        params_by_module=sizes.params_by_module,
        flops_by_module=flops.flops_by_module,
        macs_by_module=flops.macs_by_module,
        flops_by_op=flops.flops_by_op,
        uncounted_ops=flops.uncounted_ops,
        dynamic=dynamic_costs(example_inputs) if callable(dynamic_costs) else None,
    )
