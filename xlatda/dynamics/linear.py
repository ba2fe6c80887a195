r"""Linear latent dynamics with periodic forcing (a linear inverse model).

One data step :math:`\Delta` of

.. math::

    z_{k+1} = A z_k + b + \sum_h \bigl(c_h \cos\omega_h t_k + s_h \sin\omega_h t_k\bigr)
              + W \tilde\theta + \eta_k, \qquad \omega_h = 2\pi / P_h,

fitted by ridge least squares on consecutive training codes. :math:`t_k` is
the *absolute* time of :math:`z_k` (seconds since 1970 for datetime data), so
the forcing carries a diurnal (or annual) cycle that an autonomous model of
the codes cannot represent: it is what lets a latent filter on hourly 2 m
temperature forecast the afternoon warming instead of persisting the morning.
With periods, callers pass that clock as ``start=`` (the dynamics say so with
:attr:`LinearDynamics.uses_clock`).

Why a linear model: the codes of a PCA (or of a smooth autoencoder) of a
regional reanalysis field evolve nearly linearly over a few hours, a few
weeks of hourly data give ~300 pairs for ``d + 2H + 1`` regressors per code
(well determined for ``d <= 128``), the fit is a closed-form solve in
milliseconds, and its one-step residuals give an honest model-error ``Q``.
The neural ODE (:class:`~xlatda.dynamics.LatentODE`) stays the choice for
long training sets and strongly nonlinear flows.

Times off the step grid are linearly interpolated in time between the
bracketing grid states (exact on the grid, as FGAT in operational 4D-Var).

References
----------
Penland, C. and Sardeshmukh, P. D. (1995). The optimal growth of tropical sea
surface temperature anomalies. J. Climate 8, 1999-2024 (linear inverse models).

Examples
--------
>>> import math, torch
>>> day = 86400.0
>>> t = torch.arange(200, dtype=torch.float64) * 3600.0        # hourly clock
>>> z = torch.stack([torch.cos(2 * math.pi * t / day), torch.sin(2 * math.pi * t / day)], -1)
>>> dyn, info = fit_linear_dynamics(z[None], t[None], periods=(day,), dt_unit=3600.0,
...                                 time_units="s")
>>> pred = dyn.evolve(z[:1, :], torch.tensor([0.0, 6.0]), start=t[:1])
>>> torch.allclose(pred[0, -1], z[6], atol=1e-3)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xlatda.dynamics.latent_ode import dynamics
from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype

__all__ = [
    "RIDGE_GRID",
    "SELECT_HORIZON",
    "LinearDynamics",
    "cross_validated_residuals",
    "default_periods",
    "fit_linear_dynamics",
]

_DAY = 86400.0
_YEAR = 365.2425 * _DAY

#: Ridge penalties :func:`fit_linear_dynamics` chooses from by default.
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: Longest held-out roll-out (data steps) the ridge is scored on by default.
#: Chosen on the validation weeks of ``benchmarks/bench_real_stations.py``
#: (hourly ERA5 / WFDE5 codes, analyses every 3 h): scoring 1..6-step
#: roll-outs picks 0.03 on both files where the one-step error picked 0.01,
#: and the exact latent Kalman filter of ``bench_real_bounds.py`` with the
#: refitted model is closer to OI at 10-300 stations (``benchmarks/RESULTS.md``).
SELECT_HORIZON = 6


def default_periods(dt_unit: float, time_units: str, span: float,
                    year: float = _YEAR) -> tuple[float, ...]:
    """Forcing periods a training set can resolve: daily and annual cycles (and halves).

    A period ``P`` is kept when the data step resolves it (``dt_unit <= P / 4``)
    and the training span covers it at least twice. Only for datetime data
    (``time_units="s"``); model-time data get none. ``year`` is the length of
    the year in seconds (365.2425 days; 360 days in a ``360_day`` calendar).

    Examples
    --------
    >>> default_periods(3600.0, "s", span=14 * 86400.0)
    (86400.0, 43200.0)
    >>> default_periods(86400.0, "s", span=4 * 365 * 86400.0)
    (31556952.0, 15778476.0)
    >>> default_periods(0.05, "model", span=100.0)
    ()
    >>> default_periods(86400.0, "s", span=4 * 360 * 86400.0, year=360 * 86400.0)
    (31104000.0, 15552000.0)
    """
    if time_units != "s":
        return ()
    out = []
    for p in (_DAY, _DAY / 2, year, year / 2):
        if dt_unit <= p / 4 and span >= 2 * p:
            out.append(float(p))
    return tuple(out)


@dynamics.register("linear")
class LinearDynamics(nn.Module):
    r"""Linear latent dynamics with periodic forcing (see the module docstring).

    Parameters
    ----------
    latent_dim : int
        Size ``d`` of the latent vector.
    n_params : int
        Number of physical parameters ``θ`` entering linearly (``W θ̃``).
    periods : sequence of float
        Forcing periods in ``time_units`` (e.g. ``(86400.0, 43200.0)``).
    dt_unit : float
        Duration of one data step in ``time_units``.
    time_units : {"s", "model"}
        Units of ``dt_unit``, ``periods`` and of the ``start`` clock.
    theta_mean, theta_std : sequence of float, optional
        Normalisation ``θ̃ = (θ - mean) / std``.
    device, dtype
        Where and in which precision the coefficients live.

    Attributes
    ----------
    A : Tensor
        ``(d, d)`` transition matrix.
    bias : Tensor
        ``(d,)``.
    harmonics : Tensor
        ``(d, 2 H)``: cosine then sine coefficients of each period.
    W : Tensor
        ``(d, n_params)``.
    uses_clock : bool
        Whether ``evolve`` needs the absolute time ``start`` (periods given).
    """

    kind = "linear"

    def __init__(self, latent_dim: int, n_params: int = 0, *, periods: Sequence[float] = (),
                 dt_unit: float = 1.0, time_units: str = "model",
                 theta_mean: Sequence[float] | None = None,
                 theta_std: Sequence[float] | None = None,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        d, p = int(latent_dim), int(n_params)
        if d < 1 or p < 0:
            raise ConfigError(f"need latent_dim >= 1 and n_params >= 0, got {latent_dim=} "
                              f"{n_params=}")
        if not dt_unit > 0:
            raise ConfigError(f"dt_unit must be positive, got {dt_unit!r}")
        periods = tuple(float(x) for x in periods)
        if any(not x > 0 for x in periods):
            raise ConfigError(f"periods must be positive, got {periods}")
        dev, dt_ = resolve_device(device), resolve_dtype(dtype)
        self.latent_dim, self.n_params = d, p
        self.periods, self.dt_unit, self.time_units = periods, float(dt_unit), str(time_units)
        self.state_shape, self.dt = (d,), 1.0
        kw = {"device": dev, "dtype": dt_}
        self.register_buffer("A", torch.eye(d, **kw))
        self.register_buffer("bias", torch.zeros(d, **kw))
        self.register_buffer("harmonics", torch.zeros(d, 2 * len(periods), **kw))
        self.register_buffer("W", torch.zeros(d, p, **kw))
        mean = torch.zeros(p) if theta_mean is None else torch.as_tensor(theta_mean, dtype=dt_)
        std = torch.ones(p) if theta_std is None else torch.as_tensor(theta_std, dtype=dt_)
        if mean.shape != (p,) or std.shape != (p,) or bool((std <= 0).any()):
            raise ConfigError(f"theta_mean/theta_std must be {p} values (std > 0), got "
                              f"{theta_mean!r}, {theta_std!r}")
        self.register_buffer("theta_mean", mean.to(**kw))
        self.register_buffer("theta_std", std.to(**kw))
        self.register_buffer("_fitted", torch.zeros((), dtype=torch.bool, device=dev))

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {"latent_dim": self.latent_dim, "n_params": self.n_params,
                "periods": list(self.periods), "dt_unit": self.dt_unit,
                "time_units": self.time_units,
                "dtype": str(self.A.dtype).replace("torch.", "")}

    @property
    def fitted(self) -> bool:
        """Whether :func:`fit_linear_dynamics` has set the coefficients."""
        return bool(self._fitted)

    @property
    def uses_clock(self) -> bool:
        return len(self.periods) > 0

    @property
    def time_scale(self) -> float:
        return self.dt_unit

    # -- the map -------------------------------------------------------
    def features(self, clock: Tensor) -> Tensor:
        """``(*batch, 2 H)`` cosines and sines of the absolute ``clock`` (float64 inside)."""
        return self._features64(clock).to(self.A.dtype)

    def _features64(self, clock: Tensor) -> Tensor:
        c = clock.to(torch.float64)
        cols = []
        for p in self.periods:
            w = c * (2.0 * math.pi / p)
            cols += [torch.cos(w), torch.sin(w)]
        if not cols:
            return torch.zeros(*clock.shape, 0, dtype=torch.float64, device=clock.device)
        # cos, sin per period, then reorder to [cos_1..cos_H, sin_1..sin_H]
        stacked = torch.stack(cols, -1)
        order = list(range(0, 2 * len(self.periods), 2)) + list(range(1, 2 * len(self.periods), 2))
        return stacked[..., order]

    def _forcing(self, z: Tensor, clock: Tensor | None, theta_in: Tensor | None) -> Tensor:
        g = self.bias.to(z)
        if self.periods:
            cs = self._features64(clock).to(z)
            g = g + cs @ self.harmonics.to(z).T
        if theta_in is not None:
            g = g + theta_in @ self.W.to(z).T
        return g

    def _theta_input(self, theta: Tensor | None, z: Tensor) -> Tensor | None:
        if self.n_params == 0:
            if theta is not None:
                raise ConfigError("these dynamics take no theta (n_params=0)")
            return None
        if theta is None:
            raise ConfigError(f"these dynamics need theta with {self.n_params} parameter(s)")
        th = torch.as_tensor(theta).to(z)
        if th.shape[-1] != self.n_params:
            raise ShapeError(f"theta must end in {self.n_params} values, got {tuple(th.shape)}")
        th = th.expand(*z.shape[:-1], self.n_params)
        return (th - self.theta_mean.to(z)) / self.theta_std.to(z)

    def _check(self, z0: Tensor, start: Any) -> tuple[Tensor, Tensor | None]:
        z0 = torch.as_tensor(z0)
        if z0.dim() < 1 or z0.shape[-1] != self.latent_dim:
            raise ShapeError(f"latent states must end in {self.latent_dim} values, got "
                             f"{tuple(z0.shape)}")
        if not self.uses_clock:
            return z0, None
        if start is None:
            raise ConfigError(
                "these linear dynamics have periodic forcing (periods="
                f"{list(self.periods)} {self.time_units}) and need the absolute time of the "
                "initial state: pass start= (seconds since 1970 for datetime data)")
        clock = torch.as_tensor(start, dtype=torch.float64, device=z0.device)
        try:
            clock = clock.expand(z0.shape[:-1])
        except RuntimeError:
            raise ShapeError(f"start must broadcast to the batch shape {tuple(z0.shape[:-1])}, "
                             f"got {tuple(clock.shape)}") from None
        return z0, clock

    def evolve(self, z0: Tensor, times: Tensor | Sequence[float], theta: Tensor | None = None,
               *, start: Any = None) -> Tensor:
        """States at ``times`` (in data steps; ``times[0]`` is the time of ``z0``).

        Parameters
        ----------
        z0 : Tensor
            ``(*batch, d)``.
        times : Tensor or sequence of float
            ``(T,)`` non-decreasing times in data steps. Between whole steps
            the state is interpolated linearly in time.
        theta : Tensor, optional
            ``(n_params,)`` or broadcastable to ``(*batch, n_params)``.
        start : float or Tensor, optional
            Absolute time of ``z0`` in ``time_units`` (needed when
            :attr:`uses_clock`); a tensor gives each batch element its own.

        Returns
        -------
        Tensor
            ``(*batch, T, d)``; differentiable in ``z0`` (and ``theta``).
        """
        z0, clock = self._check(z0, start)
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
        if times.numel() < 1:
            raise ShapeError("times must be a non-empty 1-D tensor")
        rel = times - times[0]
        if bool((rel[1:] < rel[:-1]).any()):
            raise ConfigError(f"linear dynamics integrate forward only; got times "
                              f"{times.tolist()}")
        theta_in = self._theta_input(theta, z0)
        n = math.ceil(float(rel[-1]) - 1e-9) if rel.numel() > 1 else 0
        # The recursion runs in float64 whatever the model's dtype: cheap at
        # latent sizes, and the result does not depend on the batch size
        # (chunked and eager forecasts agree bit for bit).
        f64 = torch.float64
        A = self.A.to(device=z0.device, dtype=f64)
        th64 = None if theta_in is None else theta_in.to(f64)
        states, cur = [z0.to(f64)], z0.to(f64)
        for k in range(n):
            ck = None if clock is None else clock + k * self.dt_unit
            cur = cur @ A.T + self._forcing(cur, ck, th64)
            states.append(cur)
        grid = torch.stack(states, -2)  # (*batch, n + 1, d)
        lo = torch.clamp(torch.floor(rel + 1e-9).long(), 0, n).to(z0.device)
        hi = torch.clamp(lo + 1, max=n)
        frac = (rel.to(z0.device) - lo.to(f64)).clamp(0.0, 1.0)
        frac = torch.where(hi == lo, torch.zeros_like(frac), frac)
        out = grid[..., lo, :] * (1 - frac)[:, None] + grid[..., hi, :] * frac[:, None]
        return out.to(z0.dtype)

    def noise_covariance(self, Q: Tensor, steps: float) -> Tensor:
        r"""Covariance a per-step model error ``Q`` accumulates over ``steps`` steps.

        :math:`\sum_{j < n} A^j Q A^{j\top}` for the ``n`` whole steps, plus
        the fraction of a step times ``Q`` (the time interpolation of
        :meth:`evolve`), in float64.
        """
        A = self.A.to(torch.float64)
        Q = torch.as_tensor(Q).to(device=A.device, dtype=torch.float64)
        whole = math.floor(float(steps) + 1e-9)
        acc, term = torch.zeros_like(Q), Q
        for _ in range(whole):
            acc = acc + term
            term = A @ term @ A.T
        return acc + max(0.0, float(steps) - whole) * Q

    def step(self, z: Tensor, dt: float | None = None, theta: Tensor | None = None,
             *, start: Any = None) -> Tensor:
        """Advance ``z`` by ``dt`` data steps (default 1)."""
        dt = self.dt if dt is None else float(dt)
        return self.evolve(z, torch.tensor([0.0, dt]), theta, start=start)[..., -1, :]

    def integrate(self, z: Tensor, steps: int, dt: float | None = None,
                  theta: Tensor | None = None, every: int = 1, *, start: Any = None) -> Tensor:
        """``steps`` steps of ``dt``; every ``every``-th state, the start included."""
        if int(steps) < 0 or int(every) < 1:
            raise ConfigError(f"need steps >= 0 and every >= 1, got {steps=} {every=}")
        dt = self.dt if dt is None else float(dt)
        last = (int(steps) // int(every)) * int(every)
        times = torch.arange(last + 1, dtype=torch.float64) * dt
        return self.evolve(z, times, theta, start=start)[..., :: int(every), :]

    def forward(self, z: Tensor, dt: float | None = None, theta: Tensor | None = None,
                *, start: Any = None) -> Tensor:
        """Same as :meth:`step`."""
        return self.step(z, dt, theta, start=start)

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, n_params={self.n_params}, "
                f"periods={list(self.periods)}, dt_unit={self.dt_unit}, "
                f"time_units={self.time_units!r}")


def _design(model: LinearDynamics, z: Tensor, clock: Tensor | None,
            theta: Tensor | None) -> Tensor:
    """Regressors ``[z, 1, harmonics, θ̃]`` of every pair's first state, float64."""
    cols = [z, torch.ones(*z.shape[:-1], 1, dtype=z.dtype)]
    if model.periods:
        cols.append(model._features64(clock).to(z))
    if theta is not None:
        cols.append(theta)
    return torch.cat(cols, -1)


