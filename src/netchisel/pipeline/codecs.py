"""Tensor codecs: how one state-dict tensor is stored in model.safetensors.

`raw` stores the tensor as it is (packed integer buffers of quantized modules are already
their real encoding). Other families add codecs (sparse bitmask, Huffman streams) with
`register_codec`; the manifest names the codec of every tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from netchisel.core.errors import ArtifactError

Encoded = tuple[dict[str, Tensor], dict[str, Any]]


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


register_codec(
    Codec(
        "raw",
        encode=lambda t: ({"": t.contiguous()}, {}),
        decode=lambda stored, meta: stored[""],
    )
)
