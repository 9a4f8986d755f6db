"""The response cache as a unit (service/cache.py): keys, the bound, what it keeps, and its
sharing with a forked process. test_service_cache.py serves it."""

import multiprocessing as mp

import numpy as np
import pytest

from service.cache import ResponseCache, key
from service.settings import MIN_CACHE_BYTES as MIN_BYTES
from service.settings import parse_sizes


def outputs(i: int) -> tuple[np.ndarray, ...]:
    return (np.full((1, 2), i, np.float32),)


def test_sizes_are_per_model_with_units():
    assert parse_sizes("mlp:64MB, resnet:16MiB,t:65536") == {
        "mlp": 64 * 10**6,
        "resnet": 16 * 2**20,
        "t": 65536,
    }
    assert parse_sizes(None) == {}
    for bad in ("64MB", "mlp:", "mlp:64XB", "mlp:-1MB", "mlp:1KB"):
        with pytest.raises(ValueError, match="TENSORGATE_RESPONSE_CACHE entry"):
            parse_sizes(bad)


def test_the_key_is_the_version_and_the_inputs_datatype_shape_and_bytes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert key(1, (x,)) == key(1, (x.copy(),))
    assert key(1, (x,)) != key(2, (x,))  # a new version starts cold
    assert key(1, (x,)) != key(1, (x.reshape(3, 2),))
    assert key(1, (x,)) != key(1, (x.astype(np.float64),))
    assert key(1, (x[:, ::2],)) == key(1, (np.ascontiguousarray(x[:, ::2]),))


def test_a_stored_answer_is_read_back_identical_and_a_missing_one_is_none():
    cache = ResponseCache(MIN_BYTES)
    x = (np.ones((1, 30), np.float32),)
    assert cache.get(key(1, x)) is None
    cache.put(key(1, x), outputs(7))
    (got,) = cache.get(key(1, x))
    np.testing.assert_array_equal(got, outputs(7)[0])
    assert got.dtype == np.float32 and cache.get(key(2, x)) is None


def test_100k_distinct_inputs_stay_within_the_bound_and_the_newest_are_kept():
    bound = 1 << 20
    cache = ResponseCache(bound)
    keys = [key(1, (np.full((1, 4), i, np.float32),)) for i in range(100_000)]
    for i, k in enumerate(keys):
        cache.put(k, outputs(i))
        assert cache.used <= bound
    found = [cache.get(k) is not None for k in keys]
    assert not any(found[:50_000])  # the oldest were overwritten
    assert all(found[-1000:])  # the newest are there
    assert cache.get(keys[-1])[0][0, 0] == 99_999


def test_an_entry_read_often_survives_a_stream_of_new_ones():
    cache = ResponseCache(MIN_BYTES)
    hot = key(1, (np.zeros((1, 4), np.float32),))
    cache.put(hot, outputs(-1))
    for i in range(20_000):
        cache.put(key(1, (np.full((1, 4), i, np.float32),)), outputs(i))
        if i % 100 == 0:
            assert cache.get(hot) is not None, i


def test_a_forked_process_reads_what_the_parent_stores_and_the_reverse():
    cache = ResponseCache(MIN_BYTES)
    x, y = (np.ones((1, 3), np.float32),), (np.zeros((1, 3), np.float32),)
    cache.put(key(1, x), outputs(1))

    def child() -> None:
        ok = cache.get(key(1, x)) is not None
        cache.put(key(1, y), outputs(2))
        raise SystemExit(0 if ok else 3)

    process = mp.get_context("fork").Process(target=child)
    process.start()
    process.join(10)
    assert process.exitcode == 0
    assert cache.get(key(1, y))[0][0, 0] == 2
