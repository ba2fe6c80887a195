"""SINR's linear spherical-harmonic path (``linear_degree``) and its PCA start.

A SINR decoder is affine in each channel's code, so a channel spans an affine
``code_dim``-dimensional subspace of band-limited fields, and the weighted PCA
of the training fields is the best such subspace for them. The linear path
puts that solution inside the decoder: started by :meth:`SINR.init_pca` (the
first step of :meth:`SINR.fit`) the decoder *is* the per-channel weighted PCA
of the fields' projection on the harmonics of degree ``<= linear_degree``.
"""

from __future__ import annotations

import math

import pytest
import torch

from xlatda.encoders.pca import PCA
from xlatda.encoders.sinr import SINR, SINR_PRESETS
from xlatda.errors import ConfigError, ShapeError, XlatdaError
from xlatda.sphere import gaussian_grid, longitudes, real_sph_harm, sph_harm_indices

NET = {"hidden": 8, "depth": 2, "max_freq": 2, "seed": 0}


def _grid(nlat: int = 10, nlon: int = 20) -> dict:
    lat, _ = gaussian_grid(nlat)
    return {"kind": "latlon", "lat": lat.tolist(), "lon": longitudes(nlon).tolist()}


def _band_limited(n: int, c: int, grid: dict, lmax: int, seed: int = 0) -> torch.Tensor:
    """Fields that are sums of harmonics of degree <= lmax with correlated coefficients."""
    gen = torch.Generator().manual_seed(seed)
    degree, order = sph_harm_indices(lmax)
    lat, lon = torch.meshgrid(torch.tensor(grid["lat"], dtype=torch.float64),
                              torch.tensor(grid["lon"], dtype=torch.float64), indexing="ij")
    y = real_sph_harm(degree, order, torch.deg2rad(90.0 - lat.reshape(-1)),
                      torch.deg2rad(lon.reshape(-1)))
    m = degree.numel()
    mix = torch.randn(m, m, generator=gen, dtype=torch.float64) / (1.0 + degree[:, None])
    coef = torch.randn(n, c, m, generator=gen, dtype=torch.float64) @ mix.T + 0.3
    x = coef @ y.T * math.sqrt(4 * math.pi / m)
    return x.reshape(n, c, len(grid["lat"]), len(grid["lon"]))


def _pca_reconstruction(x: torch.Tensor, k: int, grid: dict) -> torch.Tensor:
    """The project's weighted PCA with k components, fitted channel by channel."""
    out = []
    for ci in range(x.shape[1]):
        xc = x[:, ci : ci + 1]
        pca = PCA(1, tuple(x.shape[-2:]), k, grid)
        pca.fit(xc, dtype="float64")
        out.append(pca.decode(pca.encode(xc)))
    return torch.cat(out, 1)


