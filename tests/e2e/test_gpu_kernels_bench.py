"""bench/gpu_kernels.py without a CUDA device: one line saying so, exit 0, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_without_cuda_it_says_so_in_one_line_and_writes_nothing() -> None:
    result = BENCH / "results" / "gpu_kernels.json"
    before = result.stat().st_mtime_ns if result.exists() else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path on any machine
    out = subprocess.run(
        [sys.executable, str(BENCH / "gpu_kernels.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpu_kernels: no CUDA device")
    assert "nothing written" in lines[0] and "bench/gpu_kernels.py" in lines[0]
    assert (result.stat().st_mtime_ns if result.exists() else None) == before