def _normalised_theta(theta: Tensor, mean: Tensor, std: Tensor, n: int, T: int) -> Tensor:
    """``(n_traj, T, n_params)`` float64 ``θ̃ = (θ - mean) / std``, one row per code."""
    tt = torch.as_tensor(theta, dtype=torch.float64).cpu().reshape(n, -1)
    return ((tt - mean) / std)[:, None, :].expand(n, T, tt.shape[-1])


def _solve(X: Tensor, Y: Tensor, lam: float, d: int, toward_identity: bool) -> Tensor:
    """Ridge solution ``(k, d)``; the penalty acts on the ``A`` block only and
    shrinks it toward the identity (persistence) or toward zero."""
    G = X.T @ X
    pen = torch.zeros(X.shape[1], dtype=X.dtype)
    pen[:d] = lam * float(torch.diagonal(G)[:d].mean())
    target = Y - X[:, :d] if toward_identity else Y
    coef = torch.linalg.solve(G + torch.diag(pen), X.T @ target)
    if toward_identity:
        coef[:d] = coef[:d] + torch.eye(d, dtype=coef.dtype)
    return coef


def _rollout_mse(model: LinearDynamics, coef: Tensor, z: Tensor, clock: Tensor | None,
                 theta: Tensor | None, start: int, horizon: int) -> list[float]:
    """Mean squared error per lead ``1..horizon`` of roll-outs of the ridge
    solution ``coef`` ``(k, d)`` from every state ``start..T-2`` of ``z``
    ``(n, T, d)`` (leads that run past the end are left out)."""
    T = z.shape[1]
    starts = torch.arange(start, T - 1)
    cur = z[:, starts]
    errs = []
    for h in range(1, horizon + 1):
        ok = starts + h <= T - 1
        if not bool(ok.any()):
            break
        at = (starts + h - 1).clamp(max=T - 1)
        X = _design(model, cur, None if clock is None else clock[:, at],
                    None if theta is None else theta[:, at])
        cur = X @ coef
        err = cur - z[:, (starts + h).clamp(max=T - 1)]
        errs.append(float(err[:, ok].pow(2).mean()))
    return errs