@pytest.mark.parametrize("channels, k", [(1, 5), (2, 4)])
def test_pca_start_is_the_weighted_pca_of_band_limited_fields(channels, k):
    grid = _grid()
    x = _band_limited(40, channels, grid, lmax=9)  # the Gauss grid's own truncation
    enc = SINR(channels, (10, 20), channels * k, grid, linear_degree="auto", **NET)
    assert enc.linear_degree == 9
    z = enc.init_pca(x, dtype="float64")
    rec = enc.decode(enc.encode(x))
    torch.testing.assert_close(rec, _pca_reconstruction(x, k, grid), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(enc.decode(z), rec, rtol=1e-8, atol=1e-8)
    # a held-out field is projected as PCA projects it
    y = _band_limited(6, channels, grid, lmax=9, seed=5)
    held = []
    for ci in range(channels):
        pca = PCA(1, (10, 20), k, grid)
        pca.fit(x[:, ci : ci + 1], dtype="float64")
        held.append(pca.decode(pca.encode(y[:, ci : ci + 1])))
    torch.testing.assert_close(enc.decode(enc.encode(y)), torch.cat(held, 1), rtol=1e-8,
                               atol=1e-8)


def test_pca_start_is_below_an_untruncated_pca_only_by_the_truncation():
    grid = _grid()
    x = _band_limited(40, 1, grid, lmax=9)
    low = SINR(1, (10, 20), 5, grid, linear_degree=4, **NET)
    low.init_pca(x, dtype="float64")
    err_low = float((low.decode(low.encode(x)) - x).pow(2).mean())
    err_pca = float((_pca_reconstruction(x, 5, grid) - x).pow(2).mean())
    assert err_low > 1.05 * err_pca  # degree 4 cannot hold the degree 5-9 part


def test_pca_start_is_mesh_free_and_affine():
    grid = _grid()
    x = _band_limited(30, 2, grid, lmax=9)
    enc = SINR(2, (10, 20), 8, grid, linear_degree=9, **NET)
    z = enc.init_pca(x, dtype="float64")
    lat = torch.tensor(grid["lat"], dtype=torch.float64)
    lon = torch.tensor(grid["lon"], dtype=torch.float64)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    pts = torch.stack([la.reshape(-1), lo.reshape(-1)], -1).repeat(2, 1)
    ch = torch.arange(2).repeat_interleave(200)
    torch.testing.assert_close(enc.decode_at(z, pts, ch), enc.decode(z).reshape(30, -1),
                               rtol=1e-9, atol=1e-9)
    # the network evaluation (with its zero residual) equals the affine one
    enc.affine_decode = False
    try:
        net = enc.decode(z)
    finally:
        enc.affine_decode = True
    torch.testing.assert_close(net, enc.decode(z), rtol=1e-9, atol=1e-9)
    # a band-limited field is continuous: decoded between the grid points it is the
    # same degree-9 expansion (checked on the exact truth at 50 random points)
    gen = torch.Generator().manual_seed(3)
    rnd = torch.stack([torch.rand(50, generator=gen, dtype=torch.float64) * 160 - 80,
                       torch.rand(50, generator=gen, dtype=torch.float64) * 360], -1)
    one = SINR(1, (10, 20), 1, grid, linear_degree=9, **NET)
    field = _band_limited(1, 1, grid, lmax=9, seed=9)
    one.init_pca(torch.cat([field, -field]), dtype="float64")  # one component: the field itself
    zf = one.encode(field)
    degree, order = sph_harm_indices(9)
    y_grid = real_sph_harm(degree, order, torch.deg2rad(90.0 - la.reshape(-1)),
                           torch.deg2rad(lo.reshape(-1)))
    coef = torch.linalg.lstsq(y_grid, field.reshape(-1, 1)).solution
    y_rnd = real_sph_harm(degree, order, torch.deg2rad(90.0 - rnd[:, 0]), torch.deg2rad(rnd[:, 1]))
    torch.testing.assert_close(one.decode_at(zf, rnd, torch.zeros(50, dtype=torch.long))[0],
                               (y_rnd @ coef)[:, 0], rtol=1e-7, atol=1e-7)


def test_fit_keeps_the_pca_start_unless_validation_improves():
    grid = _grid()
    x = _band_limited(40, 2, grid, lmax=9).float()
    xv = _band_limited(12, 2, grid, lmax=9, seed=1).float()
    enc = SINR(2, (10, 20), 8, grid, linear_degree=9, fit_codes="solve", **NET)
    hist = enc.fit(x, xv, epochs=4, batch_size=10, progress=False)
    start = hist["val_loss_start"]
    assert best_val(hist) <= start
    if hist["best_epoch"] == -1:  # the start was kept: the decoder is the PCA
        torch.testing.assert_close(enc.decode(enc.encode(x)).double(),
                                   _pca_reconstruction(x.double(), 4, grid), rtol=1e-4,
                                   atol=1e-4)
    # a frozen linear path stays at the PCA; the network learns the residual only
    frozen = SINR(2, (10, 20), 8, grid, linear_degree=9, lr_linear=0.0, fit_codes="solve",
                  **NET)
    ref = SINR(2, (10, 20), 8, grid, linear_degree=9, **NET)
    ref.init_pca(x)
    frozen.fit(x, epochs=3, batch_size=10, progress=False)
    torch.testing.assert_close(frozen.lin_weight, ref.lin_weight)
    torch.testing.assert_close(frozen.lin_bias, ref.lin_bias)
    assert float(frozen.head_weight.detach().abs().max()) > 0  # the residual network did train


def best_val(hist: dict) -> float:
    return min([hist["val_loss_start"], *hist["val_loss"]])


def test_linear_path_rebuilds_bit_identically_and_is_reproducible():
    grid = _grid()
    x = _band_limited(20, 2, grid, lmax=9).float()

    def run():
        enc = SINR(2, (10, 20), 8, grid, linear_degree="auto", fit_codes="solve", **NET)
        enc.fit(x, epochs=2, batch_size=10, progress=False)
        return enc

    a, b = run(), run()
    assert a.config["linear_degree"] == 9
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    rebuilt = SINR(**a.config)
    rebuilt.load_state_dict(a.state_dict())
    rebuilt._mark_fitted()
    assert torch.equal(rebuilt.decode(a.encode(x)), a.decode(a.encode(x)))
    assert int(rebuilt.linear_ready) == 1


def test_a_refit_continues_from_the_fitted_path():
    grid = _grid()
    x = _band_limited(20, 1, grid, lmax=9).float()
    enc = SINR(1, (10, 20), 4, grid, linear_degree=9, lr_linear=0.0, **NET)
    enc.fit(x, epochs=1, batch_size=10, progress=False)
    with torch.no_grad():
        enc.lin_weight.mul_(2.0)  # no longer the PCA start
    w0 = enc.lin_weight.detach().clone()
    enc.fit(x, epochs=1, batch_size=10, progress=False)
    assert torch.equal(enc.lin_weight, w0)  # frozen and not re-initialised


def test_auto_degree_and_band_limit():
    enc = SINR(2, (32, 64), 8, _grid(32, 64), linear_degree="auto", **NET)
    assert enc.linear_degree == 31 and enc.max_degree == 31  # network's D_max is 9
    pts = {"kind": "points", "lat": [0.0, 10.0, 20.0, 30.0, 40.0],
           "lon": [0.0, 5.0, 10.0, 15.0, 20.0]}
    assert SINR(1, (5,), 2, pts, linear_degree="auto", **NET).linear_degree == 1
    box = {"kind": "latlon", "lat": [58.0 - 0.25 * i for i in range(33)],
           "lon": [-10.0 + 0.25 * j for j in range(49)]}
    assert SINR(1, (33, 49), 4, box, region="auto", linear_degree="auto",
                **NET).linear_degree == 47  # 0.25 degrees stretched 15 times
    assert SINR_PRESETS["cpu_linear"]["linear_degree"] == "auto"


def test_errors():
    grid = _grid()
    for bad in (-1, 2.5, "high", True):
        with pytest.raises(ConfigError, match="linear_degree"):
            SINR(1, (10, 20), 2, grid, linear_degree=bad, **NET)
    with pytest.raises(ConfigError, match="lr_linear"):
        SINR(1, (10, 20), 2, grid, linear_degree=3, lr_linear=-1.0, **NET)
    plain = SINR(1, (10, 20), 2, grid, **NET)
    with pytest.raises(ConfigError, match="linear_degree") as err:
        plain.init_pca(torch.randn(3, 1, 10, 20))
    assert isinstance(err.value, XlatdaError)
    enc = SINR(1, (10, 20), 2, grid, linear_degree=3, **NET)
    with pytest.raises(ShapeError):
        enc.init_pca(torch.randn(3, 1, 10, 21))


def test_missing_points_are_left_out_of_the_pca_start():
    grid = _grid()
    x = _band_limited(30, 1, grid, lmax=9)
    gappy = x.clone()
    gappy[:, :, 2, 3] = float("nan")  # a point missing in every field (a land point)
    gappy[4, :, 5, 5] = float("nan")  # and one missing in one field
    enc = SINR(1, (10, 20), 4, grid, linear_degree=9, **NET)
    enc.init_pca(gappy, dtype="float64")
    rec = enc.decode(enc.encode(x))
    assert torch.isfinite(rec).all()
    ref = SINR(1, (10, 20), 4, grid, linear_degree=9, **NET)
    ref.init_pca(x, dtype="float64")
    err = float((rec - x).pow(2).mean())
    assert err <= 1.5 * float((ref.decode(ref.encode(x)) - x).pow(2).mean()) + 1e-12


def test_model_store_round_trip_keeps_the_linear_path(tmp_path):
    import numpy as np

    import xlatda

    ds = xlatda.datasets.shallow_water(nlat=16, nlon=32, hours=12, trajectories=1, seed=0,
                                       progress=False)[["height", "vorticity"]]
    opts = dict(SINR_PRESETS["cpu_linear"], hidden=8, depth=1)
    model = xlatda.fit(ds, encoder="sinr", latent_dim=8, epochs=2, progress=False, seed=0,
                       encoder_options=opts)
    assert model.encoder.linear_degree == 15 and int(model.encoder.linear_ready) == 1
    model.save(tmp_path / "m.zarr")
    again = xlatda.open_model(tmp_path / "m.zarr")
    assert again.encoder.linear_degree == 15 and int(again.encoder.linear_ready) == 1
    z, z2 = xlatda.encode(ds, model), xlatda.encode(ds, again)
    np.testing.assert_array_equal(z.z.values, z2.z.values)
