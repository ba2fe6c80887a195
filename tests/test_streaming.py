"""Out-of-core encoding to zarr by regions, with resume after a crash."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, LayoutError
from xlatda.streaming import encode_to_zarr, stream_status


@pytest.fixture(scope="module")
def data():
    return xlatda.datasets.lorenz96(n=16, steps=99, seed=0)  # 100 samples


@pytest.fixture(scope="module")
def model(data):
    return xlatda.fit(data, encoder="pca", latent_dim=6, progress=False)


@pytest.fixture
def source(tmp_path, data):
    path = tmp_path / "source.zarr"
    data.chunk(time=16).to_zarr(path, zarr_format=3, consolidated=False)
    return path


class _Counter:
    """Wraps the encoder's encode methods (``encode``; PCA's ``encode_centered``, which
    the fused path of xlatda.encode calls) and counts the samples they encode."""

    NAMES = ("encode", "encode_centered")

    def __init__(self, model):
        self.encoder = model.encoder
        self.samples = 0

    def __enter__(self):
        def counting(inner):
            def counted(x, *args, **kwargs):
                self.samples += x.shape[0]
                return inner(x, *args, **kwargs)
            return counted

        for name in self.NAMES:
            if hasattr(self.encoder, name):
                setattr(self.encoder, name, counting(getattr(self.encoder, name)))
        return self

    def __exit__(self, *exc):
        for name in self.NAMES:
            self.encoder.__dict__.pop(name, None)


def test_eager_result_equals_encode(data, model, source, tmp_path):
    store = tmp_path / "z.zarr"
    out = encode_to_zarr(source, model, store, chunk=16, progress=False, client=False)
    eager = data.lda.encode(model)
    assert out.z.chunks is not None and out.z.chunks[0] == (16,) * 6 + (4,)
    np.testing.assert_allclose(out.z.values, eager.z.values, rtol=1e-6, atol=1e-6)
    xr.testing.assert_equal(out.time, eager.time)
    assert out.attrs["xlatda_model_id"] == model.model_id
    assert out.attrs["xlatda_stream"]["complete"] is True
    assert out.attrs["xlatda_source"] == str(source)
    assert stream_status(store)["done"] == 7
    # A Dataset source (eager, then dask-backed) gives the same latents.
    again = encode_to_zarr(data, model, tmp_path / "z2.zarr", chunk=30, progress=False,
                           client=False)
    np.testing.assert_allclose(again.z.values, eager.z.values, rtol=1e-6, atol=1e-6)
    lazy = encode_to_zarr(xr.open_zarr(source, consolidated=False), model, tmp_path / "z3.zarr",
                          progress=False, client=False)
    assert lazy.z.chunks[0][0] == 16  # default region: the source's chunk
    np.testing.assert_allclose(lazy.z.values, eager.z.values, rtol=1e-6, atol=1e-6)


def test_crash_then_resume_recomputes_nothing_written(data, model, source, tmp_path):
    store = tmp_path / "z.zarr"
    seen = []

    def crash_after_three(info):
        seen.append(info["region"])
        if len(seen) == 3:
            raise KeyboardInterrupt("simulated kill")

    with _Counter(model) as count, pytest.raises(KeyboardInterrupt):
        encode_to_zarr(source, model, store, chunk=16, progress=crash_after_three,
                       client=False)
    assert count.samples == 48
    status = stream_status(store)
    # The store says exactly what it holds: three regions, not complete.
    assert status["done"] == 3 and not status["complete"]
    assert status["pending"] == [3, 4, 5, 6]
    assert xr.open_zarr(store, consolidated=False).attrs["xlatda_stream"]["complete"] is False

    resumed = []
    with _Counter(model) as count:
        out = encode_to_zarr(source, model, store, chunk=16,
                             progress=lambda info: resumed.append(info["region"]),
                             client=False)
    assert resumed == [3, 4, 5, 6]
    assert count.samples == 100 - 48  # written regions were not encoded again
    np.testing.assert_allclose(out.z.values, data.lda.encode(model).z.values, rtol=1e-6,
                               atol=1e-6)
    assert stream_status(store)["complete"]
    # A complete store: nothing more to do.
    with _Counter(model) as count:
        encode_to_zarr(source, model, store, chunk=16, progress=False, client=False)
    assert count.samples == 0


def test_failing_chunk_leaves_earlier_regions(data, model, tmp_path):
    import dask.array as dsa

    store = tmp_path / "z.zarr"
    lazy = data.chunk(time=25)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise OSError("simulated read error")
        return block

    x = lazy.x.data.map_blocks(boom, dtype=lazy.x.dtype)
    broken = lazy.assign(x=(lazy.x.dims, x, lazy.x.attrs))
    assert isinstance(broken.x.data, dsa.Array)
    with pytest.raises(OSError, match="simulated"):
        encode_to_zarr(broken, model, store, progress=False, client=False)
    status = stream_status(store)
    assert status["pending"] == [2, 3] and not status["complete"]
    out = encode_to_zarr(lazy, model, store, progress=False, client=False)
    np.testing.assert_allclose(out.z.values, data.lda.encode(model).z.values, rtol=1e-6,
                               atol=1e-6)


def test_model_from_store_path(data, model, source, tmp_path):
    model.save(tmp_path / "m.zarr")
    out = encode_to_zarr(source, tmp_path / "m.zarr", tmp_path / "z.zarr", chunk=40,
                         progress=False, client=False)
    np.testing.assert_allclose(out.z.values, data.lda.encode(model).z.values, rtol=1e-6,
                               atol=1e-6)


def test_refuses_bad_input_before_work(data, model, source, tmp_path):
    with pytest.raises(ConfigError, match="no source store"):
        encode_to_zarr(tmp_path / "missing.zarr", model, tmp_path / "z.zarr")
    with pytest.raises(ConfigError, match="chunk"):
        encode_to_zarr(source, model, tmp_path / "z.zarr", chunk=0)
    with pytest.raises(ConfigError, match="not a dimension"):
        encode_to_zarr(source, model, tmp_path / "z.zarr", dim="trajectory")
    with pytest.raises(LayoutError, match="variables"):
        encode_to_zarr(data.rename(x="y"), model, tmp_path / "z.zarr")
    assert not (tmp_path / "z.zarr").exists()
    # A store holding another encoding is refused, and replaced only when asked.
    encode_to_zarr(source, model, tmp_path / "z.zarr", chunk=50, progress=False, client=False)
    with pytest.raises(ConfigError, match="another encoding"):
        encode_to_zarr(source, model, tmp_path / "z.zarr", chunk=20, progress=False,
                       client=False)
    out = encode_to_zarr(source, model, tmp_path / "z.zarr", chunk=20, progress=False,
                         client=False, resume=False)
    assert out.z.chunks[0][0] == 20


def test_accessor_streams_a_lazy_dataset(data, model, tmp_path):
    out = data.chunk(time=25).lda.encode_to_zarr(model, tmp_path / "acc.zarr", progress=False,
                                                  client=False)
    assert stream_status(tmp_path / "acc.zarr")["complete"]
    np.testing.assert_allclose(out.z.values, data.lda.encode(model).z.values, rtol=1e-6,
                               atol=1e-6)


def test_interrupted_store_refuses_another_source(data, model, tmp_path):
    from xlatda.errors import StoreMismatchError

    store = tmp_path / "z.zarr"
    other = data.copy(deep=True)
    other["x"] = other.x + 1.0
    bad = data.copy(deep=True)
    bad["x"][50, 0] = np.nan  # stops the run after regions 0..2 (chunk 16)
    with pytest.raises(xlatda.errors.NonFiniteError, match="time index 50"):
        encode_to_zarr(bad, model, store, chunk=16, progress=False, client=False)
    status = stream_status(store)
    assert status["done"] == 3 and not status["complete"]
    with pytest.raises(StoreMismatchError, match="other data"):
        encode_to_zarr(other, model, store, chunk=16, progress=False, client=False)
    out = encode_to_zarr(other, model, store, chunk=16, progress=False, client=False,
                         resume=False)
    np.testing.assert_allclose(out.z.values, other.lda.encode(model).z.values, rtol=1e-6,
                               atol=1e-6)