def fit_linear_dynamics(
    trajectories: Tensor,
    clock: Tensor | None = None,
    theta: Tensor | None = None,
    *,
    periods: Sequence[float] = (),
    dt_unit: float = 1.0,
    time_units: str = "model",
    ridge: float | Sequence[float] = RIDGE_GRID,
    val_fraction: float = 0.1,
    select_horizon: int = SELECT_HORIZON,
    refit: bool = True,
    max_radius: float = 0.999,
    shrink_toward: str = "zero",
    device: Any = None,
    dtype: Any = None,
) -> tuple[LinearDynamics, dict[str, Any]]:
    """Fit :class:`LinearDynamics` to consecutive codes by ridge least squares.

    Parameters
    ----------
    trajectories : Tensor
        ``(n_traj, T, d)`` codes, one data step apart.
    clock : Tensor, optional
        ``(n_traj, T)`` absolute times in ``time_units`` (needed with periods).
    theta : Tensor, optional
        ``(n_traj, n_params)`` per-trajectory parameters.
    periods, dt_unit, time_units :
        See :class:`LinearDynamics`.
    ridge : float or sequence of float
        Ridge penalty on ``A`` relative to the mean diagonal of the Gram
        matrix. With several values (the default, :data:`RIDGE_GRID`) each is
        fitted on all but the held-out final ``val_fraction`` of every
        trajectory, and the one whose roll-outs of 1 to ``select_horizon``
        steps from every held-out state have the lowest mean squared error
        there is kept.
    val_fraction : float
        Held-out final fraction of each trajectory (0: fit on everything and
        use the first ridge value).
    select_horizon : int
        Longest roll-out (in data steps) the ridge is scored on (``1``: the
        one-step error). Cycles forecast over several steps between analyses,
        and the one-step error favours a barely regularised ``A`` whose
        errors grow fastest over those leads (default :data:`SELECT_HORIZON`).
    refit : bool
        Refit the chosen ridge on every pair, held-out segment included
        (the default). Pass ``False`` to keep the coefficients of the fit
        without the held-out segment, so that it stays unseen for anything
        scored on it afterwards (e.g. a ``Q`` from held-out roll-outs).
    max_radius : float
        Spectral radius above which ``A`` is scaled down to it, so forecasts
        stay bounded (recorded in the returned history).
    shrink_toward : {"persistence", "zero"}
        What the ridge penalty pulls ``A`` toward: the identity (a forecast
        that keeps the state, the natural prior for data sampled much faster
        than the flow changes) or zero (relaxation to the forced mean).

    Returns
    -------
    LinearDynamics, dict
        The fitted dynamics and a history (``ridge``; ``val_mse``, the
        selection score per ridge; ``val_mse_per_lead``, the held-out error
        of the chosen ridge at leads ``1..select_horizon``; ``train_mse``,
        the one-step error on the pairs fitted; ``spectral_radius``,
        ``n_pairs``, ``refit``).
    """
    z = torch.as_tensor(trajectories, dtype=torch.float64).cpu()
    if z.dim() != 3 or z.shape[1] < 2:
        raise ShapeError(f"trajectories must be (n_traj, T >= 2, d), got {tuple(z.shape)}")
    n, T, d = z.shape
    periods = tuple(float(p) for p in periods)
    if periods and clock is None:
        raise ConfigError("periodic forcing needs the clock (absolute time of every code)")
    ck = None if clock is None else torch.as_tensor(clock, dtype=torch.float64).cpu()
    if ck is not None and ck.shape != (n, T):
        raise ShapeError(f"clock must be (n_traj, T) = {(n, T)}, got {tuple(ck.shape)}")
    p = 0 if theta is None else torch.as_tensor(theta).shape[-1]
    th_mean = th_std = None
    th = None
    if theta is not None:
        tt = torch.as_tensor(theta, dtype=torch.float64).cpu().reshape(n, p)
        th_mean = tt.mean(0)
        th_std = tt.std(0, unbiased=False).clamp_min(1e-12) if n > 1 else torch.ones(p)
        th = _normalised_theta(tt, th_mean, th_std, n, T)
    model = LinearDynamics(d, p, periods=periods, dt_unit=dt_unit, time_units=time_units,
                           theta_mean=None if th_mean is None else th_mean.tolist(),
                           theta_std=None if th_std is None else th_std.tolist(),
                           device="cpu", dtype=torch.float64)
    n_val = round(val_fraction * T) if val_fraction else 0
    if n_val < 2 or T - n_val < 2:
        n_val = 0
    fit_end = T - n_val

    def pairs(a: int, b: int) -> tuple[Tensor, Tensor]:
        zz = z[:, a:b]
        X = _design(model, zz[:, :-1], None if ck is None else ck[:, a:b - 1],
                    None if th is None else th[:, a:b - 1])
        return X.reshape(-1, X.shape[-1]), zz[:, 1:].reshape(-1, d)

    X, Y = pairs(0, fit_end)
    lams = [float(ridge)] if isinstance(ridge, (int, float)) else [float(r) for r in ridge]
    if not lams or any(lam < 0 for lam in lams):
        raise ConfigError(f"ridge must be >= 0, got {ridge!r}")
    if shrink_toward not in ("persistence", "zero"):
        raise ConfigError(f"shrink_toward must be 'persistence' or 'zero', got {shrink_toward!r}")
    eye_prior = shrink_toward == "persistence"
    if isinstance(select_horizon, bool) or int(select_horizon) != select_horizon \
            or select_horizon < 1:
        raise ConfigError(f"select_horizon must be an integer >= 1, got {select_horizon!r}")
    val_mse: dict[str, float] = {}
    per_lead: dict[str, list[float]] = {}
    if n_val and len(lams) > 1:
        coefs = {lam: _solve(X, Y, lam, d, eye_prior) for lam in lams}
        for lam, c in coefs.items():
            per_lead[repr(lam)] = _rollout_mse(model, c, z, ck, th, fit_end - 1,
                                               int(select_horizon))
            val_mse[repr(lam)] = sum(per_lead[repr(lam)]) / len(per_lead[repr(lam)])
        lam = min(lams, key=lambda v: val_mse[repr(v)])
        coef = coefs[lam].T  # (d, k)
        if refit:
            X, Y = pairs(0, T)
            coef = _solve(X, Y, lam, d, eye_prior).T
    else:
        lam = lams[0]
        coef = _solve(X, Y, lam, d, eye_prior).T
    A = coef[:, :d]
    radius = float(torch.linalg.eigvals(A).abs().max())
    scaled = radius > max_radius
    if scaled:
        A = A * (max_radius / radius)
    h = 2 * len(periods)
    with torch.no_grad():
        model.A.copy_(A)
        model.bias.copy_(coef[:, d])
        model.harmonics.copy_(coef[:, d + 1:d + 1 + h])
        model.W.copy_(coef[:, d + 1 + h:])
        model._fitted.fill_(True)
    train_mse = float(((X @ torch.cat([A, coef[:, d:]], 1).T - Y) ** 2).mean())
    hist = {"kind": "linear", "ridge": lam, "val_mse": val_mse, "train_mse": train_mse,
            "spectral_radius": radius, "radius_scaled_to": max_radius if scaled else None,
            "n_pairs": int(X.shape[0]), "periods": list(periods),
            "val_mse_per_lead": per_lead.get(repr(lam), []),
            "held_out_steps": n_val, "select_horizon": int(select_horizon),
            "refit": bool(refit and n_val and len(lams) > 1),
            "shrink_toward": shrink_toward}
    dev, dt_ = resolve_device(device), resolve_dtype(dtype)
    return model.to(device=dev, dtype=dt_), hist


