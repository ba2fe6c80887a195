r"""Score-based latent assimilation (SLAMS): posterior sampling with a diffusion prior.

A diffusion model of windows of latent states (:mod:`xlatda.methods.diffusion`:
:math:`x_t = \mu_t x_0 + \sigma_t \varepsilon` with the cosine schedule
:math:`\mu_t = \alpha(t)`, :math:`\sigma_t = \sqrt{1 - \mu_t^2 + \eta^2}`, and an
ε-network :math:`\varepsilon_\phi(x_t, t) \approx -\sigma_t \nabla \log
p_t(x_t)`) is the prior; observations :math:`y = A(x_0) + e`,
:math:`e \sim \mathcal{N}(0, \operatorname{diag}(\sigma_y^2))`, of a window
:math:`x_0` condition it by Bayes' rule on the scores,

.. math::

    \nabla_{x_t} \log p_t(x_t \mid y) = \nabla_{x_t} \log p_t(x_t)
    + \nabla_{x_t} \log p_t(y \mid x_t).

**Gaussian likelihood guidance** (Rozet and Louppe 2023, used by SLAMS):
with Tweedie's denoised mean
:math:`\hat x_0(x_t) = (x_t - \sigma_t\, \varepsilon_\phi(x_t, t)) / \mu_t`,

.. math::

    \log p_t(y \mid x_t) \approx -\frac12 \sum_p
    \frac{\big(y_p - A_p(\hat x_0(x_t))\big)^2}{\sigma_{y,p}^2
    + \gamma\, \sigma_t^2 / \mu_t^2},

a Gaussian whose variance adds to the observation error a crude
:math:`\gamma (\sigma_t/\mu_t)^2` for the spread of :math:`x_0` given
:math:`x_t` (:math:`\gamma \approx 10^{-2}`). Its gradient is taken by
autograd through ``observe`` and the network. The guided noise prediction is

.. math::

    \tilde\varepsilon(x_t, t) = \varepsilon_\phi(x_t, t)
    - \sigma_t \nabla_{x_t} \log p_t(y \mid x_t),
    \qquad \text{score} = -\tilde\varepsilon / \sigma_t .

**Sampler** (predictor-corrector, Song et al. 2021) on the grid
:math:`t_i = 1 - i/K`, :math:`i = 0..K` (``K = steps``), from
:math:`x_{t_0} \sim \mathcal{N}(0, I)`:

* predictor, the exponential integrator (DDIM) step from :math:`t` to
  :math:`s < t`: :math:`x_s = \mu_s \hat x_0 + \sigma_s \tilde\varepsilon`
  with :math:`\hat x_0 = (x_t - \sigma_t \tilde\varepsilon)/\mu_t`, i.e.

  .. math:: x_s = \frac{\mu_s}{\mu_t} x_t
            + \Big(\sigma_s - \frac{\mu_s}{\mu_t}\sigma_t\Big)
            \tilde\varepsilon(x_t, t);

* corrector, ``corrections`` Langevin steps at :math:`s` with step
  :math:`h = \delta \sigma_s^2`:

  .. math:: x \leftarrow x + h\, \text{score} + \sqrt{2h}\, z
            = x - \delta \sigma_s \tilde\varepsilon(x, s)
            + \sqrt{2\delta}\, \sigma_s z, \qquad z \sim \mathcal{N}(0, I),
            \qquad \delta = \frac{\tau}{1 + \lVert \sigma_s
            \nabla_x \log p_s(y \mid x) \rVert^2}

  (one :math:`\delta` per sample). Without observations :math:`h = \tau
  \sigma_s^2`, the annealed Langevin step of Song and Ermon (2019): the
  prior score's curvature is at most :math:`1/\sigma_s^2` (Gaussian
  smoothing), so :math:`h` times it stays below :math:`\tau`. The
  guidance adds a curvature up to :math:`1/\gamma` times larger when the
  observations are precise; :math:`\lVert \sigma_s \nabla \log p\rVert^2`
  estimates (near equilibrium) :math:`\sigma_s^2` times its trace, so the
  denominator keeps the step stable (:math:`\tau < 2`). This plays the
  part of the step normalisation of Rozet and Louppe (who divide by the
  mean of :math:`\tilde\varepsilon^2`; on low-dimensional latents that
  normalisation makes the steps far too long at low noise, where
  :math:`\varepsilon` is small, and over-disperses the samples).

The last step lands at :math:`t = 0` (:math:`\mu_0 = 1`,
:math:`\sigma_0 = \eta`). Without observations the same sampler draws from
the prior. For Gaussian data, a linear :math:`A` and the exact ε the prior
sampler and the guided predictor (``corrections=0``) are affine in the
initial noise and the Langevin noises, so their output laws are Gaussian and
known in closed form (the tests compare with them).

**Known bias**: the guidance is exact only where
:math:`\operatorname{Cov}[x_0 \mid x_t] \approx \gamma(\sigma_t/\mu_t)^2 I`;
for Gaussian data with covariance :math:`S` the truth is
:math:`(S^{-1} + \mu_t^2/\sigma_t^2 I)^{-1}`, so with a small :math:`\gamma`
the guidance over-weights the observations at intermediate noise levels.
The predictor alone (``corrections=0``) then collapses the spread (for a
prior N(0, 1) observed with error 0.1, all samples land on the observation),
whatever the number of steps; with the Langevin corrector the errors fall
with the number of steps (same case, posterior standard deviation 0.0995:
0.052, 0.093, 0.104 with 32, 128, 512 steps). On the 4-D Gaussian case of
``tests/test_score.py`` (observation error 0.3, ``gamma=1e-2``) the error of
the posterior mean is about 0.08 / 0.03 prior standard deviations with
64 / 128 steps for a typical innovation, but 0.47 / 0.31 / 0.12 with 64 / 128
/ 512 steps for one of two standard deviations (in directions the observations
reach only through prior correlations); ``gamma=1e-1`` roughly halves it.
Precise observations make the guided step stiff, so use many steps (SLAMS:
512) or a larger ``gamma``; ``benchmarks/bench_score.py`` tabulates it. With
thousands of precise observations (dense, mildly coarsened fields) the
uncapped predictor diverges (the guided denoised mean overshoots by about
the largest eigenvalue of :math:`A A^\top/\gamma`); ``guide_clip`` caps the
predictor's guidance per sample and keeps the samples bounded
(``tests/test_score_stability.py``, ``benchmarks/bench_sw_generative.py``).

**Tweedie-covariance guidance** (``cg_iters = k >= 1``; the moment-matching
posterior sampling of Rozet, Andry, Lanusse and Louppe 2024). The diagonal form
above counts the uncertainty of :math:`x_0 \mid x_t`, which all observations of a
window share, once per observation: with many more precise observations than
latent components the guided score is wrong in shape (on the dense Gaussian case
of ``tests/test_score_tweedie.py`` component variances off by factors 0.02-2.6,
whatever ``gamma`` and the number of steps). The exact second moment of
:math:`x_0 \mid x_t` is Tweedie's :math:`V = (\sigma_t^2/\mu_t)\, \partial \hat
x_0/\partial x_t`, and

.. math::

    \nabla_{x_t} \log p_t(y \mid x_t) \approx
    \Big(\frac{\partial \hat x_0}{\partial x_t}\Big)^{\!\top} J^\top
    \big(\Sigma_y + J V J^\top\big)^{-1} \big(y - A(\hat x_0)\big),
    \qquad J = \frac{\partial A}{\partial \hat x_0},

the system solved by ``k`` conjugate-gradient steps (matrix-free: products with
:math:`V` are vector-Jacobian products through the network; with :math:`J` by
autograd, or a given linearisation ``obs_jacobian``). For Gaussian data and a
linear :math:`A` it is the exact posterior score once CG has converged (at noise
levels above :math:`\sigma_t = \mu_t`, where the network's Jacobian enters :math:`V`
multiplied by up to :math:`\sigma_t^3/\mu_t \approx 10^9` and a trained network's
error made the samples diverge, :math:`V` is that of standardised Gaussian data,
:math:`\sigma_t^2/(\mu_t^2+\sigma_t^2) I`; the cap ``guide_clip`` is not applied). With it,
use the log-SNR time grid (``grid="logsnr"``, :func:`time_grid`): a posterior much
tighter than the prior contracts at noise levels the uniform grid covers with one
or two steps.

**Representation error** (:class:`RepresentationError`). A decoder of a latent
window misses part of every state; observations see that part as error. Its
Gaussian model :math:`\Sigma_{\rm rep}` (low rank plus diagonal, AR(1) in
time) gives the error covariance :math:`R + A \Sigma_{\rm rep} A^\top` of
observations through a linear operator :math:`A`, which the xarray layer
whitens (``observe``, ``y`` and ``r_std = 1`` of the whitened problem: the
sampler above is unchanged), and draws of the error given the observations
(Matheron's rule, :meth:`RepresentationError.cross`) turn decoded samples into
predictive samples of the state (:func:`xlatda.predictive_samples`).

References
----------
Qu, Nathaniel, Li, Gentine (2024). Deep generative data assimilation in
multimodal setting (SLAMS). CVPR workshops (EarthVision).
Rozet, F. and Louppe, G. (2023). Score-based data assimilation. NeurIPS.
Rozet, F., Andry, G., Lanusse, F. and Louppe, G. (2024). Learning diffusion
priors from observations by expectation maximization. NeurIPS.
Song, Y. et al. (2021). Score-based generative modeling through stochastic
differential equations. ICLR.
Song, J., Meng, C. and Ermon, S. (2021). Denoising diffusion implicit
models. ICLR.
Zhang, Q. and Chen, Y. (2023). Fast sampling of diffusion models with
exponential integrator. ICLR.
Song, Y. and Ermon, S. (2019). Generative modeling by estimating gradients of
the data distribution. NeurIPS.

Examples
--------
A 2-D Gaussian prior N(0, I), the first component observed as 1 with error
0.1: the posterior of that component is N(0.99, 0.0995^2).

>>> import torch
>>> from xlatda.methods.diffusion import GaussianEps
>>> prior = GaussianEps(torch.zeros(1, 2, dtype=torch.float64),
...                     torch.eye(2, dtype=torch.float64))       # window 1, d = 2
>>> da = ScoreDA(net=prior, steps=256, guide_clip=None)   # the exact sampler
>>> x = da.analyse(2000, lambda x0: x0[..., 0, :1], torch.tensor([1.0]), 0.1,
...                generator=torch.Generator().manual_seed(0))
>>> x.shape
torch.Size([2000, 1, 2])
>>> round(float(x[:, 0, 0].mean()), 2), round(float(x[:, 0, 0].std()), 2)
(0.99, 0.1)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.diffusion import CosineSchedule, MarkovScore, blanket_windows
from xlatda.methods.registry import methods
from xlatda.methods.var3d import observation_std
from xlatda.options import resolve_device, resolve_dtype

__all__ = ["SAMPLER_DEFAULTS", "RepresentationError", "ScoreDA", "TwoPartError",
           "fit_smooth_error", "guided_eps", "observation_gain", "representation_scale",
           "representation_scales", "time_grid"]

#: The sampler's default settings, the one place they are set: :class:`ScoreDA` takes its
#: defaults from here and :func:`xlatda.assimilate` / :func:`xlatda.cycle` with
#: ``method="score"`` pass on only the settings a caller gives, so the kernel and the API
#: sample alike. Chosen on the validation windows of ``benchmarks/bench_sw_generative.py``
#: (part 2, shallow water, coarsening r = 4, 8, 16; never on its test windows; table in
#: ``benchmarks/RESULTS.md``, sw_generative): ``guide_clip=1.0`` keeps the ~1000 precise
#: observations of r = 4 finite (without the cap the predictor diverges); ``gamma=1e-2`` had
#: the lower validation CRPS and RMSE at r = 4 and 8 (``1e-1`` at r = 16, where the
#: observations are few: pass ``gamma`` for sparse data); 64 steps with one Langevin
#: correction (``tau=1``). The cap binds whenever the guidance is strong, also for a few very
#: precise observations of a small state, where it widens the posterior (the module example: a
#: standard deviation of 0.17 instead of 0.10); pass ``guide_clip=None`` for the exact
#: sampler there (``tests/test_score.py`` passes with either).
SAMPLER_DEFAULTS: dict[str, Any] = {
    "steps": 64, "corrections": 1, "tau": 1.0, "gamma": 1e-2, "guide_clip": 1.0,
    "cg_iters": 0, "grid": "linear",
}

_GRIDS = ("linear", "logsnr")
#: Largest sigma_t/mu_t at which the Tweedie guidance uses the network's Jacobian for the
#: covariance of x0 | x_t (above it: that of standardised Gaussian data; see _tweedie_solve).
_TWEEDIE_MAX_NSR = 1.0

EpsFn = Callable[[Tensor, Tensor], Tensor]


def time_grid(schedule: CosineSchedule, steps: int, grid: str = "linear") -> list[float]:
    r"""The sampler's diffusion times :math:`1 = t_0 > t_1 > \dots > t_K = 0`.

    ``"linear"``: :math:`t_i = 1 - i/K`. ``"logsnr"``: uniform in
    :math:`\lambda = \log(\sigma_t/\mu_t)` between :math:`\lambda(1)` and
    :math:`\lambda(0)`, i.e. the same number of steps per decade of noise
    (:math:`\mu_t^2 = (1 + \eta^2)/(1 + e^{2\lambda})` inverted through the cosine
    schedule). A posterior much tighter than the prior (standard deviation
    :math:`s` in standardised units) contracts where :math:`\sigma_t/\mu_t \approx s`;
    on the linear grid that is :math:`t \lesssim s`, inside the last step or two when
    :math:`s < 1/K`, and the deterministic predictor then under-disperses even with
    the exact score; the log-SNR grid gives every noise level the same share of steps.

    Examples
    --------
    >>> g = time_grid(CosineSchedule(), 4, "logsnr")
    >>> [round(t, 3) for t in g]
    [1.0, 0.904, 0.372, 0.015, 0.0]
    >>> time_grid(CosineSchedule(), 4)
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if grid == "linear":
        return [1.0 - i / steps for i in range(steps + 1)]
    if grid != "logsnr":
        raise ConfigError(f"grid must be one of {list(_GRIDS)}, got {grid!r}")
    eta = float(schedule.eta)
    lam = [float(torch.log(schedule.sigma(t) / schedule.alpha(t))) for t in (1.0, 0.0)]
    out = [1.0]
    for i in range(1, steps):
        lam_i = lam[0] + (lam[1] - lam[0]) * i / steps
        mu = math.sqrt((1.0 + eta**2) / (1.0 + math.exp(2.0 * lam_i)))
        out.append(min(1.0, max(0.0, math.acos(math.sqrt(min(mu, 1.0))) / schedule.omega)))
    return [*out, 0.0]
