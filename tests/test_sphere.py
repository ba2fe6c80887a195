"""Tests of xlatda.sphere: grids, Legendre functions, harmonics, transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import roots_legendre, sph_harm_y

from xlatda.errors import ConfigError, ShapeError
from xlatda.sphere import (
    SphericalHarmonicTransform,
    associated_legendre,
    equiangular_grid,
    gaussian_grid,
    legendre_derivative,
    longitudes,
    real_sph_harm,
    sph_harm_indices,
)

F64 = torch.float64


C128 = torch.complex128


def random_coeffs(sht, *batch, generator=None, dtype=C128):
    """Random band-limited coefficients of real fields (m = 0 column real)."""
    shape = (*batch, *sht.coeff_shape)
    re = torch.randn(shape, generator=generator, dtype=F64)
    im = torch.randn(shape, generator=generator, dtype=F64)
    c = torch.complex(re, im).tril()  # zero where m > l
    c[..., 0] = c[..., 0].real
    return c.to(dtype)


def scipy_real_sph_harm(l, m, colat, lon):
    """Real orthonormal harmonics (no Condon-Shortley phase) from scipy's complex ones."""
    l, m = np.asarray(l)[None], np.asarray(m)[None]
    y = sph_harm_y(l, np.abs(m), np.asarray(colat)[:, None], np.asarray(lon)[:, None])
    sign = (-1.0) ** np.abs(m)
    return np.where(
        m > 0, np.sqrt(2) * sign * y.real, np.where(m < 0, np.sqrt(2) * sign * y.imag, y.real)
    )


# ----------------------------------------------------------------------- grids
@pytest.mark.parametrize("nlat", [1, 2, 7, 32, 65])
def test_gaussian_grid_matches_scipy(nlat):
    lat, w = gaussian_grid(nlat)
    mu, wref = roots_legendre(nlat)
    np.testing.assert_allclose(np.sin(np.radians(lat.numpy()))[::-1], mu, atol=1e-14)
    np.testing.assert_allclose(w.numpy()[::-1], wref, atol=1e-14)
    assert torch.all(lat[:-1] > lat[1:])  # north to south


@pytest.mark.parametrize("nlat", [1, 4, 9, 32])
def test_equiangular_grid_is_exact_to_degree_nlat_minus_1(nlat):
    lat, w = equiangular_grid(nlat)
    assert torch.all(lat[:-1] > lat[1:])
    assert float(lat.max()) < 90 and float(lat.min()) > -90
    mu = torch.sin(torch.deg2rad(lat))
    for k in range(nlat):
        exact = (1.0 - (-1.0) ** (k + 1)) / (k + 1)
        assert abs(float((w * mu**k).sum()) - exact) < 1e-13


def test_longitudes():
    lon = longitudes(8)
    assert lon[0] == 0 and float(lon[-1]) == 315.0 and lon.dtype == F64


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_grid_rejects_bad_sizes(bad):
    with pytest.raises(ConfigError):
        gaussian_grid(bad)


# -------------------------------------------------------------------- Legendre
def test_associated_legendre_matches_scipy():
    colat = torch.linspace(0.0, math.pi, 37, dtype=F64)
    lmax = 30
    p = associated_legendre(lmax, lmax, colat)  # (37, L, M)
    for l in range(lmax + 1):
        m = np.arange(l + 1)
        ref = sph_harm_y(l, m[None], colat.numpy()[:, None], 0.0).real * (-1.0) ** m
        np.testing.assert_allclose(p[:, l, : l + 1].numpy(), ref, atol=1e-12)
        assert torch.all(p[:, l, l + 1 :] == 0)


def test_legendre_derivative_matches_finite_differences():
    colat = torch.tensor([0.1, 0.7, 1.5, 2.2, 3.0], dtype=F64)
    _, h = legendre_derivative(12, 9, colat)
    step = 1e-6  # central differences: error ~ step^2 + eps / step ~ 1e-10
    plus, minus = associated_legendre(12, 9, colat + step), associated_legendre(12, 9, colat - step)
    dp_dtheta = (plus - minus) / (2 * step)
    # H = (1 - x^2) dP/dx = -sin(theta) dP/dtheta
    torch.testing.assert_close(h, -torch.sin(colat)[:, None, None] * dp_dtheta, atol=1e-8, rtol=0)


def test_legendre_rejects_bad_truncation():
    with pytest.raises(ConfigError):
        associated_legendre(3, 4, torch.zeros(2))


# ------------------------------------------------------------------ harmonics
def test_real_sph_harm_matches_scipy_at_random_points():
    gen = torch.Generator().manual_seed(0)
    colat = torch.rand(500, generator=gen, dtype=F64) * math.pi
    lon = torch.rand(500, generator=gen, dtype=F64) * 2 * math.pi
    deg, order = sph_harm_indices(40)
    y = real_sph_harm(deg, order, colat, lon)
    assert y.shape == (500, 41**2) and y.dtype == F64
    ref = scipy_real_sph_harm(deg.numpy(), order.numpy(), colat.numpy(), lon.numpy())
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-11)


