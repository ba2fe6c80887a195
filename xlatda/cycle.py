"""Single analyses and forecast-analysis cycles on xarray objects.

One small driver serves every method and both state spaces
(:mod:`xlatda.spaces`: the physical state, or the latent vector of a
:class:`~xlatda.LatentModel` with ``H' = H o D``). It looks the method up in
the registry (:mod:`xlatda.methods.registry`) and talks to it through one
interface (:mod:`xlatda.methods.protocol`): for each window of observation
times it forecasts the carried ensemble to the window's first time, calls
``analyse(space, ensemble, window, generator=..., state=...)``, records the
result (:mod:`xlatda.cycle_records`) and, with ``store=``, writes it to zarr
(:mod:`xlatda.cycle_store`), from which a rerun resumes exactly. The
initial ensemble comes from :mod:`xlatda.initial`.

Observation times are arbitrary: each distinct observation time is an
analysis time (or ``window`` consecutive ones form one window, for the
methods that analyse windows).

**Reproducibility.** Every random draw (initial ensemble, parameter
priors, model noise, perturbed observations, random rotations, samples
of a learned prior) comes from generators seeded from ``seed``: the initial draws from
``seed`` itself, window ``k``'s from ``(seed, k)``
(:func:`xlatda.windows.window_seed`). The global torch RNG is never used.
So the same call gives bit-identical analyses in one process, in another
process, and after a resume from a store (the store keeps the float64
control vectors and the method state carried between windows), on the
same machine, torch version and thread count (torch's reductions may
round differently with another number of threads).
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

# Imported for their registrations: the methods defined next to their models
# (xlatda.generative); the adapters of the built-in kernels come with
# xlatda.methods.adapters below.
import xlatda.generative  # noqa: F401
from xlatda._threads import with_thread_scope
from xlatda.cycle_records import (
    AnalysisError,
    CycleRecorder,
    CycleResult,
    check_finite,
    obs_moments_stacked,
    obs_statistics_stacked,
)
from xlatda.cycle_store import fingerprint, open_result, resume, write_window
from xlatda.cycle_store import model_identity as _model_identity
from xlatda.errors import ConfigError, ObservationError, SmallEnsembleWarning
from xlatda.initial import initial_ensemble, initial_parameters
from xlatda.initial import start_state as _start
from xlatda.methods.adapters import EnsembleFilter, LocalFilter
from xlatda.methods.consistency import AnalysisLabel, monitor_state
from xlatda.methods.inflation import cycle_defaults
from xlatda.methods.protocol import DEFAULT_METHOD
from xlatda.methods.protocol import cycling_method as _lookup
from xlatda.methods.regime import initial_regime, resolve_regime
from xlatda.methods.smoother import FixedLagSmoother, check_lag
from xlatda.obs.contract import to_tensors, validate
from xlatda.options import get_options
from xlatda.spaces import space_for
from xlatda.validation import check_run
from xlatda.windows import ObservationWindow, WindowPlan, float_times, plan_windows

__all__ = ["CycleResult", "assimilate", "cycle"]

_F64 = torch.float64


# -- public functions ---------------------------------------------------------
@with_thread_scope
def assimilate(state: xr.Dataset | xr.DataArray | None, obs: xr.Dataset, model: Any = None, *,
               method: str = DEFAULT_METHOD, space: str | None = None, members: int | None = None,
               init_std: Any = None, seed: int = 0, **settings: Any) -> xr.Dataset:
    """One analysis of ``state`` (an ensemble or a background) with ``obs``.

    Parameters
    ----------
    state : Dataset or DataArray or None
        The background at one time: an ensemble (``member`` dim) for the
        ensemble methods, or a single state (then ``members`` and
        ``init_std`` make a perturbed ensemble; single-state methods use it
        as is). Methods that need no background (``needs_background`` is
        False in :mod:`xlatda.methods.protocol`: those that sample a learned
        prior) take ``None``, or a state that only labels the analysis time.
    obs : Dataset
        Observations at the state's time (or without times). Several kinds
        at once (:func:`xlatda.obs.concat`) are assimilated together.
    model : LatentModel or PixelScoreModel, optional
        Needed for ``space="latent"`` and by the methods that sample a
        learned prior (a LatentModel trained with one, or its pixel-space
        counterpart).
    method : str
        A registered method (:func:`xlatda.methods.method_names`; its
        settings in its class's docstring, e.g. :class:`xlatda.methods.ETKF`),
        or one registered by the user. Methods that analyse windows need
        :func:`cycle`.
    space : {"latent", "physical"}, optional
        Default: latent with a LatentModel, physical otherwise.
    members, init_std, seed :
        Ensemble size and spread when ``state`` has no member dim (for
        sampling methods: the number of posterior samples); seed of every
        random draw. In latent space the defaults are those of
        :func:`cycle`: ``d + 1`` members (at least 20) drawn around the
        state's code from the model's latent prior.
    **settings :
        The method's settings (e.g. ``inflation=1.05``, ``radius=4``,
        ``b_std=``; each method's class docstring lists its own).

    Returns
    -------
    Dataset
        The analysis on the state layout (with ``member`` for ensembles and
        posterior samples).

    Examples
    --------
    An ensemble analysis of a Lorenz-96 state from 4 of its 8 sites (the
    default method, a 10-member ensemble drawn around the state):

    >>> import xlatda
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=3, seed=0)
    >>> obs = xlatda.obs.sample_points(truth.isel(time=[2]), n=4, error_std=0.5, seed=1)
    >>> ana = xlatda.assimilate(truth.isel(time=2), obs, members=10, init_std=1.0)
    >>> dict(ana.x.sizes)
    {'member': 10, 'k': 8}
    """
    kernel, proto = _lookup(method)
    if not proto.one_time:
        raise ConfigError(f"{method!r} assimilates a time window; use xlatda.cycle(..., window=k)")
    kind = proto.choose_space(model, space)
    state, L, tname, t0 = _start(state, model, proto, "assimilate takes the state at one time",
                                 need_time=False)
    check_run(method, kernel, proto, settings, members=members, background=state, layout=L,
              model=model, obs=obs)
    if proto.needs_background:
        extra = [d for d in L.sample_dims if d != tname]
        if extra:
            raise ConfigError(f"assimilate needs one state; select along {extra} first")
    validate(obs, L)
    table = to_tensors(obs, L, _validated=True)
    sp = space_for(L, model, kind, 0)
    if (members is None and proto.ensemble and proto.forecasts and sp.kind == "latent"
            and state is not None and (L.member_dim or "member") not in state.dims):
        # as xlatda.cycle: an ensemble spanning the latent space, drawn from the model's
        # latent prior when no init_std is given (xlatda.initial.resolve_init)
        members = sp.default_members()
    inst = proto.build(kernel, dict(settings), space=sp, members=members)
    proto.check_fits(method, sp, 1, 0)
    gen = torch.Generator().manual_seed(int(seed))
    label = table.time[0] if table.time is not None and len(table) else None
    win = ObservationWindow(0, [table], [0.0 if t0 is None else t0], [label], int(seed),
                            cycling=False)
    ens = None
    if proto.forecasts:
        ens = initial_ensemble(state, L, sp, (members or 0) if proto.ensemble else 1, init_std,
                               gen)
        if proto.ensemble and ens.shape[0] < 2:
            raise ConfigError(
                f"{method!r} needs an ensemble: give the state a 'member' dim or pass members=N "
                "and init_std")
    res = inst.analyse(sp, ens, win, generator=gen, state={})
    fields = sp.to_fields(res.steps[0][1])  # (N, C, *S)
    mdim = L.member_dim or "member"
    if not proto.ensemble and fields.shape[0] == 1:
        out = L.to_dataset(fields)
    else:
        out = L.to_dataset(fields[None])
        out = out.assign_coords({mdim: np.arange(out.sizes[mdim])})
    if not proto.needs_background:
        tval = state[tname].values if state is not None and tname in state.coords else label
        if tval is not None:
            out = out.assign_coords({tname: tval})
    out.attrs["history"] = f"analysis by xlatda {method} in {sp.kind} space"
    return out


def _warn_small_ensemble(sp: Any, proto: Any, inst: Any, ens: Any, method: str) -> None:
    """Warn when a latent ensemble filter's members cannot span the latent space."""
    if (ens is None or sp.kind != "latent" or not proto.ensemble or not proto.forecasts
            or getattr(inst, "blends_prior", False)):
        return
    n, d = int(ens.shape[0]), int(sp.d)
    fix = ("beta=0.1, the hybrid control variable with the model's latent prior "
           "(xlatda.methods.envar4d)" if str(method).lower() == "4denvar" else
           "method='hybrid', which blends the model's latent prior into the gain "
           "(xlatda.methods.hybrid)")
    if n < d + 1:
        warnings.warn(
            f"method={method!r} with {n} members spans at most {n - 1} of the {d} latent "
            "directions: the filter leaves the others uncorrected and its error there grows. "
            f"Use members >= {d + 1} (the default spans the latent space) or {fix}",
            SmallEnsembleWarning, stacklevel=3)


