"""Latent dynamics on xarray: fit them, evolve latents, forecast fields.

``fit_dynamics(model, ds)``
    encodes the training trajectories and trains a :class:`LatentODE`
    (optionally conditioned on per-trajectory parameters) and the
    model-error covariance ``Q`` on held-out multi-step residuals;
``evolve(z, model, steps=... | lead=...)``
    integrates latent vectors forward, adding a ``lead`` dimension (and a
    ``valid_time`` coordinate); ensembles with model noise from ``Q``;
``forecast(ds, model, ...)``
    encode, evolve, decode.

Time: one latent step is the data's time step recorded at fit
(``model.time_step``); leads may be any multiple or fraction of it
(the ODE runs in continuous time).

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.lorenz96(n=8, steps=120, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, dynamics="ode", epochs=2,
...                    progress=False, dynamics_options={"width": 16, "depth": 1})
>>> fc = xlatda.forecast(ds.isel(time=[0, 5]), model, steps=3)
>>> fc.x.dims
('time', 'lead', 'k')
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda._bridge import apply_torch
from xlatda.dynamics.linear import (
    cross_validated_residuals,
    default_periods,
    fit_linear_dynamics,
)
from xlatda.encode_decode import decode, encode
from xlatda.errors import ConfigError, NotFittedError
from xlatda.jsonable import to_jsonable
from xlatda.latent_data import LATENT_DIM, as_dataset, check_latent, latent_dataset
from xlatda.model import LatentModel
from xlatda.options import get_options, resolve_device
from xlatda.prior import check_in_distribution
from xlatda.validation import check_keywords
from xlatda.windows import float_times

__all__ = ["evolve", "fit_dynamics", "forecast"]

LEAD_DIM = "lead"


def _trajectories(z: xr.DataArray, tname: str | None) -> tuple[torch.Tensor, list[str]]:
    """Latents as ``(n_traj, T, d)``: time last before latent, others stacked."""
    others = [d for d in z.dims if d not in (tname, LATENT_DIM)]
    if tname is None or tname not in z.dims:
        raise ConfigError("fitting dynamics needs a time dimension in the training data")
    arr = z.transpose(*others, tname, LATENT_DIM).values
    arr = arr.reshape(-1, arr.shape[-2], arr.shape[-1])
    return torch.as_tensor(arr), others


_CALENDAR_DAYS = {"360_day": 360.0, "noleap": 365.0, "365_day": 365.0, "all_leap": 366.0,
                  "366_day": 366.0}


def _year_seconds(times: Any) -> float:
    """Length of the year of the times' calendar in seconds (the mean Gregorian year
    for numpy datetimes and the standard calendars)."""
    first = np.ravel(np.asarray(times))[:1]
    calendar = getattr(first[0], "calendar", None) if first.size else None
    return _CALENDAR_DAYS.get(calendar, 365.2425) * 86400.0


def _clock(z: xr.DataArray, tname: str, others: list[str], shape: tuple) -> torch.Tensor:
    """Absolute times ``(n_traj, T)`` of the codes (seconds since 1970 for datetimes)."""
    t = z[tname]
    if t.ndim == 1:
        vals = float_times(t.values)[None, :]
        vals = np.broadcast_to(vals, (shape[0], shape[1]))
    else:
        vals = float_times(t.broadcast_like(z.isel({LATENT_DIM: 0}, drop=True))
                           .transpose(*others, tname).values).reshape(shape[0], shape[1])
    return torch.tensor(np.array(vals, dtype=float), dtype=torch.float64)


def fit_dynamics(
    model: LatentModel,
    ds: xr.Dataset,
    *,
    uncertainty: str | None = "diagonal",
    params: list[str] | None = None,
    window: int = 10,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    q_horizon: int | None = None,
    seed: int = 0,
    device: Any = None,
    progress: bool | None = None,
    kind: str = "ode",
    **options: Any,
) -> LatentModel:
    """Train latent dynamics (and Q) on encoded trajectories; returns a new model.

    Parameters
    ----------
    model : LatentModel
        A model with a fitted encoder.
    ds : Dataset
        Training trajectories: a time dimension, optionally a ``trajectory``
        (or other sample) dimension; windows never cross trajectories.
    uncertainty : {"scalar", "diagonal", "cholesky", None}
        Model-error covariance ``Q`` (per data time step), fitted on the
        held-out final segment of each trajectory (the validation segment of
        ``val_fraction``; in-sample only when there is none, as recorded in
        ``model.history["model_error"]``) from roll-outs of 1 to
        ``q_horizon`` steps, each residual scaled by ``1/sqrt(lead)`` (see
        :func:`xlatda.uncertainty.rollout_residuals`): ``tau * Q`` then
        matches the held-out forecast error after ``tau`` steps on average
        over the leads, also when errors grow faster than a random walk.
    params : list of str, optional
        Names of per-trajectory parameters in ``ds`` (data variables or
        coordinates over the non-time sample dims, e.g. ``jet_speed``) the
        dynamics are conditioned on (LEVDA).
    window, epochs, batch_size, lr, seed, device, progress :
        Training settings (see :func:`xlatda.dynamics.training.fit_dynamics`).
    val_fraction : float
        Fraction of each trajectory's end held out for early stopping and
        for ``Q`` (``0``: train on everything; short trajectories need it).
    q_horizon : int, optional
        Longest roll-out (in data steps) ``Q`` is fitted on; default
        ``window - 1``, the training roll-out length, for ``kind="ode"``. For
        ``kind="linear"`` the default is the one-step residual of every
        training pair predicted by a fit without its block of time (10-fold
        blocked cross-validation, :func:`~xlatda.dynamics.linear.cross_validated_residuals`);
        a number uses roll-outs on the held-out segment instead.
    kind : {"ode", "linear"}
        ``"ode"``: a neural ODE (:class:`~xlatda.dynamics.LatentODE`, LAINR)
        trained by roll-outs of ``window`` steps. ``"linear"``: a linear
        model with periodic forcing (:class:`~xlatda.dynamics.LinearDynamics`:
        ``z_{k+1} = A z_k + b + daily/annual harmonics of the absolute time``),
        fitted in closed form, with the ridge penalty chosen by the error of
        1- to 6-step roll-outs on the held-out segment and then refitted on
        every pair (kept off the held-out segment when ``q_horizon`` scores
        ``Q`` there; see :func:`~xlatda.dynamics.linear.fit_linear_dynamics`);
        ``window``, ``epochs``, ``batch_size`` and ``lr`` do not apply. The periods default to those
        the data resolve (:func:`~xlatda.dynamics.linear.default_periods`:
        for hourly data over two days or more, 24 h and 12 h).
    **options :
        Architecture of the :class:`~xlatda.dynamics.LatentODE` (``width``,
        ``depth``, ``method``, ``step_size``, ...), or for ``kind="linear"``
        ``periods`` (in the data's time units: seconds for datetimes),
        ``ridge``, ``select_horizon`` and ``refit``.

    Returns
    -------
    LatentModel
        A copy of ``model`` with ``dynamics`` (and ``model_error``) set.
    """
    from xlatda.dynamics.latent_ode import LatentODE
    from xlatda.dynamics.training import fit_dynamics as _fit
    from xlatda.uncertainty import fit_model_error, rollout_residuals, tendency_covariances

    if uncertainty not in (None, "scalar", "diagonal", "cholesky"):
        raise ConfigError(f"uncertainty must be scalar, diagonal, cholesky or None, got "
                          f"{uncertainty!r}")
    if kind not in ("ode", "linear"):
        raise ConfigError(f"dynamics kind must be 'ode' or 'linear', got {kind!r}")
    if kind == "ode":
        check_keywords(options, LatentODE, where="the latent ODE of fit_dynamics", kind="option",
                       exclude=["latent_dim", "n_params", "dt_unit", "time_units", "seed",
                                "dtype", "device"])
    else:
        check_keywords(options, fit_linear_dynamics, where="the linear dynamics of fit_dynamics",
                       kind="option", exclude=["trajectories", "clock", "theta", "dt_unit",
                                               "time_units", "val_fraction", "device", "dtype"])
    ds = as_dataset(ds)
    tname = model.layout.axes.time
    z = encode(ds, model).z
    traj, others = _trajectories(z, tname)
    theta = None
    if params:
        missing = [p for p in params if p not in ds.variables]
        if missing:
            raise ConfigError(f"parameters {missing} are not variables of the Dataset")
        cols = []
        for p in params:
            v = ds[p]
            if tname in v.dims:
                v = v.isel({tname: 0})
            v = v.broadcast_like(z.isel({tname: 0, LATENT_DIM: 0}, drop=True))
            cols.append(np.asarray(v.transpose(*others).values, float).reshape(-1))
        theta = torch.as_tensor(np.stack(cols, -1))
    step = model.time_step or {"value": 1.0, "units": "model"}
    progress = get_options()["progress"] if progress is None else progress
    # Dynamics live where the encoder does unless told otherwise.
    dev = model.device if device is None else resolve_device(device)
    clock = None
    if kind == "linear":
        if q_horizon is not None:
            # Q from roll-outs on the held-out segment: keep it unseen by the fit.
            if options.get("refit"):
                raise ConfigError(
                    "refit=True would fit the linear dynamics on the held-out segment that "
                    "q_horizon scores Q on; drop refit (it is False with q_horizon) or "
                    "q_horizon (Q then comes from cross-validated one-step residuals)")
            options["refit"] = False
        clock = _clock(z, tname, others, traj.shape)
        span = float((clock[:, -1] - clock[:, 0]).min())
        options.setdefault("periods", default_periods(step["value"], step["units"], span,
                                                      year=_year_seconds(z[tname].values)))
        dyn, hist = fit_linear_dynamics(
            traj, clock if options["periods"] else None, theta,
            dt_unit=step["value"], time_units=step["units"], val_fraction=val_fraction,
            device=dev, dtype=model.dtype, **options)
        if not options["periods"]:
            clock = None
        window = max(window, 2)
    else:
        dyn = LatentODE(model.latent_dim, n_params=len(params or ()), dt_unit=step["value"],
                        time_units=step["units"], seed=seed, dtype=model.dtype, device=dev,
                        **options)
        hist = _fit(dyn, traj.to(model.dtype),
                    theta=None if theta is None else theta.to(model.dtype),
                    window=window, epochs=epochs, batch_size=batch_size, lr=lr,
                    val_fraction=val_fraction, seed=seed, device=dev, progress=progress)
    q = None
    q_info: dict[str, Any] = {}
    if uncertainty is not None:
        # Q from residuals the dynamics were not trained on: the held-out final
        # segment of every trajectory (the one early stopping scored). In-sample
        # residuals under-estimate the forecast error of a flexible model.
        n_val = round(val_fraction * traj.shape[1]) if val_fraction else 0
        held_out = n_val >= 2 and n_val >= window and traj.shape[1] - n_val >= window
        segment = traj[:, -n_val:] if held_out else traj
        seg_clock = None if clock is None else (clock[:, -n_val:] if held_out else clock)
        # A neural ODE's Q pools roll-outs up to the training window (its errors
        # grow faster than a random walk); linear dynamics get the one-step
        # residuals, the model error of the map itself.
        default_h = 1 if kind == "linear" else max(1, window - 1)
        horizon = default_h if q_horizon is None else int(q_horizon)
        th = None if theta is None else theta.to(device=dev, dtype=model.dtype)
        if kind == "linear" and q_horizon is None:
            # Out-of-fold residuals of every training pair: as honest as the
            # held-out tail and ten times as many (chosen on the validation
            # week of benchmarks/bench_real_stations.py: ERA5 PCA-64 cycled
            # ETKF 0.84 -> 0.83 K, spread/RMSE 0.68 -> 0.85).
            res = cross_validated_residuals(
                dyn, traj, clock, theta, ridge=hist["ridge"],
                shrink_toward=hist["shrink_toward"]).to(device=dev, dtype=model.dtype)
            per_lead = res.pow(2).mean()[None]
            held_out = "cross-validated"
        else:
            res, per_lead = rollout_residuals(dyn, segment.to(device=dev, dtype=model.dtype),
                                              horizon, theta=th, clock=seg_clock)
        q = fit_model_error(res.reshape(-1, model.latent_dim).cpu(), kind=uncertainty,
                            seed=seed).to(dev)
        # The covariances of the codes' own changes over a few leads: the shape
        # adaptive additive inflation gives the error a fitted Q misses on new
        # weather (xlatda.methods.additive).
        lags, tend = tendency_covariances(traj.detach().cpu())
        if lags:
            q.set_tendency(lags, tend.to(device=dev, dtype=q.log_scale.dtype))
        fitted_on = {True: "held-out final segment", False: "training (in-sample)",
                     "cross-validated": "out-of-fold one-step residuals (10 time blocks)"}
        q_info = {"fitted_on": fitted_on[held_out],
                  "horizon": int(per_lead.numel()), "n_residuals": int(res.shape[0]),
                  "mean_variance": float(torch.diagonal(q.covariance()).mean()),
                  "tendency_lags": list(q.tendency_lags),
                  "mse_per_lead": [float(v) for v in per_lead]}
    history = dict(model.history)
    history["dynamics"] = to_jsonable(hist)
    if q_info:
        history["model_error"] = q_info
    history["parameters"] = list(params or ())
    return dataclasses.replace(model, dynamics=dyn, model_error=q, history=history)


def _lead_values(model: LatentModel, steps: int | None, lead: Any) -> tuple[np.ndarray, Any]:
    """ODE times (in latent steps) and the lead coordinate values."""
    step = model.time_step or {"value": 1.0, "units": "model"}
    if (steps is None) == (lead is None):
        raise ConfigError("pass exactly one of steps=N or lead=[...] (times after the start)")
    if steps is not None:
        if int(steps) < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        tau = np.arange(int(steps) + 1, dtype=float)
        if step["units"] == "s":
            coord = (tau * step["value"] * 1e9).astype("timedelta64[ns]")
        else:
            coord = tau * step["value"]
        return tau, coord
    lead = np.atleast_1d(np.asarray(lead))
    if lead.dtype.kind == "m":
        if step["units"] != "s":
            raise ConfigError("timedelta leads need a model trained on datetime data")
        tau = lead.astype("timedelta64[ns]").astype(np.int64) / 1e9 / step["value"]
        coord = lead.astype("timedelta64[ns]")
    else:
        tau = lead.astype(float) / step["value"]
        coord = lead.astype(float)
    if tau[0] != 0:
        tau = np.concatenate([[0.0], tau])
        coord = np.concatenate([np.zeros(1, dtype=coord.dtype), coord])
    if np.any(np.diff(tau) <= 0):
        raise ConfigError("leads must be strictly increasing and positive")
    return tau, coord


def evolve(
    z: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    steps: int | None = None,
    lead: Any = None,
    members: int | None = None,
    noise: bool = False,
    theta: Any = None,
    seed: int = 0,
    check: bool = True,
) -> xr.Dataset:
    """Integrate latent vectors forward in time.

    Parameters
    ----------
    z : Dataset or DataArray
        Latents ``z(..., latent)``; every other dim holds independent initial
        states (initial times, trajectories, members).
    model : LatentModel
        A model with dynamics.
    steps : int, optional
        Number of data time steps to run (output at each).
    lead : array-like, optional
        Leads to output instead (timedelta64 for datetime data, numbers in
        the data's time units otherwise); need not be multiples of the step.
    members : int, optional
        Make an ensemble of this size (adds a ``member`` dim).
    noise : bool
        Add model noise drawn from the model's ``Q`` at every output time
        (scaled by the square root of the elapsed latent time).
    theta : array-like, optional
        Parameters for parameter-conditioned dynamics, shape ``(n_params,)``.
    seed : int
        Seed of the model noise (each initial state gets its own stream).
    check : bool
        Warn (:class:`~xlatda.errors.OutOfDistributionWarning`) when evolved
        states leave the training codes' distribution (Mahalanobis distance
        under ``model.prior`` beyond :func:`xlatda.prior.ood_threshold`);
        checked where the states are computed (at compute time for dask).

    Returns
    -------
    Dataset
        ``z(..., [member,] lead, latent)`` with coordinate ``lead`` and, when
        the input has a time coordinate, ``valid_time = time + lead``. Lazy
        when the input is dask-backed (chunks over initial states).
    """
    dyn = model.require_dynamics()
    da = check_latent(z, model)
    if noise and model.model_error is None:
        raise NotFittedError(
            "noise=True needs a model-error covariance; fit it with uncertainty='diagonal'"
        )
    tau, coord = _lead_values(model, steps, lead)
    th = None if theta is None else torch.as_tensor(np.asarray(theta, float))
    if getattr(dyn, "n_params", 0) and th is None:
        raise ConfigError(f"these dynamics need theta with {dyn.n_params} parameter(s)")
    if members is not None:
        if int(members) < 1:
            raise ConfigError(f"members must be positive, got {members!r}")
        da = da.expand_dims(member=np.arange(int(members)), axis=-2)
    n_lead = len(tau)
    q = model.model_error
    d = model.latent_dim

    prior = model.prior if check else None
    clocked = bool(getattr(dyn, "uses_clock", False))
    t_ref = 0.0
    if clocked:
        tname = model.layout.axes.time
        if tname is None or tname not in da.coords:
            raise ConfigError(
                "these latent dynamics are forced by the time of day/year "
                f"(periods {list(dyn.periods)} s) and need the initial states' times: "
                f"give the latents a {tname or 'time'!r} coordinate (encode keeps it)")
        t_abs = float_times(da[tname].values)
        t_ref = float(np.min(t_abs)) if t_abs.size else 0.0

    def fn(x: torch.Tensor) -> torch.Tensor:  # (B, d[+extra]) -> (B, T, d)
        out = _integrate(x)
        check_in_distribution(out, prior, where="forecast", stacklevel=3)
        return out

    def _integrate(x: torch.Tensor) -> torch.Tensor:
        times = torch.as_tensor(tau, dtype=x.dtype, device=x.device)
        thb = None if th is None else th.to(x)
        kw = {}
        if clocked:  # the last column: seconds after t_ref (exact enough in float32)
            kw["start"] = t_ref + x[:, -1].to(torch.float64)
            x = x[:, :-1]
        if not noise:
            return dyn.evolve(x, times, theta=thb, **kw)
        seeds, x = x[:, d].round().long().tolist(), x[:, :d]
        start0 = kw.get("start")
        # One noise stream per initial state, seeded from its position in the
        # whole array, so eager and chunked runs draw the same numbers. Only
        # the draws loop over states; the integration is batched.
        eps = torch.stack([
            q.sample((n_lead - 1,), generator=torch.Generator().manual_seed(s_)).to(x)
            for s_ in seeds
        ])
        out = [x]
        cur = x
        for k in range(1, n_lead):
            if clocked:
                kw["start"] = start0 + float(times[k - 1] - times[0]) * dyn.dt_unit
            cur = dyn.evolve(cur, times[k - 1:k + 1], theta=thb, **kw)[..., -1, :]
            cur = cur + torch.sqrt(times[k] - times[k - 1]) * eps[:, k - 1]
            out.append(cur)
        return torch.stack(out, -2)

    extra = []
    lead_dims = [dim for dim in da.dims if dim != LATENT_DIM]
    if noise:
        shape = [da.sizes[dim] for dim in lead_dims]
        index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
        seeds = (int(seed) * 7919 + index) % (2**24)  # exact in float32
        extra.append(xr.DataArray(seeds.astype(float), dims=lead_dims))
    if clocked:
        rel = xr.DataArray(t_abs - t_ref, dims=da[tname].dims)
        extra.append(rel.broadcast_like(da.isel({LATENT_DIM: 0}, drop=True))
                     .transpose(*lead_dims).drop_vars(list(rel.coords), errors="ignore"))
    if extra:
        cols = []
        for e in extra:
            if da.chunks is not None:
                e = e.chunk({dim: da.chunksizes[dim] for dim in lead_dims})
            cols.append(e.expand_dims({LATENT_DIM: 1}, axis=-1))
        da = xr.concat([da.drop_vars(LATENT_DIM, errors="ignore"), *cols], dim=LATENT_DIM,
                       coords="minimal", compat="override")
        # The input now has d + extra entries: give it its own core-dim name.
        da = da.rename({LATENT_DIM: "_latent_and_seed"})
    in_core = "_latent_and_seed" if extra else LATENT_DIM
    out = apply_torch(da, fn, in_core=[in_core], out_core=[LEAD_DIM, LATENT_DIM],
                      out_sizes={LEAD_DIM: n_lead, LATENT_DIM: d}, device=model.device,
                      dtype=model.dtype, grad=False)
    out = out.assign_coords({LEAD_DIM: coord})
    res = latent_dataset(out, model, "evolved by latent dynamics")
    tname = model.layout.axes.time
    if tname is not None and tname in res.coords:
        t, lead = res[tname], res[LEAD_DIM]
        if t.dtype.kind == "O" and lead.dtype.kind == "m":
            # cftime dates add datetime.timedelta, not numpy timedelta64
            valid = xr.apply_ufunc(
                lambda a, b: a + b.astype("timedelta64[us]").astype(object), t, lead)
        else:
            valid = t + lead
        res = res.assign_coords(valid_time=valid)
    if members is not None:
        res = res.transpose(..., "member", LEAD_DIM, LATENT_DIM)
    return res


def forecast(
    ds: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    steps: int | None = None,
    lead: Any = None,
    members: int | None = None,
    noise: bool = False,
    theta: Any = None,
    seed: int = 0,
    check: bool = True,
) -> xr.Dataset:
    """Forecast fields: encode ``ds``, evolve the latents, decode.

    Every sample of ``ds`` (each time, trajectory) is an initial condition;
    the result has a ``lead`` dimension and a ``valid_time`` coordinate, on
    the model's layout with its CF attributes. See :func:`evolve` for the
    arguments. Lazy on dask input.
    """
    z = encode(ds, model)
    fc = evolve(z, model, steps=steps, lead=lead, members=members, noise=noise, theta=theta,
                seed=seed, check=check)
    out = decode(fc, model)
    if "valid_time" in fc.coords:
        out = out.assign_coords(valid_time=fc.valid_time)
    return out
