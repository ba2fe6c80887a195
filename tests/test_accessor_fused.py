"""The fused encode/decode give exactly what the general path gives.

``xlatda.encode`` (and ``ds.lda.encode``, which calls it) stacks and normalises
in one copy (one dask task per chunk) and ``xlatda.decode`` denormalises in
place; ``_encode_general`` / ``_decode_general`` are the stack-and-apply_torch
path that models with auxiliary inputs take. Results must be identical, eager
and chunked, for several variables, vertical levels, float64 input and a member
dimension; the accessor must give what the public functions give.
"""

from __future__ import annotations

import dask
import dask.array
import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.encode_decode import _decode_general, _encode_general
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
    xr.testing.assert_identical(ds.lda.encode(model), _encode_general(ds, model))
    lazy = ds.chunk(time=5)
    z = lazy.lda.encode(model)
    assert z.z.chunks == ((5, 5, 2), (5,))
    with dask.config.set(scheduler="synchronous"):
        xr.testing.assert_identical(z.compute(), _encode_general(lazy, model).compute())
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
    xr.testing.assert_identical(z, _encode_general(ens, model))
    zl = ens.chunk(time=5, lon=2).lda.encode(model)  # split spatial chunks are joined
    np.testing.assert_allclose(zl.z.values, z.z.values, rtol=1e-6)


def test_decode_matches_public_function(model):
    z = _state().lda.encode(model)
    xr.testing.assert_identical(z.lda.decode(model), _decode_general(z, model))
    zc = z.chunk(time=5)
    with dask.config.set(scheduler="synchronous"):
        xr.testing.assert_identical(zc.lda.decode(model).compute(),
                                    _decode_general(zc, model).compute())
    xr.testing.assert_identical(z.z.lda.decode(model), _decode_general(z.z, model))


def test_errors_are_those_of_the_public_functions(model):
    z = _state().lda.encode(model)
    with pytest.raises(ConfigError, match="decode with the model that encoded them"):
        z.assign_attrs(xlatda_model_id="other").lda.decode(model)
    with pytest.raises(ConfigError, match="latents need a dimension"):
        z.isel(latent=slice(0, 2)).lda.decode(model)
    with pytest.raises(LayoutError):
        _state().isel(lat=slice(0, 2)).lda.encode(model)


def _masked_state(n=12):
    ds = _state(n)
    h = ds.h.values.copy()
    h[:, 0, 1] = np.nan  # a fixed "land" point, missing in every field
    u = ds.u.values.copy()
    u[:, :, 2, 3] = 7.0  # constant: zero anomalies, so the EOFs are exactly 0 there
    return ds.assign(h=(ds.h.dims, h, ds.h.attrs), u=(ds.u.dims, u, ds.u.attrs))


@pytest.fixture(scope="module")
def masked_model():
    return xlatda.fit(_masked_state(), encoder="pca", latent_dim=5, variables=["h", "u"],
                      progress=False)


def test_fixed_missing_mask_as_in_public_functions(masked_model):
    m = masked_model
    assert m.missing is not None and int(m.missing.sum()) == 1
    ds = _masked_state()
    z = ds.lda.encode(m)
    assert np.isfinite(z.z.values).all()
    xr.testing.assert_identical(z, _encode_general(ds, m))
    out = z.lda.decode(m)
    assert np.isnan(out.h.values[:, 0, 1]).all() and np.isfinite(out.u.values).all()
    xr.testing.assert_identical(out, _decode_general(z, m))
    with dask.config.set(scheduler="synchronous"):
        zc = ds.chunk(time=5).lda.encode(m).compute()
        xr.testing.assert_identical(zc, _encode_general(ds.chunk(time=5), m).compute())
        xr.testing.assert_allclose(zc, z, rtol=1e-5)  # (other batch sizes, other rounding)
        oc = z.chunk(time=5).lda.decode(m).compute()
        xr.testing.assert_identical(oc, _decode_general(z.chunk(time=5), m).compute())
        assert np.isnan(oc.h.values[:, 0, 1]).all()
        xr.testing.assert_allclose(oc, out, rtol=1e-5)


