"""Tests of xlatda.dynamics.latent_ode and xlatda.dynamics.training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import expm
from torch import nn

from xlatda.dynamics.latent_ode import LatentODE, dynamics, mlp
from xlatda.dynamics.physical import ForecastModel
from xlatda.dynamics.training import (
    _rollout,
    fit_dynamics,
    reanchor_probability,
    window_indices,
)
from xlatda.errors import ConfigError, ShapeError, UnknownNameError

F64 = torch.float64
A_DAMPED = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)  # damped rotation


class Linear(nn.Module):
    """dz/ds = A z (no parameters fed in)."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A.mT


class ThetaDecay(nn.Module):
    """dz/ds = -theta z with input [z; theta] (n_params = 1)."""

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return -inp[..., -1:] * inp[..., :-1]


def exact(A: torch.Tensor, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """expm(A t) z0 for every time: (*batch, T, d)."""
    mats = [torch.from_numpy(expm(A.numpy() * float(t))) for t in times - times[0]]
    return torch.stack([z0 @ M.mT for M in mats], dim=-2)


def linear_ode(method: str, **kw) -> LatentODE:
    return LatentODE(
        2, vector_field=Linear(A_DAMPED), method=method, dtype=F64, rtol=1e-10, atol=1e-12, **kw
    )


IRREGULAR = torch.tensor([0.0, 0.13, 0.5, 1.7, 2.0, 3.33], dtype=F64)


# --------------------------------------------------------------------------
# integrator
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "tol"), [("rk4", 5e-7), ("dopri5", 1e-8)])
def test_linear_ode_matches_exact_solution_at_irregular_times(method, tol):
    model = linear_ode(method, step_size=0.05)
    z0 = torch.randn(4, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = model.evolve(z0, IRREGULAR)
    assert out.shape == (4, 3, len(IRREGULAR), 2)
    torch.testing.assert_close(out, exact(A_DAMPED, z0, IRREGULAR), atol=tol, rtol=0)
    assert torch.equal(out[..., 0, :], z0)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_backward_in_time_and_adjoint(method):
    model = linear_ode(method, step_size=0.05)
    z0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    fwd = model.evolve(z0, IRREGULAR)
    back = model.evolve(fwd[:, -1], IRREGULAR.flip(0))
    torch.testing.assert_close(back[:, -1], z0, atol=1e-6, rtol=0)
    adj = linear_ode(method, step_size=0.05, adjoint=True)
    torch.testing.assert_close(adj.evolve(z0, IRREGULAR), fwd, atol=1e-12, rtol=0)


def test_rk4_converges_at_fourth_order():
    z0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ref = exact(A_DAMPED, z0, t)[-1]
    errs = [
        float((linear_ode("rk4", step_size=h).evolve(z0, t)[-1] - ref).norm().detach())
        for h in (0.4, 0.2)
    ]
    assert 12 < errs[0] / errs[1] < 20  # 2**4 = 16


def test_gradcheck_through_integrator():
    model = LatentODE(3, n_params=1, width=5, depth=2, step_size=0.4, dtype=F64, seed=2)
    times = torch.tensor([0.0, 0.3, 1.1], dtype=F64)
    z0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    theta = torch.tensor([[0.3], [-0.2]], dtype=F64)
    z0.requires_grad_(True)
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, th: model.evolve(z, times, th), (z0, theta))
    w = model.net[0].weight
    assert torch.autograd.gradcheck(
        lambda z, th: torch.autograd.grad(model.step(z, 1.0, th).sum(), w, create_graph=True)[0],
        (z0, theta),
    )


def test_adjoint_gradients_match_backprop():
    kw = {"width": 6, "depth": 2, "n_params": 1, "step_size": 0.05, "dtype": F64, "seed": 3}
    direct, adjoint = LatentODE(2, **kw), LatentODE(2, adjoint=True, **kw)
    z0 = torch.tensor([[0.5, -0.3]], dtype=F64)
    grads = []
    for model in (direct, adjoint):
        theta = torch.tensor([0.7], dtype=F64, requires_grad=True)
        z = z0.clone().requires_grad_(True)
        model.evolve(z, torch.tensor([0.0, 0.7, 1.5], dtype=F64), theta).pow(2).sum().backward()
        grads.append((z.grad, theta.grad, model.net[0].weight.grad))
    for g_direct, g_adjoint in zip(*grads):
        torch.testing.assert_close(g_adjoint, g_direct, atol=1e-6, rtol=1e-5)


