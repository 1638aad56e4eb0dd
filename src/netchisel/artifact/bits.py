"""Integers of 1-8 bits packed densely into bytes: the storage of packed weights and codecs.

The packer lives in `netchisel.core.bits` (masks on the model pack with it too); artifacts
import it from there so one piece of code defines the stored bit layout.
"""

from __future__ import annotations

from netchisel.core.bits import pack_bits, unpack_bits

__all__ = ["pack_bits", "unpack_bits"]
