"""Cycling adapters of the built-in kernels (the :mod:`~xlatda.methods.protocol`).

Each adapter wraps a kernel (its signature untouched) behind
``analyse(space, ensemble, window, *, generator, state)``:

- :class:`EnsembleFilter`: ETKF, EnKF, DEnKF, EnSRF (any
  :class:`~xlatda.methods.ensemble.EnsembleMethod`); :class:`LocalFilter`
  adds the localisation distances of the space (LETKF);
- :class:`ThreeDVar`: 3DVar, with ``b=`` / ``b_std=`` or the model's latent
  prior as B;
- :class:`VAEVarAnalysis`, :class:`VAE4DVarWindow`: VAE-Var in 3D and 4D
  (physical space);
- :class:`EnVarWindow`: 4DEnVar / LEVDA over a window.

The score-based method's adapter lives with its sampler in
:mod:`xlatda.generative`.

Ensemble kernels return the analysis ensemble; if one returns more (a
tuple ``(ensemble, diagnostics[, state])``, or an object with ``ensemble``
/ ``analysis``, ``diagnostics`` and ``state`` attributes), the diagnostics
and state are forwarded, and a kernel whose ``analyse`` takes ``state=``
receives the state it returned at the previous analysis.

Examples
--------
>>> from xlatda.methods.protocol import adapter_for
>>> from xlatda.methods import ETKF, LETKF, Var3D
>>> adapter_for(ETKF).__name__, adapter_for(LETKF).__name__, adapter_for(Var3D).__name__
('EnsembleFilter', 'LocalFilter', 'ThreeDVar')
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

from xlatda.errors import ConfigError
from xlatda.methods.additive import check_additive, with_tendency_error
from xlatda.methods.consistency import (
    DEFAULT_GROSS_ERROR,
    AnalysisLabel,
    DivergenceMonitor,
    monitor_entries,
    monitor_state,
)
from xlatda.methods.covariance import Covariance, DiagonalCovariance
from xlatda.methods.ensemble import (
    EnsembleMethod,
    etkf_transform,
    random_rotation,
    relax_to_prior_spread,
)
from xlatda.methods.envar4d import EnVar4D, static_rows
from xlatda.methods.letkf import LETKF
from xlatda.methods.protocol import CycleMethod, WindowAnalysis, adapts
from xlatda.methods.regime import check_regime
from xlatda.methods.vaevar import VAE4DVar, VAEVar
from xlatda.methods.var3d import Var3D
from xlatda.validation import check_positive, gross_error_mask, observed_variance

__all__ = ["EnVarWindow", "EnsembleFilter", "LocalFilter", "ThreeDVar", "VAE4DVarWindow",
           "VAEVarAnalysis", "background_covariance", "screen_gross_errors",
           "unpack_kernel_result"]

_F64 = torch.float64

#: State entries of the adaptive additive inflation (kept out of the kernel's state).
_ADDITIVE_KEYS = ("additive_scale", "additive_time")


def _make(kernel: type, settings: dict[str, Any]) -> Any:
    try:
        return kernel(**settings)
    except TypeError as err:  # an unknown setting: name the method
        raise ConfigError(f"{kernel.__name__}: {err}") from None


def unpack_kernel_result(out: Any, state: dict[str, torch.Tensor]):
    """``(ensemble, diagnostics, state)`` from what an ensemble kernel returned."""
    if isinstance(out, torch.Tensor):
        return out, {}, state
    if isinstance(out, tuple):
        ens = out[0]
        diag = dict(out[1]) if len(out) > 1 and out[1] is not None else {}
        new_state = dict(out[2]) if len(out) > 2 and out[2] is not None else state
        return ens, diag, new_state
    ens = getattr(out, "ensemble", None)
    if ens is None:
        ens = getattr(out, "analysis", None)
    if not isinstance(ens, torch.Tensor):
        raise ConfigError(
            f"the ensemble kernel returned {type(out).__name__}; expected a Tensor, a tuple "
            "(ensemble, diagnostics[, state]) or an object with .ensemble"
        )
    diag = dict(getattr(out, "diagnostics", None) or {})
    new_state = getattr(out, "state", None)
    return ens, diag, state if new_state is None else dict(new_state)


def _split_additive(state: dict[str, torch.Tensor]):
    """``(additive entries, the rest)`` of a method state (the state itself when it
    holds none)."""
    if not any(k in state for k in _ADDITIVE_KEYS):
        return {}, state
    own = {k: state[k] for k in _ADDITIVE_KEYS if k in state}
    return own, {k: v for k, v in state.items() if k not in _ADDITIVE_KEYS}


def _additive(space, ensemble, hx, y, r, window, generator, own):
    """Adaptive additive inflation (:mod:`xlatda.methods.additive`) of the forecast
    ensemble at the window's first time, from its first observations."""
    t_now = float(window.times[0])
    lam = own.get("additive_scale", torch.tensor(0.0, dtype=_F64))
    last = own.get("additive_time")
    cov = None if last is None else space.tendency_covariance(float(last), t_now)
    if cov is not None:
        with torch.no_grad():
            ensemble, hx, lam = with_tendency_error(space, ensemble, hx, y, r,
                                                    window.tables[0], cov, lam,
                                                    generator=generator)
    t_end = torch.tensor(float(window.times[-1]), dtype=_F64)
    return ensemble, hx, {"additive_scale": lam.to(_F64).reshape(()), "additive_time": t_end}


