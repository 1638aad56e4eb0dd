"""Energy per inference: an ESTIMATE from per-operation energies times operation counts.

Energies are Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, in picojoules. The
formula (docs/measurement.md):

    compute = sum over dtypes of  MACs * (mult + add)  +  (FLOPs - 2 * MACs) * add
    weights = bytes of parameters and buffers / 4 * DRAM read (each 32-bit word read once)
    activations = bytes of tensors the forward allocates / 4 * 2 * SRAM read (written and read once)
    per inference = (compute + weights + activations) / batch size

Nothing here is measured: it ranks models by the operations they do, it is not a wattmeter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# (multiply pJ, add pJ) per dtype family, Horowitz ISSCC 2014 (45 nm).
OP_ENERGY_PJ: dict[str, tuple[float, float]] = {
    "fp32": (3.7, 0.9),
    "fp16": (1.1, 0.4),
    "int32": (3.1, 0.1),
    "int8": (0.2, 0.03),
}
DRAM_READ_32BIT_PJ = 640.0
SRAM_READ_32BIT_PJ = 5.0  # 8 KB SRAM

# torch dtype name -> row of the table. There is no 64-bit, bf16 or 4-bit row: the nearest is
# used (64-bit at 32-bit cost, bf16 as fp16, int4 as int8), which underestimates 64-bit.
DTYPE_FAMILY: dict[str, str] = {
    "float64": "fp32",
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "fp16",
    "int64": "int32",
    "int32": "int32",
    "int16": "int32",
    "int8": "int8",
    "uint8": "int8",
    "quint4x2": "int8",
    "bool": "int8",
}


@dataclass(frozen=True)
class EnergyEstimate:
    """Estimated microjoules per inference (one sample), split by where the energy goes."""

    compute_uj: float
    weights_uj: float
    activations_uj: float
    total_uj: float
    batch_size: int
    label: str = "estimate (Horowitz ISSCC 2014, 45 nm op energies x op counts)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_energy(
    flops_by_dtype: dict[str, int],
    macs_by_dtype: dict[str, int],
    weight_bytes: int,
    activation_bytes: int,
    batch_size: int,
) -> EnergyEstimate:
    """Energy per inference from op counts by dtype and bytes moved.

    Example:
        >>> e = estimate_energy({"float32": 2}, {"float32": 1}, 0, 0, 1)
        >>> round(e.compute_uj * 1e6, 3)  # one fp32 MAC = 3.7 + 0.9 pJ
        4.6
    """
    compute_pj = 0.0
    for dtype, flops in flops_by_dtype.items():
        mult, add = OP_ENERGY_PJ[DTYPE_FAMILY.get(dtype, "fp32")]
        macs = macs_by_dtype.get(dtype, 0)
        compute_pj += macs * (mult + add) + max(0, flops - 2 * macs) * add
    weights_pj = weight_bytes / 4 * DRAM_READ_32BIT_PJ
    activations_pj = activation_bytes / 4 * 2 * SRAM_READ_32BIT_PJ
    n = max(1, batch_size)
    return EnergyEstimate(
        compute_uj=compute_pj / n * 1e-6,
        weights_uj=weights_pj / n * 1e-6,
        activations_uj=activations_pj / n * 1e-6,
        total_uj=(compute_pj + weights_pj + activations_pj) / n * 1e-6,
        batch_size=batch_size,
    )
