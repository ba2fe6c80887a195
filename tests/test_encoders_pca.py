"""Tests of the area-weighted PCA encoder against numpy's SVD and its own algebra."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.encoders.base import encoders
from xlatda.encoders.pca import PCA
from xlatda.errors import ConfigError, NotFittedError, ShapeError

F64 = torch.float64


def _latlon(nlat, nlon, poles=False):
    if poles:
        lat = np.linspace(-90.0, 90.0, nlat)
    else:
        lat = (np.arange(nlat) + 0.5) * 180.0 / nlat - 90.0
    lon = np.arange(nlon) * 360.0 / nlon
    return {"kind": "latlon", "lat": lat.tolist(), "lon": lon.tolist()}


def _fields(n, c, nlat, nlon, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, nlat, nlon, generator=g, dtype=F64)


def _grid_points(grid, n_channels):
    la, lo = np.meshgrid(grid["lat"], grid["lon"], indexing="ij")
    pts = torch.tensor(np.stack([la.ravel(), lo.ravel()], 1)).repeat(n_channels, 1)
    ch = torch.arange(n_channels).repeat_interleave(la.size)
    return pts, ch


@pytest.fixture
def fitted():
    grid = _latlon(6, 8)
    x = _fields(30, 2, 6, 8)
    pca = PCA(2, (6, 8), 7, grid=grid)
    pca.fit(x, dtype="float64", progress=False)
    return pca, x, grid


def test_matches_numpy_svd_of_weighted_anomalies(fitted):
    pca, x, grid = fitted
    w = np.cos(np.deg2rad(grid["lat"]))
    w = np.tile(np.repeat(w / w.mean(), 8), 2)
    X = x.numpy().reshape(30, -1)
    _, s, vt = np.linalg.svd((X - X.mean(0)) * np.sqrt(w), full_matrices=False)
    eofs = pca.components.numpy() * np.sqrt(w)  # weights applied back
    cos = np.abs((eofs * vt[:7]).sum(1))
    assert np.allclose(cos, 1.0, atol=1e-10)  # equal up to sign
    assert np.allclose(pca.singular_values.numpy(), s[:7], rtol=1e-10)
    assert np.allclose(pca.explained_variance.numpy(), s[:7] ** 2 / 29, rtol=1e-10)
    assert np.allclose(pca.explained_variance_ratio.numpy(), s[:7] ** 2 / (s**2).sum())
    assert np.allclose(pca.mean.numpy(), x.numpy().mean(0))
    # the scores are the left singular vectors times the singular values (scipy this time)
    u, s2, _ = scipy.linalg.svd((X - X.mean(0)) * np.sqrt(w), full_matrices=False)
    z = pca.encode(x).numpy()
    assert np.allclose(np.abs(z), np.abs(u[:, :7] * s2[:7]), atol=1e-10)


def test_components_are_orthonormal_in_area_weighted_product(fitted):
    pca, _, _ = fitted
    gram = (pca.components * pca.weights) @ pca.components.T
    assert torch.allclose(gram, torch.eye(7, dtype=F64), atol=1e-10)
    assert pca.eofs.shape == (7, 2, 6, 8)


def test_full_rank_reconstructs_exactly():
    grid = _latlon(4, 6)
    x = _fields(10, 1, 4, 6, seed=3)
    for k in (9, 10):  # rank of the anomalies is 9; a 10th component is null
        pca = PCA(1, (4, 6), k, grid=grid)
        pca.fit(x, dtype="float64", progress=False)
        assert torch.allclose(pca.decode(pca.encode(x)), x, atol=1e-10)
    assert float(pca.explained_variance_ratio.sum()) == pytest.approx(1.0)
    assert float(pca.singular_values[-1]) < 1e-10
    assert torch.all(pca.components[-1] == 0)


def test_grid_with_poles_reconstructs_exactly():
    grid = _latlon(5, 4, poles=True)  # cos(lat) = 0 on the first and last rows
    x = _fields(8, 1, 5, 4, seed=1)
    pca = PCA(1, (5, 4), 7, grid=grid)
    pca.fit(x, dtype="float64", progress=False)
    assert torch.isfinite(pca.components).all()
    assert torch.allclose(pca.decode(pca.encode(x)), x, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 12),
    c=st.integers(1, 3),
    nlat=st.integers(2, 5),
    nlon=st.integers(2, 6),
    frac=st.floats(0.1, 1.0),
    whiten=st.booleans(),
)
def test_round_trips(n, c, nlat, nlon, frac, whiten):
    d = c * nlat * nlon
    k = max(1, int(frac * min(n - 1, d)))
    x = _fields(n, c, nlat, nlon, seed=n + d)
    pca = PCA(c, (nlat, nlon), k, grid=_latlon(nlat, nlon), whiten=whiten)
    pca.fit(x, dtype="float64", progress=False)
    z = pca.encode(x)
    assert z.shape == (n, k)
    assert torch.allclose(pca.encode(pca.decode(z)), z, atol=1e-8)
    if k == min(n - 1, d):
        assert torch.allclose(pca.decode(z), x, atol=1e-8)


def test_whiten_gives_unit_variance_codes():
    x = _fields(40, 2, 4, 4)
    pca = PCA(2, (4, 4), 5, grid=_latlon(4, 4), whiten=True)
    pca.fit(x, dtype="float64", progress=False)
    z = pca.encode(x)
    assert torch.allclose(z.var(0), torch.ones(5, dtype=F64))
    assert torch.allclose(z.mean(0), torch.zeros(5, dtype=F64), atol=1e-12)


def test_decode_at_grid_points_equals_decode(fitted):
    pca, x, grid = fitted
    pts, ch = _grid_points(grid, 2)
    z = pca.encode(x[:5])
    assert torch.allclose(pca.decode_at(z, pts, ch), pca.decode(z).reshape(5, -1), atol=1e-12)


@pytest.mark.parametrize("whiten", [False, True])
def test_encode_from_all_grid_points_equals_encode(whiten):
    grid = _latlon(6, 8)
    x = _fields(30, 2, 6, 8)
    pca = PCA(2, (6, 8), 7, grid=grid, whiten=whiten)
    pca.fit(x, dtype="float64", progress=False)
    pts, ch = _grid_points(grid, 2)
    y = _fields(4, 2, 6, 8, seed=9)  # not in the span: a real least-squares problem
    z = pca.encode_from(y.reshape(4, -1), pts, ch)
    assert torch.allclose(z, pca.encode(y), atol=1e-10)


def test_encode_from_scattered_points_inverts_decode_at(fitted):
    pca, x, _ = fitted
    g = torch.Generator().manual_seed(5)
    pts = torch.stack(
        [
            torch.rand(40, generator=g, dtype=F64) * 100 - 50,
            torch.rand(40, generator=g, dtype=F64) * 360,
        ],
        1,
    )
    ch = torch.randint(0, 2, (40,), generator=g)
    z = pca.encode(x[:3])
    vals = pca.decode_at(z, pts, ch)
    assert torch.allclose(pca.encode_from(vals, pts, ch), z, atol=1e-9)
    # batched weights give the same answer when they agree
    w = torch.ones(3, 40, dtype=F64)
    assert torch.allclose(pca.encode_from(vals, pts, ch, weights=w), z, atol=1e-9)


def test_encode_from_ridge_matches_closed_form(fitted):
    pca, _, _ = fitted
    pts = torch.tensor([[10.0, 20.0], [-30.0, 200.0], [45.0, 300.0]], dtype=F64)
    ch = torch.tensor([0, 1, 0])
    vals = torch.tensor([[1.0, -0.5, 2.0]], dtype=F64)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    matrix, offset = pca.linear_map(pts, ch)
    A = matrix.T @ (w[:, None] * matrix) + 0.1 * torch.eye(7, dtype=F64)
    ref = torch.linalg.solve(A, matrix.T @ (w * (vals[0] - offset)))
    z = pca.encode_from(vals, pts, ch, weights=w, ridge=0.1)
    assert torch.allclose(z[0], ref, atol=1e-10)
    with pytest.raises(ConfigError):
        pca.encode_from(vals, pts, ch, weights=-w)


def test_decode_at_is_differentiable(fitted):
    pca, _, _ = fitted
    z = torch.zeros(2, 7, dtype=F64, requires_grad=True)
    pts = torch.tensor([[10.0, 20.0]], dtype=F64)
    pca.decode_at(z, pts, torch.tensor([1])).sum().backward()
    matrix, _ = pca.linear_map(pts, torch.tensor([1]))
    assert torch.allclose(z.grad, matrix.sum(0).expand(2, 7))


def test_points_and_generic_grids():
    g = torch.Generator().manual_seed(0)
    lat, lon = (torch.rand(20, generator=g) * 160 - 80).tolist(), (torch.rand(20) * 360).tolist()
    pca = PCA(1, (20,), 4, grid={"kind": "points", "lat": lat, "lon": lon})
    x = torch.randn(12, 1, 20, generator=g, dtype=F64)
    pca.fit(x, dtype="float64", progress=False)
    pts = torch.tensor([lat, lon], dtype=F64).T
    ch = torch.zeros(20, dtype=torch.long)
    z = pca.encode(x)
    assert torch.allclose(pca.decode_at(z, pts, ch), pca.decode(z)[:, 0], atol=1e-12)
    assert torch.allclose(pca.encode_from(pca.decode(z)[:, 0], pts, ch), z, atol=1e-10)

    gen = PCA(2, (10,), 3, grid={"kind": "generic", "n": 10, "periodic": True})
    x = torch.randn(8, 2, 10, generator=g, dtype=F64)
    gen.fit(x, dtype="float64", progress=False)
    idx = torch.arange(10, dtype=F64)[:, None].repeat(2, 1)
    ch = torch.arange(2).repeat_interleave(10)
    assert torch.allclose(gen.encode_from(x.reshape(8, -1), idx, ch), gen.encode(x), atol=1e-10)


def test_config_rebuild_state_dict_bit_exact(fitted):
    pca, x, _ = fitted
    cfg = json.loads(json.dumps(pca.config))
    other = encoders.get("pca")(**cfg).to(F64)
    with pytest.raises(NotFittedError):
        other.encode(x)
    other.load_state_dict(pca.state_dict())
    assert torch.equal(other.encode(x), pca.encode(x))
    z = pca.encode(x)
    assert torch.equal(other.decode(z), pca.decode(z))
    assert set(pca.state_dict()) == {
        "_fitted",
        "mean",
        "components",
        "singular_values",
        "explained_variance",
        "explained_variance_ratio",
    }


def test_lowrank_svd_agrees_and_leaves_rng_alone():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 64, generator=g, dtype=F64)
    x = (
        torch.randn(50, 3, generator=g, dtype=F64) * torch.tensor([5.0, 3.0, 2.0], dtype=F64)
    ) @ basis + 1e-3 * torch.randn(50, 64, generator=g, dtype=F64)
    x = x.reshape(50, 1, 8, 8)
    full = PCA(1, (8, 8), 3, grid=_latlon(8, 8), svd="full")
    full.fit(x, dtype="float64", progress=False)
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    low = PCA(1, (8, 8), 3, grid=_latlon(8, 8), svd="lowrank")
    low.fit(x, dtype="float64", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(low.singular_values, full.singular_values, rtol=1e-8)
    assert torch.allclose(low.components, full.components, atol=1e-6)  # signs fixed alike


def test_float32_default_and_history():
    x = _fields(10, 1, 4, 4).float()
    pca = PCA(1, (4, 4), 3)
    hist = pca.fit(x, x[:4], epochs=50, lr=1.0, progress=False)
    assert pca.components.dtype == torch.float32
    assert len(hist["train_loss"]) == 1 and len(hist["val_loss"]) == 1
    assert hist["epochs"] == 1 and hist["seconds"] >= 0
    assert pca.encode(x.double()).dtype == torch.float32  # inputs follow the encoder


def test_errors():
    pca = PCA(1, (4, 4), 3)
    with pytest.raises(NotFittedError):
        pca.encode(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ShapeError):
        pca.fit(torch.zeros(5, 2, 4, 4))
    with pytest.raises(ConfigError, match="at least 2"):
        pca.fit(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ConfigError, match="latent_dim"):
        PCA(1, (4, 4), 9).fit(torch.randn(5, 1, 4, 4))
    with pytest.raises(ConfigError, match="unknown arguments"):
        pca.fit(torch.randn(5, 1, 4, 4), epocs=3)
    with pytest.raises(ConfigError, match="svd"):
        PCA(1, (4, 4), 3, svd="qr")
    with pytest.raises(ConfigError, match="spatial shape"):
        PCA(1, (4, 4), 3, grid=_latlon(4, 5))
    pca.fit(torch.randn(5, 1, 4, 4), progress=False)
    with pytest.raises(ShapeError):
        pca.decode(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="grid"):
        pca.decode_at(torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_fit_keeps_the_encoder_dtype_unless_told():
    x = _fields(10, 1, 4, 4)
    pca = PCA(1, (4, 4), 3).to(F64)
    pca.fit(x, progress=False)
    assert pca.components.dtype == F64
    pca.fit(x, dtype="float32", progress=False)
    assert pca.components.dtype == torch.float32


@pytest.mark.parametrize("whiten", [False, True])
def test_encode_projection_cache_follows_the_buffers(whiten):
    grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
    p = PCA(2, (3, 4), latent_dim=4, grid=grid, whiten=whiten)
    x = torch.randn(20, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    p.fit(x, progress=False)

    def reference():
        return (x - p.mean).reshape(20, -1) @ ((p.components * p.weights).T / p._scale())

    with torch.inference_mode():
        first, again = p.encode(x), p.encode(x)
    assert torch.equal(first, reference()) and torch.equal(again, reference())
    with torch.no_grad():
        p.components.mul_(2.0)  # in place: a new version
        p.explained_variance.mul_(4.0)
    assert torch.equal(p.encode(x), reference())
    p.load_state_dict({k: v.clone() * 0.5 if k == "components" else v
                       for k, v in p.state_dict().items()})
    assert torch.equal(p.encode(x), reference())
    p.fit(x[:10], progress=False)  # refit: new values in the same buffers
    assert torch.equal(p.encode(x), reference())
    p.to(torch.float64)  # new tensors
    assert p.encode(x).dtype == torch.float64
    x = x.double()
    assert torch.equal(p.encode(x), reference())
    # a projection made in inference mode is not reused where gradients flow
    with torch.inference_mode():
        p.encode(x)
    xg = x.clone().requires_grad_(True)
    p.encode(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("whiten", [False, True])
def test_decode_is_the_formula_bit_for_bit_and_differentiable(whiten):
    grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
    p = PCA(2, (3, 4), latent_dim=4, grid=grid, whiten=whiten)
    gen = torch.Generator().manual_seed(1)
    p.fit(torch.randn(20, 2, 3, 4, generator=gen), progress=False)
    z = torch.randn(7, 4, generator=gen)
    expected = p.mean + ((z * p._scale()) @ p.components).reshape(7, 2, 3, 4)
    with torch.inference_mode():
        assert torch.equal(p.decode(z), expected)
    zg = z.clone().requires_grad_(True)
    p.decode(zg).sum().backward()
    torch.testing.assert_close(zg.grad, (p.components.sum(1) * p._scale()).expand(7, 4))


def test_pickles_after_encoding():
    # the projection cache (weak references) is left out of the pickle
    import pickle

    grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
    p = PCA(2, (3, 4), latent_dim=4, grid=grid)
    x = torch.randn(20, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    p.fit(x, progress=False)
    z = p.encode(x)
    q = pickle.loads(pickle.dumps(p))
    assert torch.equal(q.encode(x), z) and torch.equal(p.encode(x), z)
