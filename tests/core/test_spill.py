"""SpillFile: tensor values on disk, read back bit-exactly in place; the file never outlives it."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.core import spill as spill_module
from netchisel.core.errors import ConfigError
from netchisel.core.spill import SpilledDict, SpillFile, held_tensors, spillable, tensor_bytes


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.glob("netchisel-spill-*")]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 5),
        torch.randn(4, 6).to(torch.bfloat16),
        torch.randn(2, 3).half(),
        torch.tensor([True, False, True]),
        torch.randint(-128, 127, (7,), dtype=torch.int8),
        torch.randint(0, 2**40, (3,), dtype=torch.int64),
        torch.tensor(2.5),  # 0-d
        torch.zeros(0, 4),  # empty
        torch.randn(4, 6).T,  # not contiguous
        torch.tensor([float("nan"), float("inf"), -0.0]),
    ],
)
def test_values_come_back_bit_exact_in_place(tensor: torch.Tensor, tmp_path: Path) -> None:
    before = tensor.clone()
    with SpillFile() as file:
        file.put("t", tensor)
        tensor.zero_()
        file.read_into("t", tensor)
        fresh = file.read("t")
        assert file.bytes == before.numel() * before.element_size()
    for got in (tensor, fresh):  # bit for bit: NaN, inf and -0.0 included
        assert got.dtype == before.dtype and got.shape == before.shape
        assert torch.equal(_bits(got), _bits(before))
    assert not bool(_bits(before).eq(0).all()) or before.numel() == 0  # zeroing was visible
    assert _leftovers(tmp_path) == []


def test_read_into_refuses_another_shape_and_the_file_goes_on_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"), SpillFile() as file:
        file.put("w", torch.ones(2, 2))
        assert len(_leftovers(tmp_path)) == 1
        file.read_into("w", torch.ones(4))
    assert _leftovers(tmp_path) == []


def test_a_full_disk_is_one_config_error_naming_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    with SpillFile() as file:

        def full(data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(file._file, "write", full)
        with pytest.raises(ConfigError, match=r"No space left on device.*free 400 bytes.*TMPDIR"):
            file.put("w", torch.ones(10, 10))


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated, still possible
def test_only_plain_dense_tensors_are_spillable() -> None:
    assert spillable(torch.ones(2)) and spillable(nn.Parameter(torch.ones(2)))
    assert not spillable(torch.ones(2, device="meta"))
    assert not spillable(torch.ones(2).to_sparse())
    assert not spillable(torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8))
    assert not spillable(torch.ones(2, dtype=torch.complex64))


def test_spilled_dict_keeps_tensors_on_disk_and_other_values_in_memory(tmp_path: Path) -> None:
    q, scale = torch.randint(0, 15, (64, 64), dtype=torch.uint8), torch.rand(64, 1)
    with SpillFile() as file:
        held = SpilledDict(file)
        held["a"] = (q, scale, 0.01)
        held["a"] = (q + 1, scale, 0.02)  # written again: the new values win
        assert file.bytes == 2 * (64 * 64 + 64 * 4)  # both writes went to disk
        got_q, got_scale, damping = held["a"]
        assert torch.equal(got_q, q + 1) and torch.equal(got_scale, scale) and damping == 0.02
        assert len(held) == 1 and list(held) == ["a"]
        del held["a"]
        assert len(held) == 0
    assert _leftovers(tmp_path) == []


def test_held_tensors_spills_above_the_threshold_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = nn.Linear(8, 8)  # 288 bytes
    assert tensor_bytes(net) == 288
    with held_tensors(net) as held:
        assert type(held) is dict
    monkeypatch.setattr(spill_module, "SPILL_ABOVE_BYTES", 287)
    with held_tensors(net) as held:
        assert isinstance(held, SpilledDict) and len(_leftovers(tmp_path)) == 1
    assert _leftovers(tmp_path) == []
    with held_tensors(net, spill=False) as held:
        assert type(held) is dict
