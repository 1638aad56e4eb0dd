"""Tensor values kept in a temporary file instead of in memory, and read back in place.

The rollback guard (`core.state`) must be able to put every weight of a model back after a
stage failed midway. Kept in memory, that copy doubles the model's footprint for the whole
stage: for a language model calibrated layer by layer it is most of the peak. A `SpillFile`
holds the copy on disk instead: tensors are written one at a time (memory grows by at most
one tensor's contiguous copy) and read back one at a time straight into the tensor's own
memory, so neither direction holds the model twice.

The file is private scratch space, read only by the process that wrote it: raw bytes, one
tensor after another, with the index (offset, shape, dtype) kept in memory. Written by hand
because safetensors' `save_file` serialises every tensor into one bytes object before writing
(the copy this file exists to avoid), and no header is needed for a file nobody else reads.
The file lives in the system's temporary directory (`TMPDIR`); it is removed by `close`, which
`with` calls, also on an error or an interrupt.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError

SPILL_ABOVE_BYTES = 256 * 2**20
"""`spill=None` keeps copies on disk when the model's tensors take more than this."""


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameters and buffers (what a copy of them takes).

    Example:
        >>> tensor_bytes(nn.Linear(2, 3))  # 6 weights + 3 biases, float32
        36
    """
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


def spills(model: nn.Module, spill: bool | None) -> bool:
    """`spill`, or for None whether `model` is large enough to keep its copies on disk.

    Example:
        >>> spills(nn.Linear(2, 2), None), spills(nn.Linear(2, 2), True)
        (False, True)
    """
    return tensor_bytes(model) > SPILL_ABOVE_BYTES if spill is None else spill


def spillable(tensor: Tensor) -> bool:
    """Whether `tensor` is a plain dense tensor with values `SpillFile` can write.

    Quantized, sparse, meta and subclass tensors are not (the guard copies those in memory).

    Example:
        >>> spillable(torch.ones(2)), spillable(torch.ones(2).to_sparse())
        (True, False)
    """
    return (
        type(tensor) in (Tensor, torch.nn.Parameter)
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and tensor.device.type != "meta"
        and not tensor.is_complex()
    )


def _bytes_of(tensor: Tensor) -> Tensor:
    """The tensor's values as a flat uint8 CPU tensor (a view when it already is one)."""
    flat = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.cpu().view(torch.uint8)


class SpillFile:
    """A temporary file of tensor values, each read back by the key it was written under.

    Example:
        >>> with SpillFile() as spill:
        ...     w = torch.arange(6.0).reshape(2, 3)
        ...     spill.put("w", w)
        ...     _ = w.zero_()
        ...     spill.read_into("w", w)
        ...     w.tolist(), spill.bytes
        ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 24)
    """

    def __init__(self, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="netchisel-spill-", suffix=".bin", dir=directory)
        self._file = os.fdopen(fd, "w+b")
        self._index: dict[object, tuple[int, torch.Size, torch.dtype]] = {}
        self.bytes = 0

    def __enter__(self) -> SpillFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def put(self, key: object, tensor: Tensor) -> None:
        """Write `tensor`'s current values under `key` (a spillable tensor, see `spillable`)."""
        data = _bytes_of(tensor)
        try:
            self._file.seek(self.bytes)
            self._file.write(data.numpy().data)
        except OSError as e:
            raise ConfigError(
                f"cannot keep the model's rollback copy in {os.path.dirname(self.path)} "
                f"({e.strerror}): free {self.bytes + data.numel()} bytes there or point "
                "TMPDIR at a disk with room"
            ) from None
        self._index[key] = (self.bytes, tensor.shape, tensor.dtype)
        self.bytes += data.numel()

    def shape_of(self, key: object) -> tuple[torch.Size, torch.dtype]:
        """The shape and dtype of what was written under `key`."""
        _, shape, dtype = self._index[key]
        return shape, dtype

    def read(self, key: object, device: torch.device | str = "cpu") -> Tensor:
        """A new tensor holding the values written under `key`, on `device`."""
        _, shape, dtype = self._index[key]
        out = torch.empty(shape, dtype=dtype)
        self._read(key, out)
        return out.to(device)

    def read_into(self, key: object, tensor: Tensor) -> None:
        """Put the values written under `key` back into `tensor` (same shape and dtype)."""
        _, shape, dtype = self._index[key]
        if (tensor.shape, tensor.dtype) != (shape, dtype):
            raise ValueError(f"spilled {key!r} is {dtype} {tuple(shape)}, not {tensor.dtype}")
        target = tensor.detach()
        if target.device.type == "cpu" and target.is_contiguous():
            self._read(key, target)  # straight into the tensor's memory: no second copy
        else:
            with torch.no_grad():
                target.copy_(self.read(key, target.device))

    def _read(self, key: object, out: Tensor) -> None:
        offset = self._index[key][0]
        view = out.reshape(-1).view(torch.uint8).numpy().data
        self._file.seek(offset)
        done = 0
        while done < len(view):
            got = self._file.readinto(view[done:])
            if not got:
                raise OSError(f"spill file {self.path} ended early")
            done += got

    def close(self) -> None:
        """Remove the file (again: nothing happens)."""
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class SpilledDict(MutableMapping[str, tuple[Any, ...]]):
    """A dict of tuples whose tensors wait in a `SpillFile`; reading an entry reads them back.

    What a layer-by-layer stage keeps for every layer until its end (GPTQ's integers, scales
    and zeros) would otherwise grow to a fraction of the model by the last layer.

    Example:
        >>> with SpillFile() as file:
        ...     held = SpilledDict(file)
        ...     held["fc"] = (torch.ones(2, dtype=torch.uint8), 0.5)
        ...     held["fc"][0].tolist(), held["fc"][1], list(held)
        ([1, 1], 0.5, ['fc'])
    """

    def __init__(self, file: SpillFile) -> None:
        self._file = file
        self._entries: dict[str, tuple[Any, ...]] = {}  # a tensor's place: its spill key
        self._writes = 0  # keys stay unique when an entry is written again

    def __setitem__(self, name: str, value: tuple[Any, ...]) -> None:
        entry = []
        for i, item in enumerate(value):
            if isinstance(item, Tensor) and spillable(item):
                key = (name, i, self._writes)
                self._writes += 1
                self._file.put(key, item)
                entry.append(_Spilled(key, item.device))
            else:
                entry.append(item)
        self._entries[name] = tuple(entry)

    def __getitem__(self, name: str) -> tuple[Any, ...]:
        return tuple(
            self._file.read(item.key, item.device) if isinstance(item, _Spilled) else item
            for item in self._entries[name]
        )

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class _Spilled:
    """Where a tensor of a `SpilledDict` entry went."""

    def __init__(self, key: object, device: torch.device) -> None:
        self.key, self.device = key, device


@contextlib.contextmanager
def held_tensors(model: nn.Module, spill: bool | None = None) -> Iterator[dict[str, Any]]:
    """A dict for what a stage keeps per layer until its end: in memory, or for a large
    `model` (see `spills`) a `SpilledDict` whose file is removed when the block ends.

    Example:
        >>> with held_tensors(nn.Linear(2, 2)) as held:
        ...     held["fc"] = (torch.zeros(1),)
        ...     type(held).__name__
        'dict'
    """
    if not spills(model, spill):
        yield {}
        return
    with SpillFile() as file:
        yield SpilledDict(file)  # type: ignore[misc]
