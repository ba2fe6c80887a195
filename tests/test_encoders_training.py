"""Tests of xlatda.encoders.training: weights, the training loop, auto-decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import xlatda
from xlatda.encoders.training import (
    PointOperatorCache,
    area_weights,
    autodecode,
    check_grid,
    point_weights,
    seeded,
    train_module,
    weighted_mse,
)
from xlatda.errors import ConfigError, ShapeError

LAT = [-60.0, -20.0, 20.0, 60.0]
LON = [0.0, 90.0, 180.0, 270.0]


# -- grids and weights -----------------------------------------------------
def test_area_weights_latlon_are_coslat_with_mean_one():
    w = area_weights({"kind": "latlon", "lat": LAT, "lon": LON}, (4, 4), dtype=torch.float64)
    assert w.shape == (4, 4)
    assert torch.allclose(w.mean(), torch.tensor(1.0, dtype=torch.float64))
    ref = np.cos(np.deg2rad(LAT))
    assert np.allclose(w[:, 1].numpy(), ref / ref.mean())
    assert torch.equal(w[:, 0], w[:, 3])


def test_area_weights_points_generic_and_none():
    w = area_weights(
        {"kind": "points", "lat": [0.0, 60.0], "lon": [1.0, 2.0]}, (2,), dtype=torch.float64
    )
    assert np.allclose(w.numpy(), [4 / 3, 2 / 3])
    assert torch.equal(area_weights({"kind": "generic", "n": 5}, (5,)), torch.ones(5))
    assert torch.equal(area_weights(None, (2, 3)), torch.ones(2, 3))


def test_area_weights_all_at_pole_fall_back_to_uniform():
    w = area_weights({"kind": "points", "lat": [90.0, -90.0], "lon": [0.0, 0.0]}, (2,))
    assert torch.equal(w, torch.ones(2))


def test_point_weights():
    pts = torch.tensor([[0.0, 10.0], [60.0, 20.0]], dtype=torch.float64)
    assert np.allclose(point_weights({"kind": "latlon"}, pts).numpy(), [4 / 3, 2 / 3])
    assert torch.equal(point_weights({"kind": "generic"}, pts[:, :1]), torch.ones(2).double())


def test_check_grid_normalises_and_refuses_mismatch():
    g = check_grid({"kind": "latlon", "lat": np.array(LAT), "lon": torch.tensor(LON)}, (4, 4))
    assert g["lat"] == LAT and isinstance(g["lon"][0], float)
    assert check_grid(None, (3,)) is None
    assert check_grid({"kind": "generic"}, (7,)) == {"kind": "generic", "n": 7, "periodic": False}
    with pytest.raises(ConfigError, match="spatial shape"):
        check_grid({"kind": "latlon", "lat": LAT, "lon": LON}, (4, 5))
    with pytest.raises(ConfigError, match="grid kind"):
        check_grid({"kind": "mesh"}, (4,))
    with pytest.raises(ConfigError, match="as many latitudes"):
        check_grid({"kind": "points", "lat": [0.0], "lon": [0.0, 1.0]}, (1,))


def test_weighted_mse():
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    w = area_weights({"kind": "latlon", "lat": LAT, "lon": LON}, (4, 4))
    ref = ((pred - target) ** 2 * w).sum() / pred.numel()
    assert torch.allclose(weighted_mse(pred, target, w), ref)
    assert torch.allclose(weighted_mse(pred, target), ((pred - target) ** 2).mean())


def test_seeded_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded(7):
        a = torch.randn(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(7):
        assert torch.equal(torch.randn(3), a)


# -- training loop ---------------------------------------------------------
def _regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def _linear(seed=0):
    with seeded(seed):
        return nn.Linear(3, 1)


def _mse_loss(model):
    return lambda batch, gen: ((model(batch[0]) - batch[1]) ** 2).mean()


def test_train_module_loss_falls_and_history():
    x, y = _regression()
    model = _linear()
    hist = train_module(
        model,
        _mse_loss(model),
        (x, y),
        epochs=30,
        batch_size=16,
        lr=0.05,
        progress=False,
        patience=None,
    )
    assert set(hist) >= {"train_loss", "val_loss", "epochs", "seconds", "best_epoch"}
    assert hist["epochs"] == 30 == len(hist["train_loss"]) == len(hist["val_loss"])
    assert hist["train_loss"][-1] < 0.1 * hist["train_loss"][0]
    assert hist["seconds"] > 0


def test_train_module_is_reproducible_and_seed_matters():
    x, y = _regression()
    states = []
    for seed in (0, 0, 1):
        model = _linear()
        train_module(
            model,
            _mse_loss(model),
            (x, y),
            epochs=3,
            batch_size=8,
            lr=0.01,
            seed=seed,
            progress=False,
        )
        states.append(model.weight.detach().clone())
    assert torch.equal(states[0], states[1])
    assert not torch.equal(states[0], states[2])


def test_train_module_restores_best_weights():
    x, y = _regression()
    xv, yv = _regression(32, seed=5)
    model = _linear()
    # a large learning rate makes the validation loss jump around
    hist = train_module(
        model,
        _mse_loss(model),
        (x, y),
        (xv, yv),
        epochs=15,
        batch_size=4,
        lr=0.8,
        progress=False,
        patience=None,
    )
    with torch.no_grad():
        final = float(((model(xv) - yv) ** 2).mean())
    assert final == pytest.approx(min(hist["val_loss"]), rel=1e-5)
    assert hist["best_epoch"] == int(np.argmin(hist["val_loss"]))


def test_train_module_early_stopping():
    x, y = _regression()
    model = _linear()
    hist = train_module(
        model,
        _mse_loss(model),
        (x, y),
        epochs=500,
        batch_size=64,
        lr=1e-7,
        progress=False,
        patience=3,
        min_delta=1.0,
    )
    assert hist["stopped_early"] and hist["epochs"] == 4


def test_train_module_without_validation_and_with_plateau():
    x, y = _regression()
    model = _linear()
    hist = train_module(
        model,
        _mse_loss(model),
        (x, y),
        epochs=12,
        lr=0.5,
        val_fraction=0.0,
        lr_plateau=True,
        plateau_patience=0,
        progress=False,
        patience=None,
    )
    assert hist["val_loss"] == []
    assert min(hist["lr"]) < 0.5


def test_train_module_progress_follows_option(capsys):
    x, y = _regression()
    model = _linear()
    with xlatda.set_options(progress=False):
        train_module(model, _mse_loss(model), (x, y), epochs=2, desc="quiet-bar")
    assert "quiet-bar" not in capsys.readouterr().err


def test_train_module_nan_loss_warns_and_restores():
    x, y = _regression()
    model = _linear()
    w0 = model.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="training loss"):
        hist = train_module(
            model, lambda b, g: model(b[0]).sum() * math.nan, (x, y), epochs=5, progress=False
        )
    assert hist["stopped_early"]
    assert torch.equal(model.weight, w0)


def test_train_module_refuses_bad_settings():
    x, y = _regression()
    model = _linear()
    with pytest.raises(ConfigError):
        train_module(model, _mse_loss(model), (x, y), lr=0.0)
    with pytest.raises(ConfigError):
        train_module(model, _mse_loss(model), (x, y), val_fraction=1.0)
    with pytest.raises(ShapeError):
        train_module(model, _mse_loss(model), (x, y[:3]))


def test_train_module_passes_generator_to_loss():
    x, y = _regression()
    model = _linear()
    seen = []

    def loss(batch, gen):
        seen.append(float(torch.rand(1, generator=gen)))
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    train_module(model, loss, (x, y), epochs=1, batch_size=64, progress=False, seed=3)
    first = list(seen)
    seen.clear()
    model = _linear()
    train_module(model, loss, (x, y), epochs=1, batch_size=64, progress=False, seed=3)
    assert seen == first


# -- auto-decoding ---------------------------------------------------------
def _linear_decoder(P=12, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(P, K, generator=g, dtype=torch.float64)
    b = torch.randn(P, generator=g, dtype=torch.float64)
    return M, b, (lambda z, points, channel: b + z @ M.T)


def test_autodecode_recovers_latent_of_linear_decoder():
    *_, dec = _linear_decoder()
    z_true = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = autodecode(
        dec,
        dec(z_true, None, None),
        None,
        None,
        torch.zeros(3, dtype=torch.float64),
        steps=1000,
        lr=0.05,
        progress=False,
    )
    assert torch.allclose(z, z_true, atol=1e-4)


def test_autodecode_batched_equals_one_by_one():
    *_, dec = _linear_decoder()
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, 12, dtype=torch.float64, generator=g)
    z0 = torch.zeros(3, dtype=torch.float64)
    kw = {"steps": 60, "lr": 0.05, "patience": 5, "progress": False}
    zb, lb = autodecode(dec, y, None, None, z0, return_loss=True, **kw)
    for i in range(4):
        zi, li = autodecode(dec, y[i : i + 1], None, None, z0, return_loss=True, **kw)
        assert torch.allclose(zb[i], zi[0], atol=1e-12)
        assert torch.allclose(lb[i], li[0], atol=1e-12)


def test_autodecode_weights_and_ridge_match_normal_equations():
    M, b, dec = _linear_decoder(P=10, K=2)
    g = torch.Generator().manual_seed(4)
    y = torch.randn(3, 10, dtype=torch.float64, generator=g)
    y[:, -1] = 1e6  # ignored: zero weight
    w = torch.rand(10, dtype=torch.float64, generator=g) + 0.5
    w[-1] = 0.0
    l2 = 0.3
    z = autodecode(
        dec,
        y,
        None,
        None,
        torch.zeros(2, dtype=torch.float64),
        weights=w,
        l2=l2,
        steps=3000,
        min_lr=1e-7,
        rel_tol=0.0,
        lr=0.05,
        progress=False,
    )
    A = M.T @ (w[:, None] * M) / 10 + l2 * torch.eye(2, dtype=torch.float64)
    ref = torch.linalg.solve(A, (M.T @ (w[:, None] * (y - b).T)) / 10).T
    assert torch.allclose(z, ref, atol=1e-4)


def test_autodecode_works_in_inference_mode_and_freezes_decoder():
    lin = nn.Linear(2, 6).double()
    y = lin(torch.tensor([[0.3, -0.7]], dtype=torch.float64)).detach()
    with torch.inference_mode():
        z = autodecode(
            lambda z, p, c: lin(z),
            y,
            None,
            None,
            torch.zeros(2).double(),
            steps=800,
            lr=0.05,
            progress=False,
        )
    assert lin.weight.grad is None
    assert torch.allclose(z, torch.tensor([[0.3, -0.7]], dtype=torch.float64), atol=1e-3)


def test_autodecode_keeps_the_best_latent():
    # loss oscillates with a large lr; the returned z has the smallest loss seen
    *_, dec = _linear_decoder()
    y = dec(torch.ones(1, 3, dtype=torch.float64), None, None)
    z, loss = autodecode(
        dec,
        y,
        None,
        None,
        torch.zeros(3, dtype=torch.float64),
        steps=40,
        lr=2.0,
        progress=False,
        return_loss=True,
    )
    assert torch.allclose(((dec(z, None, None) - y) ** 2).mean(-1), loss)


def test_autodecode_refuses_bad_values():
    _, _, dec = _linear_decoder()
    with pytest.raises(ShapeError):
        autodecode(dec, torch.zeros(12), None, None, torch.zeros(3))


# -- point operators -------------------------------------------------------
def test_point_operator_cache():
    cache = PointOperatorCache(maxsize=2)
    grid = {"kind": "latlon", "lat": LAT, "lon": LON}
    pts = torch.tensor([[0.0, 45.0], [20.0, 90.0]])
    ch = torch.tensor([0, 1])
    kw = {"dtype": torch.float64, "device": torch.device("cpu")}
    op = cache.get(grid, 2, (4, 4), pts, ch, **kw)
    assert cache.get(grid, 2, (4, 4), pts.clone(), ch.clone(), **kw) is op
    x = torch.arange(32.0, dtype=torch.float64).reshape(2, 4, 4)
    vals = op(x)
    assert vals[1] == x[1, 2, 1]  # on a grid point
    assert vals[0] == pytest.approx(
        0.5 * (x[0, 1, 0] + x[0, 1, 1]) * 0.5 + 0.5 * (x[0, 2, 0] + x[0, 2, 1]) * 0.5
    )
    cache.get(grid, 2, (4, 4), pts + 1, ch, **kw)
    cache.get(grid, 2, (4, 4), pts + 2, ch, **kw)
    assert cache.get(grid, 2, (4, 4), pts, ch, **kw) is not op  # evicted
    with pytest.raises(ConfigError, match="grid"):
        cache.get(None, 2, (4, 4), pts, ch, **kw)
    with pytest.raises(ShapeError):
        cache.get(grid, 2, (4, 4), pts[:, :1], ch, **kw)
    with pytest.raises(ShapeError):
        cache.get(grid, 2, (4, 4), pts, ch[:1], **kw)


def test_point_operator_cache_generic_and_points():
    cache = PointOperatorCache()
    kw = {"dtype": torch.float64, "device": torch.device("cpu")}
    op = cache.get(
        {"kind": "generic", "n": 4, "periodic": True},
        1,
        (4,),
        torch.tensor([0.5, 3.5]),
        torch.tensor([0, 0]),
        **kw,
    )
    assert torch.allclose(
        op(torch.tensor([[0.0, 1.0, 2.0, 3.0]]).double()), torch.tensor([0.5, 1.5]).double()
    )
    op = cache.get(
        {"kind": "points", "lat": [0.0, 50.0], "lon": [0.0, 10.0]},
        1,
        (2,),
        torch.tensor([[49.0, 11.0]]),
        torch.tensor([0]),
        **kw,
    )
    assert op(torch.tensor([[3.0, 7.0]]).double()).item() == 7.0