def _message(fn):
    with pytest.raises(xlatda.errors.NonFiniteError) as err:
        fn()
    return str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("propagates", [True, False])
def test_nonfinite_fields_refused_as_by_encode(masked_model, monkeypatch, bad, propagates):
    # PCA finds them on its output (propagates); other encoders on the input.
    m = masked_model
    monkeypatch.setattr(m.encoder, "nonfinite_propagates", propagates, raising=False)
    for where in [(3, 1, 2), (7, 2, 3)]:  # an ordinary point; one where the EOFs are 0
        ds = _masked_state()
        h = ds.h.values.copy()
        h[where] = bad
        ds = ds.assign(h=(ds.h.dims, h, ds.h.attrs))
        expected = _message(lambda ds=ds: _encode_general(ds, m))
        assert "fields to encode hold 1 NaN/inf" in expected
        assert _message(lambda ds=ds: ds.lda.encode(m)) == expected
        lazy = ds.chunk(time=4)
        with dask.config.set(scheduler="synchronous"):
            assert (_message(lambda lazy=lazy: lazy.lda.encode(m).compute())
                    == _message(lambda lazy=lazy: _encode_general(lazy, m).compute()))


def test_overflowing_sum_of_finite_latents_is_not_refused(masked_model):
    # Finite outputs whose sum overflows: the cheap check (a non-finite sum) fires,
    # the exact check finds no NaN/inf in the fields, and the output is returned.
    from xlatda._bridge import apply_state

    m = masked_model
    ds = _masked_state()
    for propagates in (True, False):
        out = apply_state(ds, m.layout, lambda x: torch.full((x.shape[0], 3), 2e38),
                          out_core=["k"], out_sizes={"k": 3}, normalizer=m.normalizer,
                          missing=m.missing, check_finite="fields to encode",
                          nonfinite_propagates=propagates)
        np.testing.assert_array_equal(out.values, np.float32(2e38))
    x_big = ds.assign(u=ds.u * 0 + 3e38)  # the input sum overflows, values are finite
    out = apply_state(x_big, m.layout, lambda x: x[:, :1, 0, 0] * 0, out_core=["k"],
                      out_sizes={"k": 1}, check_finite="fields to encode",
                      missing=m.missing)
    np.testing.assert_array_equal(out.values, 0.0)


def test_decode_graph_is_one_task_per_chunk_and_one_selection_per_variable(model):
    z = _state().lda.encode(model).chunk(time=4)
    out = z.lda.decode(model)
    graph = dict(out.h.data.__dask_graph__())
    ours = [k for k in graph if isinstance(k, tuple) and "apply-torch" in k[0]]
    assert len(ours) == z.z.data.npartitions == 3


def test_lazy_apply_torch_gets_the_chunks_without_a_copy():
    from xlatda._bridge import apply_torch

    source = np.arange(24, dtype="float32").reshape(6, 4)
    produced, shared = [], []

    def make(block):
        produced.append(block + 0)
        return produced[-1]

    def fn(x):
        shared.append(any(np.shares_memory(x.numpy(), p) for p in produced))
        return x * 2

    lazy = dask.array.from_array(source, chunks=(3, 4)).map_blocks(make, dtype="float32")
    da = xr.DataArray(lazy, dims=("time", "k"))
    out = apply_torch(da, fn, in_core=["k"], out_core=["j"], out_sizes={"j": 4},
                      dtype="float32")
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(out.values, 2 * source)
    assert shared == [True, True]


def test_public_functions_and_accessor_are_one_path(model):
    # the accessor is a thin layer: xlatda.encode/decode themselves take the fused path
    ds = _state()
    z = xlatda.encode(ds, model)
    xr.testing.assert_identical(z, ds.lda.encode(model))
    xr.testing.assert_identical(xlatda.decode(z, model), z.lda.decode(model))
    lazy = ds.chunk(time=4)
    graph = dict(xlatda.encode(lazy, model).z.data.__dask_graph__())
    assert len([k for k in graph if isinstance(k, tuple) and "apply-state" in k[0]]) == 3
