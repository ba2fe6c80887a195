"""Task speed5 (issue 16): the accessor's eager encode does less work, same results.

PCA's ``encode_`` subtracts its mean in the input's memory (same values as
``encode``), the accessor's fused encode uses it on the tensor it owns, and
``StateLayout.align`` hands back a Dataset already on the layout's order as it
is (no transposed copy).
"""

from __future__ import annotations

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
def test_pca_encode_inplace_same_values_and_overwrites_its_input(whiten):
    grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
    pca = PCA(2, (3, 4), latent_dim=3, grid=grid, whiten=whiten)
    pca.fit(torch.randn(8, 2, 3, 4), progress=False)
    x = torch.randn(5, 2, 3, 4)
    want = pca.encode(x)
    scratch = x.clone()
    got = pca.encode_(scratch)
    assert torch.equal(got, want)
    assert torch.equal(scratch, x - pca.mean)  # the mean was taken off in place
    # Another dtype: its converted copy is the scratch, the caller's tensor is kept.
    x64 = x.double()
    assert torch.equal(pca.encode_(x64), want)
    assert torch.equal(x64, x.double())


def test_accessor_encode_uses_the_inplace_encoder_and_matches_encode(model, monkeypatch):
    ds = _state()
    calls = []
    inplace = type(model.encoder).encode_

    def spy(self, x):
        calls.append(x.shape)
        return inplace(self, x)

    monkeypatch.setattr(type(model.encoder), "encode_", spy)
    z = ds.lda.encode(model)
    assert calls == [(10, 2, 3, 4)]
    xr.testing.assert_identical(z, xlatda.encode(ds, model))
    # The caller's arrays are untouched by the in-place work.
    xr.testing.assert_identical(ds, _state())


def test_align_returns_a_dataset_on_the_layout_as_it_is(model):
    ds = _state()
    assert model.layout.align(ds) is ds
    other = ds.transpose("time", "lon", "lat")
    aligned = model.layout.align(other)
    assert aligned is not other
    assert aligned.h.dims == ("time", "lat", "lon")
    xr.testing.assert_identical(aligned, ds)
