"""Allowed refusals of the model matrix (operation -> {arch -> why}): artifact.

Operations: profile, save_load.
An entry here must raise a NetChiselError naming a module and leave the model unchanged
(tests/models/test_matrix.py checks it); delete the line when the case succeeds.
"""

from __future__ import annotations

REFUSED: dict[str, dict[str, str]] = {
    "profile": {},
    "save_load": {},
}