def test_real_sph_harm_poles_and_arbitrary_order_of_pairs():
    deg = torch.tensor([5, 0, 3, 3, 40, 1])
    order = torch.tensor([-2, 0, 3, 0, -17, -1])
    colat = torch.tensor([[0.0, math.pi], [0.3, 2.0]], dtype=F64)
    lon = torch.tensor([[0.0, 1.0], [4.0, 6.0]], dtype=F64)
    y = real_sph_harm(deg, order, colat, lon)
    assert y.shape == (2, 2, 6)
    ref = scipy_real_sph_harm(deg.numpy(), order.numpy(), colat.flatten(), lon.flatten())
    np.testing.assert_allclose(y.reshape(4, 6).numpy(), ref, atol=1e-12)


def test_real_sph_harm_orthonormal_by_quadrature():
    lmax = 20
    nlat, nlon = lmax + 1, 2 * lmax + 2
    lat, w = gaussian_grid(nlat)
    colat = torch.deg2rad(90.0 - lat)[:, None].expand(nlat, nlon)
    lon = torch.deg2rad(longitudes(nlon))[None, :].expand(nlat, nlon)
    deg, order = sph_harm_indices(lmax)
    y = real_sph_harm(deg, order, colat, lon).reshape(nlat * nlon, -1)
    quad = (w[:, None] * (2 * math.pi / nlon)).expand(nlat, nlon).reshape(-1)
    gram = y.T @ (quad[:, None] * y)
    torch.testing.assert_close(gram, torch.eye(len(deg), dtype=F64), atol=1e-12, rtol=0)


