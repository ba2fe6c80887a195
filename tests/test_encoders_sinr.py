"""Tests of the SINR encoder (xlatda.encoders.sinr)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlatda.encoders.base import encoders
from xlatda.encoders.sinr import SINR, SINR_PRESETS, region_to_sphere, sinr_max_degree
from xlatda.errors import ConfigError, NotFittedError, ShapeError
from xlatda.sphere import (
    SphericalHarmonicTransform,
    gaussian_grid,
    longitudes,
    real_sph_harm,
    sph_harm_indices,
)

TINY = {"hidden": 16, "depth": 2, "max_freq": 2}


def latlon_grid(nlat: int, nlon: int) -> dict:
    lat, _ = gaussian_grid(nlat)
    return {"kind": "latlon", "lat": lat.tolist(), "lon": longitudes(nlon).tolist()}


def grid_points(grid: dict) -> tuple[torch.Tensor, torch.Tensor]:
    lat, lon = torch.meshgrid(
        torch.tensor(grid["lat"], dtype=torch.float64),
        torch.tensor(grid["lon"], dtype=torch.float64),
        indexing="ij",
    )
    return lat.reshape(-1), lon.reshape(-1)


def sh_fields(n: int, n_channels: int, grid: dict, lmax: int = 2, seed: int = 0) -> torch.Tensor:
    """Random fields that are sums of real harmonics of degree <= lmax, unit scale."""
    gen = torch.Generator().manual_seed(seed)
    degree, order = sph_harm_indices(lmax)
    lat, lon = grid_points(grid)
    y = real_sph_harm(degree, order, torch.deg2rad(90.0 - lat), torch.deg2rad(lon))  # (P, K)
    coef = torch.randn(n, n_channels, degree.numel(), generator=gen, dtype=torch.float64)
    coef = coef / (1.0 + degree.to(torch.float64))  # red spectrum
    x = coef @ y.T * math.sqrt(4 * math.pi / degree.numel())
    shape = (len(grid["lat"]), len(grid["lon"]))
    return x.reshape(n, n_channels, *shape).to(torch.float32)


@pytest.fixture(scope="module")
def small():
    """A tiny SINR trained briefly on random low-degree fields (shared, read-only)."""
    grid = latlon_grid(8, 16)
    x = sh_fields(12, 2, grid, seed=1)
    enc = SINR(2, (8, 16), latent_dim=16, grid=grid, seed=0, **TINY)
    hist = enc.fit(x, epochs=30, batch_size=4, lr_weights=2e-2, lr_codes=2e-2, progress=False)
    return enc, x, hist


def test_registered():
    assert encoders.get("sinr") is SINR


def test_shapes_and_round_trip(small):
    enc, x, _ = small
    z = enc.encode(x, steps=150, progress=False)
    assert z.shape == (12, 16) and z.dtype == x.dtype
    xh = enc.decode(z)
    assert xh.shape == x.shape
    pts = torch.tensor([[10.0, 20.0], [-45.0, 300.0], [89.0, 0.0]])
    assert enc.decode_at(z, pts, torch.tensor([0, 1, 1])).shape == (12, 3)
    # encoding a training field and decoding it explains most of its variance
    rel = float(((xh.detach() - x) ** 2).mean() / (x**2).mean())
    assert rel < 0.5


def test_training_loss_falls(small):
    _, _, hist = small
    loss = hist["train_loss"]
    assert len(loss) == 30 and hist["epochs_run"] == 30
    assert loss[-1] < 0.5 * loss[0]
    assert set(hist) >= {"train_loss", "val_loss", "best_epoch", "time_s"}


def test_config_rebuild_load_is_bit_identical(small):
    enc, _, _ = small
    cfg = json.loads(json.dumps(enc.config))  # JSON round trip
    rebuilt = SINR(**cfg)
    assert not rebuilt.fitted
    rebuilt.load_state_dict(enc.state_dict())
    assert rebuilt.fitted
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(rebuilt.decode(z), enc.decode(z))
    assert torch.equal(rebuilt.code_mean, enc.code_mean)


@pytest.mark.parametrize(("max_freq", "depth"), [(2, 2), (1, 3)])
def test_band_limited_spectrum(max_freq, depth):
    d_max = sinr_max_degree(max_freq, depth)
    assert d_max == (depth + 1) * max_freq + depth * (depth + 1) // 2
    grid = latlon_grid(32, 64)  # Gauss grid: exact analysis up to degree 31 > d_max
    enc = SINR(1, (32, 64), 3, grid, hidden=8, depth=depth, max_freq=max_freq, seed=3)
    assert enc.max_degree == d_max
    x = torch.randn(4, 1, 32, 64, generator=torch.Generator().manual_seed(0))
    enc.fit(x, epochs=1, batch_size=4, dtype="float64", progress=False)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    field = enc.decode(z)[:, 0]
    sht = SphericalHarmonicTransform(32, 64, dtype=torch.float64)
    coef = sht.forward(field)  # (2, lmax + 1, mmax + 1)
    power = coef.abs() ** 2
    power[..., 1:] *= 2
    per_degree = power.sum(-1)  # (2, lmax + 1)
    total = per_degree.sum(-1)
    assert bool((per_degree[:, d_max + 1 :].sum(-1) < 1e-20 * total).all())
    # the bound is reached: the top degree carries energy
    assert bool((per_degree[:, d_max] > 1e-8 * total).all())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_freq=st.integers(0, 3),
    depth=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 2),
)
def test_spectrum_never_exceeds_max_degree(max_freq, depth, seed, channels):
    grid = latlon_grid(32, 64)  # resolves degree 31 > max D_max = 18 here
    code = 2
    enc = SINR(channels, (32, 64), channels * code, grid, hidden=4, depth=depth,
               max_freq=max_freq, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, 32, 64, generator=gen, dtype=torch.float64)
    enc.fit(x, epochs=1, batch_size=1, dtype="float64", progress=False)
    z = torch.randn(2, channels * code, generator=gen, dtype=torch.float64)
    coef = SphericalHarmonicTransform(32, 64, dtype=torch.float64).forward(enc.decode(z))
    per_degree = (coef.abs() ** 2).sum(-1)  # (2, C, lmax + 1)
    top = per_degree[..., enc.max_degree + 1 :].sum(-1)
    assert bool((top <= 1e-20 * per_degree.sum(-1)).all())


def test_decode_at_grid_points_equals_decode(small):
    enc, _, _ = small
    lat, lon = grid_points(enc.grid)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(2)) * 0.3
    p = lat.numel()
    points = torch.stack([lat, lon], -1).repeat(2, 1)
    channel = torch.arange(2).repeat_interleave(p)
    at = enc.decode_at(z, points, channel).reshape(3, 2, 8, 16)
    torch.testing.assert_close(at, enc.decode(z), rtol=1e-5, atol=1e-5)
    # a random subset, in any order, gives the same values too
    perm = torch.randperm(2 * p, generator=torch.Generator().manual_seed(3))[:50]
    flat = enc.decode(z).reshape(3, -1)
    torch.testing.assert_close(enc.decode_at(z, points[perm], channel[perm]), flat[:, perm])


def test_encode_from_all_grid_points_matches_encode(small):
    enc, x, _ = small
    x = x[:4]
    lat, lon = grid_points(enc.grid)
    points = torch.stack([lat, lon], -1).repeat(2, 1).to(torch.float32)
    channel = torch.arange(2).repeat_interleave(lat.numel())
    z_grid = enc.encode(x, steps=100, progress=False)
    z_pts = enc.encode_from(x.reshape(4, -1), points, channel, steps=100, progress=False)
    torch.testing.assert_close(enc.decode(z_pts), enc.decode(z_grid), rtol=1e-3, atol=1e-3)


def test_encode_ignores_missing_values(small):
    enc, x, _ = small
    xm = x[:2].clone()
    xm[:, 0, :2] = float("nan")
    z = enc.encode(xm, steps=20, progress=False)
    assert bool(torch.isfinite(z).all())


def test_autodecoding_recovers_known_code():
    # depth 1: the decoder is affine in each channel's code, so z is identifiable
    grid = latlon_grid(8, 16)
    x = sh_fields(6, 2, grid, seed=4).double()
    enc = SINR(2, (8, 16), 6, grid, hidden=16, depth=1, max_freq=2, seed=1)
    enc.fit(x, epochs=5, batch_size=3, dtype="float64", progress=False)
    z_true = enc.code_mean + 0.5 * torch.randn(
        4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    fields = enc.decode(z_true).detach()
    z_hat = enc.encode(fields, steps=1000, lr=0.05, progress=False)
    torch.testing.assert_close(z_hat, z_true, rtol=0, atol=2e-3)
    # and from scattered points of both channels ("zero-shot")
    gen = torch.Generator().manual_seed(6)
    pts = torch.stack(
        [torch.rand(40, generator=gen) * 160 - 80, torch.rand(40, generator=gen) * 360], -1
    ).double()
    ch = torch.arange(40) % 2
    vals = enc.decode_at(z_true, pts, ch).detach()
    z_pts = enc.encode_from(vals, pts, ch, steps=1000, lr=0.05, progress=False)
    torch.testing.assert_close(z_pts, z_true, rtol=0, atol=2e-3)


def test_reproducible_with_seed():
    grid = latlon_grid(8, 16)
    x = sh_fields(6, 1, grid, seed=7)

    def run(seed: int) -> tuple[dict, torch.Tensor]:
        enc = SINR(1, (8, 16), 4, grid, seed=0, **TINY)
        enc.fit(x, epochs=3, batch_size=2, points_per_batch=64, seed=seed, progress=False)
        return enc.state_dict(), enc.encode(x, steps=20, progress=False)

    s1, z1 = run(11)
    s2, z2 = run(11)
    s3, _ = run(12)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(z1, z2)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_validation_early_stopping_keeps_best():
    grid = latlon_grid(8, 16)
    x = sh_fields(10, 1, grid, seed=8)
    enc = SINR(1, (8, 16), 4, grid, **TINY)
    hist = enc.fit(
        x[:7], x[7:], epochs=40, batch_size=7, lr_weights=0.2, lr_codes=0.2,
        patience=2, val_steps=10, progress=False,
    )
    assert len(hist["val_loss"]) == hist["epochs_run"] <= 40
    best = hist["best_epoch"]
    assert hist["val_loss"][best] == min(hist["val_loss"])
    if hist["epochs_run"] < 40:  # stopped early: `patience` epochs after the best
        assert hist["epochs_run"] == best + 3


def test_points_grid_matches_latlon_grid(small):
    enc, _, _ = small
    lat, lon = grid_points(enc.grid)
    pgrid = {"kind": "points", "lat": lat.tolist(), "lon": lon.tolist()}
    cfg = dict(enc.config, spatial_shape=[lat.numel()], grid=pgrid)
    penc = SINR(**cfg)
    penc.load_state_dict(enc.state_dict())
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(9)) * 0.3
    torch.testing.assert_close(penc.decode(z), enc.decode(z).reshape(2, 2, -1))


def test_float64_gradients_through_decode_at():
    grid = latlon_grid(4, 8)
    enc = SINR(2, (4, 8), 4, grid, hidden=6, depth=2, max_freq=1)
    enc.fit(torch.randn(2, 2, 4, 8), epochs=1, dtype="float64", progress=False)
    pts = torch.tensor([[12.0, 40.0], [-70.0, 181.0], [3.0, 359.0]], dtype=torch.float64)
    ch = torch.tensor([0, 1, 0])
    z = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda zz: enc.decode_at(zz, pts, ch), (z,))
    assert torch.autograd.gradcheck(lambda zz: enc.decode(zz), (z,))
    # a float32 latent against the float64 module comes back as float32, with gradient
    z32 = z.detach().float().requires_grad_(True)
    out = enc.decode_at(z32, pts.float(), ch)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert z32.grad is not None and bool(torch.isfinite(z32.grad).all())


def test_encode_under_inference_mode(small):
    enc, x, _ = small
    with torch.inference_mode():
        z = enc.encode(x[:2], steps=5, progress=False)
        xh = enc.decode(z)
        values = enc.decode_at(z, torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        z2 = enc.encode_from(values, torch.tensor([[0.0, 0.0]]), torch.tensor([1]), steps=3)
    assert xh.shape == (2, 2, 8, 16) and z2.shape == (2, 16)
    fresh = SINR(2, (8, 16), 16, enc.grid, **TINY)
    with torch.no_grad():
        hist = fresh.fit(x[:4], epochs=2, batch_size=2, progress=False)
    assert hist["train_loss"][1] < hist["train_loss"][0]


def test_errors(small):
    enc, x, _ = small
    grid = latlon_grid(8, 16)
    with pytest.raises(ConfigError, match="multiple of n_channels"):
        SINR(2, (8, 16), 7, grid)
    with pytest.raises(ConfigError, match="grid"):
        SINR(1, (8, 16), 4, None)
    with pytest.raises(ConfigError, match="grid"):
        SINR(1, (5,), 4, {"kind": "generic", "n": 5, "periodic": False})
    with pytest.raises(ConfigError, match="does not match"):
        SINR(1, (8, 15), 4, grid)
    with pytest.raises(NotFittedError):
        SINR(1, (8, 16), 4, grid, **TINY).encode(x[:, :1])
    with pytest.raises(ShapeError):
        enc.encode(x[:, :1])
    with pytest.raises(ShapeError):
        enc.decode(torch.zeros(2, 5))
    with pytest.raises(ShapeError, match="channel"):
        enc.decode_at(torch.zeros(1, 16), torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ShapeError, match="points"):
        enc.decode_at(torch.zeros(1, 16), torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="values"):
        enc.encode_from(torch.zeros(1, 3), torch.zeros(2, 2), torch.tensor([0, 1]))


def test_point_harmonics_are_cached(small):
    enc, _, _ = small
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(10)) * 0.3
    pts = torch.tensor([[10.0, 20.0], [-45.0, 300.0]])
    ch = torch.tensor([0, 1])
    first = enc.decode_at(z, pts, ch)
    assert torch.equal(enc.decode_at(z, pts.clone(), ch), first)  # same values: cache hit
    other = enc.decode_at(z, pts + 1.0, ch)
    assert not torch.equal(other, first)
    for k in range(10):
        enc.decode_at(z, pts + k, ch)
    assert len(enc._point_cache) <= 4


# ---------------------------------------------------------------- the affine solver
def _trained(depth: int = 3, dtype: str = "float64"):
    grid = latlon_grid(8, 16)
    x = sh_fields(10, 2, grid, seed=11)
    if dtype == "float64":
        x = x.double()
    enc = SINR(2, (8, 16), 12, grid, hidden=8, depth=depth, max_freq=2, seed=2)
    enc.fit(x, epochs=20, batch_size=5, lr_weights=2e-2, lr_codes=2e-2, dtype=dtype,
            progress=False)
    return enc, x


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_decoder_is_exactly_affine_with_the_adjoint_jacobian(depth):
    enc, _ = _trained(depth)
    gen = torch.Generator().manual_seed(0)
    pts = torch.stack([torch.rand(7, generator=gen, dtype=torch.float64) * 170 - 85,
                       torch.rand(7, generator=gen, dtype=torch.float64) * 360], -1)
    ch = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    offset, matrix = enc.affine_map(pts, ch)
    enc.affine_decode = False  # the network itself
    try:
        z0 = torch.randn(12, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda z: enc.decode_at(z[None], pts, ch)[0], z0)
        torch.testing.assert_close(matrix, jac, rtol=1e-10, atol=1e-12)
        z = 3.0 * torch.randn(5, 12, generator=gen, dtype=torch.float64)
        net = enc.decode_at(z, pts, ch)
        grid_net = enc.decode(z)
    finally:
        enc.affine_decode = True
    torch.testing.assert_close(offset + z @ matrix.T, net, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(enc.decode_at(z, pts, ch), net, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(enc.decode(z), grid_net, rtol=1e-10, atol=1e-10)
    # each value depends on its own channel's code only
    k = enc.code_dim
    for p, c in enumerate(ch.tolist()):
        assert bool((matrix[p, : c * k] == 0).all()) and bool((matrix[p, (c + 1) * k :] == 0).all())


def test_solve_is_the_least_squares_minimum_and_beats_adam():
    enc, x = _trained()
    w = torch.cos(torch.deg2rad(torch.tensor(enc.grid["lat"], dtype=torch.float64)))
    w = (w / w.mean())[:, None]
    target = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                   dtype=x.dtype)  # off the decoder's range

    def loss(z):
        return ((enc.decode(z) - target) ** 2 * w).mean((1, 2, 3))

    z = enc.encode(target)
    za = enc.encode(target, method="adam", steps=300, lr=5e-2, progress=False)
    assert bool((loss(z) <= loss(za) + 1e-12).all())
    # the weighted normal equations hold: J^T W r = 0 for each sample
    offset, matrix = enc.affine_map()
    r = (offset + z @ matrix.T - target.reshape(10, -1)) * w.expand(8, 16).repeat(2, 1).reshape(-1)
    grad = r @ matrix
    assert float(grad.abs().max()) < 1e-9 * float(matrix.abs().max() * target.abs().max())


def test_solve_recovers_codes_from_scattered_points_and_handles_gaps():
    enc, _ = _trained()
    gen = torch.Generator().manual_seed(3)
    z_true = enc.code_mean + enc.code_scale * torch.randn(4, 12, generator=gen,
                                                          dtype=torch.float64)
    pts = torch.stack([torch.rand(60, generator=gen, dtype=torch.float64) * 170 - 85,
                       torch.rand(60, generator=gen, dtype=torch.float64) * 360], -1)
    ch = torch.arange(60) % 2
    vals = enc.decode_at(z_true, pts, ch)
    torch.testing.assert_close(enc.encode_from(vals, pts, ch), z_true, rtol=0, atol=1e-8)
    # missing values per sample: the same as dropping those points
    vm = vals.clone()
    vm[1, :10] = float("nan")
    z_m = enc.encode_from(vm, pts, ch)
    torch.testing.assert_close(z_m[1:2], enc.encode_from(vals[1:2, 10:], pts[10:], ch[10:]))
    torch.testing.assert_close(z_m[0], z_true[0], rtol=0, atol=1e-8)
    # a channel without observations keeps the mean code (ridge > 0 or not)
    only0 = ch == 0
    for ridge in (0.0, 1e-3):
        z0 = enc.encode_from(vals[:, only0], pts[only0], ch[only0], ridge=ridge)
        torch.testing.assert_close(z0[:, 6:], enc.code_mean[6:].expand(4, -1))


def test_ridge_is_the_map_estimate():
    enc, _ = _trained()
    gen = torch.Generator().manual_seed(4)
    pts = torch.stack([torch.rand(9, generator=gen, dtype=torch.float64) * 170 - 85,
                       torch.rand(9, generator=gen, dtype=torch.float64) * 360], -1)
    ch = torch.zeros(9, dtype=torch.long)
    vals = torch.randn(2, 9, generator=gen, dtype=torch.float64)
    wts = torch.rand(9, generator=gen, dtype=torch.float64) + 0.5
    rho = 0.05
    z = enc.encode_from(vals, pts, ch, ridge=rho, weights=wts)
    # closed form of  sum w r^2 / sum w + rho / (K C) |(a - mean) / s|^2  for channel 0
    offset, matrix = enc.affine_map(pts, ch)
    a = matrix[:, :6]
    mean, s = enc.code_mean[:6], enc.code_scale[:6]
    wn = wts / wts.mean()
    lhs = (a.T * wn) @ a / wn.sum() + rho / 12 * torch.diag(1 / s**2)
    rhs = ((vals - offset) * wn) @ a / wn.sum() + rho / 12 * mean / s**2
    torch.testing.assert_close(z[:, :6], torch.linalg.solve(lhs, rhs.T).T)
    torch.testing.assert_close(z[:, 6:], enc.code_mean[6:].expand(2, -1))


def test_training_codes_by_index():
    enc, x = _trained()
    codes = enc.train_codes
    assert codes.shape == (10, 12)
    idx = torch.tensor([3, -1, 0])
    fields = torch.cat([x[3:4], x[5:6] + 0.1, x[:1]])
    z = enc.encode(fields, training_index=idx)
    torch.testing.assert_close(z[0], codes[3])
    torch.testing.assert_close(z[2], codes[0])
    torch.testing.assert_close(z[1], enc.encode(fields[1:2])[0])
    # not used unless asked: a plain encode solves for the code
    assert not torch.equal(enc.encode(x[3:4])[0], codes[3])
    with pytest.raises(ShapeError, match="training_index"):
        enc.encode(fields, training_index=torch.tensor([0, 10, 1]))
    rebuilt = SINR(**enc.config)
    rebuilt.load_state_dict(enc.state_dict())
    assert rebuilt.train_codes is None
    with pytest.raises(ConfigError, match="training_index"):
        rebuilt.encode(fields, training_index=idx)


def test_method_errors_and_adam_option(small):
    enc, x, _ = small
    with pytest.raises(ConfigError, match="method"):
        enc.encode(x[:1], method="lbfgs")
    with pytest.raises(ConfigError, match="encode_method"):
        SINR(2, (8, 16), 16, enc.grid, encode_method="newton", **TINY)
    with pytest.raises(ConfigError, match="ridge"):
        enc.encode(x[:1], ridge=-1.0)
    z = enc.encode(x[:2], method="adam", steps=5, progress=False)
    assert z.shape == (2, 16)


def test_variable_projection_training_lowers_the_loss():
    grid = latlon_grid(8, 16)
    x = sh_fields(8, 2, grid, seed=12)
    enc = SINR(2, (8, 16), 8, grid, hidden=8, depth=2, max_freq=2, seed=0, fit_codes="solve")
    hist = enc.fit(x, epochs=15, batch_size=4, lr_weights=2e-2, progress=False)
    assert hist["train_loss"][-1] < 0.7 * hist["train_loss"][0]
    # the stored training codes are the exact codes of the final weights
    torch.testing.assert_close(enc.train_codes, enc.encode(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="fit_codes"):
        enc.fit(x, epochs=1, fit_codes="bogus", progress=False)


# ---------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["cpu", "cpu_linear", "paper"])
def test_presets_build_and_decode(name):
    grid = latlon_grid(4, 8)
    enc = SINR.from_preset(name, 2, (4, 8), 8, grid)
    for key, value in SINR_PRESETS[name].items():
        if value == "auto":  # resolved from the grid at construction
            assert enc.config[key] == enc.linear_degree == 3  # Gauss grid of 4 rows
        else:
            assert enc.config[key] == value
    enc.fit(torch.randn(2, 2, 4, 8), epochs=1, progress=False)
    assert enc.decode(enc.encode(torch.randn(3, 2, 4, 8))).shape == (3, 2, 4, 8)
    if name == "paper":  # LAINR's decoder: hidden 128, depth 8, F = 8
        assert (enc.hidden, enc.depth, enc.max_freq, enc.max_degree) == (128, 8, 8, 108)
    # usable as plain constructor keywords (e.g. xlatda.fit's encoder_options) too
    same = SINR(2, (4, 8), 8, grid, **SINR_PRESETS[name])
    assert same.config == SINR.from_preset(name, 2, (4, 8), 8, grid).config
    assert SINR.from_preset(name, 2, (4, 8), 8, grid, hidden=4).hidden == 4
    with pytest.raises(ConfigError, match="preset"):
        SINR.from_preset("gpu", 2, (4, 8), 8, grid)


# ---------------------------------------------------------------- limited-area domains
def uk_box(nlat: int = 17, nlon: int = 25) -> dict:
    lat = torch.linspace(58.0, 50.0, nlat, dtype=torch.float64)
    lon = torch.linspace(-10.0, 2.0, nlon, dtype=torch.float64)
    return {"kind": "latlon", "lat": lat.tolist(), "lon": lon.tolist()}


def test_region_to_sphere_maps_the_box_isotropically():
    box = {"lat": [50.0, 58.0], "lon": [-10.0, 2.0]}
    k, cos_c = 15.0, math.cos(math.radians(54.0))
    lat = torch.tensor([50.0, 54.0, 58.0, 55.0], dtype=torch.float64)
    lon = torch.tensor([-10.0, -4.0, 2.0, 356.5], dtype=torch.float64)  # 356.5 = -3.5
    la, lo = region_to_sphere(box, lat, lon)
    torch.testing.assert_close(la, k * (lat - 54.0))
    torch.testing.assert_close(lo, k * cos_c * torch.tensor([-6.0, 0.0, 6.0, 0.5],
                                                             dtype=torch.float64))
    # a box across the date line, given west > east, is the same box shifted
    la2, lo2 = region_to_sphere({"lat": [50.0, 58.0], "lon": [174.0, -174.0]},
                                lat, lon + 184.0)
    torch.testing.assert_close((la2, lo2), (la, lo))
    # a global box is not shrunk (stretch >= 1)
    la3, _ = region_to_sphere({"lat": [-90.0, 90.0], "lon": [0.0, 359.0]},
                              torch.tensor([45.0]), torch.tensor([10.0]))
    torch.testing.assert_close(la3, torch.tensor([45.0], dtype=torch.float64))
    with pytest.raises(ShapeError, match="outside the model's region"):
        region_to_sphere(box, torch.tensor([40.0]), torch.tensor([0.0]))


def test_regional_encoder_is_the_global_network_on_stretched_points():
    grid = uk_box(5, 7)
    enc = SINR(1, (5, 7), 3, grid, hidden=8, depth=2, max_freq=2, seed=4, region="auto")
    assert enc.region == {"lat": [50.0, 58.0], "lon": [-10.0, 2.0]}
    data = torch.randn(3, 1, 5, 7, generator=torch.Generator().manual_seed(1))
    enc.fit(data, epochs=2, dtype="float64", progress=False)
    lat, lon = grid_points(grid)
    slat, slon = region_to_sphere(enc.region, lat, lon)
    glob = SINR(1, (35,), 3, {"kind": "points", "lat": slat.tolist(), "lon": slon.tolist()},
                hidden=8, depth=2, max_freq=2)
    glob.load_state_dict(enc.state_dict())
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # The two build their harmonic features from float32 point coordinates by
    # different routes (grid vs stretched points), so they agree to float32 rounding.
    torch.testing.assert_close(glob.decode(z), enc.decode(z).reshape(2, 1, -1),
                               rtol=1e-5, atol=1e-6)
    # rebuilt from its JSON config (the box travels with it) it decodes the same
    rebuilt = SINR(**json.loads(json.dumps(enc.config)))
    rebuilt.load_state_dict(enc.state_dict())
    pts = torch.tensor([[53.1, -3.3], [57.9, 1.9]], dtype=torch.float64)
    ch = torch.tensor([0, 0])
    torch.testing.assert_close(rebuilt.decode_at(z, pts, ch), enc.decode_at(z, pts, ch),
                               rtol=1e-5, atol=1e-5)  # rebuilt in float32
    with pytest.raises(ShapeError, match="outside"):
        enc.decode_at(z, torch.tensor([[10.0, 0.0]]), torch.tensor([0]))
    for bad in ("box", {"lat": [58.0, 50.0], "lon": [0.0, 1.0]}, {"lat": [50.0, 58.0]},
                {"lat": [50.0, 58.0], "lon": [3.0, 3.0]}):
        with pytest.raises(ConfigError, match="region"):
            SINR(1, (5, 7), 3, grid, region=bad)


def test_regional_basis_resolves_box_scale_structure():
    # fields of wavelength 4..10 degrees inside an 8 x 12 degree box: harmonics of raw
    # coordinates up to the band limit (degree 11 here) are too smooth for them
    grid = uk_box()
    lat, lon = grid_points(grid)
    la, lo = (lat - 50.0).reshape(17, 25), (lon + 10.0).reshape(17, 25)
    basis = torch.stack([torch.cos(2 * math.pi * la / 6), torch.sin(2 * math.pi * lo / 8),
                         torch.cos(2 * math.pi * (la / 5 + lo / 7)),
                         torch.sin(2 * math.pi * la / 4) * torch.cos(2 * math.pi * lo / 10)])
    coef = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.einsum("nk,kij->nij", coef, basis)[:, None].float()
    errors = {}
    for region in (None, "auto"):
        enc = SINR(1, (17, 25), 4, grid, hidden=32, depth=2, max_freq=3, seed=0,
                   region=region, fit_codes="solve")
        enc.fit(x[:12], epochs=60, batch_size=4, lr_weights=2e-2, progress=False)
        errors[region] = [float(((enc.decode(enc.encode(v)) - v) ** 2).mean() / (v**2).mean())
                          for v in (x[:12], x[12:])]
    assert errors["auto"][0] < 0.6 * errors[None][0]  # training fields
    assert errors["auto"][1] < errors[None][1]  # held-out fields