def cross_validated_residuals(
    dynamics: LinearDynamics,
    trajectories: Tensor,
    clock: Tensor | None = None,
    theta: Tensor | None = None,
    *,
    ridge: float,
    folds: int = 10,
    shrink_toward: str = "zero",
) -> Tensor:
    """One-step residuals of every training pair, each predicted by a fit without it.

    The pairs are cut into ``folds`` contiguous blocks of time (the same
    blocks in every trajectory); each block is predicted by the ridge fit
    on all the others. The residuals are out of sample, as a model error
    ``Q`` must be, and there are as many as training pairs (not only those
    of a held-out tail).

    Parameters
    ----------
    dynamics : LinearDynamics
        The fitted dynamics (for the periods and the ``θ`` normalisation).
    trajectories, clock, theta :
        As for :func:`fit_linear_dynamics`.
    ridge : float
        The penalty chosen for ``dynamics``.
    folds : int
        Number of time blocks (at least 2).
    shrink_toward : {"zero", "persistence"}
        As for :func:`fit_linear_dynamics`.

    Returns
    -------
    Tensor
        ``(n_traj * (T - 1), d)`` float64 residuals.
    """
    z = torch.as_tensor(trajectories, dtype=torch.float64).cpu()
    n, T, d = z.shape
    if int(folds) < 2 or T - 1 < int(folds):
        raise ConfigError(f"need 2 <= folds <= T - 1 = {T - 1}, got {folds!r}")
    ck = None if clock is None else torch.as_tensor(clock, dtype=torch.float64).cpu()
    th = None if theta is None else _normalised_theta(
        theta, dynamics.theta_mean.detach().cpu().double(),
        dynamics.theta_std.detach().cpu().double(), n, T)
    X = _design(dynamics, z[:, :-1], None if ck is None else ck[:, :-1],
                None if th is None else th[:, :-1])  # (n, T-1, k)
    Y = z[:, 1:]
    block = torch.arange(T - 1) * int(folds) // (T - 1)  # block of each pair
    out = torch.empty_like(Y)
    for b in range(int(folds)):
        test = block == b
        Xf, Yf = X[:, ~test].reshape(-1, X.shape[-1]), Y[:, ~test].reshape(-1, d)
        coef = _solve(Xf, Yf, float(ridge), d, shrink_toward == "persistence")
        out[:, test] = X[:, test] @ coef - Y[:, test]
    return out.reshape(-1, d)
