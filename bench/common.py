"""Helpers every benchmark shares: where results go and what machine they came from."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from netchisel.measure.machine import machine_info

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/NAME.json with the machine and the date beside the numbers."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
