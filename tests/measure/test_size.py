from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.measure.size import memory_bytes, size_stats


def test_counts_and_bytes() -> None:
    net = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5).to(torch.float16))
    with torch.no_grad():
        net[0].weight[:5] = 0
    s = size_stats(net)
    assert s.params == 220 + 105
    assert s.params_nonzero == 325 - 50 - int((net[0].bias == 0).sum())
    assert s.params_by_module == {"": 325, "0": 220, "1": 105}
    assert s.bytes_by_dtype == {"float32": 880, "float16": 210}
    assert s.bytes_in_memory == 1090
    assert s.bytes_on_disk is not None and 1090 < s.bytes_on_disk < 1090 + 3000


def test_tied_parameters_count_once() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    s = size_stats(nn.Sequential(emb, head), on_disk=False)
    assert s.params == 40 and s.bytes_in_memory == 160


def test_memory_counts_the_float_weight_a_clustered_layer_keeps() -> None:
    from netchisel.quantize.formats import ClusteredLinear

    layer = ClusteredLinear.from_linear(nn.Linear(64, 32), bits=4)
    # codebook 16 + bias 32 floats, the gathered 32 x 64 float weight, 32 x 64 uint8 indices
    assert memory_bytes(nn.Sequential(layer)) == {"float32": (16 + 32 + 2048) * 4, "uint8": 2048}


class _Local(nn.Module):  # defined here, and so not a class an artifact can name
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # type: ignore[no-any-return]


def test_a_model_no_artifact_can_hold_is_weighed_in_memory_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Local, "__module__", "__main__")
    with pytest.warns(UserWarning, match=r"bytes_on_disk not measured: .*__main__"):
        s = size_stats(_Local())
    assert s.bytes_on_disk is None and s.bytes_in_memory == 32 and s.params == 8
