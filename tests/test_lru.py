"""The byte-bounded LRU that holds the app's decoded images."""

import threading
import time

import numpy as np
import pytest

from cam_core.lru import ByteLRU


def _cache(max_bytes):
    return ByteLRU(max_bytes, sizeof=lambda a: a.nbytes)


def test_total_bytes_never_exceed_the_bound_and_the_least_recent_goes_first():
    cache = _cache(100)
    for key in "abcd":  # 30 bytes each: d pushes out a
        cache.put(key, np.zeros(30, np.uint8))
    assert [k for k in "abcd" if k in cache] == ["b", "c", "d"] and cache.total_bytes == 90
    cache.get("b")  # now the most recent: c is the least recent
    cache.put("e", np.zeros(30, np.uint8))
    assert [k for k in "bcde" if k in cache] == ["b", "d", "e"] and cache.total_bytes == 90
    cache.put("big", np.zeros(90, np.uint8))  # evicts as many as it takes
    assert len(cache) == 1 and "big" in cache and cache.total_bytes == 90


def test_a_value_larger_than_the_bound_is_returned_not_kept():
    cache = _cache(100)
    cache.put("small", np.zeros(10, np.uint8))
    big = cache.get_or_compute("big", lambda: np.zeros(1000, np.uint8))
    assert big.nbytes == 1000 and "big" not in cache and "small" in cache and cache.total_bytes == 10


def test_replacing_a_key_counts_its_bytes_once():
    cache = _cache(100)
    cache.put("a", np.zeros(60, np.uint8))
    cache.put("a", np.zeros(70, np.uint8))
    assert cache.total_bytes == 70 and len(cache) == 1


def test_get_or_compute_returns_the_same_object_and_computes_once_under_threads():
    cache = _cache(1 << 20)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return np.zeros(100, np.uint8)

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_compute("k", compute))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 6 and all(g is got[0] for g in got)


def test_a_failed_compute_is_not_cached():
    cache = _cache(100)
    with pytest.raises(ValueError):
        cache.get_or_compute("k", lambda: (_ for _ in ()).throw(ValueError("broken")))
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: np.zeros(5, np.uint8)).nbytes == 5
