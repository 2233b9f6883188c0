"""The padding-free encoder path: packing (pack/unpack from per-sequence bounds), the packed post-LN layers of every
family with an encoder record, and per-shape CUDA graphs. patches/encoder.py routes the encoder's forward here."""

from .graphs import GraphCache, bucket_for
from .packed import EncoderRuntime, LayerParts, pack_qkv, packed_qkv
from .packing import Packing, host_summary, pack, plan, unpack

__all__ = ["EncoderRuntime", "GraphCache", "LayerParts", "Packing", "bucket_for", "host_summary", "pack", "pack_qkv",
           "packed_qkv", "plan", "unpack"]
