"""Spectral interpolation: point values of band-limited global fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.errors import ConfigError, ObservationError
from xlatda.sphere import SphericalHarmonicTransform, equiangular_grid, gaussian_grid

F64 = torch.float64


def _coeffs(sht: SphericalHarmonicTransform, seed: int, lmax: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(*sht.coeff_shape, 2, generator=gen, dtype=F64)
    c = torch.view_as_complex(c).tril()
    c[:, 0] = c[:, 0].real  # m = 0 terms of a real field are real
    if lmax is not None:
        c[lmax + 1:] = 0
    return c


@pytest.mark.parametrize("grid", ["gauss", "equiangular"])
def test_point_matrix_is_the_identity_at_the_nodes(grid):
    sht = SphericalHarmonicTransform(12, 24, grid=grid, dtype=F64)
    x = sht.inverse(_coeffs(sht, 0))
    la, lo = torch.meshgrid(sht.lat, sht.lon, indexing="ij")
    k = sht.point_matrix(la.reshape(-1), lo.reshape(-1))
    torch.testing.assert_close(k @ x.reshape(-1), x.reshape(-1), rtol=0, atol=1e-11)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 40))
def test_values_between_the_nodes_are_the_band_limited_field(seed, n):
    """A T15 field read off its 16 x 32 Gauss grid equals the same field synthesised there."""
    coarse = SphericalHarmonicTransform(16, 32, dtype=F64)
    c = _coeffs(coarse, seed)
    x = coarse.inverse(c)
    rng = np.random.default_rng(seed)
    lat = torch.as_tensor(np.degrees(np.arcsin(rng.uniform(-1, 1, n))))
    lon = torch.as_tensor(rng.uniform(-180, 360, n))
    # reference: the expansion summed term by term with real harmonics
    from xlatda.sphere import associated_legendre

    p = associated_legendre(coarse.lmax, coarse.mmax, torch.deg2rad(90 - lat))
    m = torch.arange(coarse.mmax + 1, dtype=F64)
    phase = torch.deg2rad(lon)[:, None] * m
    ref = (p[..., 0] * c[:, 0].real).sum(-1) + 2 * (
        p[..., 1:] * (c[:, 1:].real * torch.cos(phase[:, None, 1:])
                      - c[:, 1:].imag * torch.sin(phase[:, None, 1:]))).sum((-1, -2))
    got = coarse.point_matrix(lat, lon) @ x.reshape(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(coarse.evaluate(c, lat, lon), ref, rtol=0, atol=1e-10)


def _state(nlat=16, nlon=32, times=2, seed=0):
    sht = SphericalHarmonicTransform(nlat, nlon, dtype=F64)
    x = torch.stack([sht.inverse(_coeffs(sht, seed + t)) for t in range(times)])
    ds = xr.Dataset(
        {"h": (("time", "lat", "lon"), x.numpy(), {"units": "m"})},
        coords={"time": ("time", np.arange(times, dtype=float)),
                "lat": ("lat", sht.lat.numpy(), {"standard_name": "latitude",
                                                 "units": "degrees_north"}),
                "lon": ("lon", sht.lon.numpy(), {"standard_name": "longitude",
                                                 "units": "degrees_east"})})
    return ds, sht


def _points(n=30, seed=3, times=(0.0, 1.0)):
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, n)))
    lon = rng.uniform(0, 360, n)
    t = rng.choice(times, n)
    return xr.Dataset({"h": ("obs", np.zeros(n), {"error_std": 1.0})},
                      coords={"lat": ("obs", lat), "lon": ("obs", lon), "time": ("obs", t)})


@pytest.mark.parametrize("chunked", [False, True])
def test_observe_spectral_reads_the_expansion_in_any_grid_order(chunked):
    ds, sht = _state()
    obs = _points()
    t = obs.time.values.astype(int)
    expect = np.array([float(sht.evaluate(sht.forward(torch.as_tensor(ds.h.values[ti])),
                                          torch.tensor([la]), torch.tensor([lo]))[0])
                       for ti, la, lo in zip(t, obs.lat.values, obs.lon.values)])
    variants = {
        "as made": ds,
        "south to north": ds.isel(lat=slice(None, None, -1)),
        "lon -180..180": ds.assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon"),
        "(lon, lat)": ds.transpose("time", "lon", "lat"),
    }
    for name, v in variants.items():
        state = v.chunk(time=1) if chunked else v
        got = xlatda.obs.observe(state, obs, interpolation="spectral").h
        assert got.chunks is not None if chunked else got.chunks is None
        np.testing.assert_allclose(got.values, expect, rtol=0, atol=1e-10, err_msg=name)
    # bilinear stays the default and differs between the nodes
    bil = xlatda.obs.observe(ds, obs).h.values
    assert np.abs(bil - expect).max() > 1e-3


def test_sample_points_spectral_matches_observe_and_keeps_the_seed():
    ds, _ = _state()
    a = xlatda.obs.sample_points(ds, n=7, error_std=0.5, seed=4, interpolation="spectral")
    b = xlatda.obs.sample_points(ds, n=7, error_std=0.5, seed=4)
    np.testing.assert_array_equal(a.lat.values, b.lat.values)  # same places for a seed
    clean = xlatda.obs.sample_points(ds, n=7, error_std=0.5, seed=4, noise=False,
                                     interpolation="spectral")
    np.testing.assert_allclose(
        clean.h.values, xlatda.obs.observe(ds, clean, interpolation="spectral").h.values,
        rtol=0, atol=1e-12)
    assert not np.allclose(a.h.values, clean.h.values)  # the noise is there


def test_equiangular_grid_is_recognised():
    lat, _ = equiangular_grid(10)
    sht = SphericalHarmonicTransform(10, 20, grid="equiangular", dtype=F64)
    x = sht.inverse(_coeffs(sht, 1))
    ds = xr.Dataset({"h": (("lat", "lon"), x.numpy())},
                    coords={"lat": ("lat", lat.numpy()), "lon": ("lon", sht.lon.numpy())})
    obs = _points(times=(0.0,)).drop_vars("time")
    got = xlatda.obs.observe(ds, obs, interpolation="spectral").h.values
    ref = sht.evaluate(sht.forward(x), torch.as_tensor(obs.lat.values),
                       torch.as_tensor(obs.lon.values)).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_spectral_refuses_what_has_no_expansion():
    ds, _ = _state()
    obs = _points()
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        xlatda.obs.observe(ds, obs, interpolation="cubic")
    box = ds.isel(lat=slice(2, 10))  # a regional box: no global expansion
    with pytest.raises(ConfigError, match="global Gauss or equiangular"):
        xlatda.obs.sample_points(box, n=3, error_std=1.0, interpolation="spectral")
    gappy = ds.isel(lon=slice(0, 30))
    with pytest.raises(ConfigError, match="equally spaced over the whole"):
        xlatda.obs.observe(gappy, obs, interpolation="spectral")
    lat, _ = gaussian_grid(16)
    assert np.allclose(ds.lat.values, lat.numpy())
    means = xlatda.obs.coarsen(ds.isel(time=[0]), 4, error_std=1.0, seed=0)
    with pytest.raises(ObservationError, match="block means"):
        xlatda.obs.observe(ds, means, interpolation="spectral")