@with_thread_scope
def cycle(background: xr.Dataset | xr.DataArray | None, obs: xr.Dataset, model: Any, *,
          method: str = DEFAULT_METHOD, space: str | None = None, members: int | None = None,
          init_std: Any = None, init: str | None = None, window: int = 1,
          params: dict[str, tuple[float, float]] | None = None, seed: int = 0,
          progress: bool | None = None, store: str | Path | None = None, noise: bool | str = True,
          lag: int = 0, **settings: Any) -> CycleResult:
    """Forecast-analysis cycles over the span of the observations.

    Parameters
    ----------
    background : Dataset or DataArray or None
        The initial state at one time (an ensemble with ``member``, or a
        single state perturbed as ``init`` says). Methods that need no
        background (they sample a learned prior afresh in every window)
        take ``None`` (else it only bounds the observation times from below).
    obs : Dataset
        Observations at arbitrary times (and places) after the background.
    model : LatentModel or physical model or PixelScoreModel
        Forecast model: a LatentModel with dynamics (latent space) or a
        physical model with ``step``/``integrate`` (physical space); for
        the methods that sample a learned prior, the model that holds it
        (trained by :mod:`xlatda.generative`).
    method : str
        A registered method (:func:`xlatda.methods.method_names`; its
        settings, spaces and window rules in its class's docstring), or one
        registered by the user (:mod:`xlatda.methods.protocol`). Methods
        that draw every window afresh leave unconditioned prior draws in
        the ``background`` of the result.
    space : {"latent", "physical"}, optional
        Default from the kind of ``model``.
    members : int, optional
        Ensemble size (ignored when the background has ``member``). Default
        20 in physical space; in latent space ``max(20, d + n_params + 1)``,
        so the ensemble spans the whole (small) control space and the
        model error ``Q`` enters exactly (see ``noise``); the regime shift
        of ``regime="auto"`` (:mod:`xlatda.methods.regime`, on for models
        with a latent prior and a clock in seconds) counts ``d`` more, so a
        model of ``d = 48`` cycles 97 members.
    init_std : float or array, optional
        Spread of the initial ensemble: with ``init="sigma"`` the std of
        independent perturbations of every control variable (state units,
        or latent units in latent space); with ``init="jacobian"`` the
        background-error std ``σ_b`` in normalised field units, mapped to
        latent space through ``B_z = J⁺ σ_b² J⁺ᵀ`` (``J`` the decoder
        Jacobian at the background; LAINR).
    init : {"sigma", "jacobian", "climatology"}, optional
        How the initial ensemble is drawn (:mod:`xlatda.initial`); default
        ``"climatology"`` (perturbations from the model's latent prior,
        ``model.prior``) when ``init_std`` is not given and the model has a
        prior, else ``"sigma"``.
    window : int
        For methods that analyse windows (``windowed`` in
        :mod:`xlatda.methods.protocol`): consecutive observation times per
        window.
    params : dict, optional
        Unknown parameters to estimate with the state (control ``[z0; θ]``):
        ``{name: (prior mean, prior std)}`` draws θ independently of the
        state; ``{name: values}`` gives one value per member of an ensemble
        background. θ is passed to the model as ``theta`` when its dynamics
        take parameters, else carried unchanged and updated through its
        ensemble correlation with the state.
    seed : int
        Seed of every random draw (see the module docstring: bit-identical
        results in any process and after a resume).
    progress : bool, optional
        Progress bar (default: the ``progress`` option).
    store : path, optional
        Zarr store written after every window (:mod:`xlatda.cycle_store`);
        if it already holds analyses of this experiment, cycling resumes
        after the last complete one; another experiment is refused.
    noise : {True, "stochastic", False}
        Add the latent model's error covariance ``Q`` to latent forecasts:
        ``True`` by a square root of the forecast ensemble (Raanes et al.
        2015, :mod:`xlatda.methods.model_noise`: exact covariance, no
        sampling noise where the ensemble spans the latent space),
        ``"stochastic"`` by a random draw per member.
    lag : int
        Smooth each analysis with the observations of the next ``lag``
        analysis times (a fixed-lag ensemble Rauch-Tung-Striebel smoother,
        :mod:`xlatda.methods.smoother`): ``0`` (the default) returns the
        filter's analyses, each from the observations up to its time; ``lag
        >= 1`` a reanalysis (the last ``lag`` analyses use the later times
        there are). For ensemble methods with one observation time per
        window; with a ``store``, each analysis is written once final, and a
        resume recomputes the last ``lag`` stored ones (they may lack later
        observations the new run has). ``background`` and ``diagnostics`` stay
        the filter's. The smoother's regression is global (not localised, also
        after a LETKF): with far fewer members than state values it carries
        the ensemble's spurious long-range correlations back in time. Refused
        for gains that blend the latent prior (``method="hybrid"``, 4DEnVar
        with ``beta > 0``): the regression would see the ensemble part only.
    **settings :
        Method settings (``inflation``, ``rtps``, ``radius``, ``b_std``,
        ``iterations``...).

    Returns
    -------
    CycleResult
        Analyses, backgrounds, diagnostics (observation-space statistics
        and the method's own, per analysis time) and parameters.

    Raises
    ------
    AnalysisError
        If a forecast or analysis becomes NaN/inf or cannot be computed;
        the message names the analysis and its time.

    Examples
    --------
    Twenty cycles of the default ensemble filter on Lorenz-96, observing 4
    of its 8 sites at every time:

    >>> import xlatda
    >>> from xlatda.dynamics import Lorenz96
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=20, seed=0)
    >>> obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=4, error_std=0.5,
    ...                                seed=1)
    >>> res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), members=10, init_std=1.0,
    ...                    progress=False)
    >>> dict(res.analysis.x.sizes)
    {'time': 20, 'member': 10, 'k': 8}
    """
    kernel, proto = _lookup(method)
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    lag = check_lag(lag)
    if lag and (not proto.forecasts or not proto.ensemble or window != 1):
        why = ("it draws every window afresh instead of forecasting an ensemble"
               if not proto.forecasts else
               "it carries one state, not an ensemble whose members the smoother regresses on"
               if not proto.ensemble else
               f"window={window}: the smoother links one analysis time to the next")
        raise ConfigError(
            f"lag={lag} (smoothing) is not available here: {why}. Use an ensemble method "
            "with window=1, or lag=0")
    kind = proto.choose_space(model, space)
    background, L, tname, t0 = _start(background, model, proto,
                                      "the background must be at one time", need_time=True)
    check_run(method, kernel, proto, settings, members=members, background=background, layout=L,
              model=model, obs=obs, store=store)
    validate(obs, L)
    table = to_tensors(obs, L, _validated=True)
    if table.time is None:
        raise ObservationError("cycling needs observation times; add a 'time' coordinate")
    if t0 is not None and np.any(float_times(table.time) < t0 - 1e-9):
        raise ObservationError(
            "some observations are earlier than the background; select obs after the "
            "background time (obs.where(obs.time >= t0, drop=True))"
        )
    pnames = list(params or {})
    sp = space_for(L, model, kind, len(pnames))
    sp.noise = noise
    if settings.get("additive") is not None and not sp.has_tendency():
        raise ConfigError(
            "additive='adaptive' needs the tendency statistics a latent model fitted by "
            "xlatda.fit keeps (model.model_error.tendency_lags); this "
            f"{sp.kind} {'model' if sp.kind == 'latent' else 'space'} has none. Refit the "
            "model with xlatda.fit (or xlatda.fit_dynamics), or pass additive=None"
        )
    settings = cycle_defaults(method, settings, space=sp.kind)
    regime = resolve_regime(settings.get("regime"), sp)  # xlatda.methods.regime
    if regime is not None:
        sp.enable_regime(*regime)
    members = sp.default_members() if members is None else members
    inst = proto.build(kernel, dict(settings), space=sp, members=members)
    proto.check_fits(method, sp, int(window), len(pnames))
    if lag and getattr(inst, "blends_prior", False):
        raise ConfigError(
            f"lag={lag} (smoothing) is not available with method={method!r} blending the "
            "latent prior into its gain: the smoother's regression sees only the ensemble "
            "(with few members it made the analyses worse). Use an ensemble filter with the "
            "default ensemble size, or lag=0")
    windows = plan_windows(table, int(window), int(seed))
    inst.prepare(windows)
    bg = None if background is None else {v: background[v].values for v in L.variables}
    meta = {"state_variables": list(L.variables), "parameters": pnames,
            "fingerprint": fingerprint({
                "method": method.lower(), "settings": settings, "seed": int(seed),
                "members": members, "init": init, "init_std": init_std, "window": int(window),
                "params": params, "noise": noise, "space": sp.kind, "background": bg,
                "model": _model_identity(model), **({"lag": lag} if lag else {})})}
    # A smoothed store's last `lag` analyses may lack later observations this run
    # has: they are recomputed (xlatda.cycle_store.resume's `back`).
    point = resume(store, meta, tname, windows, back=lag)
    if point is None:
        gen0 = torch.Generator().manual_seed(int(seed))
        ens = None
        if proto.forecasts:
            ens = initial_ensemble(background, L, sp, members if proto.ensemble else 1,
                                   init_std, gen0, init)
            parts = [ens]
            theta0 = (initial_parameters(params, pnames, ens.shape[0], gen0) if pnames
                      else None)
            if sp.n_regime:  # [z; m; θ]: the regime shift before the parameters
                parts.append(initial_regime(sp.regime_cov, ens.shape[0], gen0))
            if theta0 is not None:
                parts.append(theta0)
            ens = torch.cat(parts, -1) if len(parts) > 1 else ens
        t_cur, state, start = t0, {}, 0
    else:
        ens, t_cur, state, start = point.carry, point.time, point.state, point.windows
    _warn_small_ensemble(sp, proto, inst, ens, method)
    return _drive(inst, proto, sp, windows[start:], ens, t_cur, state, noise=noise,
                  recorder=CycleRecorder(L, tname, pnames), store=store, meta=meta,
                  progress=progress, total=len(windows), desc=f"cycle {method}",
                  smoother=FixedLagSmoother(lag) if lag else None)


