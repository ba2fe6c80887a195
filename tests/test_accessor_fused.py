"""The accessor's fused encode/decode give exactly what xlatda.encode/decode give.

``ds.lda.encode`` stacks and normalises in one copy (one dask task per chunk)
and ``z.lda.decode`` denormalises in place; the public functions take the
general path. Results must be identical, eager and chunked, for several
variables, vertical levels, float64 input and a member dimension.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, LayoutError


def _state(n=12, dtype="float32"):
    rng = np.random.default_rng(0)
    lat = np.array([-45.0, 0.0, 45.0])
    lon = np.arange(4) * 90.0
    return xr.Dataset(
        {"h": (("time", "lat", "lon"), (9000 + 50 * rng.normal(size=(n, 3, 4))).astype(dtype),
               {"units": "m"}),
         "u": (("time", "level", "lat", "lon"), rng.normal(size=(n, 2, 3, 4)).astype(dtype),
               {"units": "m s-1"}),
         "lat_bnds": (("lat", "nb"), np.stack([lat - 22.5, lat + 22.5], -1))},
        coords={"time": ("time", np.arange(n, dtype=float), {"axis": "T"}),
                "level": ("level", [500.0, 250.0], {"standard_name": "air_pressure",
                                                    "units": "hPa", "positive": "down"}),
                "lat": ("lat", lat, {"standard_name": "latitude"}),
                "lon": ("lon", lon, {"standard_name": "longitude"})},
        attrs={"title": "test"},
    )


@pytest.fixture(scope="module")
def model():
    return xlatda.fit(_state(), encoder="pca", latent_dim=5, variables=["h", "u"],
                      progress=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_encode_matches_public_function(model, dtype):
    ds = _state(dtype=dtype)
    xr.testing.assert_identical(ds.lda.encode(model), xlatda.encode(ds, model))
    lazy = ds.chunk(time=5)
    z = lazy.lda.encode(model)
    assert z.z.chunks == ((5, 5, 2), (5,))
    with dask.config.set(scheduler="synchronous"):
        xr.testing.assert_identical(z.compute(), xlatda.encode(lazy, model).compute())
        np.testing.assert_array_equal(z.z.values, ds.lda.encode(model).z.values)


def test_encode_is_one_task_per_chunk(model):
    lazy = _state().chunk(time=4)
    z = lazy.lda.encode(model).z.data
    graph = dict(z.__dask_graph__())
    ours = [k for k in graph if isinstance(k, tuple) and "apply-state" in k[0]]
    assert len(ours) == z.npartitions == 3


def test_encode_of_transposed_and_member_states(model):
    ds = _state()
    ens = xr.concat([ds, ds + 1.0], dim="member").transpose("time", "lon", "member", ...)
    ens = ens.assign(lat_bnds=ds.lat_bnds)
    z = ens.lda.encode(model)
    assert z.z.dims == ("time", "member", "latent")
    xr.testing.assert_identical(z, xlatda.encode(ens, model))
    zl = ens.chunk(time=5, lon=2).lda.encode(model)  # split spatial chunks are joined
    np.testing.assert_allclose(zl.z.values, z.z.values, rtol=1e-6)


def test_decode_matches_public_function(model):
    z = _state().lda.encode(model)
    xr.testing.assert_identical(z.lda.decode(model), xlatda.decode(z, model))
    zc = z.chunk(time=5)
    with dask.config.set(scheduler="synchronous"):
        xr.testing.assert_identical(zc.lda.decode(model).compute(),
                                    xlatda.decode(zc, model).compute())
    xr.testing.assert_identical(z.z.lda.decode(model), xlatda.decode(z.z, model))


def test_errors_are_those_of_the_public_functions(model):
    z = _state().lda.encode(model)
    with pytest.raises(ConfigError, match="decode with the model that encoded them"):
        z.assign_attrs(xlatda_model_id="other").lda.decode(model)
    with pytest.raises(ConfigError, match="latents need a dimension"):
        z.isel(latent=slice(0, 2)).lda.decode(model)
    with pytest.raises(LayoutError):
        _state().isel(lat=slice(0, 2)).lda.encode(model)
