"""The conversation's KV cache kept between replies, so a new turn prefills only what is new.

Worker thread only. ``KVSession`` holds one transformers ``Cache`` (a
``DynamicCache``, or a ``StaticCache`` for the compiled decode) and the token
ids whose keys and values it holds. A request's prompt is compared with those
ids: the cache is cropped to the longest common prefix (an edit, a
regenerate or a branch switch keeps what still matches) and ``generate``
prefills only the tokens after it. At least one prompt token is always fed
fresh: ``generate`` needs the logits of the prompt's last position.

The cache is dropped when it could be wrong (a generation that raised), when
it outgrows its caps (tokens, bytes), and when the device runs short of free
memory after a reply.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:
    from transformers import Cache

log = logging.getLogger("glmtui.engine")

# Below this much free memory on the model's device (after a reply) the cache is not kept.
MIN_FREE_BYTES = 512 * 2**20


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return default


def env_int(name: str) -> Optional[int]:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cache_bytes(cache) -> int:
    """Bytes of key/value tensors the cache holds (a static cache: all it has allocated)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "element_size"):
                total += t.numel() * t.element_size()
    return total


def cache_length(cache) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0


def free_device_bytes(device) -> Optional[int]:
    """Free memory where the cache lives: CUDA's free bytes, or the system's available RAM."""
    try:
        import torch

        if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(device)[0])
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - torch/psutil failing here means unknown
        return None


class KVSession:
    """One cache and the ids it holds; ``prepare`` before ``generate``, ``commit`` or ``evict`` after."""

    def __init__(self, max_tokens: Optional[int] = None, max_bytes: Optional[int] = None,
                 min_free_bytes: int = MIN_FREE_BYTES):
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.cache: Optional[Cache] = None
        self.ids: list[int] = []
        self.last_eviction = ""  # why the cache was last dropped (for logs and tests)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def evict(self, reason: str) -> None:
        if self.cache is not None:
            log.info("KV cache dropped (%d tokens): %s", len(self.ids), reason)
            self.last_eviction = reason
        self.cache = None
        self.ids = []

    def prepare(self, prompt_ids: Sequence[int], make_cache: Callable[[], Cache],
                fits: Callable[[Cache], bool] = lambda cache: True) -> tuple[Cache, int]:
        """The cache to pass to ``generate`` for ``prompt_ids`` and how many of them it already holds.

        ``fits(cache)`` says whether the kept cache can serve this request (a static
        cache too short for the prompt and the reply cannot): if not, a new one is made.
        """
        if self.cache is not None and not fits(self.cache):
            self.evict("the request needs a larger cache")
        if self.cache is None:
            self.cache = make_cache()
            self.ids = []
        reuse = min(common_prefix(self.ids, prompt_ids), len(prompt_ids) - 1)
        held = cache_length(self.cache)
        if held != len(self.ids):  # never expected: the ids no longer describe the cache
            self.evict(f"cache holds {held} tokens, ids {len(self.ids)}")
            self.cache = make_cache()
            reuse, held = 0, cache_length(self.cache)
        if held > reuse:
            try:
                if not getattr(self.cache, "is_croppable", True):
                    raise RuntimeError(f"{type(self.cache).__name__} cannot be cropped")
                self.cache.crop(-(held - reuse))
            except Exception as exc:  # noqa: BLE001 - a sliding-window or linear-attention layer past its window
                self.evict(f"cannot crop: {exc}")
                self.cache, reuse = make_cache(), 0
        self.ids = list(prompt_ids[:reuse])
        return self.cache, reuse

    def commit(self, sequence_ids: Sequence[int], device=None) -> None:
        """After a ``generate`` that returned normally: the cache holds the first
        ``get_seq_length()`` ids of the output sequence (the last token is never fed)."""
        held = cache_length(self.cache)
        if held > len(sequence_ids):
            self.evict(f"cache holds {held} tokens but the sequence has {len(sequence_ids)}")
            return
        self.ids = [int(t) for t in sequence_ids[:held]]
        if self.max_tokens is not None and held > self.max_tokens:
            self.evict(f"{held} tokens is over the cap of {self.max_tokens}")
            return
        size = cache_bytes(self.cache)
        if self.max_bytes is not None and size > self.max_bytes:
            self.evict(f"{size} bytes is over the cap of {self.max_bytes}")
            return
        free = free_device_bytes(device) if device is not None else None
        if free is not None and free < self.min_free_bytes:
            self.evict(f"only {free // 2**20} MiB free on {device}")