Observe = Callable[[Tensor], Tensor]


def guided_eps(
    eps_fn: EpsFn,
    x: Tensor,
    t: float,
    *,
    schedule: CosineSchedule,
    event_ndim: int,
    observe: Observe | None = None,
    y: Tensor | None = None,
    r_var: Tensor | None = None,
    gamma: float = 1e-2,
    gain2: Tensor | None = None,
    cg_iters: int = 0,
) -> Tensor:
    r"""The guided noise prediction :math:`\tilde\varepsilon(x_t, t)` (see module docstring).

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(x_t: (..., *event), t: (...)) -> (..., *event)``.
    x : Tensor, shape ``(*batch, N, *event)``
        Current states :math:`x_t`.
    t : float
        Diffusion time in ``[0, 1]``.
    schedule : CosineSchedule
    event_ndim : int
        Number of event dimensions (2 for windows ``(window, d)``).
    observe : callable, optional
        ``observe(x0: (*batch, N, *event)) -> (*batch, N, P)``, differentiable
        by autograd. Without it the prior's ε is returned.
    y : Tensor, shape ``(*batch, 1, P)``
        Observations (broadcast over the ``N`` samples).
    r_var : Tensor, shape ``(*batch, 1, P)``
        Observation-error variances :math:`\sigma_y^2`.
    gamma : float
        Variance inflation :math:`\gamma` of the guidance.
    gain2 : Tensor, shape ``(*batch, 1, P)``, optional
        Squared gains :math:`g_p^2 = (J J^\top)_{pp}`, :math:`J = \partial A /
        \partial x_0`: the inflation of observation ``p`` is
        :math:`\gamma (\sigma_t/\mu_t)^2 g_p^2`, the variance that
        :math:`\operatorname{Cov}[x_0 \mid x_t] \approx \gamma
        (\sigma_t/\mu_t)^2 I` gives :math:`A(x_0)` to first order. ``None``:
        ones (``A`` reads the state itself, as in Rozet and Louppe).
    cg_iters : int
        ``0``: the diagonal gamma form; ``k >= 1``: the Tweedie-covariance guidance with
        ``k`` conjugate-gradient steps (module docstring).

    Returns
    -------
    Tensor, shape of ``x``
        Detached.

    Raises
    ------
    ShapeError
        If ``observe`` returns a shape other than ``(*batch, N, P)``.

    Examples
    --------
    >>> from xlatda.methods.diffusion import GaussianEps
    >>> prior = GaussianEps(torch.zeros(1, 2), torch.eye(2))
    >>> x = torch.zeros(1, 3, 1, 2)
    >>> e = guided_eps(prior, x, 0.5, schedule=CosineSchedule(), event_ndim=2,
    ...                observe=lambda x0: x0[..., 0, :], y=torch.ones(1, 1, 2),
    ...                r_var=torch.full((1, 1, 2), 0.01))
    >>> bool((e < 0).all())   # pushes the samples towards y = 1
    True
    """
    eps, guide = _eps_guidance(eps_fn, x, t, schedule, event_ndim, observe, y, r_var, gamma,
                               gain2, int(cg_iters))
    return eps if guide is None else eps - guide