class _AdditiveSetting:
    """The ``additive`` setting of an adapter (:mod:`xlatda.methods.additive`): taken
    out of the kernel's settings, and its scale recorded with every analysis."""

    @classmethod
    def setting_names(cls, kernel):
        names = super().setting_names(kernel)
        return None if names is None else names | {"additive", "regime"}

    @classmethod
    def build(cls, kernel, settings, *, space, members):
        settings = dict(settings)
        additive = check_additive(settings.pop("additive", None))
        # The regime shift lives in the state space (cycle enables it there:
        # xlatda.methods.regime); here it is only checked.
        check_regime(settings.pop("regime", None))
        return cls(_make(kernel, settings), additive)

    def _record_additive(self, res: WindowAnalysis, own: dict[str, torch.Tensor]):
        if self.additive is not None:
            res.diagnostics["additive_scale"] = own["additive_scale"]
            res.state.update(own)
        return res


@adapts(EnsembleMethod)
class EnsembleFilter(_AdditiveSetting, CycleMethod):
    """An ensemble Kalman filter kernel analysing one observation time."""

    localised = False

    def __init__(self, kernel: Any, additive: str | None = None) -> None:
        self.kernel = kernel
        self.additive = check_additive(additive)
        self.monitor = DivergenceMonitor()
        try:
            params = inspect.signature(kernel.analyse).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins
            params = {}
        self._takes_state = "state" in params
        # The built-in kernels are pure tensor algebra (no caches, no autograd): the
        # driver may run whole windows in inference mode (see CycleMethod.inference).
        self.inference = type(kernel).analyse is EnsembleMethod.analyse
        # ... and their analysis proves the forecast finite (the member mean's sum),
        # so the driver need not check it first (without additive inflation, which
        # works on the forecast before the kernel sees it).
        self.checks_forecast = self.inference and self.additive is None
        # The built-in step gives one CPU float64 analysis' diagnostics as host
        # numbers (EnsembleMethod._cycle_step: the same values, fewer tensor ops).
        self._kernel_step = (kernel._cycle_step if type(kernel).step is EnsembleMethod.step
                             else kernel.step)

    def analyse(self, space, ensemble, window, *, generator, state):
        table = window.tables[0]
        # the filters differentiate nothing: no autograd records (the driver's
        # inference mode already says so)
        off = torch.is_inference_mode_enabled()
        if off:  # (a branch, not a null context: this runs once per analysis)
            hx = space.observe(ensemble, table)
        else:
            with torch.no_grad():
                hx = space.observe(ensemble, table)
        y, r = table.values, table.error_std
        y, r = (y if y.dtype == _F64 else y.to(_F64)), (r if r.dtype == _F64 else r.to(_F64))
        own, state = _split_additive(state)
        if self.additive is not None:
            ensemble, hx, own = _additive(space, ensemble, hx, y, r, window, generator, own)
        locations = space.locations(table) if self.localised else None
        # A kernel that overrides analyse (a user's subclass) is called through it.
        if self.inference and off:
            res = self._step(space, ensemble, hx, y, r, window, locations, generator, state)
        elif self.inference:
            # inference mode spares every operation autograd's bookkeeping
            with torch.inference_mode():
                res = self._step(space, ensemble, hx, y, r, window, locations, generator,
                                 state)
        else:
            extra = {"state": state} if self._takes_state else {}
            out = self.kernel.analyse(ensemble, hx, y, r, generator=generator,
                                      locations=locations, **extra)
            ana, diag, new_state = unpack_kernel_result(out, state)
            res = WindowAnalysis([(ensemble, ana)], diag, new_state, [hx])
        return self._record_additive(res, own)

    def _step(self, space, ensemble, hx, y, r, window, locations, generator, state):
        # The kernel's own state (adaptive inflation) and the divergence
        # monitor's counts travel in one dict, stored with every analysis.
        kstate = {k: v for k, v in state.items() if not k.startswith("monitor_")}
        ana, diag, kstate = self._kernel_step(ensemble, hx, y, r, generator=generator,
                                              locations=locations, state=kstate or None,
                                              n_params=space.n_params)
        m = self.monitor.update(diag, monitor_state(state), where=AnalysisLabel(window))
        new_state = {**kstate, **monitor_entries(m)}
        return WindowAnalysis([(ensemble, ana)], diag, new_state, [hx])


