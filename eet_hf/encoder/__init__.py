"""The padding-free encoder path: packing (pack/unpack from per-sequence bounds), the packed BERT layers,
and per-shape CUDA graphs for small batches. patches/bert.py routes BertEncoder.forward here."""

from .bert_forward import BertEncoderRuntime, pack_qkv, packed_qkv
from .graphs import GraphCache, bucket_for
from .packing import Packing, host_summary, pack, plan, unpack

__all__ = ["BertEncoderRuntime", "GraphCache", "Packing", "bucket_for", "host_summary", "pack", "pack_qkv",
           "packed_qkv", "plan", "unpack"]
