"""Gaspari-Cohn taper, distances, and the LETKF."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.ensemble import etkf_update
from xlatda.methods.letkf import LETKF, letkf_update
from xlatda.methods.localization import (
    GC_RADIUS_FACTOR,
    GreatCircleDistance,
    IndexDistance,
    gaspari_cohn,
    halfwidth,
)
from xlatda.methods.registry import get_method

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Tiny matrices in a Python loop: extra threads only add overhead (and
    stall badly on an oversubscribed CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------
# Gaspari-Cohn
# --------------------------------------------------------------------------


@given(c=st.floats(0.05, 50.0))
@settings(max_examples=40, deadline=None)
def test_gaspari_cohn_shape(c):
    d = torch.linspace(0.0, 3.0 * c, 601, dtype=F64)
    taper = gaspari_cohn(d, c)
    assert taper[0] == 1.0
    assert (taper[d >= 2.0 * c] == 0.0).all()
    assert ((taper >= 0) & (taper <= 1)).all()
    assert (taper.diff() <= 1e-12).all()  # monotone non-increasing
    assert (taper[d < 2.0 * c * (1 - 1e-6)] > 0).all()  # (2 - r)^5 underflows at the edge
    # continuity at the two knots (r = 1, r = 2) and symmetry in d
    for knot in (c, 2.0 * c):
        near = torch.tensor([knot * (1 - 1e-9), knot, knot * (1 + 1e-9)], dtype=F64)
        values = gaspari_cohn(near, c)
        assert (values.max() - values.min()) < 1e-7
    torch.testing.assert_close(gaspari_cohn(-d, c), taper)


def test_gaspari_cohn_known_values_and_errors():
    values = gaspari_cohn(torch.tensor([0.0, 1.0, 1.5, 2.0, 5.0], dtype=F64), 1.0)
    expected = torch.tensor([1.0, 5.0 / 24.0, 19.0 / 1152.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(values, expected)
    assert gaspari_cohn(torch.tensor(3.0), math.inf) == 1.0
    assert gaspari_cohn(torch.tensor([1.0], dtype=torch.float32), 2.0).dtype == torch.float32
    with pytest.raises(ConfigError, match="half-width"):
        gaspari_cohn(torch.tensor(1.0), 0.0)
    with pytest.raises(ConfigError, match="radius"):
        halfwidth(-1.0)


@given(radius=st.floats(0.1, 1e4))
@settings(max_examples=20, deadline=None)
def test_radius_convention_gives_exp_minus_half(radius):
    c = halfwidth(radius)
    assert c == pytest.approx(GC_RADIUS_FACTOR * radius)
    value = float(gaspari_cohn(torch.tensor(radius, dtype=F64), c))
    assert value == pytest.approx(math.exp(-0.5), abs=1e-12)


@given(n=st.integers(4, 60), frac=st.floats(0.01, 1.0))
@settings(max_examples=40, deadline=None)
def test_taper_on_periodic_line_is_psd(n, frac):
    c = frac * n / 4.0  # support 2c <= n/2: the taper is the periodised line taper
    taper = gaspari_cohn(IndexDistance(n).state_distances(), c)
    assert torch.linalg.eigvalsh(taper).min() > -1e-10


# --------------------------------------------------------------------------
# distances
# --------------------------------------------------------------------------


def test_index_distances():
    loc = IndexDistance(10, obs_positions=[0.0, 2.5, 9.0])
    d = loc.obs_distances()
    assert d.shape == (10, 3)
    torch.testing.assert_close(d[0], torch.tensor([0.0, 2.5, 1.0], dtype=F64))
    flat = IndexDistance(10, obs_positions=[0.0, 2.5, 9.0], periodic=False).obs_distances()
    torch.testing.assert_close(flat[0], torch.tensor([0.0, 2.5, 9.0], dtype=F64))
    s = IndexDistance(10).state_distances()
    torch.testing.assert_close(s, s.T)
    assert s.max() == 5.0 and (s.diagonal() == 0).all()
    two = IndexDistance(10, channels=2)
    assert two.n_state == 20 and two.n_obs == 10
    assert two.taper(2.0, "state").shape == (20, 20)
    assert two.taper(2.0, "obs").shape == (20, 10)
    assert two.taper(2.0, "obs_obs").shape == (10, 10)
    with pytest.raises(ConfigError):
        IndexDistance(0)
    with pytest.raises(ConfigError):
        IndexDistance(5, channels=0)
    with pytest.raises(ShapeError):
        IndexDistance(5, state_positions=[0.0, 1.0])


def test_great_circle_distances():
    quarter = math.pi * 6371.0 / 2.0
    loc = GreatCircleDistance(
        [0.0, 0.0, 90.0], [0.0, 90.0, 0.0], [0.0, -90.0, 45.0], [0.0, 123.0, 0.0]
    )
    d = loc.obs_distances()
    torch.testing.assert_close(d[0, :2], torch.tensor([0.0, quarter], dtype=F64))
    torch.testing.assert_close(d[1, 0], torch.tensor(quarter, dtype=F64))
    torch.testing.assert_close(d[2, 1], torch.tensor(2 * quarter, dtype=F64))
    torch.testing.assert_close(d[2, 2], torch.tensor(quarter / 2, dtype=F64))
    # longitude wraps: 359 E and 1 E are 2 degrees apart
    near = GreatCircleDistance([0.0], [359.0], [0.0], [1.0]).obs_distances()
    torch.testing.assert_close(near, torch.tensor([[2 * quarter / 90]], dtype=F64))
    s = loc.state_distances()
    torch.testing.assert_close(s, s.T)
    with pytest.raises(ShapeError, match="same length"):
        GreatCircleDistance([0.0, 1.0], [0.0], [0.0], [0.0])
    with pytest.raises(ConfigError, match="90"):
        GreatCircleDistance([95.0], [0.0], [0.0], [0.0])


def test_local_observations_are_those_within_support():
    loc = IndexDistance(40)
    c = halfwidth(4.0)
    index, weight = loc.local_observations(c)
    assert index.shape == weight.shape == (40, 27)  # |d| <= 13 < 2c = 13.9
    dist = loc.obs_distances().gather(1, index)
    assert (dist < 2 * c).all()
    torch.testing.assert_close(weight, gaspari_cohn(dist, c))
    again = loc.local_observations(c)
    assert again[0] is index  # cached


# --------------------------------------------------------------------------
# LETKF
# --------------------------------------------------------------------------


def _problem(batch=(), n_points=12, channels=1, n_members=6, obs_every=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_points * channels
    ens = torch.randn(*batch, n_members, n, generator=g, dtype=F64)
    obs_idx = torch.arange(0, n_points, obs_every)
    hx = ens[..., obs_idx]  # observe channel 0 at every obs_every-th point
    p = obs_idx.numel()
    y = torch.randn(*batch, p, generator=g, dtype=F64)
    r = 0.5 + torch.rand(p, generator=g, dtype=F64)
    loc = IndexDistance(n_points, obs_positions=obs_idx.double(), channels=channels)
    return ens, hx, y, r, loc


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("channels", [1, 2])
def test_letkf_with_infinite_radius_is_global_etkf(batch, channels):
    ens, hx, y, r, loc = _problem(batch, channels=channels)
    local = letkf_update(ens, hx, y, r, loc, radius=math.inf, inflation=1.1, rtps=0.3)
    glob = etkf_update(ens, hx, y, r, inflation=1.1, rtps=0.3)
    torch.testing.assert_close(local, glob, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 2])
def test_letkf_equals_one_etkf_per_grid_point(channels):
    """Reference: loop over grid points, a global ETKF with R-localised local obs."""
    ens, hx, y, r, loc = _problem((2,), n_points=16, channels=channels, obs_every=3)
    radius = 2.0
    ana = LETKF(radius=radius, inflation=1.05).analyse(ens, hx, y, r, locations=loc)
    rho = gaspari_cohn(loc.obs_distances(), halfwidth(radius))
    expected = torch.empty_like(ens)
    for point in range(16):
        use = rho[point] > 0
        local = etkf_update(
            ens, hx[..., use], y[..., use], r[use] / rho[point, use].sqrt(), inflation=1.05
        )
        cols = [ch * 16 + point for ch in range(channels)]
        expected[..., cols] = local[..., cols]
    torch.testing.assert_close(ana, expected, rtol=0, atol=1e-10)


def test_letkf_far_observations_change_nothing_but_inflation():
    ens, hx, y, r, _ = _problem(n_points=12, obs_every=12)  # one obs, at point 0
    loc = IndexDistance(12, obs_positions=[0.0], periodic=False)
    ana = letkf_update(ens, hx, y, r, loc, radius=1.0)
    far = ana[..., 5:]  # beyond 2c = 3.48 from the observation
    torch.testing.assert_close(far, ens[..., 5:])
    assert not torch.allclose(ana[..., 0], ens[..., 0])


def test_letkf_rotation_keeps_mean_and_covariance():
    ens, hx, y, r, loc = _problem((2,))
    method = LETKF(radius=3.0, rotate=False)
    plain = method.analyse(ens, hx, y, r, locations=loc)
    rotated = LETKF(radius=3.0, rotate=True).analyse(
        ens, hx, y, r, locations=loc, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(plain.mean(-2), rotated.mean(-2))
    a, b = plain - plain.mean(-2, keepdim=True), rotated - rotated.mean(-2, keepdim=True)
    torch.testing.assert_close(a.mT @ a, b.mT @ b)


def test_letkf_bad_inputs():
    ens, hx, y, r, _ = _problem()
    with pytest.raises(ConfigError, match="radius"):
        LETKF()
    with pytest.raises(ConfigError, match="locations"):
        LETKF(radius=2.0).analyse(ens, hx, y, r)
    with pytest.raises(ShapeError, match="state values"):
        LETKF(radius=2.0).analyse(ens, hx, y, r, locations=IndexDistance(13))
    assert get_method("letkf") is LETKF


def test_lorenz96_letkf_twin_experiment(one_thread):
    model = Lorenz96(n=40)
    g = torch.Generator().manual_seed(1)
    truth = 8.0 + torch.randn(40, generator=g, dtype=F64)
    for _ in range(200):
        truth = model.step(truth)
    ens = truth + torch.randn(7, 40, generator=g, dtype=F64)
    method, loc, r = LETKF(radius=4.0, inflation=1.04, rotate=True), IndexDistance(40), 1.0
    errors = []
    for _ in range(200):
        truth = model.step(truth)
        ens = model.step(ens)
        y = truth + torch.randn(40, generator=g, dtype=F64)
        ens = method.analyse(ens, ens, y, r, locations=loc, generator=g)
        errors.append((ens.mean(0) - truth).square().mean().sqrt())
    rmse = torch.stack(errors[60:]).mean().item()
    assert rmse < 0.35, rmse  # climatology ~3.6; published ~0.22 over long runs
