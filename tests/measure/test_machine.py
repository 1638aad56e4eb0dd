"""What a result says it ran on: the same keys every time, values from this machine."""

from __future__ import annotations

import os

import torch

from netchisel.measure.machine import OPTIONAL_PACKAGES, cpu_flags, machine_info


def test_machine_info_names_versions_threads_and_only_known_cpu_features() -> None:
    info = machine_info()
    assert set(info) == {
        "netchisel",
        "torch",
        "python",
        "platform",
        "cpu",
        "cpu_count",
        "torch_threads",
        "cpu_capability",
        "cpu_features",
        "quantized_engines",
        "cuda",
        "optional",
    }
    assert info["torch"] == torch.__version__ and info["cpu_count"] == os.cpu_count()
    assert info["torch_threads"] == torch.get_num_threads()
    assert set(info["cpu_features"]) <= cpu_flags()
    assert list(info["optional"]) == list(OPTIONAL_PACKAGES)
