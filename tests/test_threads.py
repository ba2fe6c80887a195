"""The thread policy: small problems on one thread, restored after the call, thread-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda._threads import (
    AUTO_THRESHOLD,
    choose_threads,
    decoded_size,
    size_of,
    thread_scope,
    with_thread_scope,
)
from xlatda.errors import ConfigError


@pytest.fixture
def two_threads():
    # conftest pins one thread; start from two so that a change is visible.
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def test_choose_threads_follows_the_policy():
    assert choose_threads(None, "auto") == 1
    assert choose_threads(AUTO_THRESHOLD - 1, "auto") == 1
    assert choose_threads(AUTO_THRESHOLD, "auto") is None
    assert choose_threads(10, 3) == 3
    assert choose_threads(10, None) is None
    with xlatda.set_options(threads=4):
        assert choose_threads(10) == 4
    with pytest.raises(ConfigError, match="threads"):
        choose_threads(10, "many")


def test_option_is_validated():
    for bad in (0, -1, "fast", 1.5, True):
        with pytest.raises(ConfigError, match="'threads'"):
            xlatda.set_options(threads=bad)
    assert xlatda.get_options()["threads"] == "auto"


def test_scope_sets_and_restores_even_on_error(two_threads):
    with thread_scope(100) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), thread_scope(100):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with thread_scope(10 * AUTO_THRESHOLD) as n:  # large: torch's setting stays
        assert n is None and torch.get_num_threads() == 2
    with xlatda.set_options(threads=None), thread_scope(100):
        assert torch.get_num_threads() == 2


def test_nested_scopes_restore_the_enclosing_count(two_threads):
    with thread_scope(100):
        with thread_scope(100, threads=3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_concurrent_scopes_leave_every_thread_as_before(two_threads):
    barrier = threading.Barrier(4)
    seen, errors = [], []

    def work(k):
        try:
            barrier.wait()
            for _ in range(50):
                with thread_scope(100, threads=1 + k % 2):
                    seen.append(torch.get_num_threads() == 1 + k % 2)
            barrier.wait()
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(seen) and len(seen) == 200
    assert torch.get_num_threads() == 2
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [2]  # what a new thread inherits is back too


def test_decorator_sizes_from_arguments(two_threads):
    @with_thread_scope(size=lambda n: n)
    def work(n):
        return torch.get_num_threads()

    assert work(10) == 1
    assert work(10 * AUTO_THRESHOLD) == 2
    assert torch.get_num_threads() == 2
    ds = xr.Dataset({"a": ("x", np.zeros(3)), "b": (("x", "y"), np.zeros((3, 2)))})
    assert size_of(ds) == 9 and size_of(torch.zeros(2, 5)) == 10 and size_of("x") is None


@pytest.fixture(scope="module")
def small():
    ds = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
    return ds, xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)


def _spy_threads(model, monkeypatch) -> list[int]:
    """The thread count each call of the encoder's encode methods ran on (the fused
    path calls PCA's encode_centered, the aux path encode)."""
    seen: list[int] = []

    def spying(f):
        def spy(x):
            seen.append(torch.get_num_threads())
            return f(x)

        return spy

    for name in ("encode", "encode_centered"):
        monkeypatch.setattr(model.encoder, name, spying(getattr(model.encoder, name)))
    return seen


def test_public_calls_run_small_problems_on_one_thread(small, two_threads, monkeypatch):
    ds, model = small
    seen = _spy_threads(model, monkeypatch)
    ds.lda.encode(model)
    xlatda.encode(ds, model)
    assert seen == [1, 1]
    assert torch.get_num_threads() == 2
    assert decoded_size(ds.lda.encode(model), model) == 41 * 8


def test_cycle_and_assimilate_run_small_problems_on_one_thread(two_threads, monkeypatch):
    # xlatda.cycle lost its @with_thread_scope line once (a helper was inserted between
    # the decorator and the function); the forecast model sees what the call runs on
    from xlatda.dynamics.physical import Lorenz96

    truth = xlatda.datasets.lorenz96(n=8, steps=3, seed=0)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=4, error_std=1.0,
                                   seed=1)
    model = Lorenz96(n=8)
    seen = []
    step = model.step

    def spy(x, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return step(x, *args, **kwargs)

    monkeypatch.setattr(model, "step", spy)
    xlatda.cycle(truth.isel(time=0), obs, model, members=5, init_std=1.0, progress=False)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    assert hasattr(xlatda.cycle, "__wrapped__") and hasattr(xlatda.assimilate, "__wrapped__")


def test_dask_tasks_keep_the_workers_setting_unless_asked(small, two_threads, monkeypatch):
    import dask

    ds, model = small
    seen = _spy_threads(model, monkeypatch)
    z = ds.chunk(time=20).lda.encode(model)  # built inside the scope, computed outside
    with dask.config.set(scheduler="synchronous"):
        z.compute()
        assert seen == [2, 2, 2] and torch.get_num_threads() == 2
        seen.clear()
        with xlatda.set_options(torch_threads=1):
            z = ds.chunk(time=20).lda.encode(model)
        z.compute()
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2