def test_real_sph_harm_dtype_and_gradient():
    deg, order = sph_harm_indices(4)
    colat = torch.tensor([0.4, 1.2], dtype=torch.float32)
    y = real_sph_harm(deg, order, colat, torch.tensor([0.1, 2.0]))
    assert y.dtype == torch.float32 and y.shape == (2, 25)
    c = torch.tensor([0.4, 1.2], dtype=F64, requires_grad=True)
    lam = torch.tensor([0.1, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: real_sph_harm(deg, order, a, b), (c, lam))


def test_real_sph_harm_rejects_bad_pairs():
    with pytest.raises(ConfigError):
        real_sph_harm(torch.tensor([1]), torch.tensor([2]), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ShapeError):
        real_sph_harm(torch.tensor([1, 2]), torch.tensor([0]), torch.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------ transform
@pytest.mark.parametrize("grid", ["gauss", "equiangular"])
@pytest.mark.parametrize(("nlat", "nlon"), [(16, 32), (33, 64), (24, 40)])
def test_round_trip_band_limited(grid, nlat, nlon):
    sht = SphericalHarmonicTransform(nlat, nlon, grid=grid, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    c = random_coeffs(sht, 3, 2, generator=gen)
    x = sht.inverse(c)
    assert x.shape == (3, 2, nlat, nlon) and x.dtype == F64
    back = sht.forward(x)
    assert back.shape == c.shape and back.dtype == C128
    assert float((back - c).abs().max()) < 1e-10
    assert float((sht.inverse(back) - x).abs().max()) < 1e-10


@settings(max_examples=15, deadline=None)
@given(
    nlat=st.integers(2, 24),
    extra_lon=st.integers(0, 9),
    grid=st.sampled_from(["gauss", "equiangular"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(nlat, extra_lon, grid, seed):
    nlon = 2 * nlat + extra_lon
    sht = SphericalHarmonicTransform(nlat, nlon, grid=grid, dtype=F64)
    c = random_coeffs(sht, 2, generator=torch.Generator().manual_seed(seed))
    assert float((sht.forward(sht.inverse(c)) - c).abs().max()) < 1e-10


def test_forward_of_real_harmonic_gives_its_coefficient():
    sht = SphericalHarmonicTransform(20, 40, dtype=F64)
    colat = torch.deg2rad(90.0 - sht.lat)[:, None].expand(20, 40)
    lon = torch.deg2rad(sht.lon)[None, :].expand(20, 40)
    y = real_sph_harm(torch.tensor([7, 7, 7]), torch.tensor([3, -3, 0]), colat, lon)
    c = sht.forward(y.permute(2, 0, 1))
    expect = torch.zeros(3, *sht.coeff_shape, dtype=C128)
    expect[0, 7, 3] = 1 / math.sqrt(2)  # sqrt2 cos = (e^{i m} + e^{-i m}) / sqrt2
    expect[1, 7, 3] = -1j / math.sqrt(2)
    expect[2, 7, 0] = 1.0
    torch.testing.assert_close(c, expect, atol=1e-12, rtol=0)


def test_parseval_and_integral():
    sht = SphericalHarmonicTransform(24, 48, dtype=F64)
    c = random_coeffs(sht, generator=torch.Generator().manual_seed(2))
    x = sht.inverse(c)
    power = (c[:, 0].abs() ** 2).sum() + 2 * (c[:, 1:].abs() ** 2).sum()
    torch.testing.assert_close(sht.integrate(x**2), power)
    torch.testing.assert_close(sht.integrate(x), c[0, 0].real * math.sqrt(4 * math.pi))


def test_float32_follows_input_dtype():
    sht = SphericalHarmonicTransform(16, 32, dtype=F64)
    x = torch.randn(2, 16, 32)
    c = sht.forward(x)
    assert c.dtype == torch.complex64
    assert sht.inverse(c).dtype == torch.float32
    c64 = sht.forward(x.double())
    assert float((c - c64).abs().max()) < 1e-5


def test_laplacian_of_harmonic():
    sht = SphericalHarmonicTransform(16, 32, radius=2.0, dtype=F64)
    c = random_coeffs(sht, generator=torch.Generator().manual_seed(3))
    ell = torch.arange(sht.lmax + 1, dtype=F64)[:, None]
    torch.testing.assert_close(sht.laplacian(c), -ell * (ell + 1) / 4.0 * c)
    c[0, 0] = 0
    torch.testing.assert_close(sht.inverse_laplacian(sht.laplacian(c)), c)


# --------------------------------------------------------------------- vectors
@pytest.mark.parametrize("grid", ["gauss", "equiangular"])
def test_uv_vrtdiv_round_trip(grid):
    radius = 6.37122e6
    sht = SphericalHarmonicTransform(32, 64, grid=grid, radius=radius, dtype=F64)
    gen = torch.Generator().manual_seed(4)
    vrt = random_coeffs(sht, 2, generator=gen) * 1e-5
    div = random_coeffs(sht, 2, generator=gen) * 1e-6
    vrt[..., 0, 0] = div[..., 0, 0] = 0
    u, v = sht.uv_from_vrtdiv(vrt, div)
    assert u.shape == (2, 32, 64)
    vrt2, div2 = sht.vrtdiv_from_uv(u, v)
    torch.testing.assert_close(vrt2, vrt, atol=1e-16, rtol=0)
    torch.testing.assert_close(div2, div, atol=1e-16, rtol=0)


def test_winds_of_rotated_solid_body_rotation():
    # u = U0 (cos(lat) cos(a) + cos(lon) sin(lat) sin(a)), v = -U0 sin(lon) sin(a):
    # vorticity 2 U0 / R (-cos(lon) cos(lat) sin(a) + sin(lat) cos(a)), divergence 0.
    radius, u0, alpha = 3.0, 2.0, 0.7
    sht = SphericalHarmonicTransform(12, 24, radius=radius, dtype=F64)
    lat = torch.deg2rad(sht.lat)[:, None]
    lon = torch.deg2rad(sht.lon)[None, :]
    u = u0 * (torch.cos(lat) * math.cos(alpha) + torch.cos(lon) * torch.sin(lat) * math.sin(alpha))
    v = -u0 * torch.sin(lon) * math.sin(alpha) + 0 * lat
    zeta = 2 * u0 / radius * (
        -torch.cos(lon) * torch.cos(lat) * math.sin(alpha) + torch.sin(lat) * math.cos(alpha)
    )
    vrt, div = sht.vrtdiv_from_uv(u, v)
    torch.testing.assert_close(sht.inverse(vrt), zeta, atol=1e-13, rtol=0)
    assert float(div.abs().max()) < 1e-13
    u2, v2 = sht.uv_from_vrtdiv(vrt, div)
    torch.testing.assert_close(u2, u, atol=1e-13, rtol=0)
    torch.testing.assert_close(v2, v, atol=1e-13, rtol=0)


def test_gradient_of_sin_lat():
    sht = SphericalHarmonicTransform(10, 20, radius=2.0, dtype=F64)
    lat = torch.deg2rad(sht.lat)[:, None].expand(10, 20)
    dx, dy = sht.gradient(sht.forward(torch.sin(lat)))
    assert float(dx.abs().max()) < 1e-14
    torch.testing.assert_close(dy, torch.cos(lat) / 2.0)


def test_transforms_are_differentiable():
    sht = SphericalHarmonicTransform(6, 12, dtype=F64)
    x = torch.randn(6, 12, dtype=F64, requires_grad=True)
    y = torch.randn(6, 12, dtype=F64, requires_grad=True)

    def fn(a, b):
        u, v = sht.uv_from_vrtdiv(sht.forward(a), sht.forward(b))
        return torch.stack((u, v, sht.inverse(sht.forward(a * b))))

    assert torch.autograd.gradcheck(fn, (x, y), fast_mode=True)


def test_transform_errors():
    with pytest.raises(ConfigError):
        SphericalHarmonicTransform(8, 16, lmax=4, mmax=5)
    with pytest.raises(ConfigError):
        SphericalHarmonicTransform(8, 8, lmax=7, mmax=4)  # 2 mmax >= nlon
    with pytest.raises(ConfigError):
        SphericalHarmonicTransform(8, 16, grid="hex")
    sht = SphericalHarmonicTransform(8, 16)
    with pytest.raises(ShapeError, match="grid shape"):
        sht.forward(torch.zeros(8, 15))
    with pytest.raises(ShapeError, match="lmax"):
        sht.inverse(torch.zeros(3, 3, dtype=torch.complex64))
