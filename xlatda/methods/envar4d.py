r"""4DEnVar and LEVDA: ensemble-variational analysis over a time window.

The control vector :math:`s = [z_0; \theta]` holds the (latent) state at the
window start and any unknown parameters. A prior ensemble
:math:`\{s^j\}_{j=1}^N` with mean :math:`\bar s` and anomalies
:math:`S = [s^j - \bar s]_j / \sqrt{N-1}` spans the search space
:math:`s(w) = \bar s + S w`, :math:`w \in \mathbb{R}^N`, and the analysis
minimises

.. math::

    J(w) = \tfrac12 \lVert w \rVert^2
         + \tfrac12 \lVert y - h(\bar s + S w) \rVert^2_{R^{-1}},
    \qquad R = \operatorname{diag}(r^2),

where :math:`h` (the caller's ``forecast_obs``) rolls a control vector
through the (differentiable) dynamics to every observation time and returns
the predicted observations stacked over times: :math:`y = [y_1; \dots; y_K]`.
The kernel knows nothing of models, times or decoders.

**Gauss-Newton** (``mode="gauss-newton"``, the iterative ensemble Kalman
smoother of Bocquet and Sakov): with ensemble sensitivities
:math:`Y = [h(s^j) - \overline{h(s)}]_j / \sqrt{N-1}` in place of the
tangent-linear model,

.. math::

    \nabla J = w - Y^\top R^{-1} (y - h(s(w))), \qquad
    \mathcal{H} = I_N + Y^\top R^{-1} Y, \qquad
    w \leftarrow w - \mathcal{H}^{-1} \nabla J;

from :math:`w = 0` the first step is
:math:`w = (I + Y^\top R^{-1} Y)^{-1} Y^\top R^{-1} (y - h(\bar s))`.
The step is iterated until :math:`\lVert \Delta w \rVert \le` ``tol``. The
sensitivities are re-evaluated at every outer iteration on an ensemble
re-centred on :math:`s(w)`:

* ``variant="transform"`` (default, IEnKS "transform" variant): the ensemble
  :math:`s(w) + \sqrt{N-1}\, S T`, :math:`T = \mathcal{H}^{-1/2}` from the
  previous iteration, so the sensitivities are taken over the current
  posterior spread; :math:`Y` is then mapped back by :math:`T^{-1}`.
* ``variant="bundle"``: the ensemble :math:`s(w) + \varepsilon \sqrt{N-1}\, S`
  with a small :math:`\varepsilon`, a finite-difference estimate of the
  tangent linear, divided by :math:`\varepsilon`.

Each iteration makes one call of ``forecast_obs`` on :math:`N + 1` control
vectors: the members and :math:`s(w)` itself, whose prediction gives the
innovation and the cost exactly. For a nonlinear :math:`h` the transform
variant converges to the minimiser of an ensemble-averaged cost (its
sensitivities are secants over the posterior spread; this is what makes it
robust in cycling), the bundle variant to the minimiser of :math:`J`
itself; both are exact for a linear :math:`h`. The default is the transform
variant, the standard choice for cycled smoothing (Bocquet and Sakov 2014).
Gauss-Newton takes full steps (no line search), so strongly nonlinear
windows may need more iterations or the autodiff mode.

**Autodiff** (``mode="autodiff"``, as LEVDA describes it): :math:`J(w)` is
minimised by L-BFGS from :math:`w = 0`, with gradients by autograd through
``forecast_obs`` (no adjoint code); each evaluation rolls one control vector
per batch element.

**Posterior ensemble**: with :math:`Y` re-evaluated at the optimum
:math:`w^*`, the symmetric ETKF transform

.. math:: s_a^j = s(w^*) + \sqrt{N-1}\, [S\, \mathcal{H}^{-1/2}]_j,
          \qquad \mathcal{H} = I + Y^\top R^{-1} Y,

so the parameters in :math:`s` come out with uncertainty. The transform
preserves the mean (:math:`\mathcal{H} \mathbf{1} = \mathbf{1}` since the
columns of :math:`Y` sum to zero); an optional random mean-preserving
rotation (``rotate=True``) may follow. With a linear :math:`h` and
:math:`N > n_s` the analysis mean and covariance are exactly those of the
Kalman smoother with the ensemble's mean and covariance as prior.

**Hybrid control variable** (``beta > 0``, Lorenc 2003, Buehner 2005):
with a static covariance :math:`B = L^\top L` (``static=``, the rows of
:math:`L`, e.g. a latent model's climatological prior) the control is
:math:`v = [w_e; w_b] \in \mathbb{R}^{N + k}` and

.. math::

    s(v) = \bar s + \sqrt{1 - \beta}\, S^\top w_e + \sqrt\beta\, L^\top w_b,
    \qquad J(v) = \tfrac12 \lVert v \rVert^2
         + \tfrac12 \lVert y - h(s(v)) \rVert^2_{R^{-1}},

so the prior covariance of the window's initial state is
:math:`(1 - \beta) P^e + \beta B` (:math:`P^e` the inflated ensemble
covariance), full rank when :math:`B` is: an ensemble smaller than the
control space no longer leaves directions uncorrected. The static part is
propagated through the *whole window* by the same secant trick as the
ensemble part: at every outer iteration its sensitivities are the centred
differences :math:`[h(s(v) + \sqrt\beta\, l_k) - h(s(v) - \sqrt\beta\,
l_k)] / 2` over the weighted columns (``variant="bundle"``: over
:math:`\pm \varepsilon \sqrt\beta\, l_k`, divided by :math:`\varepsilon`),
``2 k`` more controls per ``forecast_obs`` call; exact for a linear
:math:`h`, where the analysis is the Kalman smoother (BLUE) of the blended
covariance. The Gauss-Newton Hessian is :math:`I_{N+k} + Y^\top R^{-1} Y`
over both parts. The posterior members are the ensemble's own ETKF
transform (the Hessian of the ensemble part alone, the ``beta = 0``
transform) re-centred on the hybrid analysis :math:`s(v^*)`, as in
operational hybrid En-4DEnVar: they carry the ensemble part of the
posterior covariance, not the static part. ``beta = 0`` is the pure
ensemble method above, bit for bit.

References
----------
Lorenc, A. C. (2003). The potential of the ensemble Kalman filter for NWP:
a comparison with 4D-Var. Q. J. R. Meteorol. Soc. 129, 3183-3203.
Buehner, M. (2005). Ensemble-derived stationary and flow-dependent
background-error covariances. Q. J. R. Meteorol. Soc. 131, 1013-1043.
Si, Chen (2026). LEVDA: Latent Ensemble Variational Data Assimilation via
Differentiable Dynamics. arXiv:2602.19406.
Bocquet, M. and Sakov, P. (2014). An iterative ensemble Kalman smoother.
Q. J. R. Meteorol. Soc. 140, 1521-1535.
Liu, C., Xiao, Q. and Wang, B. (2008). An ensemble-based four-dimensional
variational data assimilation scheme. Mon. Wea. Rev.
Hunt, B. R., Kostelich, E. J. and Szunyogh, I. (2007). Efficient data
assimilation for spatiotemporal chaos: a local ensemble transform Kalman
filter. Physica D.

Examples
--------
Recover the slope of a line from observations at three times, with control
``s = [x0, slope]``:

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> ens = torch.randn(20, 2, generator=g, dtype=torch.float64)   # prior N(0, I)
>>> times = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
>>> def forecast_obs(s):   # (..., M, 2) -> (..., M, 3)
...     return s[..., :1] + s[..., 1:] * times
>>> truth = torch.tensor([0.5, 1.0], dtype=torch.float64)
>>> y = forecast_obs(truth[None])[0]
>>> out = EnVar4D().analyse(ens, y, 0.01, forecast_obs)
>>> [round(float(v), 1) for v in out.mean]
[0.5, 1.0]
>>> tuple(out.ensemble.shape), out.iterations
((20, 2), 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.ensemble import random_rotation, relax_to_prior_spread
from xlatda.methods.lbfgs import minimise_batched_lbfgs
from xlatda.methods.registry import methods
from xlatda.methods.var3d import observation_std

__all__ = ["EnVar4D", "EnVar4DResult", "envar4d_cost", "static_rows"]

ForecastObs = Callable[[Tensor], Tensor]


def _control(w: Tensor, mean: Tensor, anomalies: Tensor) -> Tensor:
    """``s(w) = mean + S w``: w (*batch, N), mean (*batch, n_s), anomalies (*batch, N, n_s)."""
    return mean + (w.unsqueeze(-2) @ anomalies).squeeze(-2)


def _predict(forecast_obs: ForecastObs, s: Tensor, p: int) -> Tensor:
    """Call ``forecast_obs`` on (..., M, n_s) and check it returns (..., M, P)."""
    out = forecast_obs(s)
    if not isinstance(out, Tensor) or out.shape[:-1] != s.shape[:-1] or out.shape[-1] != p:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(
            f"forecast_obs must map controls (..., M, n_s) = {tuple(s.shape)} to predicted "
            f"observations (..., M, P) with P = {p} (the size of y); it returned {shape}"
        )
    return out


def static_rows(space: Any, n_s: int) -> Tensor:
    """Rows of a factor of the static covariance of a cycle's control: the latent prior.

    For a latent space (:mod:`xlatda.spaces`) whose model has a climatological
    prior ``model.prior`` (stored by :func:`xlatda.fit`: the covariance of the
    training codes, ``B = S S^T``), the rows of ``S^T`` padded with zeros for
    the entries after the latent state (regime shift, parameters: no static
    part), float64 on the CPU, shape ``(d, n_s)``.

    Parameters
    ----------
    space : object
        The cycle's state space (``kind``, ``d`` and ``model``).
    n_s : int
        The control size.

    Returns
    -------
    Tensor, shape ``(d, n_s)``

    Raises
    ------
    ConfigError
        For a physical space, or a model without a latent prior.
    """
    model = getattr(space, "model", None)
    if getattr(space, "kind", None) != "latent" or getattr(model, "latent_dim", None) is None:
        raise ConfigError(
            "4denvar with beta > 0 blends the latent model's climatological prior into the "
            "ensemble covariance; it needs a latent space: cycle a LatentModel, or set beta=0")
    prior = getattr(model, "prior", None)
    if prior is None:
        raise ConfigError(
            "4denvar with beta > 0 needs the model's latent prior (model.prior), and this model "
            "has none: refit it with xlatda.fit (which stores one), or set beta=0")
    scale = prior.scale.detach().to("cpu", torch.float64)  # (d, k): B = S S^T
    rows = torch.zeros(scale.shape[1], n_s, dtype=torch.float64)
    rows[:, : space.d] = scale.T
    return rows


def envar4d_cost(
    w: Tensor,
    mean: Tensor,
    anomalies: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    forecast_obs: ForecastObs,
) -> Tensor:
    r"""The 4DEnVar cost :math:`J(w)` for each batch element.

    .. math:: J(w) = \tfrac12 \lVert w \rVert^2
              + \tfrac12 \lVert (y - h(\bar s + S w)) / r \rVert^2

    Parameters
    ----------
    w : Tensor, shape ``(*batch, N)``
        Ensemble weights.
    mean : Tensor, shape ``(*batch, n_s)``
        Prior mean :math:`\bar s`.
    anomalies : Tensor, shape ``(*batch, N, n_s)``
        Scaled prior anomalies, rows :math:`(s^j - \bar s)/\sqrt{N-1}`.
    y : Tensor, shape ``(*batch, P)``
        Observations stacked over the window's times.
    r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
        Observation-error standard deviations.
    forecast_obs : callable
        ``(..., M, n_s) -> (..., M, P)``; called here with ``M = 1``.

    Returns
    -------
    Tensor, shape ``(*batch,)``

    Examples
    --------
    >>> import torch
    >>> anomalies = torch.eye(2).unsqueeze(0).expand(1, 2, 2) / 1.0
    >>> float(envar4d_cost(torch.zeros(1, 2), torch.zeros(1, 2), anomalies,
    ...                    torch.ones(1, 2), 1.0, lambda s: s)[0])
    1.0
    """
    p = y.shape[-1]
    r = observation_std(r_std, p, y)
    s = _control(w, mean, anomalies)
    pred = _predict(forecast_obs, s.unsqueeze(-2), p).squeeze(-2)
    return 0.5 * (w**2).sum(-1) + 0.5 * (((y - pred) / r) ** 2).sum(-1)


@dataclass(frozen=True)
class EnVar4DResult:
    """Output of :meth:`EnVar4D.analyse`.

    Attributes
    ----------
    ensemble : Tensor, shape ``(*batch, N, n_s)``
        Posterior ensemble of controls at the window start.
    mean : Tensor, shape ``(*batch, n_s)``
        Analysis :math:`s(w^*)` (the mean of ``ensemble``).
    w : Tensor, shape ``(*batch, N)`` or ``(*batch, N + k)``
        Optimal weights :math:`w^*`; with a static part (``beta > 0``)
        :math:`[w_e; w_b]`, the ensemble weights first.
    iterations : int
        Gauss-Newton or L-BFGS iterations done.
    cost : Tensor, shape ``(K, *batch)``
        Cost :math:`J` at each iterate, starting at :math:`w = 0`.
    converged : bool
        Whether the tolerance was met within ``iterations``.
    """

    ensemble: Tensor
    mean: Tensor
    w: Tensor
    iterations: int
    cost: Tensor
    converged: bool


def _sym_pow(mat: Tensor) -> tuple[Tensor, Tensor]:
    """``mat^{-1/2}`` and ``mat^{1/2}`` of symmetric positive-definite ``mat`` (..., N, N)."""
    evals, evecs = torch.linalg.eigh(mat)
    evals = evals.clamp_min(torch.finfo(mat.dtype).tiny)
    vt = evecs.transpose(-1, -2)
    return (evecs * evals.rsqrt().unsqueeze(-2)) @ vt, (evecs * evals.sqrt().unsqueeze(-2)) @ vt


@methods.register("4denvar")
@dataclass(frozen=True, kw_only=True)
class EnVar4D:
    """4DEnVar / LEVDA analysis of a window (see module docstring for the maths).

    Parameters
    ----------
    mode : {"gauss-newton", "autodiff"}
        Gauss-Newton with ensemble sensitivities, or L-BFGS with autograd
        gradients through ``forecast_obs``.
    iterations : int
        Largest number of outer (Gauss-Newton) or L-BFGS iterations.
        A linear problem needs one Gauss-Newton iteration.
    tol : float
        Gauss-Newton stops when :math:`\\lVert \\Delta w \\rVert \\le` ``tol``
        for every batch element; L-BFGS when the largest gradient entry is
        below ``tol``.
    inflation : float
        Multiplies the prior anomalies before the analysis (>= 1 inflates).
    variant : {"transform", "bundle"}
        How ensemble sensitivities are re-evaluated (see module docstring).
    epsilon : float
        Ensemble scaling of the bundle variant.
    rotate : bool
        Apply a random mean-preserving rotation to the posterior transform
        (needs ``generator`` in :meth:`analyse` for reproducibility).
    history_size : int
        L-BFGS memory (autodiff mode).
    rtps : float
        Relaxation of the state entries' posterior spread to their prior
        (un-inflated) spread, in ``[0, 1]`` (Whitaker & Hamill 2012); 0: none
        (the kernel default). Latent cycles default to 0.4
        (:data:`xlatda.methods.inflation.LATENT_CYCLE_SETTINGS`). In the
        weak-constraint windows each time's analysis is relaxed to that
        time's forecast spread.
    param_inflation : float, optional
        Inflation of the parameter entries (the last ``n_params`` of the
        control, see :meth:`analyse`); ``None``: ``inflation``.
    param_rtps : float, optional
        Relaxation of the parameters' posterior spread to their prior
        (un-inflated) spread, in ``[0, 1]`` (Whitaker & Hamill 2012, on the
        parameter entries only); ``None`` or 0: none (also the cycling
        default). Off, a parameter the observations inform shrinks like a
        Bayesian posterior (shallow-water jet speed as a parameter of the
        initial state: spread 5 -> 0.23 m/s over 3 windows, truth inside 1
        std). A parameter they do *not* inform (the dynamics carry no
        sensitivity to it, e.g. a jet-conditioned latent ODE after spin-up)
        still loses spread, by about as much per window as the well-observed
        state, because the ensemble-space update cannot tell sampling-noise
        correlations from real ones; relaxing the spread then keeps it from
        collapsing, but does not stop the mean from following the spurious
        correlations, and with an informative parameter it makes the mean
        noisier (benchmarks/RESULTS.md, "parameter spread").
    model_error : {"trajectories", "ignore"}
        What a cycle does with a model-error covariance ``Q`` inside a
        window of several observation times (latent models fitted with
        ``uncertainty=``): ``"trajectories"`` (default) forecasts the members
        *with* it from one observation time to the next and updates every
        time of the window with one ensemble transform from all its
        observations (weak constraint: the ensemble transform Kalman
        smoother, one Gauss-Newton step; ``mode``, ``iterations`` and the
        parameter settings do not apply there); ``"ignore"`` keeps the
        strong-constraint minimisation through the deterministic dynamics.
        The kernel itself (:meth:`analyse`) is always strong-constraint.
        On the ERA5 validation week (PCA-64, linear dynamics, 30 stations,
        3-hourly) windows of 4 observation times gave 0.71 K strong against
        the filter's 0.64 K: over 9 hours the model error dominates.
        With ``beta > 0`` windows are strong-constraint whatever this
        setting (the static part is propagated by the deterministic
        dynamics); ``Q`` still enters the forecasts between windows.
    beta : float
        Weight of the static covariance in the hybrid prior
        :math:`(1 - \\beta) P^e + \\beta B`, in ``[0, 1]`` (module
        docstring); 0 (default): the pure ensemble method. In a cycle of a
        latent model, ``B`` is the model's climatological latent prior
        (``model.prior``); :meth:`analyse` takes it as ``static=``. SINR +
        ODE on shallow water (latent 128, N = 32, window 2;
        ``benchmarks/bench_sinr.py`` part d, validation trajectory): 0.181
        (0.122 strong-constraint) without, 0.053 with beta 0.1 / 0.3 / 0.5
        / 1 alike (0.0528-0.0531); the default 129 members give 0.052-0.054.

    References
    ----------
    Si, Chen (2026), arXiv:2602.19406; Bocquet and Sakov (2014), QJRMS.
    """

    mode: str = "gauss-newton"
    iterations: int = 10
    tol: float = 1e-3
    inflation: float = 1.0
    variant: str = "transform"
    epsilon: float = 1e-4
    rotate: bool = False
    history_size: int = 10
    rtps: float = 0.0
    param_inflation: float | None = None
    param_rtps: float | None = None
    model_error: str = "trajectories"
    beta: float = 0.0

    def __post_init__(self) -> None:
        b = self.beta
        if isinstance(b, bool) or not (isinstance(b, (int, float)) and 0.0 <= b <= 1.0):
            raise ConfigError(
                f"beta must be a number in [0, 1] (the weight of the static covariance in "
                f"the hybrid prior; 0 for the pure ensemble method), got {b!r}")
        if self.model_error not in ("trajectories", "ignore"):
            raise ConfigError(f"model_error must be 'trajectories' or 'ignore', got "
                              f"{self.model_error!r}")
        if self.mode not in ("gauss-newton", "autodiff"):
            raise ConfigError(f"mode must be 'gauss-newton' or 'autodiff', got {self.mode!r}")
        if self.variant not in ("transform", "bundle"):
            raise ConfigError(f"variant must be 'transform' or 'bundle', got {self.variant!r}")
        if int(self.iterations) < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations!r}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be positive, got {self.tol!r}")
        if not self.inflation > 0:
            raise ConfigError(f"inflation must be positive, got {self.inflation!r}")
        if not self.epsilon > 0:
            raise ConfigError(f"epsilon must be positive, got {self.epsilon!r}")
        pi = self.param_inflation
        if pi is not None and not (isinstance(pi, (int, float)) and math.isfinite(pi) and pi > 0):
            raise ConfigError(f"param_inflation must be a positive number or None, got {pi!r}")
        if not (isinstance(self.rtps, (int, float)) and 0.0 <= self.rtps <= 1.0):
            raise ConfigError(f"rtps must be a number in [0, 1], got {self.rtps!r}")
        pr = self.param_rtps
        if pr is not None and not (isinstance(pr, (int, float)) and 0.0 <= pr <= 1.0):
            raise ConfigError(f"param_rtps must be a number in [0, 1] or None, got {pr!r}")

    def analyse(
        self,
        ensemble: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        forecast_obs: ForecastObs,
        *,
        generator: torch.Generator | None = None,
        n_params: int = 0,
        static: Tensor | None = None,
    ) -> EnVar4DResult:
        """Analyse a batch of prior control ensembles with the window's observations.

        Parameters
        ----------
        ensemble : Tensor, shape ``(*batch, N, n_s)``
            Prior ensemble of controls at the window start, ``N >= 2``.
        y : Tensor, shape ``(*batch, P)``
            Observations of the window, stacked over times.
        r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
            Observation-error standard deviations.
        forecast_obs : callable
            ``forecast_obs(s: (..., M, n_s)) -> (..., M, P)``: rolls each
            control through the dynamics to the observation times and
            returns the predicted observations in the order of ``y``. It
            must be batched over the leading dimensions, and differentiable
            by autograd in ``mode="autodiff"`` (call outside
            ``torch.inference_mode`` then).
        generator : torch.Generator, optional
            Randomness of the posterior rotation (``rotate=True``).
        n_params : int
            The last ``n_params`` entries of the control are parameters:
            they get ``param_inflation`` and ``param_rtps``.
        static : Tensor, shape ``(k, n_s)`` or ``(*batch, k, n_s)``, optional
            Rows of a factor :math:`L` of the static covariance
            :math:`B = L^\\top L` of the control (zero columns for entries
            without a static part); needed when ``beta > 0``, unused at
            ``beta = 0``.

        Returns
        -------
        EnVar4DResult

        Raises
        ------
        ShapeError
            If the ensemble has fewer than 2 members, or ``forecast_obs``
            returns a shape that does not fit ``y``.
        ConfigError
            For a non-positive ``r_std``, or ``beta > 0`` without ``static``.

        Notes
        -----
        Gauss-Newton: one ``forecast_obs`` call on ``N + 1`` controls per
        iteration (``N + 1 + 2 k`` with a static part), plus
        ``O(m^2 P + m^3)`` per batch element, ``m = N`` (``N + k``). Autodiff: one
        call on 1 control (and its backward pass) per L-BFGS evaluation,
        then one on ``N + 1`` controls for the posterior ensemble.
        """
        ens = torch.as_tensor(ensemble)
        if not ens.is_floating_point():
            ens = ens.to(torch.get_default_dtype())
        if ens.dim() < 2 or ens.shape[-2] < 2:
            raise ShapeError(
                f"ensemble must have shape (*batch, N, n_s) with N >= 2, got {tuple(ens.shape)}"
            )
        y = torch.as_tensor(y, dtype=ens.dtype, device=ens.device)
        if y.dim() < 1:
            raise ShapeError("y must have shape (*batch, P)")
        p = y.shape[-1]
        r = observation_std(r_std, p, ens)
        n_mem, n_s = ens.shape[-2], ens.shape[-1]
        if not 0 <= int(n_params) <= n_s:
            raise ShapeError(f"n_params must be in [0, {n_s}] (the control size), got {n_params!r}")
        n_params = int(n_params)
        factor = torch.full((n_s,), float(self.inflation), dtype=ens.dtype, device=ens.device)
        if n_params and self.param_inflation is not None:
            factor[n_s - n_params:] = float(self.param_inflation)
        hybrid = float(self.beta) > 0.0
        if hybrid:
            static = self._check_static(static, n_s, ens)
        batch = torch.broadcast_shapes(ens.shape[:-2], y.shape[:-1], r.shape[:-1],
                                       *((static.shape[:-2],) if hybrid else ()))
        ens = ens.expand(*batch, *ens.shape[-2:])
        y = y.expand(*batch, p)
        r = r.expand(*batch, p)

        with torch.inference_mode(False):
            mean = ens.mean(-2)
            anom = (ens - mean.unsqueeze(-2)) * (factor / math.sqrt(n_mem - 1))
            mean, anom, y, r = mean.clone(), anom.clone(), y.clone(), r.clone()
            eye = torch.eye(n_mem, dtype=ens.dtype, device=ens.device)
            # the rows spanning the search space: the anomalies (and the static factor)
            ctrl, probes = anom, None
            if hybrid:
                probes = math.sqrt(float(self.beta)) * static.expand(*batch, *static.shape[-2:])
                ctrl = torch.cat([math.sqrt(1.0 - float(self.beta)) * anom, probes], -2)
            if self.mode == "gauss-newton" and not hybrid:
                w, costs, iters, converged, hess = self._gauss_newton(
                    mean, anom, y, r, forecast_obs, batch
                )
            elif self.mode == "gauss-newton":
                w, costs, iters, converged, hess = self._gauss_newton_hybrid(
                    mean, anom, ctrl, probes, y, r, forecast_obs, batch
                )
            else:
                w, costs, iters, conv = minimise_batched_lbfgs(
                    lambda w_: envar4d_cost(w_, mean, ctrl, y, r, forecast_obs),
                    mean.new_zeros(*batch, ctrl.shape[-2]),
                    iterations=int(self.iterations),
                    tol=float(self.tol),
                    history_size=int(self.history_size),
                    h0=1.0,
                    eps=torch.finfo(mean.dtype).eps,
                )
                converged = bool(conv.all())
                with torch.no_grad():
                    if hybrid:  # the ensemble part's Hessian at the optimum
                        ys, _, _ = self._sensitivities(_control(w, mean, ctrl), anom, eye, eye,
                                                       y, r, forecast_obs)
                        hess = eye + ys @ ys.transpose(-1, -2)
                    else:
                        _, _, hess, _ = self._evaluate(w, mean, anom, eye, eye, y, r,
                                                       forecast_obs)
            with torch.no_grad():
                transform, _ = _sym_pow(hess)
                if self.rotate:
                    transform = transform @ random_rotation(
                        n_mem, batch, generator=generator, dtype=ens.dtype, device=ens.device)
                s_star = _control(w, mean, ctrl)
                post = s_star.unsqueeze(-2) + math.sqrt(n_mem - 1) * (
                    transform.transpose(-1, -2) @ anom
                )
                k = n_s - n_params
                if self.rtps and k:
                    post = torch.cat([relax_to_prior_spread(
                        ens[..., :k], post[..., :k], float(self.rtps)), post[..., k:]], -1)
                if n_params and self.param_rtps:
                    post = torch.cat([post[..., :k], relax_to_prior_spread(
                        ens[..., k:], post[..., k:], float(self.param_rtps))], -1)
        return EnVar4DResult(
            ensemble=post.detach(),
            mean=s_star.detach(),
            w=w.detach(),
            iterations=iters,
            cost=costs.detach(),
            converged=converged,
        )

    @staticmethod
    def _check_static(static: Tensor | None, n_s: int, ens: Tensor) -> Tensor:
        """The static factor rows ``(*batch, k, n_s)`` in the ensemble's dtype, checked."""
        if static is None:
            raise ConfigError(
                "beta > 0 blends a static covariance B = L^T L into the prior: pass its "
                "factor rows as static= (shape (k, n_s)), or set beta=0")
        static = torch.as_tensor(static, dtype=ens.dtype, device=ens.device)
        if static.dim() < 2 or static.shape[-1] != n_s or static.shape[-2] < 1:
            raise ShapeError(
                f"static must hold the rows of a factor of B, shape (k, n_s) with n_s = {n_s} "
                f"(the control size), got {tuple(static.shape)}")
        if not bool(torch.isfinite(static).all()):
            raise ConfigError("static holds non-finite values; check the static covariance")
        return static

    def _sensitivities(
        self,
        s: Tensor,
        anom: Tensor,
        transform: Tensor,
        transform_inv: Tensor,
        y: Tensor,
        r: Tensor,
        forecast_obs: ForecastObs,
        probes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Whitened sensitivities of the anomalies (and of ``probes``) and innovation at ``s``.

        One call of ``forecast_obs`` on ``N + 1`` controls, the re-centred
        ensemble (transform or bundle) and ``s``, plus ``s +- probes`` (the
        weighted static rows, ``2 k``) when given: ``(Y_e (N, P), Y_b (k, P)
        or None, d (P,))`` per batch element.
        """
        n_mem = anom.shape[-2]
        scale = math.sqrt(n_mem - 1)
        if self.variant == "transform":
            spread = transform @ anom
        else:
            spread = self.epsilon * anom
        parts = [s.unsqueeze(-2) + scale * spread, s.unsqueeze(-2)]
        if probes is not None:
            step = probes if self.variant == "transform" else self.epsilon * probes
            parts += [s.unsqueeze(-2) + step, s.unsqueeze(-2) - step]
        pred = _predict(forecast_obs, torch.cat(parts, dim=-2), y.shape[-1])
        pred_ens, pred_s = pred[..., :n_mem, :], pred[..., n_mem, :]
        d = (y - pred_s) / r  # whitened innovation (*batch, P)
        ys = (pred_ens - pred_ens.mean(-2, keepdim=True)) / (scale * r.unsqueeze(-2))
        if self.variant == "transform":
            ys = transform_inv @ ys  # back to the sensitivities of the prior anomalies
        else:
            ys = ys / self.epsilon
        yb = None
        if probes is not None:  # centred secants of the static rows
            k = probes.shape[-2]
            plus, minus = pred[..., n_mem + 1:n_mem + 1 + k, :], pred[..., n_mem + 1 + k:, :]
            yb = (plus - minus) / (2.0 * r.unsqueeze(-2))
            if self.variant != "transform":
                yb = yb / self.epsilon
        return ys, yb, d

    def _evaluate(
        self,
        w: Tensor,
        mean: Tensor,
        anom: Tensor,
        transform: Tensor,
        transform_inv: Tensor,
        y: Tensor,
        r: Tensor,
        forecast_obs: ForecastObs,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cost, gradient, Gauss-Newton Hessian and whitened innovation at ``w``.

        One call of ``forecast_obs`` on ``N + 1`` controls: the re-centred
        ensemble (transform or bundle) and ``s(w)``.
        """
        n_mem = anom.shape[-2]
        s = _control(w, mean, anom)
        ys, _, d = self._sensitivities(s, anom, transform, transform_inv, y, r, forecast_obs)
        cost = 0.5 * (w**2).sum(-1) + 0.5 * (d**2).sum(-1)
        grad = w - (ys @ d.unsqueeze(-1)).squeeze(-1)
        eye = torch.eye(n_mem, dtype=w.dtype, device=w.device)
        hess = eye + ys @ ys.transpose(-1, -2)
        return cost, grad, hess, d

    def _gauss_newton_hybrid(
        self,
        mean: Tensor,
        anom: Tensor,
        ctrl: Tensor,
        probes: Tensor,
        y: Tensor,
        r: Tensor,
        forecast_obs: ForecastObs,
        batch: tuple[int, ...],
    ) -> tuple[Tensor, Tensor, int, bool, Tensor]:
        """Gauss-Newton on ``v = [w_e; w_b]`` (module docstring, hybrid control variable).

        Returns the weights, the costs, the iterations, convergence and the
        Hessian of the ensemble part alone (for the posterior transform).
        """
        n_mem, m = anom.shape[-2], ctrl.shape[-2]
        a = math.sqrt(1.0 - float(self.beta))
        eye = torch.eye(n_mem, dtype=mean.dtype, device=mean.device)
        eye_m = torch.eye(m, dtype=mean.dtype, device=mean.device)

        def step(v, transform, transform_inv):
            s = _control(v, mean, ctrl)
            ys, yb, d = self._sensitivities(s, anom, transform, transform_inv, y, r,
                                            forecast_obs, probes)
            big_y = torch.cat([a * ys, yb], -2)  # (*batch, N + k, P)
            cost = 0.5 * (v**2).sum(-1) + 0.5 * (d**2).sum(-1)
            grad = v - (big_y @ d.unsqueeze(-1)).squeeze(-1)
            hess = eye_m + big_y @ big_y.transpose(-1, -2)
            return cost, grad, hess, eye + ys @ ys.transpose(-1, -2)

        return self._newton(step, mean.new_zeros(*batch, m), eye)

    def _gauss_newton(
        self,
        mean: Tensor,
        anom: Tensor,
        y: Tensor,
        r: Tensor,
        forecast_obs: ForecastObs,
        batch: tuple[int, ...],
    ) -> tuple[Tensor, Tensor, int, bool, Tensor]:
        n_mem = anom.shape[-2]
        eye = torch.eye(n_mem, dtype=mean.dtype, device=mean.device)

        def step(w, transform, transform_inv):
            cost, grad, hess, _ = self._evaluate(
                w, mean, anom, transform, transform_inv, y, r, forecast_obs
            )
            return cost, grad, hess, hess

        return self._newton(step, mean.new_zeros(*batch, n_mem), eye)

    def _newton(self, step, v: Tensor, eye: Tensor) -> tuple[Tensor, Tensor, int, bool, Tensor]:
        """The Gauss-Newton iterations of both control variables.

        ``step(v, transform, transform_inv)`` gives the cost, gradient and
        Gauss-Newton Hessian at ``v`` and the ensemble part's Hessian (the
        whole Hessian for the pure ensemble control), which re-centres the
        ensemble (``variant="transform"``) and is returned with the weights,
        the costs, the iterations and convergence.
        """
        transform = transform_inv = eye
        costs: list[Tensor] = []
        converged = False
        iters = 0
        with torch.no_grad():
            for k in range(self.iterations + 1):
                cost, grad, hess, hess_e = step(v, transform, transform_inv)
                costs.append(cost)
                if k == self.iterations:
                    break
                dv = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
                v = v - dv
                iters += 1
                if float(dv.norm(dim=-1).max()) <= self.tol:
                    # The last Hessian was taken within tol of the optimum.
                    converged = True
                    break
                if self.variant == "transform":
                    transform, transform_inv = _sym_pow(hess_e)
        return v, torch.stack(costs), iters, converged, hess_e