@adapts(LETKF)
class LocalFilter(EnsembleFilter):
    """A localised ensemble filter: the space gives the distances (physical space only)."""

    localised = True
    spaces = ("physical",)


def screen_gross_errors(b: Covariance, h: Any, xb: torch.Tensor, y: torch.Tensor,
                        r: torch.Tensor, k: float):
    """``(y, r, h, n_rejected)`` without the observations failing the background check.

    ``|y - h(xb)| > k sqrt(diag(H B Hᵀ) + r²)``
    (:func:`~xlatda.validation.gross_error_mask`, the variance from
    :func:`~xlatda.validation.observed_variance`); unchanged when none fails
    or the variance cannot be computed cheaply.
    """
    var = observed_variance(b, h, xb)
    if var is None:
        return y, r, h, 0
    with torch.no_grad():
        matrix = getattr(h, "matrix", None)
        hx = (matrix.to(_F64) @ xb[0] if isinstance(matrix, torch.Tensor) else h(xb)[0])
    hx = hx.to(_F64)
    bad = gross_error_mask(y - hx, var.to(_F64), r**2, k)
    if not bool(bad.any()):
        return y, r, h, 0
    keep = ~bad
    if isinstance(matrix, torch.Tensor):
        sub = matrix.to_dense()[keep]
        return y[keep], r[keep], sub, int(bad.sum())
    return y[keep], r[keep], (lambda s, f=h: f(s)[..., keep]), int(bad.sum())


def background_covariance(settings: dict[str, Any], space: Any) -> Covariance:
    """B from ``b=`` (a Covariance), ``b_std=`` (diagonal) or the space's prior.

    ``b`` and ``b_std`` are removed from ``settings``.
    """
    b = settings.pop("b", None)
    b_std = settings.pop("b_std", None)
    if b is not None:
        if not isinstance(b, Covariance):
            raise ConfigError("b must be a covariance object from xlatda.methods.covariance")
        return b
    n = space.n_state + space.n_params
    if b_std is None:
        prior = space.prior_covariance() if space.n_params == 0 else None
        if prior is not None:
            return prior
        raise ConfigError(
            "3dvar needs a background-error covariance: pass b_std=<float or array, the "
            f"background-error standard deviation in {space.units()}> (diagonal B) or "
            "b=<Covariance>" + (", or use a model with a latent prior (model.prior)"
                                if space.kind == "latent" else "")
        )
    std = np.asarray(b_std, float)
    if not np.all(np.isfinite(std)) or np.any(std <= 0):
        raise ConfigError(f"b_std must be positive and finite, got {b_std!r}")
    var = torch.as_tensor(np.broadcast_to(std**2, (n,)).copy(), dtype=_F64)
    return DiagonalCovariance(var)