def test_evolve_irregular_equals_chained_steps():
    model = LatentODE(3, width=8, depth=2, step_size=0.25, dtype=F64, seed=0)
    z0 = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = model.evolve(z0, IRREGULAR)
    z, chained = z0, [z0]
    for dt in (IRREGULAR[1:] - IRREGULAR[:-1]).tolist():
        z = model.step(z, dt)
        chained.append(z)
    torch.testing.assert_close(out, torch.stack(chained, -2), atol=1e-13, rtol=0)


def test_integrate_equals_chained_steps_and_every():
    model = LatentODE(3, width=8, depth=2, step_size=0.3, dtype=F64, seed=1)
    z0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    traj = model.integrate(z0, steps=7, dt=0.7)
    assert traj.shape == (2, 8, 3)
    z = z0
    for k in range(1, 8):
        z = model.step(z, 0.7)
        torch.testing.assert_close(traj[:, k], z, atol=1e-13, rtol=0)
    every = model.integrate(z0, steps=7, dt=0.7, every=3)
    assert every.shape == (2, 3, 3)
    torch.testing.assert_close(every, traj[:, [0, 3, 6]], atol=1e-13, rtol=0)
    assert model.integrate(z0, steps=0).shape == (2, 1, 3)


def test_per_member_dt_tensor():
    model = linear_ode("rk4", step_size=0.01)
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
    dt = torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    out = model.step(z0, dt)
    for i in range(3):
        ref = exact(A_DAMPED, z0[i], torch.stack((dt[i] * 0, dt[i])))[-1]
        torch.testing.assert_close(out[i], ref, atol=1e-9, rtol=0)


def test_forecast_model_interface():
    model = LatentODE(4, width=8, depth=1)
    assert isinstance(model, ForecastModel)
    assert model.state_shape == (4,)
    z = torch.zeros(3, 4)
    assert model.step(z).shape == (3, 4)
    assert torch.equal(model(z), model.step(z, 1.0))


# --------------------------------------------------------------------------
# theta conditioning
# --------------------------------------------------------------------------


def test_theta_changes_trajectory_and_batched_equals_looped():
    model = LatentODE(3, n_params=2, width=16, depth=2, dtype=F64, seed=0)
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 3, dtype=F64, generator=gen)
    theta = torch.randn(6, 2, dtype=F64, generator=gen)
    batched = model.integrate(z0, steps=5, theta=theta)
    looped = torch.stack([model.integrate(z0[i], steps=5, theta=theta[i]) for i in range(6)])
    torch.testing.assert_close(batched, looped, atol=1e-12, rtol=0)
    other = model.integrate(z0, steps=5, theta=theta + 1.0)
    assert (other - batched)[:, 1:].abs().amin() > 0
    # one theta for all members broadcasts
    shared = model.integrate(z0, steps=5, theta=theta[0])
    torch.testing.assert_close(
        shared, model.integrate(z0, steps=5, theta=theta[0].expand(6, 2)), atol=0, rtol=0
    )


def test_theta_exact_decay_and_normalisation():
    model = LatentODE(
        2, n_params=1, vector_field=ThetaDecay(), dtype=F64, step_size=0.01, method="rk4"
    )
    z0 = torch.ones(3, 2, dtype=F64)
    theta = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64)
    out = model.step(z0, 1.5, theta)
    torch.testing.assert_close(out, torch.exp(-1.5 * theta).expand(3, 2), atol=1e-9, rtol=0)
    model.set_theta_normalisation([1.0], [2.0])  # the field now sees (theta - 1) / 2
    out = model.step(z0, 1.5, theta)
    torch.testing.assert_close(
        out, torch.exp(-1.5 * (theta - 1) / 2).expand(3, 2), atol=1e-9, rtol=0
    )


