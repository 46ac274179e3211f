"""A least-recently-used cache bounded by the total size of its values, not their count.

Decoded images differ in size by a factor of a thousand (a 64 x 64 icon, a 40-megapixel
photo): a bound on the number of entries bounds nothing. Values are kept as they are (no
copy, no pickling), so every caller shares the same object: treat cached values as
read-only. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Keeps values while the sum of ``sizeof(value)`` is at most ``max_bytes``, evicting the
    least recently used first. A value larger than ``max_bytes`` is returned but not kept."""

    def __init__(self, max_bytes: int, sizeof: Callable[[V], int]):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # One lock per key being computed: two callers of the same missing key compute it once.
        self._computing: dict[Hashable, threading.Lock] = {}

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V) -> V:
        size = int(self._sizeof(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size <= self.max_bytes:
                self._items[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, evicted) = self._items.popitem(last=False)
                    self._bytes -= evicted
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value, else ``compute()`` (run once per key even when called from
        several threads at once; an exception is raised to every waiting caller in turn)."""
        found = self.get(key, _MISSING)
        if found is not _MISSING:
            return found
        with self._lock:
            key_lock = self._computing.setdefault(key, threading.Lock())
        try:
            with key_lock:
                found = self.get(key, _MISSING)
                if found is not _MISSING:
                    return found
                return self.put(key, compute())
        finally:
            with self._lock:
                if self._computing.get(key) is key_lock and not key_lock.locked():
                    del self._computing[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_MISSING = object()