class _SingleState(CycleMethod):
    """A variational analysis of one state (the background mean)."""

    ensemble = False

    def __init__(self, kernel: Any, gross_error: float | None = None) -> None:
        self.kernel = kernel
        self.gross_error = gross_error

    def _operator(self, space, table):
        h = space.linear_operator(table)
        if h is None:
            def h(s):
                return space.observe(s, table)
        return h

    def analyse(self, space, ensemble, window, *, generator, state):
        table = window.tables[0]
        xb = ensemble.mean(0, keepdim=True)
        y, r, h = table.values.to(_F64), table.error_std.to(_F64), self._operator(space, table)
        diag = {}
        if self.gross_error is not None:  # background check: drop |d| > k sqrt(HBH' + R)
            y, r, h, n_bad = screen_gross_errors(self.kernel.b, h, xb, y, r, self.gross_error)
            diag["n_rejected"] = torch.tensor(float(n_bad), dtype=_F64)
        res = self.kernel.analyse(xb, y[None], r, h)
        diag.update({"iterations": torch.tensor(float(res.iterations), dtype=_F64),
                     "converged": torch.tensor(float(res.converged), dtype=_F64)})
        return WindowAnalysis([(ensemble, res.mean.detach().to(_F64))], diag, state)


@adapts(Var3D)
class ThreeDVar(_SingleState):
    """3DVar of the background mean with a static B."""

    @classmethod
    def setting_names(cls, kernel):
        names = super().setting_names(kernel)
        return None if names is None else names | {"b", "b_std", "gross_error"}

    @classmethod
    def build(cls, kernel, settings, *, space, members):
        settings = dict(settings)
        gross = settings.pop("gross_error", DEFAULT_GROSS_ERROR)
        if gross is not None:
            check_positive(gross, "gross_error")
        return cls(_make(kernel, {"b": background_covariance(settings, space), **settings}),
                   gross)


@adapts(VAEVar)
class VAEVarAnalysis(_SingleState):
    """3D VAE-Var of the background mean (physical space)."""

    spaces = ("physical",)
    estimates_parameters = False

    @classmethod
    def build(cls, kernel, settings, *, space, members):
        return cls(_make(kernel, settings))


@adapts(VAE4DVar)
class VAE4DVarWindow(CycleMethod):
    """4D VAE-Var over a window, through the (differentiable) physical model."""

    ensemble = False
    windowed = True
    one_time = False
    spaces = ("physical",)
    estimates_parameters = False

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    @classmethod
    def build(cls, kernel, settings, *, space, members):
        return cls(_make(kernel, settings))

    def analyse(self, space, ensemble, window, *, generator, state):
        xb0 = ensemble.mean(0, keepdim=True)
        y, r = window.stacked()
        h = space.forecast_observe(window.times, window.tables, generator)
        res = self.kernel.analyse(xb0, y[None], r, h)
        steps = space.roll(xb0, res.mean.detach().to(_F64), window.times, generator)
        diag = {"iterations": torch.tensor(float(res.iterations), dtype=_F64)}
        return WindowAnalysis(steps, diag, state)