def _eps_guidance(
    eps_fn: EpsFn,
    x: Tensor,
    t: float,
    schedule: CosineSchedule,
    event_ndim: int,
    observe: Observe | None,
    y: Tensor | None,
    r_var: Tensor | None,
    gamma: float,
    gain2: Tensor | None = None,
    cg_iters: int = 0,
    jac: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The prior's ε and the guidance term ``sigma_t * grad log p(y | x_t)`` (detached)."""
    ts = torch.full(x.shape[: x.dim() - event_ndim], float(t), dtype=x.dtype, device=x.device)
    if observe is None:
        with torch.no_grad():
            return eps_fn(x, ts).detach(), None
    mu = float(schedule.alpha(float(t)))
    sig = float(schedule.sigma(float(t)))
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        eps = eps_fn(xg, ts)
        x0 = (xg - sig * eps) / mu
        pred = observe(x0)
        want = (*x.shape[: x.dim() - event_ndim], y.shape[-1])
        if not isinstance(pred, Tensor) or tuple(pred.shape) != want:
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ShapeError(
                f"observe must map windows (..., N, *event) = {tuple(x.shape)} to predicted "
                f"observations (..., N, P) = {want}; it returned {got}"
            )
        inflation = gamma * (sig / mu) ** 2
        var = r_var + (inflation if gain2 is None else inflation * gain2)
        if cg_iters == 0:
            log_p = -0.5 * ((y - pred) ** 2 / var).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        else:
            u = _tweedie_solve(xg, x0, pred, y - pred.detach(), r_var, var, mu, sig,
                               int(cg_iters), jac)
            (grad,) = torch.autograd.grad(pred, xg, u)
    return eps.detach(), sig * grad.detach()


def _tweedie_solve(
    xg: Tensor, x0: Tensor, pred: Tensor, innov: Tensor, r_var: Tensor, precond: Tensor,
    mu: float, sig: float, iters: int, jac: Tensor | None = None,
) -> Tensor:
    r"""``iters`` preconditioned CG steps on :math:`(\Sigma_y + J V J^\top) u = y - A(\hat x_0)`.

    :math:`V = (\sigma_t^2/\mu_t)\, \partial \hat x_0 / \partial x_t` is Tweedie's
    covariance of :math:`x_0 \mid x_t` (applied as a vector-Jacobian product, the Jacobian
    of a score being symmetric) where :math:`\mu_t \ge \sigma_t`; at higher noise the
    network's error enters it times :math:`\sigma_t^3/\mu_t`, and :math:`V` is that of
    standardised Gaussian data, :math:`\sigma_t^2/(\mu_t^2 + \sigma_t^2) I`.
    :math:`J = \partial A / \partial x_0` at :math:`\hat x_0` (a Jacobian-vector
    product by double backward). One system per sample (sums over
    the last axis); preconditioner ``precond`` (the diagonal variance of the γ form). Steps
    whose curvature :math:`p^\top M p` is not positive (a network Jacobian need not be
    positive definite) are skipped for that sample. ``jac`` ``(..., P, D)`` (``D`` the
    event size), when given, stands for :math:`J` (a linearisation of ``A``, e.g. once per
    window): the products with it are matrix products and only the network is
    differentiated. Returns ``u`` (detached, shape of ``innov``).
    """
    scale = sig**2 / mu
    event = x0.shape[pred.dim() - 1:]
    if jac is None:
        dummy = torch.zeros_like(pred, requires_grad=True)
        (jt_dummy,) = torch.autograd.grad(pred, x0, dummy, create_graph=True)  # J^T v

    # Above the crossover mu_t = sigma_t the network's Jacobian enters V multiplied by
    # sigma_t^3/mu_t (up to 1e9 at t = 1), so its error does too: there V is the exact
    # covariance of standardised (unit) Gaussian data, sigma_t^2/(mu_t^2 + sigma_t^2) I.
    gaussian = sig > _TWEEDIE_MAX_NSR * mu

    def matvec(v: Tensor) -> Tensor:
        if jac is None:
            (jt_v,) = torch.autograd.grad(pred, x0, v, retain_graph=True)
        else:
            jt_v = (v.unsqueeze(-2) @ jac).reshape(x0.shape)
        if gaussian:
            vjt_v = jt_v * (mu / (mu**2 + sig**2))  # scale * vjt_v = sig^2/(mu^2+sig^2) J^T v
        else:
            (vjt_v,) = torch.autograd.grad(x0, xg, jt_v, retain_graph=True)
        if jac is None:
            (jvjt_v,) = torch.autograd.grad(jt_dummy, dummy, scale * vjt_v, retain_graph=True)
        else:
            flat = vjt_v.reshape(*vjt_v.shape[: vjt_v.dim() - len(event)], -1, 1)
            jvjt_v = scale * (jac @ flat).squeeze(-1)
        return r_var * v + jvjt_v.detach()

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum(-1, keepdim=True)

    u = torch.zeros_like(innov)
    res = innov.clone()
    z = res / precond
    p = z
    rz = dot(res, z)
    for _ in range(iters):
        mp = matvec(p)
        curv = dot(p, mp)
        ok = curv > 0
        alpha = torch.where(ok, rz / curv.clamp_min(torch.finfo(curv.dtype).tiny),
                            torch.zeros_like(curv))
        u = u + alpha * p
        res = res - alpha * mp
        z = res / precond
        rz_new = dot(res, z)
        beta = torch.where(ok & (rz > 0), rz_new / rz.clamp_min(torch.finfo(rz.dtype).tiny),
                           torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return u.detach()


def observation_gain(
    observe: Observe,
    event_shape: tuple[int, ...],
    *,
    at: Tensor | None = None,
    probes: int = 64,
    step: float = 1e-2,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Tensor:
    r"""Gains :math:`g_p = \sqrt{(J J^\top)_{pp}}` of an observation operator, ``(P,)``.

    :math:`J = \partial A / \partial x_0` at ``at`` (default: zeros, the mean
    of a standardised prior), estimated as :math:`g_p^2 = \mathbb{E}_v[(J
    v)_p^2]` with ``probes`` Gaussian directions :math:`v` and central
    differences of ``step`` (two batched calls of ``observe``; exact in
    expectation for linear ``A``). The guidance uses them to express its
    variance inflation in observation units (``ScoreDA.analyse(...,
    obs_gain=)``).

    Examples
    --------
    >>> a = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> g = observation_gain(lambda x: x[..., 0, :] @ a.T, (1, 2), probes=4096,
    ...                      generator=torch.Generator().manual_seed(0))
    >>> [round(float(v), 1) for v in g]   # row norms of a: 5 and 1
    [5.0, 1.0]
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    x0 = torch.zeros(event_shape, dtype=dt, device=dev) if at is None else at.to(dev, dt)
    v = torch.randn((int(probes), *event_shape), generator=generator, dtype=dt, device=dev)
    with torch.no_grad():
        jv = (observe(x0 + step * v) - observe(x0 - step * v)) / (2.0 * step)
    return jv.square().mean(0).sqrt()


def _default_place(net: Any, y: Any) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(net, nn.Module):
        for t in (*net.parameters(), *net.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    if isinstance(y, Tensor) and y.is_floating_point():
        return y.device, y.dtype
    return None, None


@methods.register("score")
@dataclass(frozen=True, kw_only=True)
class ScoreDA:
    r"""Score-based (SLAMS) assimilation of windows of latent states.

    Draws posterior samples of a window ``(window, d)`` (any event shape) from
    a diffusion prior and observations, by the guided predictor-corrector
    sampler of the module docstring.

    Parameters
    ----------
    net : callable
        The prior's ε-network ``net(x_t: (..., *event), t: (...)) -> (...,
        *event)``: a trained :class:`~xlatda.methods.diffusion.ScoreMLP` or
        :class:`~xlatda.methods.diffusion.ScoreUNet`, the exact
        :class:`~xlatda.methods.diffusion.GaussianEps`, or any callable.
    schedule : CosineSchedule
        The schedule the network was trained with.
    steps : int
        Predictor steps ``K`` (SLAMS: 512; fewer work). The defaults of
        ``steps``, ``corrections``, ``tau``, ``gamma`` and ``guide_clip``
        are :data:`SAMPLER_DEFAULTS` (chosen on validation windows, see
        there), shared with :func:`xlatda.assimilate` and
        :func:`xlatda.cycle`.
    corrections : int
        Langevin corrector steps after each predictor step.
    tau : float
        Langevin step scale, ``0 < tau < 2``: step :math:`h = \tau
        \sigma_t^2` without guidance, shortened by the guidance's strength
        (module docstring).
    gamma : float
        Variance inflation :math:`\gamma` of the likelihood guidance.
    guide_clip : float, optional
        Cap on the predictor's guidance, per sample: the term
        :math:`\sigma_t \nabla \log p_t(y \mid x_t)` is scaled down to a
        root-mean-square of at most ``guide_clip`` per element (the prior's
        ε has about 1) before the predictor step. Many precise observations
        (thousands of values with a small error, as with mildly coarsened
        fields) make the guided predictor stiff: the guided denoised mean
        overshoots the observations by about the largest eigenvalue of
        :math:`A A^\top / \gamma` and the samples diverge. The cap bounds
        each step; the Langevin corrector keeps its own damping (computed
        on the uncapped guidance) and pulls the samples to the
        observations. A cap that does not bind changes nothing (the
        small, well-conditioned cases of the tests). ``None``: no cap,
        the exact guided sampler of the module docstring.
    cg_iters : int
        ``0`` (default): the diagonal :math:`\gamma` guidance of Rozet and Louppe
        (2023). ``k >= 1``: the Tweedie-covariance guidance (module docstring), the
        system solved by ``k`` preconditioned conjugate-gradient steps (the
        :math:`\gamma` variance is the preconditioner, so ``gamma`` only changes
        how fast CG converges; 1 is the variance of :math:`x_0 \mid x_t` at low noise);
        ``guide_clip`` is then not applied. Each step costs a vector-Jacobian product
        through the network and, without ``obs_jacobian``, about three passes through
        ``observe``.
    grid : {"linear", "logsnr"}
        The time grid (:func:`time_grid`): uniform in ``t`` (default) or in
        :math:`\log(\sigma_t/\mu_t)`. With observations that make the posterior much
        tighter than the prior, use ``"logsnr"``: on the linear grid even the exact
        guided score under-disperses (``tests/test_score_tweedie.py``).
    event_shape : tuple of int, optional
        Shape of one sample; default ``net.event_shape``.
    blanket : int, optional
        Number of consecutive states (along the first event axis) over which
        the corrector measures the guidance's strength :math:`\lVert
        \sigma_s \nabla \log p_s(y \mid x)\rVert^2`: state :math:`i`'s
        step uses the sum over the window that gives its score
        (:func:`~xlatda.methods.diffusion.blanket_windows`), so that the
        step of a long trajectory does not shrink with its length (the
        curvature the guidance adds is local in time). Default: the window
        of a composed :class:`~xlatda.methods.diffusion.MarkovScore` (also
        inside a :class:`~xlatda.methods.diffusion.ScorePrior`), else the
        whole event (one step per sample, the rule of the module docstring).

    Raises
    ------
    ConfigError
        For settings out of range, or no event shape.

    Notes
    -----
    Compute: ``steps * (1 + corrections)`` evaluations of ``net``, each
    with one backward pass through ``net`` and ``observe`` when there are
    observations, on all ``batch * N`` samples at once. Memory: one
    autograd graph of ``net`` for the ``batch * N`` samples.

    References
    ----------
    Qu, Nathaniel, Li, Gentine (2024), SLAMS, CVPRW; Rozet and Louppe (2023),
    Score-based data assimilation, NeurIPS.
    """

    name: ClassVar[str] = "score"

    net: EpsFn
    schedule: CosineSchedule = field(default_factory=CosineSchedule)
    steps: int = SAMPLER_DEFAULTS["steps"]
    corrections: int = SAMPLER_DEFAULTS["corrections"]
    tau: float = SAMPLER_DEFAULTS["tau"]
    gamma: float = SAMPLER_DEFAULTS["gamma"]
    guide_clip: float | None = SAMPLER_DEFAULTS["guide_clip"]
    cg_iters: int = SAMPLER_DEFAULTS["cg_iters"]
    grid: str = SAMPLER_DEFAULTS["grid"]
    event_shape: Sequence[int] | None = None
    blanket: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.net):
            raise ConfigError(
                f"net must be callable (x_t, t) -> eps, got {type(self.net).__name__}"
            )
        if int(self.steps) < 1 or int(self.corrections) < 0:
            raise ConfigError(
                f"need steps >= 1 and corrections >= 0, got {self.steps=} {self.corrections=}"
            )
        if not 0.0 < float(self.tau) < 2.0:
            raise ConfigError(f"tau must be in (0, 2) for a stable Langevin step, got {self.tau}")
        if not float(self.gamma) >= 0.0:
            raise ConfigError(f"gamma must be >= 0, got {self.gamma}")
        if isinstance(self.cg_iters, bool) or int(self.cg_iters) != self.cg_iters or int(
                self.cg_iters) < 0:
            raise ConfigError(
                f"cg_iters must be an integer >= 0 (0: the diagonal gamma guidance; k >= 1: "
                f"Tweedie covariance with k conjugate-gradient steps), got {self.cg_iters!r}"
            )
        if self.grid not in _GRIDS:
            raise ConfigError(
                f"grid must be one of {list(_GRIDS)} ('linear': uniform in t; 'logsnr': uniform "
                f"in log(sigma_t/mu_t), more steps at low noise), got {self.grid!r}"
            )
        if self.guide_clip is not None and not float(self.guide_clip) > 0.0:
            raise ConfigError(
                f"guide_clip must be positive (or None for no cap), got {self.guide_clip}"
            )
        shape = self.event_shape
        if shape is None:
            shape = getattr(self.net, "event_shape", None)
        if shape is None:
            raise ConfigError(
                "the sample shape is unknown: pass event_shape=(window, d) or a net with an "
                "event_shape attribute"
            )
        object.__setattr__(self, "event_shape", tuple(int(s) for s in shape))
        blanket = self.blanket
        if blanket is None:
            inner = self.net
            while not isinstance(inner, MarkovScore) and isinstance(
                    getattr(inner, "net", None), nn.Module):
                inner = inner.net
            blanket = inner.window if isinstance(inner, MarkovScore) else self.event_shape[0]
        if not 1 <= int(blanket) <= self.event_shape[0]:
            raise ConfigError(
                f"blanket must be in [1, {self.event_shape[0]}] (states of a sample), got "
                f"{blanket}"
            )
        object.__setattr__(self, "blanket", int(blanket))

    # -- public --------------------------------------------------------
    def analyse(
        self,
        members: int,
        observe: Observe | None = None,
        y: Tensor | None = None,
        r_std: Tensor | float | None = None,
        *,
        obs_gain: Tensor | None = None,
        obs_jacobian: Tensor | None = None,
        known: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``members`` posterior samples of the window for each batch of observations.

        Parameters
        ----------
        members : int
            Samples ``N`` per batch element.
        observe : callable, optional
            ``observe(x0: (..., N, *event)) -> (..., N, P)``, the
            observation operator of a window (for a latent window: decode
            the states at the observation times and points), batched over
            leading dimensions and differentiable by autograd. ``None``
            (with ``y=None``) samples the prior.
        y : Tensor, shape ``(P,)`` or ``(*batch, P)``, optional
            Observations.
        r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
            Observation-error standard deviations :math:`\\sigma_y`.
        obs_gain : Tensor, shape ``(P,)`` or ``(*batch, P)``, optional
            :math:`g_p`, the size of observation ``p``'s response to a unit
            change of the window (root of the diagonal of :math:`J J^\\top`,
            :math:`J = \\partial A/\\partial x_0`), which converts the
            guidance inflation :math:`\\gamma(\\sigma_t/\\mu_t)^2` into
            observation units. Needed whenever ``A`` is not a plain reading
            of the state (a decoder, physical units); :func:`observation_gain`
            estimates it. ``None``: ones.
        obs_jacobian : Tensor, shape ``(P, *event)`` or ``(*batch, P, *event)``, optional
            :math:`J = \\partial A/\\partial x_0`, a linearisation of ``observe``
            (e.g. at the prior mean, once per window), used with ``cg_iters > 0`` for the
            covariance term :math:`J V J^\\top` of the Tweedie guidance only (the innovation
            and the gradient go through ``observe`` itself); the conjugate-gradient
            products then differentiate the network only. ``None``: ``observe`` is
            differentiated (exact local :math:`J`, about four extra passes through it per
            CG step). Ignored with ``cg_iters=0``.
        known : Tensor, shape ``(..., N, c, *event_shape[1:])``, optional
            The first ``c`` states, known per sample (the overlap with a
            block already sampled): sampling is conditioned on them by
            replacement (Song et al. 2021, imputation): after every update
            the known states are set to their noised values
            :math:`\\mu_s x_{\\rm known} + \\sigma_s z`, a fresh draw of the
            forward process, and the other states move under the composed
            score given them. Returned as given. Approximate: on the AR(1)
            case of ``tests/test_score.py`` (4 known of 12 states) the
            conditional mean is off by up to 0.15 prior std and the
            conditional variances by up to 17 %.
        generator : torch.Generator, optional
            All randomness (initial noise, Langevin noise); on ``device``.
        device, dtype
            Where and in which precision to sample; default the network's
            (or ``y``'s, or :func:`xlatda.get_options`).

        Returns
        -------
        Tensor, shape ``(*batch, N, *event_shape)``
            Samples at ``t = 0``, ``(*batch, N, window, d)`` for windows.

        Raises
        ------
        ConfigError
            If only one of ``observe`` and ``y`` is given, ``r_std`` is
            missing or not positive, or ``members < 1``.
        ShapeError
            If ``observe`` returns a shape that does not fit ``y``.
        """
        if (observe is None) != (y is None):
            raise ConfigError("pass both observe and y (posterior) or neither (prior)")
        dev0, dt0 = _default_place(self.net, y)
        dev = resolve_device(device if device is not None else dev0)
        dt = resolve_dtype(dtype if dtype is not None else dt0)
        if known is not None:
            known = torch.as_tensor(known, dtype=dt, device=dev)
            nd = len(self.event_shape)
            if (known.dim() < nd + 1 or tuple(known.shape[known.dim() - nd + 1:])
                    != self.event_shape[1:] or not 1 <= known.shape[known.dim() - nd]
                    < self.event_shape[0] or known.shape[known.dim() - nd - 1] != members):
                raise ShapeError(
                    f"known must be (..., N={members}, c, *state) with state "
                    f"{self.event_shape[1:]} and 1 <= c < {self.event_shape[0]}, got "
                    f"{tuple(known.shape)}"
                )
        if y is None:
            return self._sample(int(members), (), None, None, None, generator, dev, dt,
                                known=known)
        if r_std is None:
            raise ConfigError("r_std (observation-error standard deviations) is required with y")
        with torch.inference_mode(False):
            y = torch.as_tensor(y, dtype=dt, device=dev).clone()
            if y.dim() < 1:
                raise ShapeError("y must have shape (P,) or (*batch, P)")
            p = y.shape[-1]
            r = observation_std(r_std, p, y).clone()
            batch = torch.broadcast_shapes(y.shape[:-1], r.shape[:-1])
            y = y.expand(*batch, p).unsqueeze(-2)
            r_var = (r**2).expand(*batch, p).unsqueeze(-2)
            gain2 = None
            if obs_gain is not None:
                g = torch.as_tensor(obs_gain, dtype=dt, device=dev)
                if g.dim() == 0 or g.shape[-1] != p or not bool((g >= 0).all()):
                    raise ShapeError(
                        f"obs_gain must be non-negative and end in the number of observations "
                        f"{p}, got shape {tuple(g.shape)}"
                    )
                gain2 = (g**2).expand(*batch, p).unsqueeze(-2).clone()
            jac = None
            if obs_jacobian is not None and int(self.cg_iters) > 0:
                jac = torch.as_tensor(obs_jacobian, dtype=dt, device=dev)
                nd = len(self.event_shape)
                if (jac.dim() < nd + 1 or tuple(jac.shape[jac.dim() - nd:]) != self.event_shape
                        or jac.shape[jac.dim() - nd - 1] != p):
                    raise ShapeError(
                        f"obs_jacobian must be (..., P={p}, *event_shape) with event_shape "
                        f"{self.event_shape}, got shape {tuple(jac.shape)}"
                    )
                jac = jac.reshape(*jac.shape[: jac.dim() - nd], -1)
                jac = jac.expand(*batch, p, jac.shape[-1]).unsqueeze(-3)
        return self._sample(int(members), batch, observe, y, r_var, generator, dev, dt, gain2,
                            known=known, jac=jac)

    def sample(
        self,
        members: int,
        *,
        batch_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Tensor:
        """Draw prior (unconditional) samples, shape ``(*batch_shape, N, *event_shape)``.

        Examples
        --------
        >>> from xlatda.methods.diffusion import GaussianEps
        >>> da = ScoreDA(net=GaussianEps(torch.zeros(2, 3), torch.eye(6)), steps=8)
        >>> da.sample(5, batch_shape=(2,)).shape
        torch.Size([2, 5, 2, 3])
        """
        dev0, dt0 = _default_place(self.net, None)
        dev = resolve_device(device if device is not None else dev0)
        dt = resolve_dtype(dtype if dtype is not None else dt0)
        batch = tuple(int(b) for b in batch_shape)
        return self._sample(int(members), batch, None, None, None, generator, dev, dt)

    # -- kernel ----------------------------------------------------------
    def _sample(
        self,
        members: int,
        batch: tuple[int, ...],
        observe: Observe | None,
        y: Tensor | None,
        r_var: Tensor | None,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
        gain2: Tensor | None = None,
        known: Tensor | None = None,
        jac: Tensor | None = None,
    ) -> Tensor:
        if members < 1:
            raise ConfigError(f"members must be >= 1, got {members}")
        shape = (*batch, members, *self.event_shape)
        nd = len(self.event_shape)
        if known is not None:
            c = known.shape[known.dim() - nd]
            batch = tuple(torch.broadcast_shapes(batch, known.shape[:known.dim() - nd - 1]))
            shape = (*batch, members, *self.event_shape)
            known = known.expand(*batch, members, *known.shape[known.dim() - nd:])
        sched = self.schedule
        tau = float(self.tau)

        def eps(x: Tensor, t: float) -> tuple[Tensor, Tensor | None]:
            return _eps_guidance(self.net, x, t, sched, nd, observe, y, r_var,
                                 float(self.gamma), gain2, int(self.cg_iters), jac)

        def noise() -> Tensor:
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)

        event_dims = tuple(range(-nd, 0))
        size = 1
        for n_i in self.event_shape:
            size *= n_i
        # the cap belongs to the diagonal gamma form, whose guidance grows without bound with
        # the number of precise observations; the Tweedie form (cg_iters > 0) is bounded by
        # its covariance and a cap that binds distorts it (tests/test_score_tweedie.py)
        clip = (None if self.guide_clip is None or int(self.cg_iters) > 0
                else float(self.guide_clip) * size**0.5)

        n_states = self.event_shape[0]
        if self.blanket < n_states:
            start, _ = blanket_windows(n_states, self.blanket)
            start = start.to(device)
            state_dims = tuple(range(-nd + 1, 0))
            pad = (1,) * (nd - 1)

        def strength(guide: Tensor) -> Tensor:
            """Squared guidance norm over each state's blanket (the whole event by default)."""
            if self.blanket == n_states:
                return guide.square().sum(event_dims, keepdim=True)
            per = guide.square().sum(state_dims) if state_dims else guide.square()
            csum = torch.nn.functional.pad(per.cumsum(-1), (1, 0))
            win = csum[..., self.blanket:] - csum[..., :-self.blanket]  # (..., n_windows)
            return win[..., start].reshape(*per.shape, *pad)

        def capped(guide: Tensor) -> Tensor:
            if clip is None:
                return guide
            norm = guide.square().sum(event_dims, keepdim=True).sqrt()
            return guide * (clip / norm.clamp_min(clip))

        times = time_grid(sched, int(self.steps), self.grid)
        mus = [float(sched.alpha(t)) for t in times]
        sigmas = [float(sched.sigma(t)) for t in times]
        def replace(x: Tensor, i: int) -> Tensor:
            if known is None:
                return x
            z = torch.randn(known.shape, generator=generator, dtype=dtype, device=device)
            head = mus[i] * known + sigmas[i] * z
            return torch.cat((head, x.narrow(x.dim() - nd, c, x.shape[x.dim() - nd] - c)),
                             x.dim() - nd)

        with torch.inference_mode(False):
            x = replace(noise(), 0)
            for i in range(int(self.steps)):
                e, guide = eps(x, times[i])
                if guide is not None:
                    e = e - capped(guide)
                ratio = mus[i + 1] / mus[i]
                x = replace(ratio * x + (sigmas[i + 1] - ratio * sigmas[i]) * e, i + 1)
                s = sigmas[i + 1]
                for _ in range(int(self.corrections)):
                    e, guide = eps(x, times[i + 1])
                    if guide is None:
                        delta: Tensor | float = tau
                    else:
                        e = e - guide
                        delta = tau / (1.0 + strength(guide))
                    x = x - (delta * s) * e + (2.0 * delta) ** 0.5 * s * noise()
                    x = replace(x, i + 1)
        if known is not None:
            x = replace(x, int(self.steps))  # at t = 0: mu = 1, sigma = eta
            x = torch.cat((known, x.narrow(x.dim() - nd, c, x.shape[x.dim() - nd] - c)),
                          x.dim() - nd)
        return x.detach()


# ---------------------------------------------------------------------------
# representation error: what the decoder cannot represent
# ---------------------------------------------------------------------------
def _coo(op: Tensor) -> Tensor:
    """A (sparse or dense) operator as a coalesced float64 COO tensor."""
    op = op.to(torch.float64)
    return (op.to_sparse() if op.layout == torch.strided else op.to_sparse_coo()).coalesce()


def _scale_columns(op: Tensor, d: Tensor) -> Tensor:
    """``op diag(d)`` of a COO tensor."""
    idx = op.indices()
    return torch.sparse_coo_tensor(idx, op.values() * d[idx[1]], op.shape,
                                   check_invariants=False).coalesce()


@dataclass(frozen=True)
class RepresentationError:
    r"""Gaussian model of the decoder's off-manifold (representation) error.

    A decoded latent state :math:`D(z)` misses the truth by an error
    :math:`e = x - D(E(x))` that no latent can represent. Its model is a
    zero-mean Gaussian over the flattened physical state (``n`` values) with a
    low-rank-plus-diagonal covariance and a first-order autoregressive
    correlation in time,

    .. math::

        \operatorname{Cov}(e_s, e_t) = \phi^{|s - t|}\, \Sigma_{\rm rep},
        \qquad \Sigma_{\rm rep} = U^\top U + \operatorname{diag}(d),

    (``U`` the ``(k, n)`` modes, ``d`` the ``(n,)`` rest of each value's
    variance, :math:`\phi` the lag-one correlation, lags in units of the time
    step the model was estimated at), as
    :func:`xlatda.fit_representation_error` estimates it on held-out states.
    Through a linear observation operator :math:`A_t` (rows over the ``n``
    values: a point reading, or the weighted mean of a block's cells) the
    error of observation time :math:`t` has covariance :math:`A_t
    \Sigma_{\rm rep} A_t^\top`: the block mean of a correlated error is as
    large as the correlation says, not the point variance.

    Parameters
    ----------
    modes : Tensor, shape (k, n)
        Rows :math:`U` (``k`` may be 0).
    var : Tensor, shape (n,)
        Diagonal :math:`d \ge 0`.
    phi : float
        Lag-one correlation in time, ``0 <= phi < 1``.

    Examples
    --------
    >>> import torch
    >>> rep = RepresentationError(torch.tensor([[1.0, 1.0]]), torch.tensor([0.5, 0.5]), 0.5)
    >>> mean_op = torch.tensor([[0.5, 0.5]])          # the mean of the two values
    >>> rep.obs_covariance([mean_op, mean_op], [0.0, 1.0]).tolist()
    [[1.25, 0.625], [0.625, 1.25]]
    """

    modes: Tensor
    var: Tensor
    phi: float = 0.0

    def __post_init__(self) -> None:
        if self.modes.dim() != 2 or self.var.dim() != 1 or self.modes.shape[1] != self.var.shape[0]:
            raise ShapeError(
                f"representation error: modes must be (k, n) and var (n,), got "
                f"{tuple(self.modes.shape)} and {tuple(self.var.shape)}"
            )
        if not 0.0 <= float(self.phi) < 1.0:
            raise ConfigError(f"representation error: phi must be in [0, 1), got {self.phi}")
        if bool((self.var < 0).any()):
            raise ConfigError("representation error: var must be non-negative")

    @property
    def n(self) -> int:
        """Number of state values."""
        return int(self.var.shape[0])

    def _corr(self, lags: Sequence[float]) -> Tensor:
        t = torch.as_tensor(list(lags), dtype=torch.float64)
        return float(self.phi) ** (t[:, None] - t[None, :]).abs()

    def obs_covariance(self, ops: Sequence[Tensor], lags: Sequence[float]) -> Tensor:
        r"""Covariance ``(P, P)`` of the error seen by observations ``ops`` at ``lags``.

        ``ops[i]`` ``(P_i, n)`` (dense or sparse) is the linear operator of
        observation time ``i``; block ``(i, j)`` is :math:`\phi^{|l_i - l_j|} A_i
        \Sigma_{\rm rep} A_j^\top`. Float64.
        """
        u, d = self.modes.to(torch.float64), self.var.to(torch.float64)
        sp = [_coo(a) for a in ops]
        dense_t = [a.to_dense().T for a in sp]  # (n, P_j)
        f = [torch.sparse.mm(a, u.T) for a in sp]  # (P_i, k)
        c = self._corr(lags)
        rows = []
        for i, ai in enumerate(sp):
            ad = _scale_columns(ai, d)
            rows.append(torch.cat([c[i, j] * (f[i] @ f[j].T + torch.sparse.mm(ad, aj_t))
                                   for j, aj_t in enumerate(dense_t)], 1))
        return torch.cat(rows, 0)

    def draw(self, members: int, lags: Sequence[float], *,
             generator: torch.Generator | None = None) -> Tensor:
        """Errors ``(members, T, n)`` at ``lags`` (sorted), float64, from the model.

        An AR(1) in time: :math:`e_t = \\phi^{\\Delta} e_{t-1} + (1 - \\phi^{2\\Delta})^{1/2}
        \\xi_t`, :math:`\\xi_t \\sim \\mathcal N(0, \\Sigma_{\\rm rep})` drawn as
        :math:`U^\\top a + d^{1/2} \\odot b` with standard normal ``a``, ``b``.
        """
        lags = [float(v) for v in lags]
        if any(b < a for a, b in itertools.pairwise(lags)):
            raise ConfigError(f"representation error: lags must be sorted, got {lags}")
        u, sd = self.modes.to(torch.float64), self.var.to(torch.float64).sqrt()
        out, prev = [], None
        for i, t in enumerate(lags):
            a = torch.randn(members, u.shape[0], generator=generator, dtype=torch.float64)
            b = torch.randn(members, self.n, generator=generator, dtype=torch.float64)
            xi = a @ u + sd * b
            if prev is None:
                prev = xi
            else:
                rho = float(self.phi) ** (t - lags[i - 1])
                prev = rho * prev + math.sqrt(max(1.0 - rho * rho, 0.0)) * xi
            out.append(prev)
        return torch.stack(out, 1)

    def cross(self, w: Sequence[Tensor], ops: Sequence[Tensor], obs_lags: Sequence[float],
              lags: Sequence[float]) -> Tensor:
        r"""``Cov(e, y) w``: ``(N, T, n)`` for weights ``w[i]`` ``(N, P_i)`` of the
        observations ``ops`` at ``obs_lags``, at the state ``lags``.

        :math:`\sum_i \phi^{|l_s - l_i|}\, \Sigma_{\rm rep} A_i^\top w_i` for each state
        lag :math:`l_s` (Matheron's rule: a prior draw plus this, with ``w`` the whitened
        innovation, is a draw of the error given the observations).
        """
        u, d = self.modes.to(torch.float64), self.var.to(torch.float64)
        t_s = torch.as_tensor(list(lags), dtype=torch.float64)
        t_o = torch.as_tensor(list(obs_lags), dtype=torch.float64)
        c = float(self.phi) ** (t_s[:, None] - t_o[None, :]).abs()  # (T, I)
        back = torch.stack([torch.sparse.mm(_coo(a).t(), wi.to(torch.float64).T).T
                            for a, wi in zip(ops, w)], 1)  # (N, I, n): A_i^T w_i
        b = torch.einsum("ti,nim->ntm", c, back)
        return (b @ u.T) @ u + d * b

    def scaled(self, factor: float) -> RepresentationError:
        r"""The same model with covariance ``factor`` :math:`\Sigma_{\rm rep}` (same
        :math:`\phi`); ``factor >= 0``."""
        f = float(factor)
        if not f >= 0.0:
            raise ConfigError(f"representation error: the scale must be >= 0, got {factor!r}")
        return RepresentationError(self.modes * math.sqrt(f), self.var * f, self.phi)


#: Largest factor :func:`representation_scale` returns (the root is bracketed in
#: ``[0, REP_SCALE_MAX]``; residuals that need more are clipped to it).
REP_SCALE_MAX = 1e4


def representation_scale(residuals: Tensor, r_std: Tensor,
                         blocks: Sequence[tuple[slice, Tensor]], *,
                         jacobian: Tensor | None = None, floor: float = 0.0,
                         max_scale: float = REP_SCALE_MAX) -> float:
    r"""Scale :math:`s^2` of the representation error that the residuals of an
    analysis to its own observations show (no truth needed).

    The observations are :math:`y = A D(z) + A e + \eta`, :math:`e \sim
    \mathcal N(0, s^2 \Sigma_{\rm rep})` off the decoder's manifold and
    :math:`\eta \sim \mathcal N(0, R)`. With :math:`q_i = Q^\top R^{-1/2} d_i`
    the whitened residuals (:math:`Q` below), :math:`\tilde M = Q^\top R^{-1/2} A
    \Sigma_{\rm rep} A^\top R^{-1/2} Q = V \Lambda V^\top` and :math:`a_j` the
    members' mean of :math:`(V^\top q_i)_j^2`, it returns the maximum-likelihood

    .. math::

        s^2 = \arg\max_{s^2 \ge 0}\; -\sum_j \Big(\log(1 + s^2\lambda_j)
        + \frac{a_j}{1 + s^2 \lambda_j}\Big)

    (the residuals taken as draws of :math:`\mathcal N(0, I + s^2 \tilde M)`;
    directions the error model gives no variance, :math:`\lambda_j = 0`, carry no
    information on :math:`s^2` and drop out, unlike a :math:`\chi^2/p = 1`
    condition, which a low-rank :math:`\Sigma_{\rm rep}` would drive to
    ``max_scale``). Found on a log-spaced grid, refined by bisection on the
    derivative.

    - ``jacobian=None``: :math:`Q = I`. For members drawn from
      the exact posterior under the true error, the residuals :math:`d_i = y - A
      D(z_i)` have covariance :math:`R + s^2 A \Sigma_{\rm rep} A^\top` (the
      a-posteriori diagnostics of Desroziers et al. 2005). The analysis depends
      on the assumed :math:`s^2`, so this is one step of a fixed-point
      iteration, and a sampler that does not fit the observations as the
      posterior would (too few steps, a poor prior) inflates it.
    - ``jacobian`` :math:`J = \partial (A D)/\partial z` ``(P, m)`` at the
      analysis: :math:`Q` spans the complement of the range of :math:`R^{-1/2}
      J` (per block), the part of observation space no
      latent change can fit (restricted maximum likelihood, as for variance
      components with nuisance effects). For a linear decoder :math:`Q^\top
      R^{-1/2} d_i = Q^\top R^{-1/2}(A e + \eta)` whatever the member, so the
      estimate is unbiased in one step and does not depend on how well the
      sampler fits the observations; for a non-linear one, to first order
      about the analysis. With fewer observations than latent directions
      there is no complement: ``nan``.

    Parameters
    ----------
    residuals : Tensor, shape (N, P)
        :math:`y - A D(z_i)` of each member.
    r_std : Tensor, shape (P,)
        Observation-error standard deviations (of :math:`R`, diagonal).
    blocks : sequence of (slice, Tensor)
        Diagonal blocks ``(slice over P, M_b)`` of :math:`M = A \Sigma_{\rm
        rep} A^\top` (the blocks the likelihood whitens jointly; correlations
        between blocks are left out). They must cover ``0..P`` in order.
    jacobian : Tensor, shape (P, m), optional
        Derivative of the observed values with respect to the latent control.
    floor : float
        Lower bound of :math:`s^2` (0, the default: none, the unbounded estimate; a floor
        of 1 keeps at least the error model as fitted).
    max_scale : float
        Upper end of the bracket (the result is clipped to it).

    Returns
    -------
    float
        :math:`s^2`: 0 when the likelihood is largest without the error model,
        ``max_scale`` when it still grows there, ``nan`` when no degree of freedom
        is left (``jacobian`` of full row rank).

    Raises
    ------
    ShapeError
        For residuals, errors, Jacobian and blocks that do not match.

    Examples
    --------
    One observation of error 1 and a representation error of variance 1: residuals
    with mean square 5 need :math:`s^2 = 4`.

    >>> import torch
    >>> d = torch.tensor([[2.0], [-2.0], [1.0], [-1.0], [3.0]]) * (5 / 3.8) ** 0.5
    >>> round(representation_scale(d, torch.ones(1), [(slice(0, 1), torch.ones(1, 1))]), 6)
    4.0
    """
    d, r = _checked_residuals("representation_scale", residuals, r_std, jacobian)
    a_parts, lam_parts, end = [], [], 0
    for sl, m in blocks:
        if sl.start != end or m.shape != (sl.stop - sl.start,) * 2:
            raise ShapeError("representation_scale: blocks must be square and cover the "
                             f"observations in order; got {sl} with shape {tuple(m.shape)}")
        end = sl.stop
        w = 1.0 / r[sl]
        mt = w[:, None] * m.to(torch.float64) * w[None, :]
        db = d[:, sl] * w
        if jacobian is not None:
            q = _off_range(w[:, None] * jacobian[sl].to(torch.float64))
            mt, db = q.T @ mt @ q, db @ q
        lam, qm = torch.linalg.eigh(mt)
        a_parts.append((db @ qm).square().mean(0))
        lam_parts.append(lam.clamp_min(0.0))
    if end != d.shape[1]:
        raise ShapeError(f"representation_scale: blocks cover {end} of {d.shape[1]} values")
    a, lam = torch.cat(a_parts), torch.cat(lam_parts)
    if a.numel() == 0:
        return float("nan")
    return _ml_scale_bounded(a, lam, float(max_scale), float(floor))


def _checked_residuals(name: str, residuals: Tensor, r_std: Tensor,
                       jacobian: Tensor | None) -> tuple[Tensor, Tensor]:
    """``residuals (N, P)`` and ``r_std (P,)`` in float64, refused unless they fit
    each other and ``jacobian (P, m)``."""
    d = residuals.to(torch.float64)
    r = r_std.to(torch.float64)
    if d.dim() != 2 or r.dim() != 1 or d.shape[1] != r.shape[0]:
        raise ShapeError(f"{name}: residuals must be (N, P) and r_std (P,), got "
                         f"{tuple(d.shape)} and {tuple(r.shape)}")
    if jacobian is not None and (jacobian.dim() != 2 or jacobian.shape[0] != d.shape[1]):
        raise ShapeError(f"{name}: jacobian must be (P, m) with P = {d.shape[1]}, "
                         f"got {tuple(jacobian.shape)}")
    return d, r


def _off_range(jb: Tensor) -> Tensor:
    """Orthonormal basis ``(P_b, P_b - rank)`` of the directions no column of ``jb`` reaches
    (REML: the residuals there cannot be fitted by a latent change)."""
    u, sv, _ = torch.linalg.svd(jb, full_matrices=True)
    rank = int((sv > sv.max() * 1e-8).sum()) if sv.numel() and sv.max() > 0 else 0
    return u[:, rank:]


def _scale_likelihood(a: Tensor, lam: Tensor):
    """``s -> -sum(log(1 + s lam) + a / (1 + s lam))`` and its derivative in ``s``."""

    def loglik(s: float) -> float:
        v = 1.0 + s * lam
        return -float((v.log() + a / v).sum())

    def slope(s: float) -> float:
        v = 1.0 + s * lam
        return float((lam * (a - v) / v.square()).sum())

    return loglik, slope


def _ml_scale(a: Tensor, lam: Tensor, max_scale: float) -> float:
    """Maximiser over ``[0, max_scale]`` of ``-sum(log(1 + s lam) + a / (1 + s lam))``:
    the best of a log-spaced grid (and 0), refined by bisection on the derivative."""

    loglik, slope = _scale_likelihood(a, lam)

    if slope(0.0) <= 0.0:
        return 0.0
    grid = [0.0, *(max_scale * 10.0 ** (-k / 8.0) for k in range(12 * 8, -1, -1))]
    vals = [loglik(g) for g in grid]
    best = max(range(len(grid)), key=vals.__getitem__)
    if best == len(grid) - 1:
        return float(max_scale)
    return _bisect(slope, grid[max(best - 1, 0)], grid[best + 1])


# ---------------------------------------------------------------------------
# two-part representation error: low-rank modes plus a smooth isotropic part
# ---------------------------------------------------------------------------
#: Largest number of state values per channel of the smooth part of
#: :class:`TwoPartError` (its correlation is held as a dense matrix per channel).
REP_SMOOTH_MAX = 16384


def _lag_sqrt(phi: float, lags: Sequence[float]) -> Tensor:
    """A square root ``L`` (``L Lᵀ = φ^|l_i - l_j|``) of the AR(1) correlation of ``lags``."""
    t = torch.as_tensor(list(lags), dtype=torch.float64)
    c = float(phi) ** (t[:, None] - t[None, :]).abs()
    lam, v = torch.linalg.eigh(c)
    return v * lam.clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class TwoPartError:
    r"""Two-part Gaussian model of the decoder's representation error.

    .. math::

        \operatorname{Cov}(e_s, e_t) = s_1^2\, \phi_1^{|s-t|}\, U^\top U
        + s_2^2\, \phi_2^{|s-t|}\, C,
        \qquad C_{pq} = \sigma_p \sigma_q\, [c_p = c_q]\,
        \exp\!\Big(-\frac{\lVert x_p - x_q\rVert^2}{2\ell^2}\Big),

    the low-rank modes :math:`U` of :class:`RepresentationError` (what the
    held-out residuals' leading principal directions hold) plus a smooth
    isotropic part :math:`C` for the rest: per channel :math:`c_p` a constant
    variance :math:`\sigma^2` and a Gaussian correlation of length :math:`\ell`
    in the positions :math:`x_p` (unit-sphere points for latitude-longitude
    grids, so distances are chords; grid indices otherwise), channels
    independent. Unlike the diagonal of :class:`RepresentationError`, a factor
    :math:`s_2^2` on :math:`C` grows a spatially correlated error that block
    means do not average away. ``factors`` are :math:`(s_1^2, s_2^2)`, 1 for the
    model as fitted (:func:`fit_smooth_error`, :func:`representation_scales`
    estimates them from observations).

    Parameters
    ----------
    modes : Tensor, shape (k, n)
        Rows :math:`U`.
    phi : float
        Lag-one correlation in time of the modes' part.
    smooth_std : Tensor, shape (n,)
        :math:`\sigma_p` (constant per channel for an isotropic part).
    points : Tensor, shape (n, D)
        Position of every value.
    channel : Tensor, shape (n,)
        Channel of every value (integers; values of different channels are
        uncorrelated in :math:`C`).
    length : float
        Correlation length :math:`\ell > 0`, in the units of ``points``.
    smooth_phi : float
        Lag-one correlation in time of the smooth part.
    factors : tuple of float
        :math:`(s_1^2, s_2^2) \ge 0`.

    Examples
    --------
    >>> import torch
    >>> pts = torch.arange(4.0)[:, None]
    >>> chan = torch.zeros(4, dtype=torch.long)
    >>> rep = TwoPartError(torch.zeros(0, 4), 0.0, torch.ones(4), pts, chan, 1.0, 0.0, (1.0, 4.0))
    >>> round(float(rep.obs_covariance([torch.eye(4)[:2]], [0.0])[0, 1]), 4)  # 4 exp(-1/2)
    2.4261
    """

    modes: Tensor
    phi: float
    smooth_std: Tensor
    points: Tensor
    channel: Tensor
    length: float
    smooth_phi: float = 0.0
    factors: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        n = int(self.smooth_std.shape[0]) if self.smooth_std.dim() == 1 else -1
        if (self.modes.dim() != 2 or self.modes.shape[1] != n or self.points.dim() != 2
                or self.points.shape[0] != n or tuple(self.channel.shape) != (n,)):
            raise ShapeError(
                f"two-part representation error: modes must be (k, n), smooth_std (n,), points "
                f"(n, D) and channel (n,); got {tuple(self.modes.shape)}, "
                f"{tuple(self.smooth_std.shape)}, {tuple(self.points.shape)}, "
                f"{tuple(self.channel.shape)}")
        for name, v in (("phi", self.phi), ("smooth_phi", self.smooth_phi)):
            if not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"two-part representation error: {name} must be in [0, 1), "
                                  f"got {v}")
        if not float(self.length) > 0.0:
            raise ConfigError(f"two-part representation error: length must be > 0, got "
                              f"{self.length} (refit it with fit_smooth_error)")
        if len(self.factors) != 2 or not all(float(f) >= 0.0 for f in self.factors):
            raise ConfigError(f"two-part representation error: factors must be two numbers "
                              f">= 0, got {self.factors!r}")
        sizes = torch.bincount(self.channel.long()) if n > 0 else torch.zeros(0)
        if sizes.numel() and int(sizes.max()) > REP_SMOOTH_MAX:
            raise ConfigError(
                f"two-part representation error: {int(sizes.max())} values in one channel, "
                f"more than REP_SMOOTH_MAX = {REP_SMOOTH_MAX} (its correlation is a dense "
                "matrix); use the low-rank model (representation_scale='adaptive')")

    @property
    def n(self) -> int:
        """Number of state values."""
        return int(self.smooth_std.shape[0])

    def with_factors(self, s1: float, s2: float) -> TwoPartError:
        """The same model with factors ``(s1, s2)`` (variances, relative to the fit)."""
        return TwoPartError(self.modes, self.phi, self.smooth_std, self.points, self.channel,
                            self.length, self.smooth_phi, (float(s1), float(s2)))

    def scaled(self, factor: float) -> TwoPartError:
        """Both factors times ``factor`` (``>= 0``)."""
        f = float(factor)
        if not f >= 0.0:
            raise ConfigError(f"representation error: the scale must be >= 0, got {factor!r}")
        return self.with_factors(self.factors[0] * f, self.factors[1] * f)

    def smooth_covariance(self) -> Tensor:
        """:math:`C` ``(n, n)``, float64 (not scaled by the factor)."""
        return _smooth_cache(self)[0]

    def obs_parts(self, ops: Sequence[Tensor], lags: Sequence[float]) -> tuple[Tensor, Tensor]:
        r"""``(B, M2)`` at observations ``ops`` at ``lags`` (factors left out): ``B`` ``(P,
        kT)`` with :math:`B B^\top` the modes' part :math:`\phi_1^{|l_i - l_j|} A_i U^\top
        U A_j^\top`, ``M2`` ``(P, P)`` the smooth part :math:`\phi_2^{|l_i - l_j|} A_i C
        A_j^\top`. Float64."""
        u = self.modes.to(torch.float64)
        sp = [_coo(a) for a in ops]
        f = [torch.sparse.mm(a, u.T) for a in sp]  # (P_i, k)
        lt = _lag_sqrt(self.phi, lags)  # (T, T)
        b = torch.cat([torch.cat([lt[i, j] * f[i] for j in range(len(sp))], 1)
                       for i in range(len(sp))], 0)
        c = self.smooth_covariance()
        ct = _lag_corr(self.smooth_phi, lags)
        ac = [torch.sparse.mm(a, c) for a in sp]  # (P_i, n)
        m2 = torch.cat([torch.cat([ct[i, j] * torch.sparse.mm(aj, ac[i].T).T
                                   for j, aj in enumerate(sp)], 1)
                        for i in range(len(sp))], 0)
        return b, m2

    def obs_covariance(self, ops: Sequence[Tensor], lags: Sequence[float]) -> Tensor:
        """Covariance ``(P, P)`` of the error seen by observations ``ops`` at ``lags``, with
        the factors: :math:`s_1^2 B B^\\top + s_2^2 M_2` (:meth:`obs_parts`)."""
        b, m2 = self.obs_parts(ops, lags)
        s1, s2 = (float(v) for v in self.factors)
        return s1 * (b @ b.T) + s2 * m2

    def draw_parts(self, members: int, lags: Sequence[float], *,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two parts ``(e1, e2)`` of errors ``(members, T, n)`` at ``lags`` (sorted),
        float64, factors left out: an AR(1) in time for each (modes from ``U^T a``, the
        smooth part from ``C^{1/2} b``, standard normal ``a``, ``b``)."""
        lags = [float(v) for v in lags]
        if any(b < a for a, b in itertools.pairwise(lags)):
            raise ConfigError(f"representation error: lags must be sorted, got {lags}")
        u = self.modes.to(torch.float64)
        root = _smooth_cache(self)[1]
        out1, out2, prev1, prev2 = [], [], None, None
        for i, t in enumerate(lags):
            a = torch.randn(members, u.shape[0], generator=generator, dtype=torch.float64)
            b = torch.randn(members, root.shape[1], generator=generator, dtype=torch.float64)
            x1, x2 = a @ u, b @ root.T
            if prev1 is None:
                prev1, prev2 = x1, x2
            else:
                r1 = float(self.phi) ** (t - lags[i - 1])
                r2 = float(self.smooth_phi) ** (t - lags[i - 1])
                prev1 = r1 * prev1 + math.sqrt(max(1.0 - r1 * r1, 0.0)) * x1
                prev2 = r2 * prev2 + math.sqrt(max(1.0 - r2 * r2, 0.0)) * x2
            out1.append(prev1)
            out2.append(prev2)
        return torch.stack(out1, 1), torch.stack(out2, 1)

    def draw(self, members: int, lags: Sequence[float], *,
             generator: torch.Generator | None = None) -> Tensor:
        """Errors ``(members, T, n)`` at ``lags`` (sorted), float64, with the factors:
        :math:`s_1 e_1 + s_2 e_2` of :meth:`draw_parts`."""
        e1, e2 = self.draw_parts(members, lags, generator=generator)
        return math.sqrt(float(self.factors[0])) * e1 + math.sqrt(float(self.factors[1])) * e2

    def cross(self, w: Sequence[Tensor], ops: Sequence[Tensor], obs_lags: Sequence[float],
              lags: Sequence[float]) -> Tensor:
        """``Cov(e, y) w``: ``(N, T, n)`` (as :meth:`RepresentationError.cross`)."""
        u = self.modes.to(torch.float64)
        t_s = torch.as_tensor(list(lags), dtype=torch.float64)
        t_o = torch.as_tensor(list(obs_lags), dtype=torch.float64)
        back = torch.stack([torch.sparse.mm(_coo(a).t(), wi.to(torch.float64).T).T
                            for a, wi in zip(ops, w)], 1)  # (N, I, n)
        c1 = float(self.phi) ** (t_s[:, None] - t_o[None, :]).abs()
        c2 = float(self.smooth_phi) ** (t_s[:, None] - t_o[None, :]).abs()
        b1 = torch.einsum("ti,nim->ntm", c1, back)
        b2 = torch.einsum("ti,nim->ntm", c2, back)
        s1, s2 = (float(v) for v in self.factors)
        return s1 * ((b1 @ u.T) @ u) + s2 * (b2 @ self.smooth_covariance())


def _lag_corr(phi: float, lags: Sequence[float]) -> Tensor:
    t = torch.as_tensor(list(lags), dtype=torch.float64)
    return float(phi) ** (t[:, None] - t[None, :]).abs()


_SMOOTH_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


def _smooth_cache(rep: TwoPartError) -> tuple[Tensor, Tensor]:
    """``(C, C^{1/2})`` of a two-part model (per channel, by ``eigh``), cached by content
    (the factors do not enter), at most four models."""
    key = (float(rep.length), rep.n, hash(rep.points.to(torch.float64).numpy().tobytes()),
           hash(rep.smooth_std.to(torch.float64).numpy().tobytes()),
           hash(rep.channel.numpy().tobytes()))
    if key not in _SMOOTH_CACHE:
        n = rep.n
        c = torch.zeros(n, n, dtype=torch.float64)
        root = torch.zeros(n, n, dtype=torch.float64)
        pts, sd = rep.points.to(torch.float64), rep.smooth_std.to(torch.float64)
        for ch in torch.unique(rep.channel):
            idx = (rep.channel == ch).nonzero().flatten()
            cc = _gauss_corr(pts[idx], pts[idx], float(rep.length))
            cc = sd[idx, None] * cc * sd[None, idx]
            lam, v = torch.linalg.eigh(cc)
            c[idx[:, None], idx[None, :]] = cc
            root[idx[:, None], idx[None, :]] = v * lam.clamp_min(0.0).sqrt()
        if len(_SMOOTH_CACHE) >= 4:
            _SMOOTH_CACHE.pop(next(iter(_SMOOTH_CACHE)))
        _SMOOTH_CACHE[key] = (c, root)
    return _SMOOTH_CACHE[key]


def _gauss_corr(p: Tensor, q: Tensor, length: float) -> Tensor:
    """``exp(-|p_i - q_j|² / (2 ℓ²))``, ``(len(p), len(q))``."""
    d2 = (p[:, None, :] - q[None, :, :]).square().sum(-1)
    return torch.exp(-0.5 * d2 / (length * length))


def fit_smooth_error(residuals: Tensor, modes: Tensor, points: Tensor, channel: Tensor, *,
                     bins: int = 24) -> dict[str, Any]:
    r"""Fit the smooth isotropic part of :class:`TwoPartError` on held-out residuals.

    The part of each residual outside the span of ``modes`` (:math:`e - e V^\top V`,
    :math:`V` the orthonormalised modes) gives, per channel, the variance
    :math:`\sigma^2` (its mean square) and, standardised by it, the empirical
    correlation of pairs of values binned by distance (``bins`` bins of equal
    pair counts within each channel); the length :math:`\ell` is the least-squares
    fit of :math:`\exp(-d^2 / 2\ell^2)` to the bins' mean correlations (each bin
    weighted alike), found on a log grid and refined by golden section. Residuals
    with a time axis as ``(S, T, n)`` also give the lag-one correlation of the
    part outside the modes; ``(m, n)`` residuals give 0.

    Parameters
    ----------
    residuals : Tensor, shape (m, n) or (S, T, n)
        Held-out residuals ``x - D(E(x))`` (float64; ``T`` consecutive times).
    modes : Tensor, shape (k, n)
        The low-rank modes (``k`` may be 0).
    points, channel : Tensor
        Positions ``(n, D)`` and channels ``(n,)`` of the values.
    bins : int
        Distance bins per channel.

    Returns
    -------
    dict
        ``var`` (per channel, list), ``length``, ``smooth_phi``, ``fit_rms`` (rms misfit
        of the fitted correlation to the bins) and ``bins`` (distance, correlation)
        pairs of the first channel.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> pts = torch.arange(64.0)[:, None]
    >>> c = torch.exp(-0.5 * (pts - pts.T) ** 2 / 3.0 ** 2)
    >>> root = torch.linalg.cholesky(c + 1e-6 * torch.eye(64, dtype=c.dtype))
    >>> e = torch.randn(400, 64, generator=g, dtype=torch.float64) @ root.T.double()
    >>> fit = fit_smooth_error(e, torch.zeros(0, 64), pts, torch.zeros(64, dtype=torch.long))
    >>> 2.7 < fit["length"] < 3.3
    True
    """
    e = residuals.to(torch.float64)
    smooth_phi = 0.0
    n = e.shape[-1]
    u = modes.to(torch.float64)
    if u.shape[0]:
        _, s, vh = torch.linalg.svd(u, full_matrices=False)
        v = vh[s > s.max() * 1e-10] if s.numel() else vh[:0]
    else:
        v = u[:0]
    flat = e.reshape(-1, n)
    perp = flat - (flat @ v.T) @ v
    if e.dim() == 3 and e.shape[1] > 1:
        et = perp.reshape(e.shape)
        a, b = et[:, :-1], et[:, 1:]
        den = float(((a**2).sum() * (b**2).sum()).sqrt())
        smooth_phi = min(max(float((a * b).sum()) / den, 0.0), 0.999) if den > 0 else 0.0
    pts = points.to(torch.float64)
    chans = torch.unique(channel)
    var, dist, corr = [], [], []
    for ch in chans:
        idx = (channel == ch).nonzero().flatten()
        z = perp[:, idx]
        vc = float(z.square().mean())
        var.append(vc)
        if vc <= 0.0 or idx.numel() < 2:
            continue
        cov = (z.T @ z) / (z.shape[0] * vc)
        d = (pts[idx, None, :] - pts[None, idx, :]).square().sum(-1).sqrt()
        iu = torch.triu_indices(idx.numel(), idx.numel(), 1)
        dd, cc = d[iu[0], iu[1]], cov[iu[0], iu[1]]
        order = torch.argsort(dd, stable=True)
        for part in torch.tensor_split(order, int(bins)):
            if part.numel():
                dist.append(float(dd[part].mean()))
                corr.append(float(cc[part].mean()))
    if not dist:
        raise ConfigError("fit_smooth_error: the residuals outside the modes are zero; there "
                          "is no smooth part to fit (use the low-rank model)")
    dist_t, corr_t = torch.tensor(dist, dtype=torch.float64), torch.tensor(corr,
                                                                             dtype=torch.float64)

    def misfit(log_l: float) -> float:
        ell = math.exp(log_l)
        return float((torch.exp(-0.5 * dist_t.square() / ell**2) - corr_t).square().mean())

    dpos = dist_t[dist_t > 0]
    lo, hi = math.log(float(dpos.min()) / 4.0), math.log(float(dist_t.max()) * 2.0)
    grid = [lo + (hi - lo) * i / 64 for i in range(65)]
    vals = [misfit(g) for g in grid]
    k = min(range(len(grid)), key=vals.__getitem__)
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    gr = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        c1, c2 = b - gr * (b - a), a + gr * (b - a)
        if misfit(c1) <= misfit(c2):
            b = c2
        else:
            a = c1
    log_l = 0.5 * (a + b)
    nb = len(dist) // max(len(chans), 1)
    return {"var": var, "length": math.exp(log_l), "smooth_phi": smooth_phi,
            "fit_rms": math.sqrt(misfit(log_l)),
            "bins": [(round(dd, 6), round(cc, 6)) for dd, cc in zip(dist[:nb], corr[:nb])]}


def _ml_scale_bounded(a: Tensor, lam: Tensor, max_scale: float, floor: float) -> float:
    """:func:`_ml_scale` on ``[floor, max_scale]`` (``floor <= 0``: exactly
    :func:`_ml_scale`)."""
    if floor <= 0.0:
        return _ml_scale(a, lam, max_scale)
    floor = min(float(floor), float(max_scale))

    loglik, slope = _scale_likelihood(a, lam)

    if floor >= max_scale:
        return floor
    grid = [floor * 10.0 ** (k / 8.0) for k in range(0, 200)]
    grid = [g for g in grid if g < max_scale] + [float(max_scale)]
    vals = [loglik(g) for g in grid]
    best = max(range(len(grid)), key=vals.__getitem__)
    if best == len(grid) - 1:
        return float(max_scale)
    if best == 0:
        return floor if slope(floor) <= 0.0 else _bisect(slope, grid[0], grid[1])
    return _bisect(slope, grid[best - 1], grid[best + 1])


def _ml_scale_fast(a: Tensor, lam: Tensor, max_scale: float, floor: float) -> float:
    """The maximiser of :func:`_ml_scale_bounded` (the same log grid from ``floor``, 8 per
    decade, refined by bisection on the derivative), vectorised in NumPy for the many
    calls of :func:`representation_scales`' profile."""
    import numpy as np

    av, lv = a.numpy(), lam.numpy()

    def slope(s: float) -> float:
        v = 1.0 + s * lv
        return float((lv * (av - v) / (v * v)).sum())

    lo = max(float(floor), 0.0)
    if lo >= max_scale:
        return float(max_scale)
    if lo == 0.0:
        if slope(0.0) <= 0.0:
            return 0.0
        grid = np.concatenate([[0.0], max_scale * 10.0 ** (-np.arange(96, -1, -1) / 8.0)])
    else:
        grid = lo * 10.0 ** (np.arange(0, 200) / 8.0)
        grid = np.concatenate([grid[grid < max_scale], [max_scale]])
    v = 1.0 + grid[:, None] * lv[None, :]
    vals = -(np.log(v) + av[None, :] / v).sum(1)
    best = int(np.argmax(vals))
    if best == len(grid) - 1:
        return float(max_scale)
    if best == 0 and lo > 0.0 and slope(lo) <= 0.0:
        return lo
    return _bisect(slope, float(grid[max(best - 1, 0)]), float(grid[best + 1]), steps=60)


def _bisect(slope: Callable[[float], float], lo: float, hi: float, steps: int = 100) -> float:
    """The root of a decreasing ``slope`` in ``[lo, hi]`` by ``steps`` bisections."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def representation_scales(residuals: Tensor, r_std: Tensor,
                          parts: Sequence[tuple[slice, Tensor, Tensor]], *,
                          jacobian: Tensor | None = None, floor: float = 0.0,
                          max_scale: float = REP_SCALE_MAX) -> tuple[float, float]:
    r"""The two factors :math:`(s_1^2, s_2^2)` of a :class:`TwoPartError` that the
    residuals of an analysis to its own observations show, jointly, by maximum
    likelihood (no truth needed).

    The model of :func:`representation_scale` with the error covariance
    :math:`s_1^2 B B^\top + s_2^2 M_2` (:meth:`TwoPartError.obs_parts`: the
    low-rank modes' part and the smooth part at the observations). With the
    whitened residuals :math:`q_i = Q^\top R^{-1/2} d_i` (``jacobian``: :math:`Q`
    spans the complement of the range of :math:`R^{-1/2} J`, restricted maximum
    likelihood; else :math:`Q = I`) taken as draws of :math:`\mathcal N(0, V)`,
    :math:`V = I + s_1^2 \tilde B \tilde B^\top + s_2^2 \tilde M_2`, it maximises

    .. math::

        \ell(s_1^2, s_2^2) = -\log\det V - \overline{q^\top V^{-1} q}

    over :math:`s_1^2 \in [\text{floor}, \text{max\_scale}]`, :math:`s_2^2 \in [0,
    \text{max\_scale}]`. Profiled: for each :math:`s_2^2`, in the eigenbasis of
    :math:`\tilde M_2` (one ``eigh`` per block), :math:`V = D^{1/2}(I + s_1^2
    \hat B \hat B^\top) D^{1/2}` with :math:`D = I + s_2^2 \Lambda_2`, so the best
    :math:`s_1^2` is the one-factor problem of :func:`representation_scale` on the
    eigenvalues of the small :math:`\hat B^\top \hat B` (``kT x kT``); :math:`s_2^2`
    on a log grid (4 per decade from :math:`10^{-4}`, and 0), refined by golden
    section on :math:`\log s_2^2`.

    Parameters
    ----------
    residuals : Tensor, shape (N, P)
        :math:`y - A D(z_i)` of each member.
    r_std : Tensor, shape (P,)
        Observation-error standard deviations.
    parts : sequence of (slice, Tensor, Tensor)
        Blocks ``(slice over P, B_b (P_b, K_b), M2_b (P_b, P_b))`` covering
        ``0..P`` in order (correlations between blocks left out).
    jacobian : Tensor, shape (P, m), optional
        Derivative of the observed values with respect to the latent control.
    floor : float
        Lower bound on :math:`s_1^2` (0: none).
    max_scale : float
        Upper bound of both factors.

    Returns
    -------
    tuple of float
        :math:`(s_1^2, s_2^2)`; ``(nan, nan)`` when no degree of freedom is left;
        a factor whose part is zero at the observations is returned as 1 (nothing
        to estimate it from).

    Raises
    ------
    ShapeError
        For residuals, errors, Jacobian and parts that do not match.

    Examples
    --------
    Residuals drawn with :math:`s_1^2 = 4`, :math:`s_2^2 = 9` on 400 observations:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> P = 400
    >>> b = torch.randn(P, 3, generator=g, dtype=torch.float64)
    >>> x = torch.arange(P, dtype=torch.float64)
    >>> m2 = torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / 4.0)
    >>> cov = torch.eye(P, dtype=torch.float64) + 4 * b @ b.T + 9 * m2
    >>> d = (torch.linalg.cholesky(cov) @ torch.randn(P, 1, generator=g, dtype=torch.float64)).T
    >>> s1, s2 = representation_scales(d, torch.ones(P), [(slice(0, P), b, m2)])
    >>> 5 < s2 < 15
    True
    """
    d, r = _checked_residuals("representation_scales", residuals, r_std, jacobian)
    pre, end = [], 0
    for sl, b, m2 in parts:
        p = sl.stop - sl.start
        if sl.start != end or m2.shape != (p, p) or b.dim() != 2 or b.shape[0] != p:
            raise ShapeError("representation_scales: parts must be (slice, (P_b, K), (P_b, "
                             "P_b)) covering the observations in order; got "
                             f"{sl} with {tuple(b.shape)}, {tuple(m2.shape)}")
        end = sl.stop
        w = 1.0 / r[sl]
        bt = w[:, None] * b.to(torch.float64)
        mt = w[:, None] * m2.to(torch.float64) * w[None, :]
        db = d[:, sl] * w
        if jacobian is not None:
            q = _off_range(w[:, None] * jacobian[sl].to(torch.float64))
            bt, mt, db = q.T @ bt, q.T @ mt @ q, db @ q
        if db.shape[1] == 0:
            continue
        lam2, v2 = torch.linalg.eigh(mt)
        pre.append((lam2.clamp_min(0.0), db @ v2, v2.T @ bt))
    if end != d.shape[1]:
        raise ShapeError(f"representation_scales: parts cover {end} of {d.shape[1]} values")
    if not pre:
        return float("nan"), float("nan")
    has1 = any(bool((bv.abs() > 0).any()) for _, _, bv in pre)
    has2 = any(bool((lam2 > 0).any()) for lam2, _, _ in pre)

    def inner(s2: float) -> tuple[Tensor, Tensor, float]:
        a_p, l_p, const = [], [], 0.0
        for lam2, qt, bv in pre:
            dd = 1.0 + s2 * lam2
            sq = dd.sqrt()
            qh, bh = qt / sq, bv / sq[:, None]
            const += float(dd.log().sum()) + float(qh.square().sum(1).mean())
            if bh.shape[1] == 0:
                continue
            lam, ug = torch.linalg.eigh(bh.T @ bh)
            keep = lam > max(float(lam.max()), 0.0) * 1e-10
            if not bool(keep.any()):
                continue
            proj = (qh @ bh) @ ug[:, keep]
            a_p.append(proj.square().mean(0) / lam[keep])
            l_p.append(lam[keep])
        a = torch.cat(a_p) if a_p else torch.zeros(0, dtype=torch.float64)
        lam = torch.cat(l_p) if l_p else torch.zeros(0, dtype=torch.float64)
        return a, lam, const

    def profile(s2: float) -> tuple[float, float]:
        a, lam, const = inner(s2)
        if not has1 or a.numel() == 0:
            return 1.0, -const
        s1 = _ml_scale_fast(a, lam, float(max_scale), float(floor))
        v = 1.0 + s1 * lam
        return s1, -(const + float((v.log() + a / v - a).sum()))

    if not has2:
        return profile(0.0)[0], 1.0
    grid = [0.0, *(10.0 ** (k / 4.0) for k in range(-16, 4 * int(math.log10(max_scale)) + 1))]
    grid = [g for g in grid if g <= max_scale]
    vals = [profile(g)[1] for g in grid]
    best = max(range(len(grid)), key=vals.__getitem__)
    if 0 < best < len(grid) - 1:
        lo = math.log(grid[best - 1]) if best > 1 else math.log(grid[1]) - math.log(10.0)
        hi = math.log(grid[best + 1])
        gr = (math.sqrt(5.0) - 1.0) / 2.0
        c1, c2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
        f1, f2 = profile(math.exp(c1))[1], profile(math.exp(c2))[1]
        for _ in range(30):  # golden section: the bracket shrinks to 0.618^30 ~ 5e-7
            if f1 >= f2:
                hi, c2, f2 = c2, c1, f1
                c1 = hi - gr * (hi - lo)
                f1 = profile(math.exp(c1))[1]
            else:
                lo, c1, f1 = c1, c2, f2
                c2 = lo + gr * (hi - lo)
                f2 = profile(math.exp(c2))[1]
        s2 = math.exp(0.5 * (lo + hi))
        if profile(s2)[1] < vals[best]:
            s2 = grid[best]
    else:
        s2 = grid[best]
    return profile(s2)[0], float(s2)