def test_theta_gradient_flows_with_adjoint():
    model = LatentODE(2, n_params=1, width=8, depth=1, adjoint=True, dtype=F64)
    theta = torch.tensor([0.3], dtype=F64, requires_grad=True)
    model.step(torch.ones(4, 2, dtype=F64), 1.0, theta).sum().backward()
    assert theta.grad is not None and theta.grad.abs().item() > 0


def test_learned_theta_normalisation_is_trainable():
    model = LatentODE(2, n_params=1, width=8, depth=1, learn_theta_norm=True, theta_mean=[1.0])
    names = {n for n, _ in model.named_parameters()}
    assert {"theta_mean", "theta_log_std"} <= names
    model.step(torch.ones(2, 2), theta=torch.tensor([0.5])).sum().backward()
    assert model.theta_mean.grad is not None


# --------------------------------------------------------------------------
# construction, serialisation, errors
# --------------------------------------------------------------------------


def test_registry_and_config_round_trip_bit_exact():
    assert dynamics.get("ode") is LatentODE
    with pytest.raises(UnknownNameError, match="known: 'linear', 'ode'"):
        dynamics.get("sde")
    model = LatentODE(
        5,
        n_params=2,
        width=12,
        depth=2,
        method="dopri5",
        dt_unit=21600.0,
        time_units="s",
        theta_mean=[1.0, 2.0],
        theta_std=[0.5, 3.0],
        seed=7,
        dtype="float64",
    )
    with torch.no_grad():
        model.net[0].weight.add_(0.123)  # "trained"
    config = json.loads(json.dumps(model.config))
    rebuilt = type(model)(**config)
    rebuilt.load_state_dict(model.state_dict())
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k
    z = torch.randn(3, 5, dtype=F64)
    th = torch.randn(3, 2, dtype=F64)
    assert torch.equal(rebuilt.evolve(z, [0.0, 0.4, 2.0], th), model.evolve(z, [0.0, 0.4, 2.0], th))


