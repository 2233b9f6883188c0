"""The decode engine: KV memory manager, lean GPT-2 forward, CUDA-graph decode steps and the fast generate loop."""

from .kv_cache import EetCache, KVArena

__all__ = ["EetCache", "KVArena"]
