"""Task speed5 (issue 16): the accessor's eager encode does less work, same results.

PCA's mean is taken off in the accessor's normalising pass (``input_center``,
``encode_centered``; one pass of ``addcdiv`` instead of a division and a
subtraction, the same bits), and
``StateLayout.align`` hands back a Dataset already on the layout's order as it
is (no transposed copy).
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.encoders.pca import PCA


def _state(n=10):
    rng = np.random.default_rng(1)
    return xr.Dataset(
        {"h": (("time", "lat", "lon"), (9000 + 50 * rng.normal(size=(n, 3, 4))).astype("float32"),
               {"units": "m"}),
         "v": (("time", "lat", "lon"), (1e-5 * rng.normal(size=(n, 3, 4))).astype("float32"))},
        coords={"time": np.arange(n, dtype=float),
                "lat": ("lat", [-45.0, 0.0, 45.0], {"standard_name": "latitude"}),
                "lon": ("lon", np.arange(4) * 90.0, {"standard_name": "longitude"})},
    )


@pytest.fixture(scope="module")
def model():
    return xlatda.fit(_state(), encoder="pca", latent_dim=4, progress=False)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_encode_centered_is_encode_after_its_center(whiten):
    grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
    pca = PCA(2, (3, 4), latent_dim=3, grid=grid, whiten=whiten)
    pca.fit(torch.randn(8, 2, 3, 4), progress=False)
    assert pca.input_center is pca.mean
    x = torch.randn(5, 2, 3, 4)
    assert torch.equal(pca.encode_centered(x - pca.input_center), pca.encode(x))


def _bits(t):
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pass_division_and_centering_is_bit_identical(dtype):
    # What apply_state does without a mask: -center + x / std (addcdiv) for
    # x / std - center; compared as bit patterns (signed zeros included).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 3, 4, generator=gen, dtype=dtype) * 1e3
    x[0, 0, 0, :2] = torch.tensor([0.0, -0.0], dtype=dtype)
    std = torch.rand(1, 2, 1, 1, generator=gen, dtype=dtype) + 0.5
    center = torch.randn(2, 3, 4, generator=gen, dtype=dtype)
    center[0, 0, :3] = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    want = x.clone().div_(std).sub_(center)
    got = x.clone()
    torch.addcdiv(-center, got, std, out=got)
    assert torch.equal(_bits(got), _bits(want))


def test_accessor_encode_takes_the_center_off_in_its_pass(model, monkeypatch):
    ds = _state()
    calls = []
    centered = type(model.encoder).encode_centered

    def spy(self, x):
        calls.append(x.clone())
        return centered(self, x)

    monkeypatch.setattr(type(model.encoder), "encode_centered", spy)
    z = ds.lda.encode(model)
    assert len(calls) == 1
    # fn got the normalised batch minus the PCA mean, bit for bit
    x = model.layout.to_tensor(ds)
    want = model.normalizer.normalize(x) - model.encoder.mean
    assert torch.equal(_bits(calls[0]), _bits(want))
    xr.testing.assert_identical(z, xlatda.encode(ds, model))
    with dask.config.set(scheduler="synchronous"):  # (chunks of 5: no 1-row matmul)
        lazy = ds.chunk(time=5)
        xr.testing.assert_identical(lazy.lda.encode(model).compute(),
                                    xlatda.encode(lazy, model).compute())
    xr.testing.assert_identical(ds, _state())  # the caller's arrays are untouched


def test_align_returns_a_dataset_on_the_layout_as_it_is(model):
    ds = _state()
    assert model.layout.align(ds) is ds
    other = ds.transpose("time", "lon", "lat")
    aligned = model.layout.align(other)
    assert aligned is not other
    assert aligned.h.dims == ("time", "lat", "lon")
    xr.testing.assert_identical(aligned, ds)
