"""SINR's grid fit of the linear path (``linear_fit="grid"``), its prior and the box stretch.

With ``linear_fit="grid"`` :meth:`SINR.init_pca` takes the EOFs of the grid
values themselves (optionally of the covariance shrunk towards the path's
Sobolev prior, ``linear_prior``) and writes them in the harmonics as the
prior's posterior mean given the grid values. Where the harmonics resolve the
grid the untrained decoder equals those EOFs at the grid points: with no
prior, the project's PCA, also on a limited-area box where the projection fit
loses the grid-scale part.
"""

from __future__ import annotations

import math

import pytest
import torch

from xlatda.encoders.pca import PCA
from xlatda.encoders.sinr import SINR, region_to_sphere
from xlatda.errors import ConfigError
from xlatda.sphere import real_sph_harm, sph_harm_indices

NET = {"hidden": 8, "depth": 2, "max_freq": 2, "seed": 0}
BOX = {"kind": "latlon", "lat": [58.0 - i for i in range(9)],
       "lon": [-10.0 + 1.0 * j for j in range(13)]}  # 9 x 13, the UK box at 1 degree
SHAPE = (9, 13)


def _fields(n: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    """Rough random fields on the box: smooth waves plus grid-scale noise."""
    gen = torch.Generator().manual_seed(seed)
    la = torch.tensor(BOX["lat"], dtype=torch.float64)[:, None]
    lo = torch.tensor(BOX["lon"], dtype=torch.float64)[None]
    out = torch.zeros(n, c, *SHAPE, dtype=torch.float64)
    for j in range(6):
        amp = torch.randn(n, c, 1, 1, generator=gen, dtype=torch.float64) / (1 + j)
        ph = float(torch.rand(1, generator=gen)) * 6.28
        out += amp * torch.sin(0.3 * (j + 1) * la + 0.2 * (6 - j) * lo + ph)
    return out + 0.1 * torch.randn(n, c, *SHAPE, generator=gen, dtype=torch.float64)


def _pca(x: torch.Tensor, k: int, y: torch.Tensor) -> torch.Tensor:
    """The project's weighted PCA with k components fitted to x, reconstructing y."""
    out = []
    for ci in range(x.shape[1]):
        pca = PCA(1, SHAPE, k, BOX)
        pca.fit(x[:, ci : ci + 1], dtype="float64")
        out.append(pca.decode(pca.encode(y[:, ci : ci + 1])))
    return torch.cat(out, 1)


def _sinr(k: int, c: int = 1, **kw) -> SINR:
    opts = {"region": "auto", "region_stretch": "box", "linear_degree": "auto",
            "linear_fit": "grid", **NET, **kw}
    return SINR(c, SHAPE, c * k, BOX, **opts)


@pytest.mark.parametrize("channels, k", [(1, 5), (2, 4)])
def test_grid_fit_without_prior_is_the_pca_on_a_regional_box(channels, k):
    x, y = _fields(40, channels), _fields(7, channels, seed=4)
    enc = _sinr(k, channels)
    z = enc.init_pca(x, dtype="float64")
    scale = float(x.std())
    torch.testing.assert_close(enc.decode(z), _pca(x, k, x), rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(enc.decode(enc.encode(y)), _pca(x, k, y), rtol=0,
                               atol=1e-5 * scale)
    # the projection fit at its own degree rule (the conformal map's row spacing) misses
    # the grid-scale part
    proj = _sinr(k, channels, linear_fit="projection", region_stretch="conformal")
    assert proj.linear_degree < enc.linear_degree
    proj.init_pca(x, dtype="float64")
    err = float((proj.decode(proj.encode(y)) - _pca(x, k, y)).abs().max())
    assert err > 1e-3 * scale


def test_prior_shrinks_the_covariance_and_matches_a_direct_computation():
    x = _fields(30)
    k, gamma, s = 4, 0.5, 2.0
    enc = _sinr(k, linear_prior=gamma, linear_smoothness=s)
    enc.init_pca(x, dtype="float64")
    # reference: the eigenvectors of S + gamma tr(S)/tr(K_w) K_w, built here from scratch
    lat, lon = torch.meshgrid(torch.tensor(BOX["lat"], dtype=torch.float64),
                              torch.tensor(BOX["lon"], dtype=torch.float64), indexing="ij")
    la, lo = region_to_sphere(enc.region, lat.reshape(-1), lon.reshape(-1), "box")
    deg, order = sph_harm_indices(enc.linear_degree)
    phi = real_sph_harm(deg, order, torch.deg2rad(90 - la), torch.deg2rad(lo)) * math.sqrt(
        4 * math.pi)
    kern = (phi * (1 + deg * (deg + 1.0)) ** (-s)) @ phi.t()
    w = torch.cos(torch.deg2rad(lat.reshape(-1)))
    wh = w / w.sum()
    flat = x.reshape(30, -1)
    a = (flat - flat.mean(0)) * wh.sqrt()
    cov = a.t() @ a
    kw = wh.sqrt()[:, None] * kern * wh.sqrt()[None]
    cov = cov + gamma * cov.trace() / kw.trace() * kw
    vec = torch.linalg.eigh(cov)[1].flip(-1)[:, :k]
    eofs = vec / wh.sqrt()[:, None]
    y = _fields(5, seed=8).reshape(5, -1)
    ref = flat.mean(0) + (((y - flat.mean(0)) * wh) @ eofs) @ eofs.t()
    got = enc.decode(enc.encode(y.reshape(5, 1, *SHAPE))).reshape(5, -1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(x.std()))


def test_prior_costs_training_error_the_pca_is_optimal_there():
    x = _fields(30)
    errs = []
    for gamma in (0.0, 0.3, 3.0):
        enc = _sinr(4, linear_prior=gamma)
        enc.init_pca(x, dtype="float64")
        errs.append(float((enc.decode(enc.encode(x)) - x).pow(2).mean()))
    assert errs[0] < errs[1] < errs[2]


def test_grid_fit_is_smooth_between_the_grid_points():
    # a field that is smooth in the box: decoded at cell centres it stays close to the truth
    def smooth(la, lo):
        return torch.sin(0.4 * la) * torch.cos(0.3 * lo) + 0.02 * la

    lat, lon = torch.meshgrid(torch.tensor(BOX["lat"], dtype=torch.float64),
                              torch.tensor(BOX["lon"], dtype=torch.float64), indexing="ij")
    f = smooth(lat, lon)[None, None]
    enc = _sinr(1)
    enc.init_pca(torch.cat([f, -f]), dtype="float64")  # one component: the field itself
    z = enc.encode(f)
    torch.testing.assert_close(enc.decode(z), f, rtol=0, atol=1e-6)
    mid_lat, mid_lon = torch.meshgrid(torch.arange(50.5, 58.0, 1.0, dtype=torch.float64),
                                      torch.arange(-9.5, 2.0, 1.0, dtype=torch.float64),
                                      indexing="ij")
    pts = torch.stack([mid_lat.reshape(-1), mid_lon.reshape(-1)], -1)
    got = enc.decode_at(z, pts, torch.zeros(pts.shape[0], dtype=torch.long))[0]
    truth = smooth(pts[:, 0], pts[:, 1])
    assert float((got - truth).abs().max()) < 0.05 * float(truth.abs().max())


def test_grid_fit_training_is_bit_identical_per_seed():
    x, xv = _fields(12).float(), _fields(6, seed=3).float()
    outs = []
    for _ in range(2):
        enc = _sinr(3, linear_prior=0.3, lr_linear=0.0, points_per_batch=40)
        hist = enc.fit(x, xv, epochs=3, batch_size=4, progress=False)
        outs.append((hist["val_loss"], enc.decode(enc.encode(xv)), enc.state_dict()))
    assert outs[0][0] == outs[1][0]
    assert torch.equal(outs[0][1], outs[1][1])
    for key, value in outs[0][2].items():
        assert torch.equal(value, outs[1][2][key]), key


def test_box_stretch_fills_the_patch_and_keeps_the_grid_regular():
    box = {"lat": [50.0, 58.0], "lon": [-10.0, 2.0]}
    lat = torch.tensor([50.0, 54.0, 58.0, 54.0, 54.0])
    lon = torch.tensor([-4.0, -4.0, -4.0, -10.0, 2.0])
    la, lo = region_to_sphere(box, lat, lon, "box")
    torch.testing.assert_close(la, torch.tensor([-60.0, 0.0, 60.0, 0.0, 0.0],
                                                dtype=torch.float64))
    torch.testing.assert_close(lo, torch.tensor([0.0, 0.0, 0.0, -90.0, 90.0],
                                                dtype=torch.float64))
    # the conformal map keeps the box's aspect instead: 12 degrees of longitude at 54 N
    _, lo_c = region_to_sphere(box, lat, lon, "conformal")
    assert abs(float(lo_c[4]) - 15 * 6 * math.cos(math.radians(54.0))) < 1e-9


def test_auto_degree_of_the_grid_fit_is_twice_the_shannon_number():
    uk = {"kind": "latlon", "lat": [58.0 - 0.25 * i for i in range(33)],
          "lon": [-10.0 + 0.25 * j for j in range(49)]}
    kw = {"region": "auto", "linear_degree": "auto", **NET}
    box = SINR(1, (33, 49), 2, uk, region_stretch="box", linear_fit="grid", **kw)
    conf = SINR(1, (33, 49), 2, uk, linear_fit="grid", **kw)
    proj = SINR(1, (33, 49), 2, uk, **kw)
    assert (box.linear_degree, conf.linear_degree, proj.linear_degree) == (86, 112, 47)
    assert abs(box._patch_fraction() - math.sin(math.radians(60.0)) / 2) < 1e-9


def test_config_round_trip_and_refusals():
    enc = _sinr(2, linear_prior=0.5, linear_smoothness=3.0)
    cfg = enc.config
    assert (cfg["region_stretch"], cfg["linear_fit"], cfg["linear_prior"],
            cfg["linear_smoothness"]) == ("box", "grid", 0.5, 3.0)
    again = SINR(**cfg)
    assert again.linear_degree == enc.linear_degree
    with pytest.raises(ConfigError, match="linear_fit='grid'"):
        SINR(1, SHAPE, 2, BOX, linear_degree=5, linear_prior=0.1, **NET)
    with pytest.raises(ConfigError, match="linear_prior"):
        _sinr(2, linear_prior=-1.0)
    with pytest.raises(ConfigError, match="linear_smoothness"):
        _sinr(2, linear_smoothness=0.0)
    with pytest.raises(ConfigError, match="linear_fit"):
        _sinr(2, linear_fit="kriging")
    with pytest.raises(ConfigError, match="region_stretch"):
        _sinr(2, region_stretch="mercator")
    with pytest.raises(ConfigError, match="region_stretch"):
        region_to_sphere({"lat": [0.0, 1.0], "lon": [0.0, 1.0]}, torch.zeros(1),
                         torch.zeros(1), "mercator")