def _drive(inst, proto, sp, windows, ens, t_cur, state, *, noise, recorder, store, meta,
           progress, total, desc, smoother=None) -> CycleResult:
    """Forecast, analyse, record and store each window in turn (and revise the
    recorded analyses with ``smoother``, a :class:`FixedLagSmoother`)."""
    progress = get_options()["progress"] if progress is None else progress
    if store is None and smoother is None and _fusable(inst, proto, sp, windows, ens):
        return _drive_fused(inst, sp, windows, ens, t_cur, state, noise=noise,
                            recorder=recorder, progress=progress, total=total, desc=desc)
    pending: collections.deque = collections.deque()  # smoothed windows not yet written
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(windows), desc=desc, leave=False)
    # Methods that differentiate nothing run whole windows in inference mode
    # (CycleMethod.inference); the others get autograd, and no_grad forecasts.
    inference = bool(getattr(inst, "inference", False))
    window_mode = torch.inference_mode if inference else contextlib.nullcontext
    forecast_mode = contextlib.nullcontext if inference else torch.no_grad
    # A method whose analysis proves its forecast finite itself (the built-in
    # ensemble filters: one reduction of the member mean) is not checked here
    # first; if its analysis raises, the forecast is checked then, so a
    # non-finite forecast is still reported as such, with its analysis and time.
    checked = bool(getattr(inst, "checks_forecast", False)) and proto.forecasts
    try:
        for win in windows:
            with window_mode():
                gen = win.generator()
                ens_b = ens_f = ens
                if proto.forecasts and inference and smoother is None:  # (no null context)
                    ens_b = sp.forecast(ens, t_cur, win.times[0], generator=gen, noise=noise)
                elif proto.forecasts:
                    with forecast_mode():  # the carried ensemble's forecast needs no gradient
                        if smoother is None:
                            ens_b = sp.forecast(ens, t_cur, win.times[0], generator=gen,
                                                noise=noise)
                        else:  # and before model error (the smoother's cross-covariance)
                            ens_f, ens_b = sp.forecast_pair(ens, t_cur, win.times[0],
                                                            generator=gen, noise=noise)
                if proto.forecasts and not checked:
                    check_finite(ens_b, "forecast", win.index, win.labels[0])
                try:
                    res = inst.analyse(sp, ens_b, win, generator=gen, state=state)
                except torch.linalg.LinAlgError as err:
                    if checked:
                        check_finite(ens_b, "forecast", win.index, win.labels[0])
                    raise _not_computed(win, err) from None
                except ArithmeticError:  # the kernel's AnalysisError
                    if checked:
                        check_finite(ens_b, "forecast", win.index, win.labels[0])
                    raise
                # carried row-major: a kernel's view (LETKF's is column-major) would
                # round the next analysis differently from the ensemble a resume reads
                ens, t_cur = res.steps[-1][1].contiguous(), win.times[-1]
                state = dict(res.state)
                check_finite(ens, "analysis", win.index, win.labels[-1])
                n0 = len(recorder)
                recorder.add(sp, res, win)
                if smoother is not None:
                    key = recorder.offset + n0  # window=1: one analysis (row) per window
                    infl = res.diagnostics.get("inflation")
                    lam = 1.0 if infl is None else float(
                        infl.reshape(-1)[-1] if torch.is_tensor(infl) else infl)
                    with torch.no_grad():
                        for row, sm in smoother.push(key, ens_f, res.steps[0][0], ens, lam):
                            recorder.revise(row, sm)
            if store is not None and smoother is not None:
                # a window is written once its analysis is final (`lag` windows later),
                # with its own resume point
                pending.append((key, win.index, ens, state, t_cur, win.digest()))
                _write_final(store, recorder, pending, smoother.oldest(), meta)
            elif store is not None:
                write_window(store, recorder.datasets(n0), recorder.tname, index=win.index,
                             carry=ens if proto.forecasts else None, state=state, t_end=t_cur,
                             digest=win.digest(), meta=meta)
                recorder.drop(len(recorder))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if smoother is not None:
        with torch.no_grad():
            for row, sm in smoother.flush():
                recorder.revise(row, sm)
        if store is not None:
            _write_final(store, recorder, pending, None, meta)
    if store is not None and Path(str(store)).exists():
        return open_result(store)
    return recorder.result()


