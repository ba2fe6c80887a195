"""Shared fixtures: compute counters, device choice, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    # XLATDA_GPU_TEST_DEVICE=cpu runs the gpu-marked tests' code paths on the CPU.
    on_cpu = os.environ.get("XLATDA_GPU_TEST_DEVICE") == "cpu"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available() and not on_cpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tests run small tensors: one thread avoids OpenMP spin-waiting, which
    # made 2-thread runs up to 10x slower on a shared 2-core machine.
    torch.set_num_threads(int(os.environ.get("XLATDA_TEST_THREADS", "1")))
    yield


class CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute."""

    def __init__(self, max_computes: int = 0):
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def raise_if_dask_computes():
    """Context factory: ``with raise_if_dask_computes(): ...`` fails on any compute."""

    def factory(max_computes: int = 0):
        return dask.config.set(scheduler=CountingScheduler(max_computes))

    return factory


def shared_file(name: str) -> Path:
    """Path of a file in ../shared/data, skipping the test if it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


# The deprecated alias package warns on import; tests/test_deprecated_alias.py checks it.
collect_ignore = [str(Path(__file__).resolve().parents[1] / "xlatda" / "assimilate")]