def test_seeded_init_uses_no_global_rng():
    state = torch.get_rng_state()
    a = LatentODE(4, width=8, depth=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = LatentODE(4, width=8, depth=2, seed=1)
    c = LatentODE(4, width=8, depth=2, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    # out_scale shrinks the last layer; the bias starts at 0
    net = mlp(3, 2, 8, 1, out_scale=0.0, seed=0)
    assert torch.count_nonzero(net(torch.randn(4, 3))) == 0


def test_ode_time_conversion():
    model = LatentODE(2, width=4, depth=1, dt_unit=3600.0, time_units="s")
    assert model.time_scale == 3600.0
    t = np.array(["2026-01-01T00:00", "2026-01-01T01:30"], dtype="datetime64[m]")
    torch.testing.assert_close(model.ode_time(t), torch.tensor([0.0, 1.5], dtype=F64))
    torch.testing.assert_close(
        model.ode_time(np.array([0, 7200], dtype="timedelta64[s]")),
        torch.tensor([0.0, 2.0], dtype=F64),
    )
    m2 = LatentODE(2, width=4, depth=1, dt_unit=0.05)
    torch.testing.assert_close(
        m2.ode_time([0.1, 0.2], origin=0.1), torch.tensor([0.0, 2.0], dtype=F64)
    )
    with pytest.raises(ConfigError, match="time_units='s'"):
        m2.ode_time(t)


def test_errors():
    with pytest.raises(ConfigError, match="unknown ODE method"):
        LatentODE(2, method="euler")
    with pytest.raises(ConfigError, match="activation"):
        LatentODE(2, activation="relu6")
    model = LatentODE(3, n_params=1, width=4, depth=1)
    with pytest.raises(ShapeError, match=r"\(\*batch, 3\)"):
        model.step(torch.zeros(2, 4), theta=torch.zeros(1))
    with pytest.raises(ConfigError, match="pass theta"):
        model.step(torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="theta must have shape"):
        model.step(torch.zeros(2, 3), theta=torch.zeros(3, 1))
    with pytest.raises(ConfigError, match="strictly increasing or decreasing"):
        model.evolve(torch.zeros(3), [0.0, 1.0, 0.5], torch.zeros(1))
    with pytest.raises(ConfigError, match="dtype"):
        model.step(torch.zeros(2, 3, dtype=F64), theta=torch.zeros(1))
    with pytest.raises(ConfigError, match="n_params=0"):
        LatentODE(3, width=4, depth=1).step(torch.zeros(3), theta=torch.zeros(1))
    with pytest.raises(ConfigError, match="no JSON config"):
        _ = linear_ode("rk4").config


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    window=st.integers(2, 12),
    stride=st.integers(1, 4),
)
def test_window_indices_never_cross_trajectories(lengths, window, stride):
    idx = window_indices(lengths, window, stride)
    assert idx.shape[1] == 2
    expected = sum(max(0, (n - window) // stride + 1) for n in lengths)
    assert idx.shape[0] == expected
    for traj, start in idx.tolist():
        assert 0 <= start and start + window <= lengths[traj]
        assert start % stride == 0
    assert len({tuple(r) for r in idx.tolist()}) == expected


def test_reanchor_schedule():
    assert [reanchor_probability(e, 4, "linear", 1.0) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert reanchor_probability(3, 10, "none") == 0.0
    assert reanchor_probability(3, 10, 0.3) == 0.3
    assert reanchor_probability(2, 10, lambda e, n: 1 / (1 + e)) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        reanchor_probability(0, 10, "exp")
    with pytest.raises(ConfigError):
        reanchor_probability(0, 10, 1.5)


def test_rollout_reanchoring_extremes():
    model = LatentODE(2, width=8, depth=1, dtype=F64, seed=0)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 2, dtype=F64, generator=gen)
    t = torch.arange(5, dtype=F64).expand(4, 5)
    with torch.no_grad():
        forced = _rollout(model, z, t, None, 1.0, gen)
        free = _rollout(model, z, t, None, 0.0, gen)
        torch.testing.assert_close(forced, model.step(z[:, :-1]), atol=1e-14, rtol=0)
        torch.testing.assert_close(free, model.integrate(z[:, 0], 4)[:, 1:], atol=1e-14, rtol=0)


def rotation_data(n_traj=6, length=40, angle=0.3, seed=0):
    c, s = math.cos(angle), math.sin(angle)
    R = 0.99 * torch.tensor([[c, -s], [s, c]])
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n_traj, 2, generator=gen)]
    for _ in range(length - 1):
        z.append(z[-1] @ R.mT)
    return torch.stack(z, 1), R


def test_training_learns_rotation():
    data, _ = rotation_data()
    model = LatentODE(2, width=32, depth=2, step_size=0.5, seed=0)
    hist = fit_dynamics(
        model,
        data,
        window=5,
        epochs=25,
        batch_size=32,
        lr=1e-2,
        val_fraction=0.25,
        seed=0,
        progress=False,
    )
    assert hist["val_loss"][hist["best_epoch"]] < 0.05 * hist["val_loss"][0]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert model.fitted
    test, _ = rotation_data(n_traj=4, length=6, seed=5)
    with torch.no_grad():
        pred = model.integrate(test[:, 0], steps=5)
    err = (pred - test).pow(2).mean().sqrt() / test.pow(2).mean().sqrt()
    assert err < 0.1


def test_training_is_reproducible_and_seed_matters():
    data, _ = rotation_data(n_traj=3, length=20)
    runs = []
    for seed in (1, 1, 2):
        model = LatentODE(2, width=8, depth=1, step_size=1.0, seed=0)
        hist = fit_dynamics(
            model,
            data,
            window=4,
            epochs=3,
            batch_size=8,
            val_fraction=0.25,
            seed=seed,
            progress=False,
        )
        runs.append((hist["train_loss"], model.net[0].weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_training_irregular_times_recovers_linear_field():
    gen = torch.Generator().manual_seed(0)
    A = torch.tensor([[-0.2, 0.8], [-0.8, -0.2]], dtype=F64)
    trajs, times = [], []
    for length in (30, 25, 40):  # ragged list, irregular per-trajectory times
        t = torch.cumsum(0.2 + 0.6 * torch.rand(length, generator=gen, dtype=F64), 0)
        z0 = torch.randn(2, generator=gen, dtype=F64)
        trajs.append(exact(A, z0, t))
        times.append(t)
    model = LatentODE(
        2, vector_field=Linear(torch.zeros(2, 2, dtype=F64)), step_size=0.25, dtype=F64
    )
    hist = fit_dynamics(
        model,
        trajs,
        times,
        window=4,
        epochs=25,
        batch_size=16,
        lr=5e-2,
        reanchor="none",
        seed=0,
        progress=False,
    )
    assert hist["best_val_loss"] < 1e-5
    torch.testing.assert_close(model.net.A.detach(), A, atol=0.02, rtol=0)


def test_training_with_theta_validation_and_decoded_loss():
    # dz/ds = -theta z for three decay rates; loss in a decoded (lifted) space
    rates = torch.tensor([[0.1], [0.2], [0.4]])
    t = torch.arange(30.0)
    data = torch.exp(-rates[:, :, None] * t[None, None, :]).mT.expand(3, 30, 2).clone()
    lift = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    model = LatentODE(2, n_params=1, width=16, depth=2, step_size=1.0, seed=0)
    hist = fit_dynamics(
        model,
        data,
        theta=rates,
        window=4,
        epochs=30,
        batch_size=32,
        lr=1e-2,
        loss=lambda z: z @ lift,
        loss_weights=torch.tensor([1.0, 1.0, 0.5]),
        val_trajectories=data[:, :12],
        val_theta=rates,
        patience=50,
        seed=0,
        progress=False,
    )
    assert hist["best_val_loss"] < 0.1 * hist["val_loss"][0]
    torch.testing.assert_close(model.theta_mean, rates.mean(0))
    assert hist["n_val_windows"] == 3 * 9


def test_early_stopping_keeps_best_weights():
    data, _ = rotation_data(n_traj=3, length=30)
    model = LatentODE(2, width=8, depth=1, step_size=1.0, seed=0)
    hist = fit_dynamics(
        model,
        data,
        window=4,
        epochs=30,
        batch_size=8,
        lr=0.5,
        lr_schedule="constant",
        reanchor="none",
        patience=2,
        val_fraction=0.25,
        seed=0,
        progress=False,
    )  # a huge learning rate: the validation loss soon stops improving
    assert hist["stopped_early"] and hist["epochs_run"] < 30
    assert hist["best_epoch"] == int(np.nanargmin(hist["val_loss"]))
    # the restored weights give the best validation loss again
    again = fit_dynamics(
        model, data, window=4, epochs=1, batch_size=8, lr=0.0, val_fraction=0.25, progress=False
    )
    assert again["val_loss"][0] == pytest.approx(hist["best_val_loss"], rel=1e-5)


def test_patience_restarts_while_reanchoring_fades():
    data, _ = rotation_data(n_traj=3, length=30)
    model = LatentODE(2, width=8, depth=1, step_size=1.0, seed=0)
    hist = fit_dynamics(
        model,
        data,
        window=4,
        epochs=12,
        batch_size=8,
        lr=0.5,
        lr_schedule="constant",
        reanchor_fraction=0.5,
        patience=1,
        val_fraction=0.25,
        seed=0,
        progress=False,
    )
    # p falls 1, 5/6, ..., 1/6 over epochs 0-5: no stop can happen before p reaches 0
    assert hist["reanchor_p"][:7] == pytest.approx([1 - e / 6 for e in range(6)] + [0.0])
    assert hist["epochs_run"] >= 7


def test_training_errors():
    data, _ = rotation_data(n_traj=2, length=8)
    model = LatentODE(2, width=4, depth=1)
    with pytest.raises(ConfigError, match="no training window"):
        fit_dynamics(model, data, window=20, val_fraction=0, progress=False)
    with pytest.raises(ConfigError, match="validation"):
        fit_dynamics(model, data, window=5, progress=False)
    with pytest.raises(ShapeError, match=r"must have shape \(T, 2\)"):
        fit_dynamics(model, torch.zeros(2, 8, 3), progress=False)
    with pytest.raises(ConfigError, match="theta"):
        fit_dynamics(LatentODE(2, n_params=1, width=4, depth=1), data, progress=False)
    with pytest.raises(ConfigError, match="patience needs validation"):
        fit_dynamics(model, data, window=3, val_fraction=0, patience=3, progress=False)
    with pytest.raises(ConfigError, match="unknown loss"):
        fit_dynamics(model, data, window=3, loss="physical", progress=False)