def _fusable(inst, proto, sp, windows, ens) -> bool:
    """Whether :func:`_drive_fused` runs this cycle: a built-in ensemble filter
    (:class:`~xlatda.methods.adapters.EnsembleFilter` or ``LocalFilter`` around a
    kernel with the built-in step, no additive inflation) in physical space without
    parameters or regimes, one CPU float64 ensemble, one observation time per window
    (and, in :func:`_drive`, no store and no smoother)."""
    return (proto.forecasts and proto.ensemble and type(inst) in (EnsembleFilter, LocalFilter)
            and inst.checks_forecast and inst._kernel_step == getattr(inst.kernel,
                                                                      "_cycle_step", None)
            and sp.kind == "physical" and not sp.n_params and not sp.n_regime
            and isinstance(ens, torch.Tensor) and ens.dim() == 2
            and ens.dtype == torch.float64 and ens.device.type == "cpu"
            and (windows.window == 1 if isinstance(windows, WindowPlan)
                 else all(len(w.tables) == 1 for w in windows)))


def _drive_fused(inst, sp, windows, ens, t_cur, state, *, noise, recorder, progress, total,
                 desc) -> CycleResult:
    """:func:`_drive` for the common case (:func:`_fusable`): forecast, observe,
    analyse and record in one tight loop, the result made once at the end.

    The same tensor operations, in the same order, as the general loop
    through the adapter (:meth:`EnsembleFilter.analyse`) and
    :class:`CycleRecorder`, so the same numbers bit for bit
    (``benchmarks/cycle_fingerprint.py``); what goes is the glue around them:
    one inference-mode block for the whole loop, one generator re-seeded per
    window (the same stream as a fresh one), the observation operator (a gather
    where it is one) and the localisation looked up once per distinct place
    set, the kernel's step and the divergence monitor called directly.
    Backgrounds, analyses and observed backgrounds are written in place into
    preallocated stacks and the diagnostics into columns of host numbers, so
    the loop keeps no Python object per analysis (no garbage-collector passes
    over a growing heap); the observation-space statistics are then reduced
    from the stacks in a few tensor operations (:func:`_fused_obs_statistics`).
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(windows), desc=desc, leave=False)
    step, monitor = inst._kernel_step, inst.monitor
    localised = inst.localised
    kstate = {k: v for k, v in state.items() if not k.startswith("monitor_")} or None
    mstate = monitor_state(state)
    n_win = len(windows)
    if not n_win:
        raise ObservationError("no analysis was made: no observation times after the background")
    n_members, n = ens.shape
    planned = isinstance(windows, WindowPlan)  # columns of all windows at once
    sizes = set(windows.sizes().tolist()) if planned else {len(w.tables[0]) for w in windows}
    background = torch.empty(n_win, n_members, n, dtype=_F64)
    analysis = None  # (T, N, n) or, for analyses with members contiguous, (T, n, N)
    layout = ""
    odd: dict[int, torch.Tensor] = {}  # analyses of another layout than the first's
    hx_all = (torch.empty(n_win, n_members, sizes.pop(), dtype=_F64) if len(sizes) == 1
              else [None] * n_win)
    plans: dict[tuple, tuple] = {}  # operator key -> (observer, locations, key)
    keys: list[tuple] = []

    def plan_of(table, key) -> tuple:
        plans[key] = (sp.observer(table, ens), sp.locations(table) if localised else None, key)
        return plans[key]

    # one place set for the whole plan (one check of its columns): no key per window
    fixed = None
    if planned and windows.same_places():
        fixed = plan_of(windows[0].tables[0], sp._key(windows[0].tables[0]))
    columns: dict[str, list] = {}
    irregular: dict[int, dict] = {}  # diagnostics whose names differ from the first's
    gen = torch.Generator()
    try:
        with torch.inference_mode():
            for k, win in enumerate(windows):
                table = win.tables[0]
                plan = fixed
                if plan is None:  # (the key kept is the first one made: no object per window)
                    key = sp._key(table)
                    plan = plans.get(key) or plan_of(table, key)
                keys.append(plan[2])
                gen.manual_seed(win.seed)
                ens_b = sp.forecast(ens, t_cur, win.times[0], generator=gen, noise=noise)
                hx = plan[0](ens_b)
                y, r = _as64(table.values), _as64(table.error_std)
                try:
                    ana, diag, kstate = step(ens_b, hx, y, r, generator=gen, locations=plan[1],
                                             state=kstate or None, n_params=0)
                except torch.linalg.LinAlgError as err:
                    check_finite(ens_b, "forecast", win.index, win.labels[0])
                    raise _not_computed(win, err) from None
                except ArithmeticError:  # the kernel's AnalysisError
                    check_finite(ens_b, "forecast", win.index, win.labels[0])
                    raise
                mstate = monitor.update(diag, mstate, where=AnalysisLabel(win))
                check_finite(ana, "analysis", win.index, win.labels[-1])
                background[k].copy_(ens_b)
                if isinstance(hx_all, list):
                    hx_all[k] = hx
                else:
                    hx_all[k].copy_(hx)
                own = "rows" if ana.is_contiguous() else "columns" if ana.mT.is_contiguous() \
                    else ""
                if analysis is None:
                    layout = own or "rows"
                    analysis = torch.empty((n_win, n_members, n) if layout == "rows"
                                           else (n_win, n, n_members), dtype=_F64)
                if own == layout:
                    analysis[k].copy_(ana if layout == "rows" else ana.mT)
                else:  # kept as it is: the statistics group it by its own layout
                    odd[k] = ana
                if not columns:
                    columns = {name: [] for name in diag}
                if diag.keys() == columns.keys():
                    for name, v in diag.items():
                        columns[name].append(v)
                else:
                    irregular[k] = diag
                # the next forecast starts from a row-major ensemble, as the general
                # loop's (LETKF's analysis comes out column-major; see _drive)
                ens, t_cur = ana.contiguous(), win.times[-1]
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    recorder.space = sp
    shape = (n_win, n_members, *sp.shape)
    ana_all = analysis if layout == "rows" else analysis.mT
    for k, a in odd.items():
        ana_all[k] = a
    stats = _fused_obs_statistics(recorder, sp, windows, keys, hx_all, analysis, layout, odd)
    labels = windows.labels() if planned else [w.labels[0] for w in windows]
    n_obs = windows.sizes() if planned else [len(w.tables[0]) for w in windows]
    parts = recorder.columns_to_datasets(
        labels, ana_all.reshape(shape), background.reshape(shape), stats, n_obs,
        _fused_extra(columns, irregular, n_win))
    return CycleResult(parts["analysis"], parts["background"], parts["diagnostics"], None)


def _not_computed(win, err: Exception) -> AnalysisError:
    """The error for an analysis whose linear algebra failed, naming its time."""
    return AnalysisError(
        f"analysis {win.index} (time {win.labels[0]}) could not be computed: {err}. The "
        "ensemble has probably collapsed or diverged; try more members, inflation or "
        "localisation")


def _fused_obs_statistics(recorder, sp, windows, keys, hx_all, analysis, layout, odd
                          ) -> np.ndarray:
    """The observation-space statistics ``(T, 4)`` of :func:`_drive_fused`'s stacks.

    One place set, one observation count (above 1) and one layout of the
    analyses: the batched reductions of :meth:`CycleRecorder.datasets` (member
    means and variances over a stack, ``H`` of the stacked analysis means)
    applied to the preallocated stacks themselves, which hold what those
    stack, so the same numbers. Otherwise the per-analysis entries go to the
    recorder's grouping, as views of the stacks laid out as the analyses were.
    """
    n_win = len(windows)
    first = windows[0].tables[0]
    op = sp.operator(first)
    if (isinstance(hx_all, torch.Tensor) and not odd and n_win > 1 and hx_all.shape[-1] > 1
            and all(k is keys[0] for k in keys)
            and getattr(op._compiled(analysis), "pairs", None) is not None):
        with torch.no_grad():
            hb, spread = obs_moments_stacked(hx_all)
            ha = sp.observe_stacked_means(analysis, layout, first)
            if isinstance(windows, WindowPlan):  # the same numbers as stacking the tables'
                shape = (n_win, hx_all.shape[-1])
                y, err = (_as64(windows.columns(c)).reshape(shape)
                          for c in ("values", "error_std"))
            else:
                y, err = (torch.stack([_as64(getattr(w.tables[0], c)) for w in windows])
                          for c in ("values", "error_std"))
            return obs_statistics_stacked(hb, spread, _as64(ha), y, err)
    tables = [w.tables[0] for w in windows]
    views = [odd[k] if k in odd else (analysis[k] if layout == "rows" else analysis[k].mT)
             for k in range(n_win)]
    return recorder._obs_rows(list(zip(hx_all, views, tables, keys)))


def _as64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == _F64 else t.to(_F64)


def _fused_extra(columns: dict[str, list], irregular: dict[int, dict], n_win: int) -> dict:
    """The method diagnostics of :func:`_drive_fused` as the recorder takes them: float64
    columns where every analysis gave the same names as host numbers, else
    ``(value, 0, 1)`` entries (None where an analysis lacks one)."""
    if not irregular and all(type(v) in (float, int) for col in columns.values() for v in col):
        return {n: np.array(col, dtype=np.float64) for n, col in columns.items()}
    names = sorted(set(columns) | {n for d in irregular.values() for n in d})
    rows: list[dict] = []
    it = {n: iter(col) for n, col in columns.items()}
    for k in range(n_win):
        rows.append(irregular[k] if k in irregular else {n: next(it[n]) for n in columns})
    return {n: [(d[n], 0, 1) if n in d else None for d in rows] for n in names}


def _write_final(store, recorder, pending, oldest, meta) -> None:
    """Write the pending windows whose analysis the smoother no longer revises
    (row keys below ``oldest``; ``None``: all), in order, each with its resume point."""
    while pending and (oldest is None or pending[0][0] < oldest):
        _, index, carry, state, t_end, digest = pending.popleft()
        write_window(store, recorder.datasets(0, 1), recorder.tname, index=index, carry=carry,
                     state=state, t_end=t_end, digest=digest, meta=meta)
        recorder.drop(1)