@adapts(EnVar4D)
class EnVarWindow(_AdditiveSetting, CycleMethod):
    """4DEnVar / LEVDA over a window: the ensemble at its start, rolled through it."""

    windowed = True
    one_time = False

    def __init__(self, kernel: Any, additive: str | None = None) -> None:
        self.kernel = kernel
        self.additive = check_additive(additive)

    def analyse(self, space, ensemble, window, *, generator, state):
        own, state = _split_additive(state)
        if self.additive is not None:  # at the window's start, from its first observations
            tab = window.tables[0]
            with torch.no_grad():
                hx0 = space.observe(ensemble, tab)
            ensemble, _, own = _additive(space, ensemble, hx0, tab.values.to(_F64),
                                         tab.error_std.to(_F64), window, generator, own)
        res = self._analyse(space, ensemble, window, generator=generator, state=state)
        return self._record_additive(res, own)

    @property
    def blends_prior(self) -> bool:  # hybrid (beta > 0): no SmallEnsembleWarning
        return float(self.kernel.beta) > 0.0

    def _analyse(self, space, ensemble, window, *, generator, state):
        y, r = window.stacked()
        static = static_rows(space, ensemble.shape[-1]) if self.blends_prior else None
        if static is None and len(window.times) > 1 and space.has_model_error() \
                and self.kernel.model_error == "trajectories":
            return self._smoother(space, ensemble, window, y, r, generator, state)
        h = space.forecast_observe(window.times, window.tables, generator)
        res = self.kernel.analyse(ensemble, y, r, h, generator=generator,
                                  n_params=space.n_params, static=static)
        steps = space.roll(ensemble, res.ensemble.to(_F64), window.times, generator)
        diag = {"iterations": torch.tensor(float(res.iterations), dtype=_F64),
                "converged": torch.tensor(float(res.converged), dtype=_F64)}
        return WindowAnalysis(steps, diag, dict(state))

    def _smoother(self, space, ensemble, window, y, r, generator, state):
        """Weak constraint: the window's members are noisy trajectories.

        A strong-constraint window trusts the dynamics over its whole length;
        with a model error ``Q`` the members are forecast *with* it from one
        observation time to the next, and one ensemble transform from all the
        window's observations updates every time of it (the ensemble
        transform Kalman smoother: the 4D ensemble covariance then holds the
        model error; Evensen and van Leeuwen 2000, Hunt et al. 2004). For a
        linear observation operator this is the Kalman smoother of the
        window; for a nonlinear one, one Gauss-Newton step from the mean.
        """
        n = ensemble.shape[0]
        traj, cur, tc = [], ensemble, window.times[0]
        for t in window.times:
            # Random draws, not the square root: x(t+1) = M x(t) + eta must keep
            # Cov(x(t+1), x(t)) = M P(t), which a transform of the whole
            # ensemble (methods.model_noise) would not.
            cur = space.forecast(cur, tc, t, generator=generator, noise="stochastic")
            tc = t
            traj.append(cur)
        infl = float(self.kernel.inflation)
        forecasts = traj
        means = [e.mean(0) for e in traj]
        anoms = [infl * (e - m) for e, m in zip(traj, means)]
        traj = [m + a for m, a in zip(means, anoms)]
        hx = torch.cat([space.observe(e, tab) for e, tab in zip(traj, window.tables)], -1)
        hx = hx.to(_F64)
        r = torch.as_tensor(r, dtype=_F64)
        hbar = hx.mean(0)
        S = (hx - hbar) / (math.sqrt(n - 1) * r)
        d = (torch.as_tensor(y, dtype=_F64) - hbar) / r
        w, T = etkf_transform(S, d)
        if self.kernel.rotate:
            T = T @ random_rotation(n, (), generator=generator, dtype=_F64)
        steps = []
        alpha, k = float(self.kernel.rtps), ensemble.shape[-1] - int(space.n_params)
        for e, f, m, a in zip(traj, forecasts, means, anoms):
            xs = a / math.sqrt(n - 1)
            mean_a = m + w @ xs
            post = mean_a + T.mT @ a
            if alpha and k:  # RTPS of the state entries, toward this time's forecast
                post = torch.cat([relax_to_prior_spread(f[..., :k], post[..., :k], alpha),
                                  post[..., k:]], -1)
            steps.append((e, post))
        diag = {"iterations": torch.tensor(1.0, dtype=_F64),
                "converged": torch.tensor(1.0, dtype=_F64)}
        return WindowAnalysis(steps, diag, dict(state))
