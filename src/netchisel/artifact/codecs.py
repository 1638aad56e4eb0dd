"""Tensor codecs: how one state-dict tensor is stored in model.safetensors.

`raw` stores the tensor as it is (packed integer buffers of quantized modules are already
their real encoding); `bitmask` stores a sparse tensor as a bit per entry plus its nonzero
values. Other families add codecs (Huffman streams) with `register_codec`; the manifest names
the codec of every tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from netchisel.core.errors import ArtifactError

Encoded = tuple[dict[str, Tensor], dict[str, Any]]
# Every torch dtype by its name ("float32"): files name dtypes, and are looked up only here,
# never with getattr(torch, name) (which imports submodules such as torch._inductor).
DTYPES: dict[str, torch.dtype] = {
    str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)
}


@dataclass(frozen=True)
class Codec:
    """`encode(tensor) -> ({suffix: stored tensor}, meta)`; `decode(stored, meta) -> tensor`."""

    name: str
    encode: Callable[[Tensor], Encoded]
    decode: Callable[[dict[str, Tensor], dict[str, Any]], Tensor]


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Make a codec available to `save` and `load` by its name."""
    _CODECS[codec.name] = codec
    return codec


def get_codec(name: str) -> Codec:
    if name not in _CODECS:
        raise ArtifactError(f"unknown tensor codec {name!r} (known: {', '.join(sorted(_CODECS))})")
    return _CODECS[name]


def decode_checked(
    name: str, codec: str, parts: dict[str, Tensor], meta: dict[str, Any], budget: int = 1 << 30
) -> Tensor:
    """Decode one stored tensor; a decoder's failure on corrupt data is one ArtifactError.

    A codec's `meta["shape"]` may describe at most `budget` bytes of int64 (what decoders
    work in): a few bytes of entropy-coded zeros must not make `load` allocate a terabyte.

    Example:
        >>> parts = {"mask": torch.zeros(1, dtype=torch.uint8), "values": torch.zeros(0)}
        >>> decode_checked("w", "bitmask", parts, {"shape": [1000]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ArtifactError: tensor 'w' (codec bitmask) is corrupt: its mask ...
    """
    shape = meta.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ArtifactError(f"tensor {name!r} (codec {codec}) has no valid shape in its meta")
    if math.prod(shape) * 8 > budget:
        raise ArtifactError(
            f"tensor {name!r} (codec {codec}) would decode to {math.prod(shape):,} entries, "
            f"beyond what its file allows ({budget // 8:,}): refused"
        )
    try:
        return get_codec(codec).decode(parts, meta)
    except ArtifactError as e:
        raise ArtifactError(f"tensor {name!r} (codec {codec}) is corrupt: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError) as e:
        raise ArtifactError(
            f"tensor {name!r} (codec {codec}) is corrupt: {type(e).__name__} {e}"
        ) from None
    except MemoryError:
        raise ArtifactError(
            f"tensor {name!r} (codec {codec}) asks for more memory than there is: refused"
        ) from None


register_codec(
    Codec(
        "raw",
        encode=lambda t: ({"": t.contiguous()}, {}),
        decode=lambda stored, meta: stored[""],
    )
)


def _bitmask_encode(t: Tensor) -> Encoded:
    flat = t.reshape(-1)
    keep = flat != 0
    bits = np.packbits(keep.numpy().astype(np.uint8), bitorder="little")
    return (
        {"mask": torch.from_numpy(bits), "values": flat[keep].contiguous()},
        {"shape": list(t.shape)},
    )


def _bitmask_decode(stored: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
    shape = [int(s) for s in meta["shape"]]
    numel = math.prod(shape)
    mask = stored["mask"]
    if mask.dtype != torch.uint8 or mask.numel() != (numel + 7) // 8:
        raise ArtifactError(f"its mask has {mask.numel()} bytes for {numel} entries")
    bits = np.unpackbits(mask.numpy(), bitorder="little", count=numel)
    keep = torch.from_numpy(bits.astype(bool))
    values = stored["values"]
    if int(keep.sum()) != values.numel():
        raise ArtifactError("its mask and values disagree")
    out = torch.zeros(numel, dtype=values.dtype)
    out[keep] = values
    return out.reshape(shape)


# Sparse weights: one bit per entry saying "nonzero", then the nonzero values in order.
# At sparsity s a float32 weight takes (1 - s) * 4 + 1/8 bytes per entry instead of 4.
BITMASK = register_codec(Codec("bitmask", encode=_bitmask_encode, decode=_bitmask_decode))


def smallest_codec(t: Tensor) -> str:
    """`bitmask` when it stores `t` in fewer bytes than `raw`, else `raw`."""
    if t.dim() == 0 or t.dtype == torch.bool:
        return "raw"
    nonzero = int(torch.count_nonzero(t))
    sparse_bytes = nonzero * t.element_size() + (t.numel() + 7) // 8
    return "bitmask" if sparse_bytes < t.numel() * t.element_size() else "raw"
