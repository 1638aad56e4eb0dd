"""Allowed refusals of the model matrix (operation -> {arch -> why}): quantize.

Operations: dynamic_int8, int8_weight_only, int4_weight_only, static_int8.
An entry here must raise a NetChiselError naming a module and leave the model unchanged
(tests/models/test_matrix.py checks it); delete the line when the case succeeds.
"""

from __future__ import annotations

REFUSED: dict[str, dict[str, str]] = {
    "dynamic_int8": {},
    "int8_weight_only": {},
    "int4_weight_only": {},
    "static_int8": {},
}
