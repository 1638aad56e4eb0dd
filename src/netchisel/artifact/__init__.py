"""The artifact format (floor 2): a directory with `model.safetensors` and `manifest.json`.

`save` writes it, `load` rebuilds the model from it with no pickle and through allow-lists
only (docs/security.md), codecs store tensors in their real encodings, exports write
`model.pt2` / `model.onnx` beside it. It imports only `netchisel.core`: the families register
their codecs and exports here, never the other way round.
"""

from __future__ import annotations

from netchisel.artifact import int_codecs  # noqa: F401  (registers huffman and packed)
from netchisel.artifact.codecs import Codec, register_codec
from netchisel.artifact.exports import register_export
from netchisel.artifact.store import (
    artifact_bytes,
    load,
    read_manifest,
    save,
    set_codec,
)

__all__ = [
    "Codec",
    "artifact_bytes",
    "load",
    "read_manifest",
    "register_codec",
    "register_export",
    "save",
    "set_codec",
]
