r"""Ensemble Kalman filters: stochastic EnKF, ETKF, DEnKF and EnSRF.

All four filters share one set of ensemble-space quantities. With members as
rows (the tensor layout ``(*batch, N, n)``), ensemble mean :math:`\bar x`,
observation-error standard deviations :math:`r` (diagonal
:math:`R = \mathrm{diag}(r^2)`) and the observation operator already applied
to every member (``hx``, :math:`h_j = H(x_j)`):

.. math::

    X = \lambda\,(E - \bar x) / \sqrt{N-1}        \quad (N \times n), \qquad
    S = \lambda\,(h - \bar h)\,R^{-1/2} / \sqrt{N-1} \quad (N \times P),

    d = R^{-1/2}\,(y - \bar h), \qquad C = I_N + S S^\top,

where :math:`\lambda` is the multiplicative inflation (Anderson & Anderson
1999), applied to the *forecast* anomalies before the update (to ``hx`` too,
which is exact for a linear :math:`H` and the usual first-order
approximation otherwise; to inflate the members before applying a nonlinear
:math:`H`, inflate yourself with :func:`inflate` and pass ``inflation=1``).
The Kalman analysis mean is, for every filter,

.. math:: \bar x_a = \bar x + w^\top X, \qquad w = C^{-1} S d = S (I_P + S^\top S)^{-1} d,

and the filters differ in their analysis anomalies :math:`X_a = T X`
(the analysis ensemble is :math:`\bar x_a + \sqrt{N-1}\,X_a`):

ETKF (Bishop et al. 2001; Hunt et al. 2007)
    :math:`T = C^{-1/2}`, the symmetric square root from one batched
    eigendecomposition :math:`C = V \Lambda V^\top`,
    :math:`T = V \Lambda^{-1/2} V^\top`. Optionally followed by a random
    mean-preserving rotation :math:`X_a \leftarrow Q X_a`,
    :math:`Q \mathbf 1 = \mathbf 1`, :math:`Q` Haar-distributed on
    :math:`\mathbf 1^\perp` (Sakov & Oke 2008b), which keeps mean and
    covariance. When :math:`P < N` the same transform comes from the
    eigendecomposition of the smaller :math:`S^\top S` (see
    :func:`etkf_update`).
DEnKF (Sakov & Oke 2008a)
    Anomalies updated with half the Kalman gain,
    :math:`A_a = A - \tfrac12 K H A`, i.e. :math:`T = \tfrac12(I + C^{-1})`.
    The mean is exact; the covariance is
    :math:`P_a + \tfrac14 K H P_f H^\top K^\top`, slightly larger than the
    Kalman :math:`P_a` (the deterministic filter's built-in inflation).
EnSRF (Whitaker & Hamill 2002)
    The serial square-root filter, computed *without* a loop over
    observations: the batch form of Andrews (1968) used by Whitaker &
    Hamill, :math:`A_a = (I - \tilde K H) A`,
    :math:`\tilde K = P H^\top F^{-\top/2} (F^{1/2} + R^{1/2})^{-1}`, with
    the *lower Cholesky factor* :math:`F^{1/2} = L` of
    :math:`F = I_P + S^\top S` (scaled observation space). In the row layout,
    :math:`T = I_N - S (L + I)^{-\top} L^{-1} S^\top`. With this factor the
    result equals, to rounding, Whitaker & Hamill's serial algorithm
    processing the observations in their given order (a test checks it);
    with the symmetric root it would equal the ETKF. Costs
    :math:`O(P^3 + N P^2)`: for :math:`P \gg N` prefer the ETKF.
Stochastic EnKF (Burgers et al. 1998; Houtekamer & Mitchell 1998)
    Each member assimilates perturbed observations
    :math:`y + r\,\varepsilon_j`, :math:`\varepsilon_j \sim N(0, I)` drawn
    with the ``generator`` and centred over the members by default (as in
    DAPPER's ``EnKF('PertObs')``; centring changes only the analysis mean,
    which becomes exactly the Kalman mean for linear :math:`H`):
    :math:`E_a = E + W X` with scaled innovations
    :math:`D_j = d - \sqrt{N-1} S_j + \varepsilon_j` and
    :math:`W = D S^\top C^{-1} = D (I_P + S^\top S)^{-1} S^\top`. The gain is
    solved (Cholesky) in ensemble space (:math:`N \times N`) when
    :math:`N \le P`, else in observation space (:math:`P \times P`).

After the update, optionally (in this order):

- RTPP (Zhang et al. 2004): :math:`X_a \leftarrow (1-\alpha) X_a + \alpha X_f`,
  with :math:`X_f` the inflated forecast anomalies (those the update used);
- RTPS (Whitaker & Hamill 2012): each variable's analysis anomalies are
  scaled by :math:`\alpha\,\sigma_f/\sigma_a + 1 - \alpha`, with
  :math:`\sigma_f` the forecast spread *before* inflation (as in Whitaker &
  Hamill, so ``rtps=1`` restores the un-inflated forecast spread exactly
  and RTPS and inflation do not compound);
- the random rotation of the ETKF.

Every operation is batched over leading dimensions (no Python loop over
members, observations or batch), works in float32 and float64 and on any
device.

**Cycling** (:meth:`EnsembleMethod.step`): the filters return diagnostics
(innovation chi-square, spread/innovation ratio, inflation, observations
used and rejected; :mod:`xlatda.methods.consistency`) and a small method
state, the adaptive inflation estimate of :mod:`xlatda.methods.inflation`
(``inflation="adaptive"``). A gross-error background check (on by default,
5 standard deviations) removes observations far from the forecast before
the update. Parameters appended to the state (``n_params``) have their own
inflation and RTPS (``param_inflation``, ``param_rtps``).

**Robustness.** The square roots are computed from symmetrised matrices in
float64 with eigenvalue floors and an SVD path for failures and
ill-conditioned cases (:func:`etkf_transform`); the other ensemble-space
factorisations run in float64 too. A
forecast holding NaN or inf (a diverged filter) raises
:class:`~xlatda.errors.AnalysisError`, never a raw ``torch.linalg`` error.

Missing observations in a batch: give them ``r_std = inf`` (and any finite
``y``); their scaled anomalies and innovations are then zero and they have no
effect.

References
----------
Anderson, J. L., Anderson, S. L. (1999). A Monte Carlo implementation of the
nonlinear filtering problem to produce ensemble assimilations and forecasts.
Mon. Wea. Rev. 127.
Bishop, C. H., Etherton, B. J., Majumdar, S. J. (2001). Adaptive sampling with
the ensemble transform Kalman filter. Mon. Wea. Rev. 129.
Burgers, G., van Leeuwen, P. J., Evensen, G. (1998). Analysis scheme in the
ensemble Kalman filter. Mon. Wea. Rev. 126.
Hunt, B. R., Kostelich, E. J., Szunyogh, I. (2007). Efficient data
assimilation for spatiotemporal chaos: a local ensemble transform Kalman
filter. Physica D 230.
Sakov, P., Oke, P. R. (2008a). A deterministic formulation of the ensemble
Kalman filter: an alternative to ensemble square root filters. Tellus A 60.
Sakov, P., Oke, P. R. (2008b). Implications of the form of the ensemble
transformation in the ensemble square root filters. Mon. Wea. Rev. 136.
Whitaker, J. S., Hamill, T. M. (2002). Ensemble data assimilation without
perturbed observations. Mon. Wea. Rev. 130.
Whitaker, J. S., Hamill, T. M. (2012). Evaluating methods to account for
system errors in ensemble data assimilation. Mon. Wea. Rev. 140.
Zhang, F., Snyder, C., Sun, J. (2004). Impacts of initial estimate and
observation availability on convective-scale data assimilation with an
ensemble Kalman filter. Mon. Wea. Rev. 132.

Examples
--------
>>> import torch
>>> from xlatda.methods.ensemble import ETKF
>>> g = torch.Generator().manual_seed(0)
>>> ens = torch.randn(20, 3, generator=g, dtype=torch.float64)   # (N, n)
>>> H = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)      # observe x0
>>> ana = ETKF(inflation=1.02).analyse(ens, ens @ H.T, torch.tensor([0.5]), torch.tensor([0.1]))
>>> tuple(ana.shape)
(20, 3)
>>> bool(ana[:, 0].std() < ens[:, 0].std())
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from xlatda.errors import AnalysisError, ConfigError, ShapeError
from xlatda.methods.consistency import (
    DEFAULT_GROSS_ERROR,
    gross_error_mask,
    innovation_chi2,
    innovation_quadratic_form,
    spread_ratio_parts,
    spread_ratio_scaled,
)
from xlatda.methods.inflation import (
    ADAPTIVE,
    DEFAULT_INFLATION_VAR,
    adaptive_inflation,
    check_inflation,
)
from xlatda.methods.registry import methods

__all__ = [
    "ETKF",
    "DEnKF",
    "EnKF",
    "EnSRF",
    "EnsembleMethod",
    "Prepared",
    "denkf_update",
    "enkf_update",
    "ensrf_update",
    "etkf_transform",
    "etkf_update",
    "inflate",
    "random_rotation",
    "relax_to_prior_perturbations",
    "relax_to_prior_spread",
]


# --------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------


class Prepared(NamedTuple):
    """Ensemble-space quantities of one analysis (see the module docstring).

    A filter's :meth:`EnsembleMethod._analysis` receives them and returns the
    analysis mean and anomalies.
    """

    mean: Tensor  # (*batch, n) forecast mean
    X: Tensor  # (*batch, N, n) inflated anomalies / sqrt(N-1)
    X0: Tensor  # (*batch, N, n) un-inflated anomalies / sqrt(N-1)
    S: Tensor  # (*batch, N, P) inflated, R^-1/2-scaled obs anomalies / sqrt(N-1)
    d: Tensor  # (*batch, P) R^-1/2-scaled innovation of the mean (0 where off)
    scale: float  # sqrt(N-1)
    diagnose: bool = True  # the caller wants the chi-square's quadratic form back


def _check_settings(inflation: Any, rtps: Any, rtpp: Any) -> None:
    check_inflation(inflation)
    for name, value in (("rtps", rtps), ("rtpp", rtpp)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ConfigError(f"{name} must be a number in [0, 1] (0 = off), got {value!r}")


def _check_inputs(
    ensemble: Tensor, hx: Tensor, y: Tensor | Any, r_std: Tensor | Any
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Validate shapes; return ``hx, y, r_std`` as tensors like ``ensemble``, and
    whether every ``r_std`` is finite (every observation on)."""
    if not isinstance(ensemble, Tensor) or not ensemble.is_floating_point():
        raise ConfigError(
            "ensemble must be a floating-point torch tensor of shape (*batch, N, n), "
            f"got {type(ensemble).__name__}"
            + (f" of dtype {ensemble.dtype}" if isinstance(ensemble, Tensor) else "")
        )
    if ensemble.dim() < 2 or ensemble.shape[-2] < 2:
        raise ShapeError(
            "ensemble must have shape (*batch, N, n) with N >= 2 members, "
            f"got {tuple(ensemble.shape)}"
        )
    like = {"dtype": ensemble.dtype, "device": ensemble.device}
    hx = torch.as_tensor(hx, **like)
    if hx.dim() < 2 or hx.shape[:-1] != ensemble.shape[:-1]:
        raise ShapeError(
            f"hx must have shape (*batch, N, P) = {tuple(ensemble.shape[:-1])} + (P,) "
            f"to match the ensemble {tuple(ensemble.shape)}, got {tuple(hx.shape)}"
        )
    n_obs = hx.shape[-1]
    target = (*ensemble.shape[:-2], n_obs)
    out = []
    for name, value in (("y", y), ("r_std", r_std)):
        t = torch.as_tensor(value, **like)
        # broadcastable to (*batch, P) without growing it (plain Python: cheap)
        ok = t.dim() <= len(target) and all(
            s in (1, u) for s, u in zip(reversed(t.shape), reversed(target))
        )
        if not ok or (t.dim() > 0 and t.shape[-1] != n_obs):
            raise ShapeError(
                f"{name} must have shape (*batch, P) = {target} or (P,) = ({n_obs},), "
                f"got {tuple(t.shape)}"
            )
        out.append(t.expand(n_obs) if t.dim() == 0 else t)
    y_t, r_t = out
    if r_t.numel() == 0:
        return hx, y_t, r_t, True
    # one reduction tells both: all positive (the minimum), all on (the maximum)
    low, high = (float(v) for v in torch.aminmax(r_t))
    if not low > 0:
        raise ConfigError(
            "r_std must be positive (use r_std=inf to switch an observation off), "
            f"got minimum {low}"
        )
    return hx, y_t, r_t, high < math.inf


def _require_finite(name: str, t: Tensor, hint: str) -> None:
    # A finite sum proves every value finite (one reduction); else look closer.
    if math.isfinite(float(t.sum())):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise AnalysisError(
            f"cannot compute the analysis: {name} holds {int(bad.sum())} non-finite "
            f"value(s) out of {t.numel()}; {hint}"
        )


def _check_finite_inputs(ensemble: Tensor, hx: Tensor, y: Tensor, active: Tensor,
                         S0: Tensor) -> None:
    """Raise for the first non-finite input of an analysis (nothing if all are finite)."""
    _require_finite(
        "the forecast ensemble", ensemble, "the forecast has diverged or the initial "
        "ensemble is not finite (more inflation, members or localisation help)"
    )
    _require_finite("hx (the observed forecast)", hx, "the forecast has diverged")
    if not bool(torch.isfinite(torch.where(active, y, 0.0)).all()):
        raise ConfigError(
            "y must be finite where r_std is finite (switch an observation off with "
            "r_std=inf)"
        )
    _require_finite(
        "the scaled observation anomalies", S0,
        "observation errors r_std too small for this dtype? use float64",
    )


def _on(active: Tensor | None, r_std: Tensor, hmean: Tensor) -> Tensor:
    """The mask of the observations used, ``(*batch, P)`` (``None``: all of them)."""
    return torch.isfinite(r_std).expand(hmean.shape) if active is None else active


def _check_n_params(n_params: Any, n_state: int) -> int:
    if not (isinstance(n_params, int) and not isinstance(n_params, bool)):
        raise ConfigError(f"n_params must be an int (0 = no parameters), got {n_params!r}")
    if not 0 <= n_params < n_state:
        raise ConfigError(
            f"n_params must lie in [0, {n_state - 1}] for a control vector of {n_state} "
            f"values (the last n_params are parameters), got {n_params}"
        )
    return n_params


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the call when it already has it (the same tensor)."""
    return t if t.dtype == dtype else t.to(dtype)


def _plus_identity(M: Tensor) -> Tensor:
    """``M + I`` for a fresh batch of square matrices (in place on ``M``)."""
    M.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return M


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The given generator, or a fresh one seeded from OS entropy (never the global RNG)."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def _relax_spread(Xf: Tensor, Xa: Tensor, alpha: float | Tensor) -> Tensor:
    sf = Xf.square().sum(-2, keepdim=True).sqrt()
    sa = Xa.square().sum(-2, keepdim=True).sqrt()
    factor = torch.where(sa > 0, 1.0 + alpha * (sf - sa) / torch.where(sa > 0, sa, 1.0), 1.0)
    return Xa * factor


#: Above this largest eigenvalue of ``C = I + S S^T``, eigenvalues near 1 carry
#: absolute rounding errors of ``eps * lambda_max``: the ETKF transform is then
#: recomputed from the SVD of ``S`` (accurate to ``eps * cond(S)``).
_EIGH_CONDITION_LIMIT = 1e6


def _symmetric_eig(M: Tensor) -> tuple[Tensor, Tensor] | None:
    """Eigen-pairs (ascending) of the symmetric part of ``M`` in float64; None if eigh fails."""
    A = _as(M, torch.float64)
    A = 0.5 * (A + A.mT)
    _require_finite("the ensemble-space matrix", A, "the forecast has diverged")
    try:
        return torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:
        return None


def _etkf_transform_svd(S: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` and ``C^-1/2`` from the thin SVD ``S = U diag(sigma) V^T`` (float64 in, out)."""
    try:
        U, sig, Vh = torch.linalg.svd(S, full_matrices=False)
    except torch.linalg.LinAlgError as err:
        raise AnalysisError(
            f"cannot compute the analysis: neither eigh nor svd converged on the "
            f"{tuple(S.shape[-2:])} scaled observation anomalies ({err}); check the forecast "
            "ensemble and observation errors for extreme values"
        ) from None
    s2 = sig.square()
    root = s2.add(1.0).sqrt()
    g = -s2 / (root * (1.0 + root))  # (1 + sigma^2)^-1/2 - 1, stable
    T = _plus_identity((U * g.unsqueeze(-2)) @ U.mT)
    w = (U @ ((sig / root.square()).unsqueeze(-1) * (Vh @ d.unsqueeze(-1)))).squeeze(-1)
    return w, T


def _cholesky(M: Tensor) -> Tensor:
    """Lower Cholesky factor of the symmetric part of an SPD ``M``, or a clear error."""
    A = 0.5 * (M + M.mT)  # (MKL's S @ S.mT is not symmetric bit for bit)
    _require_finite("the ensemble-space matrix", A, "the forecast has diverged")
    L, info = torch.linalg.cholesky_ex(A)
    if (info.item() != 0) if info.dim() == 0 else bool((info != 0).any()):
        raise AnalysisError(
            f"cannot compute the analysis: the {tuple(A.shape[-2:])} matrix I + S S^T is not "
            "numerically positive definite (in float64); check the forecast ensemble and "
            "observation errors for extreme values"
        )
    return L


def etkf_transform(S: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean weights ``w`` (*batch, N) and symmetric transform ``C^-1/2`` (*batch, N, N).

    ``C = I + S S^T``. One batched symmetric eigendecomposition of
    ``S S^T + I`` (N x N) or, when P < N, of ``S^T S`` (P x P): with
    ``S^T S = U diag(s) U^T``, ``C^-1/2 = I + S U diag(f(s)) U^T S^T``,
    ``f(s) = ((1+s)^-1/2 - 1)/s = -1 / (sqrt(1+s) (1 + sqrt(1+s)))``
    (stable at ``s = 0``), and ``w = S U diag(1/(1+s)) U^T d``.

    Robust by construction: the matrix is symmetrised and factorised in
    float64 (results cast back), its eigenvalues floored at their exact
    bounds (``s >= 0``, ``lambda >= 1``), and repeated eigenvalues need no
    special care (the functions applied to them are smooth). When ``eigh``
    fails to converge, or ``C`` is so ill-conditioned (largest eigenvalue
    above 1e6, e.g. tiny observation errors) that its eigenvalues near 1
    lose accuracy, the transform comes from the thin SVD of ``S`` instead:
    ``C^-1/2 = I + U diag((1+sigma^2)^-1/2 - 1) U^T``,
    ``w = U diag(sigma/(1+sigma^2)) V^T d``. Only non-finite input raises
    (:class:`~xlatda.errors.AnalysisError`).

    Parameters
    ----------
    S : Tensor
        Scaled observation anomalies ``(*batch, N, P)``.
    d : Tensor
        Scaled innovations ``(*batch, P)``.

    Returns
    -------
    w : Tensor
        ``(*batch, N)``, analysis mean ``xbar + w^T X``.
    T : Tensor
        ``(*batch, N, N)`` symmetric, analysis anomalies ``T X``.

    Examples
    --------
    >>> import torch
    >>> S = torch.tensor([[1.0], [-1.0]], dtype=torch.float64); d = torch.tensor([1.0])
    >>> w, T = etkf_transform(S, d)
    >>> w
    tensor([ 0.3333, -0.3333], dtype=torch.float64)
    """
    dtype = S.dtype
    S64, d64 = _as(S, torch.float64), _as(d, torch.float64)
    n_members, n_obs = S.shape[-2], S.shape[-1]
    small = n_obs < n_members
    eig = _symmetric_eig(S64.mT @ S64 if small else _plus_identity(S64 @ S64.mT))
    if eig is None or float(eig[0][..., -1].max()) > _EIGH_CONDITION_LIMIT:
        w, T = _etkf_transform_svd(S64, d64)
    elif small:
        s, U = eig
        root = s.clamp_min(0.0).add(1.0).sqrt()  # sqrt(1 + s)
        SU = S64 @ U
        w = (SU @ ((U.mT @ d64.unsqueeze(-1)) / root.square().unsqueeze(-1))).squeeze(-1)
        T = _plus_identity((SU * (-1.0 / (root * (1.0 + root))).unsqueeze(-2)) @ SU.mT)
    else:
        lam, V = eig
        lam = lam.clamp_min(1.0)  # C >= I exactly; guard rounding
        coef = V.mT @ (S64 @ d64.unsqueeze(-1))
        w = (V @ (coef / lam.unsqueeze(-1))).squeeze(-1)
        T = (V * lam.rsqrt().unsqueeze(-2)) @ V.mT
    return _as(w, dtype), _as(T, dtype)


def _mean_update(p: Prepared, w: Tensor) -> Tensor:
    return p.mean + (w.unsqueeze(-2) @ p.X).squeeze(-2)


# --------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------


def inflate(ensemble: Tensor, factor: float) -> Tensor:
    """Multiplicative inflation: scale the anomalies about the mean by ``factor``.

    Parameters
    ----------
    ensemble : Tensor
        ``(*batch, N, n)``.
    factor : float
        Inflation factor (1 returns an equal copy).

    Returns
    -------
    Tensor
        ``(*batch, N, n)``, same mean, anomalies times ``factor``.

    Examples
    --------
    >>> import torch
    >>> e = torch.tensor([[0.0], [2.0]])
    >>> inflate(e, 1.5)
    tensor([[-0.5000],
            [ 2.5000]])
    """
    mean = ensemble.mean(-2, keepdim=True)
    return mean + factor * (ensemble - mean)


def relax_to_prior_perturbations(prior: Tensor, posterior: Tensor, alpha: float) -> Tensor:
    """RTPP (Zhang et al. 2004): blend posterior anomalies with prior anomalies.

    ``X_a <- (1 - alpha) X_a + alpha X_f``; the posterior mean is kept.

    Parameters
    ----------
    prior, posterior : Tensor
        Forecast and analysis ensembles ``(*batch, N, n)``.
    alpha : float
        Relaxation in ``[0, 1]``: 0 keeps the posterior, 1 gives the prior
        anomalies around the posterior mean.

    Returns
    -------
    Tensor
        ``(*batch, N, n)``.

    Examples
    --------
    >>> import torch
    >>> prior = torch.tensor([[-2.0], [2.0]]); post = torch.tensor([[0.0], [1.0]])
    >>> relax_to_prior_perturbations(prior, post, 0.5)
    tensor([[-0.7500],
            [ 1.7500]])
    """
    _check_settings(1.0, 0.0, alpha)
    mf = prior.mean(-2, keepdim=True)
    ma = posterior.mean(-2, keepdim=True)
    return ma + (1.0 - alpha) * (posterior - ma) + alpha * (prior - mf)


def relax_to_prior_spread(prior: Tensor, posterior: Tensor, alpha: float) -> Tensor:
    """RTPS (Whitaker & Hamill 2012): relax each variable's spread to the prior's.

    Analysis anomalies of variable ``i`` are multiplied by
    ``alpha * sigma_f[i] / sigma_a[i] + 1 - alpha``, so that
    ``sigma_new = (1 - alpha) sigma_a + alpha sigma_f``; ``alpha = 1``
    restores the prior spread exactly. Variables with zero analysis spread are
    left unchanged.

    Parameters
    ----------
    prior, posterior : Tensor
        Forecast and analysis ensembles ``(*batch, N, n)``.
    alpha : float
        Relaxation in ``[0, 1]``.

    Returns
    -------
    Tensor
        ``(*batch, N, n)`` with the posterior mean.

    Examples
    --------
    >>> import torch
    >>> prior = torch.tensor([[-2.0], [2.0]]); post = torch.tensor([[0.0], [1.0]])
    >>> relax_to_prior_spread(prior, post, 1.0)
    tensor([[-1.5000],
            [ 2.5000]])
    """
    _check_settings(1.0, alpha, 0.0)
    mf = prior.mean(-2, keepdim=True)
    ma = posterior.mean(-2, keepdim=True)
    return ma + _relax_spread(prior - mf, posterior - ma, alpha)


def random_rotation(
    n_members: int,
    batch_shape: tuple[int, ...] | torch.Size = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Random mean-preserving orthogonal matrices (one per batch element).

    Draw :math:`O` Haar-distributed on :math:`O(N)` (QR of a Gaussian matrix,
    signs of :math:`\mathrm{diag}(R)` fixed), then reflect it so that it fixes
    :math:`u = \mathbf 1/\sqrt N`: with :math:`a = O u` and :math:`H_a` the
    Householder reflection exchanging :math:`a` and :math:`u`,
    :math:`Q = H_a O`. :math:`Q` is Haar-distributed on the orthogonal
    matrices that fix :math:`\mathbf 1` (left and right multiplication by any
    such matrix leaves its law unchanged, because :math:`O` is Haar and
    :math:`R H_a R^\top = H_{Ra}` for those :math:`R`). So
    :math:`Q^\top Q = I` and :math:`Q \mathbf 1 = Q^\top \mathbf 1 = \mathbf 1`:
    applied to anomalies (``Q @ X``) it keeps their zero mean and their
    covariance.

    Parameters
    ----------
    n_members : int
        N.
    batch_shape : tuple of int
        Leading shape.
    generator : torch.Generator, optional
        Source of randomness (on ``device``); a fresh OS-seeded one if None.
    dtype, device
        Of the result.

    Returns
    -------
    Tensor
        ``(*batch_shape, N, N)``.

    Examples
    --------
    >>> import torch
    >>> Q = random_rotation(5, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(Q @ Q.T, torch.eye(5, dtype=Q.dtype)))
    True
    >>> bool(torch.allclose(Q.sum(0), torch.ones(5, dtype=Q.dtype)))
    True
    """
    n = int(n_members)
    dev = torch.device("cpu") if device is None else torch.device(device)
    gen = _generator(generator, dev)
    G = torch.randn(*batch_shape, n, n, generator=gen, dtype=dtype, device=dev)
    O, R = torch.linalg.qr(G)
    O = O * R.diagonal(dim1=-2, dim2=-1).sign().unsqueeze(-2)  # Haar on O(N)
    v = O.sum(-1, keepdim=True) / math.sqrt(n) - 1.0 / math.sqrt(n)  # a - u, (*b, N, 1)
    vv = (v * v).sum(-2, keepdim=True)
    # H_a O = O - 2 v (v^T O) / (v^T v); a == u (probability 0) leaves O as is
    coef = torch.where(vv > 0, 2.0 / torch.where(vv > 0, vv, 1.0), 0.0)
    return O - (coef * v) @ (v.mT @ O)



# --------------------------------------------------------------------------
# the filters' analysis steps (mean and anomalies from the prepared quantities)
# --------------------------------------------------------------------------


def _woodbury_quad(S: Tensor, d: Tensor, w: Tensor) -> Tensor:
    """``d^T (I + S^T S)^-1 d = d.d - (S d).w`` given ``w = (I + S S^T)^-1 S d`` (Woodbury).

    The innovation chi-square's quadratic form from the filter's own mean
    weights: no second factorisation.
    """
    Sd = (S @ d.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.vecdot(d, d) - torch.linalg.vecdot(Sd, w)


def _etkf_analysis(p: Prepared) -> tuple[Tensor, Tensor, Tensor | None]:
    w, T = etkf_transform(p.S, p.d)
    return _mean_update(p, w), T @ p.X, _woodbury_quad(p.S, p.d, w) if p.diagnose else None


def _denkf_analysis(p: Prepared) -> tuple[Tensor, Tensor, Tensor]:
    S, d = _as(p.S, torch.float64), _as(p.d, torch.float64)  # ensemble-space algebra in float64
    L = _cholesky(_plus_identity(S @ S.mT))
    Cinv = torch.cholesky_inverse(L)
    Sd = S @ d.unsqueeze(-1)
    w = (Cinv @ Sd).squeeze(-1)
    quad = (torch.linalg.vecdot(d, d) - torch.linalg.vecdot(Sd.squeeze(-1), w)
            if p.diagnose else None)
    T = 0.5 * _plus_identity(Cinv)
    return _mean_update(p, _as(w, p.X.dtype)), _as(T, p.X.dtype) @ p.X, quad


def _ensrf_analysis(p: Prepared) -> tuple[Tensor, Tensor, Tensor]:
    S, d = _as(p.S, torch.float64), _as(p.d, torch.float64)
    L = _cholesky(_plus_identity(S.mT @ S))  # (*b, P, P)
    v = torch.cholesky_solve(d.unsqueeze(-1), L)  # (I + S^T S)^-1 d
    w = (S @ v).squeeze(-1)
    quad = torch.linalg.vecdot(d, v.squeeze(-1)) if p.diagnose else None
    Z = torch.linalg.solve_triangular(L, S.mT, upper=False)  # L^-1 S^T
    W = torch.linalg.solve_triangular(_plus_identity(L.clone()).mT, Z, upper=True)
    T = _plus_identity(-(S @ W))
    return _mean_update(p, _as(w, p.X.dtype)), _as(T, p.X.dtype) @ p.X, quad


def _enkf_analysis(
    p: Prepared, centre: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    S, X = p.S, p.X
    n_members, n_obs = S.shape[-2], S.shape[-1]
    gen = _generator(generator, S.device)
    eps = torch.randn(S.shape, generator=gen, dtype=S.dtype, device=S.device)
    if centre:
        eps = eps - eps.mean(-2, keepdim=True)
    D = _as(eps - p.scale * S + p.d.unsqueeze(-2), torch.float64)  # scaled member innovations
    S64, d64 = _as(S, torch.float64), _as(p.d, torch.float64)
    if n_members <= n_obs:
        L = _cholesky(_plus_identity(S64 @ S64.mT))
        coef = torch.cholesky_solve(S64 @ D.mT, L).mT  # D S^T C^-1, (*b, N, N)
        delta = _as(coef, X.dtype) @ X
        quad = None
        if p.diagnose:  # chi2's d^T (I + S^T S)^-1 d = d.d - |L^-1 S d|^2, same factor
            u = torch.linalg.solve_triangular(L, S64 @ d64.unsqueeze(-1), upper=False)
            quad = torch.linalg.vecdot(d64, d64) - u.square().sum((-2, -1))
    else:  # never form an N x N matrix when N is large
        L = _cholesky(_plus_identity(S64.mT @ S64))
        coef = torch.cholesky_solve(D.mT, L).mT  # D F^-1, (*b, N, P)
        delta = _as(coef, X.dtype) @ (S.mT @ X)
        quad = None
        if p.diagnose:
            u = torch.linalg.solve_triangular(L, d64.unsqueeze(-1), upper=False)
            quad = u.square().sum((-2, -1))
    dbar = delta.mean(-2)
    return p.mean + dbar, X + (delta - dbar.unsqueeze(-2)) / p.scale, quad


# --------------------------------------------------------------------------
# diagnostics as host numbers (the cycling path)
# --------------------------------------------------------------------------

#: ``diagnose`` value of :meth:`EnsembleMethod._run` asking for host-number diagnostics.
HOST = "host"


def _on_host(t: Tensor) -> bool:
    """Whether ``t`` is a CPU float64 tensor: its 0-d results read back as Python
    floats exactly and without a device synchronisation."""
    return t.dtype == torch.float64 and t.device.type == "cpu"


def _host_diagnostics(S: Tensor, d: Tensor, r_std: Tensor, active: Tensor | None,
                      colvar: Tensor | None, quad: Tensor | None, n_obs_all: int,
                      inflation: float, n_rejected: int) -> dict[str, float | int]:
    """:meth:`EnsembleMethod.step`'s diagnostics of one CPU float64 analysis as
    Python numbers.

    The reductions are the tensor path's (the chi-square's quadratic form,
    the two sums of the spread ratio) and so is the spread ratio's square
    root (torch's float64 ``sqrt`` is not always the correctly rounded one),
    read back as floats; the divisions and the masks of undefined values
    are done in Python floats, which divide as torch's float64 scalars do
    (IEEE-754, correctly rounded). So the numbers are the same bit for bit
    (``benchmarks/cycle_fingerprint.py``), for a dozen fewer tensor
    operations and allocations per analysis.
    """
    if active is None:  # every observation used
        n_obs = n_obs_all
        r2 = r_std.square()
    else:
        n_obs = int(active.sum())
        r2 = torch.where(active, r_std.square(), 0.0)
    q = float(innovation_quadratic_form(S, d) if quad is None else quad)
    expected, actual = spread_ratio_parts(S, d, r2, colvar)
    # no active observation, or no innovation: actual is 0 and the ratio undefined
    ratio = float((expected / actual).sqrt()) if float(actual) > 0 else math.nan
    return {
        "chi2": q / float(n_obs) if n_obs > 0 else math.nan,
        "spread_ratio": ratio,
        "inflation": inflation,
        "n_obs": n_obs,
        "n_rejected": n_rejected,
    }


# --------------------------------------------------------------------------
# the filters as registered method objects
# --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EnsembleMethod:
    """Settings shared by the ensemble filters (a frozen, keyword-only dataclass).

    Parameters
    ----------
    inflation : float or "adaptive"
        Multiplicative inflation of the forecast anomalies before the update
        (1 = none), or ``"adaptive"``: the spatially (latent-) uniform
        estimate of :mod:`xlatda.methods.inflation` (Miyoshi 2011), carried
        between analyses in the ``state`` of :meth:`step`. Cycling drivers
        should default to
        :data:`~xlatda.methods.inflation.DEFAULT_CYCLE_INFLATION`.
    rtps : float
        Relaxation to prior spread after the update, in ``[0, 1]`` (0 = off),
        toward the *un-inflated* forecast spread (Whitaker & Hamill 2012).
    rtpp : float
        Relaxation to (inflated) prior perturbations after the update, in
        ``[0, 1]``.
    inflation_var : float
        Prior variance of the adaptive (variance) inflation estimate; sets
        its temporal smoothing. Only used with ``inflation="adaptive"``.
    max_inflation : float
        Upper bound of the adaptive anomaly factor.
    param_inflation : float, optional
        Inflation of the parameter entries (the last ``n_params`` of the
        control vector, see :meth:`step`); ``None``: the state's (the adaptive
        estimate is made from the observations, i.e. for the state).
    param_rtps : float, optional
        RTPS of the parameter entries; ``None``: the state's ``rtps``.
    gross_error : float or None
        Background check: observations with
        ``|y - H xbar| > gross_error * sqrt(diag(HPH^T) + r^2)`` (``P`` with
        the prior inflation) are removed before the update and counted in
        the diagnostics (``n_rejected``); ``None`` switches the check off.

    Raises
    ------
    ConfigError
        For a setting outside its range.
    """

    name: ClassVar[str] = ""
    inflation: float | str = 1.0
    rtps: float = 0.0
    rtpp: float = 0.0
    inflation_var: float = DEFAULT_INFLATION_VAR
    max_inflation: float = 3.0
    param_inflation: float | None = None
    param_rtps: float | None = None
    gross_error: float | None = DEFAULT_GROSS_ERROR

    def __post_init__(self) -> None:
        _check_settings(self.inflation, self.rtps, self.rtpp)
        if not (isinstance(self.inflation_var, (int, float)) and self.inflation_var > 0):
            raise ConfigError(
                f"inflation_var must be a positive number, got {self.inflation_var!r}"
            )
        if not (isinstance(self.max_inflation, (int, float)) and self.max_inflation >= 1):
            raise ConfigError(f"max_inflation must be a number >= 1, got {self.max_inflation!r}")
        if self.param_inflation is not None:
            if self.param_inflation == ADAPTIVE:
                raise ConfigError(
                    "param_inflation must be a positive number (adaptive inflation is estimated "
                    "from the observations, i.e. for the state), got 'adaptive'"
                )
            check_inflation(self.param_inflation, "param_inflation")
        pr = self.param_rtps
        if pr is not None and not (isinstance(pr, (int, float)) and 0.0 <= pr <= 1.0):
            raise ConfigError(f"param_rtps must be a number in [0, 1] or None, got {pr!r}")
        g = self.gross_error
        if g is not None and not (isinstance(g, (int, float)) and g > 0):
            raise ConfigError(
                f"gross_error must be a positive number of standard deviations or None, got {g!r}"
            )

    @property
    def adaptive(self) -> bool:
        """Whether the inflation is estimated adaptively."""
        return self.inflation == ADAPTIVE

    def analyse(
        self,
        ensemble: Tensor,
        hx: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        *,
        generator: torch.Generator | None = None,
        locations: Any = None,
        n_params: int = 0,
    ) -> Tensor:
        """Analysis ensemble ``(*batch, N, n)`` from the forecast ensemble.

        :meth:`step` without method state and diagnostics (an adaptive
        inflation starts from its prior, 1, at every call).

        Parameters
        ----------
        ensemble : Tensor
            Forecast ensemble ``(*batch, N, n)`` (state or latent vectors).
        hx : Tensor
            Observation operator applied to every member ``(*batch, N, P)``
            (for latent filters, ``H(D(z_j))``).
        y : Tensor
            Observations ``(*batch, P)`` or ``(P,)``.
        r_std : Tensor or float
            Observation-error standard deviations ``(*batch, P)``, ``(P,)``
            or scalar.
        generator : torch.Generator, optional
            Randomness (perturbed observations, rotations).
        locations : Localization, optional
            Only used by localised filters (:class:`~xlatda.methods.letkf.LETKF`).
        n_params : int
            Number of parameters at the end of the control vector (see :meth:`step`).

        Returns
        -------
        Tensor
            Analysis ensemble ``(*batch, N, n)``, same dtype and device.
        """
        out, _, _ = self._run(
            ensemble, hx, y, r_std, generator, locations, None, n_params, diagnose=False
        )
        return out

    def step(
        self,
        ensemble: Tensor,
        hx: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        *,
        generator: torch.Generator | None = None,
        locations: Any = None,
        state: Mapping[str, Tensor] | None = None,
        n_params: int = 0,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """One analysis with diagnostics and method state (for cycling drivers).

        Parameters
        ----------
        ensemble, hx, y, r_std, generator, locations
            As in :meth:`analyse`.
        state : mapping of str to Tensor, optional
            The ``state`` returned by the previous analysis of this cycle
            (``None`` at the first). With ``inflation="adaptive"`` it holds
            ``inflation_mean`` and ``inflation_var``, the estimate of the
            *variance* inflation factor (``(*batch,)`` tensors); otherwise it
            is empty. Store it to resume a cycle exactly.
        n_params : int
            The last ``n_params`` entries of the control vector
            ``[state; theta]`` are parameters: they get ``param_inflation``
            and ``param_rtps`` (localised filters update them with all
            observations).

        Returns
        -------
        analysis : Tensor
            ``(*batch, N, n)``.
        diagnostics : dict of str to Tensor
            ``(*batch,)`` tensors: ``chi2`` (normalised innovation
            chi-square with the inflated forecast, see
            :mod:`xlatda.methods.consistency`), ``spread_ratio``,
            ``inflation`` (anomaly factor used), ``n_obs`` (observations
            used), ``n_rejected`` (removed by the gross-error check).
        state : dict of str to Tensor
            To pass to the next analysis.

        Examples
        --------
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> ens = torch.randn(10, 4, generator=g, dtype=torch.float64)
        >>> y, r = torch.full((4,), 3.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        >>> ana, diag, state = ETKF(inflation="adaptive").step(ens, ens, y, r)
        >>> sorted(diag)
        ['chi2', 'inflation', 'n_obs', 'n_rejected', 'spread_ratio']
        >>> bool(state["inflation_mean"] > 1.0)   # innovations larger than the spread
        True
        """
        return self._run(ensemble, hx, y, r_std, generator, locations, state, n_params, True)

    def _cycle_step(self, ensemble, hx, y, r_std, *, generator=None, locations=None,
                    state=None, n_params=0):
        """:meth:`step` with the diagnostics of one CPU float64 analysis as Python
        numbers (:func:`_host_diagnostics`: the same values, no 0-d tensors); the
        cycling adapter's entry point (:mod:`xlatda.methods.adapters`). Batched,
        float32 or accelerator analyses get :meth:`step`'s tensors."""
        return self._run(ensemble, hx, y, r_std, generator, locations, state, n_params, HOST)

    def _run(self, ensemble, hx, y, r_std, generator, locations, state, n_params, diagnose):
        hx, y, r_std, all_on = _check_inputs(ensemble, hx, y, r_std)
        n_state = ensemble.shape[-1]
        n_params = _check_n_params(n_params, n_state)
        n_members = ensemble.shape[-2]
        scale = math.sqrt(n_members - 1)
        mean = ensemble.mean(-2)
        X0 = (ensemble - mean.unsqueeze(-2)) / scale
        hmean = hx.mean(-2)
        inv_r = torch.reciprocal(r_std)
        n_obs_all = hmean.shape[-1]
        # ``active`` (the observations used) stays None while all of them are: the
        # masks, counts and selections it feeds are then skipped (same numbers).
        active = None if all_on and n_obs_all else torch.isfinite(r_std).expand(hmean.shape)
        S0 = (hx - hmean.unsqueeze(-2)) * (inv_r / scale).unsqueeze(-2)
        d = (y - hmean) * inv_r
        if active is not None:
            d = torch.where(active, d, 0.0)
        # One host sync proves the inputs finite: a finite member mean means finite
        # members, a finite d finite y where observed. Only otherwise (or when a sum
        # overflows) are the checks made one by one, to name what is wrong.
        if not math.isfinite(float(mean.sum() + hmean.sum() + S0.sum() + d.sum())):
            _check_finite_inputs(ensemble, hx, y, _on(active, r_std, hmean), S0)
        # prior inflation (variance factor), batched
        batch = hmean.shape[:-1]
        like = {"dtype": ensemble.dtype, "device": ensemble.device}
        # A fixed inflation whose square's root is itself (in float64): the check's
        # S0 sqrt(rho_b) is then the update's S0 lambda, and both are S0 times one
        # number. The update's S and its column sums serve the check and the
        # spread ratio (bit for bit what each computed apart).
        fixed = (not self.adaptive and not n_params and ensemble.dtype == torch.float64
                 and math.sqrt(float(self.inflation) ** 2) == float(self.inflation))
        if self.adaptive:
            if state is not None and "inflation_mean" in state:
                rho_b = torch.as_tensor(state["inflation_mean"], **like).expand(batch)
            else:
                rho_b = torch.ones(batch, **like)
        elif not fixed:
            rho_b = torch.full(batch, float(self.inflation) ** 2, **like)
        n_rejected = None
        S = colvar = None
        if self.gross_error is not None:
            if fixed:
                S = S0 * float(self.inflation)
                colvar = S.square().sum(-2) + 1.0  # diag(S^T S) + 1, (*batch, P)
                rejected = d.abs() > float(self.gross_error) * colvar.sqrt()
            else:
                rejected = gross_error_mask(
                    S0 * rho_b.sqrt()[..., None, None], d, float(self.gross_error)
                )
            if active is not None:
                rejected = active & rejected
            any_rejected = bool(rejected.any())
            if any_rejected:
                active = _on(active, r_std, hmean) & ~rejected
                S0 = S0 * (~rejected).unsqueeze(-2)
                d = torch.where(rejected, 0.0, d)
                S = colvar = None
            # (the host diagnostics count only what was rejected: none, mostly)
            if diagnose and (diagnose != HOST or any_rejected):
                n_rejected = rejected.sum(-1)
        new_state: dict[str, Tensor] = {}
        if self.adaptive:
            rho, var = adaptive_inflation(
                S0, d, _on(active, r_std, hmean).sum(-1), rho_b, float(self.inflation_var),
                max_inflation=float(self.max_inflation),
            )
            new_state = {"inflation_mean": rho, "inflation_var": var}
            lam = rho.sqrt()
        elif fixed:
            lam = None  # the number itself; the tensor only for the diagnostics
        else:
            lam = torch.full(batch, float(self.inflation), **like)
        alpha = self.rtps
        if fixed:
            if S is None:
                S = S0 * float(self.inflation)
            X = X0 * float(self.inflation)
        else:
            S = S0 * lam[..., None, None]
            factor = lam[..., None, None].expand(*batch, 1, n_state)
            if n_params:
                factor = factor.clone()
                if self.param_inflation is not None:
                    factor[..., n_state - n_params:] = float(self.param_inflation)
                if self.param_rtps is not None:
                    alpha = torch.full((n_state,), float(self.rtps), **like)
                    alpha[n_state - n_params:] = float(self.param_rtps)
            X = X0 * factor
        p = Prepared(mean, X, X0, S, d, scale, diagnose)
        # An analysis may return a third value: the chi-square's quadratic form
        # d^T (I + S^T S)^-1 d from its own factorisation (None: computed apart).
        mean_a, Xa, *quad = self._analysis(p, generator, locations, n_params)
        if self.rtpp:
            Xa = (1.0 - self.rtpp) * Xa + self.rtpp * X
        if isinstance(alpha, Tensor) or alpha:
            Xa = _relax_spread(X0, Xa, alpha)
        if getattr(self, "rotate", False):
            Q = random_rotation(
                Xa.shape[-2], Xa.shape[:-2], generator=generator, dtype=Xa.dtype,
                device=Xa.device,
            )
            Xa = Q @ Xa
        analysis = mean_a.unsqueeze(-2) + scale * Xa
        if not diagnose:
            return analysis, {}, new_state
        if diagnose == HOST and not batch and _on_host(ensemble):
            q = quad[0] if quad else None
            return analysis, _host_diagnostics(
                S, d, r_std, active, colvar, q, n_obs_all,
                float(self.inflation) if lam is None else float(lam),
                0 if n_rejected is None else int(n_rejected)), new_state
        if lam is None:
            lam = torch.full(batch, float(self.inflation), **like)
        if n_rejected is None:
            n_rejected = torch.zeros(batch, dtype=torch.int64, device=ensemble.device)
        if active is None:  # every observation used: p = P, and no masks
            n_obs = torch.full(batch, n_obs_all, dtype=torch.int64, device=ensemble.device)
            # the analysis' own quadratic form, or the separate Woodbury one (LETKF)
            q = quad[0] if quad and quad[0] is not None else innovation_quadratic_form(S, d)
            chi2 = q / float(n_obs_all)
            r2 = r_std.square().expand(d.shape)
        else:
            n_obs = active.sum(-1)
            if quad and quad[0] is not None:
                p_obs = n_obs.to(quad[0].dtype)
                chi2 = torch.where(n_obs > 0, quad[0] / p_obs.clamp_min(1.0), torch.nan)
            else:
                chi2 = innovation_chi2(S, d, active)
            r2 = torch.where(active, r_std.square(), 0.0).expand(d.shape)
        diagnostics = {
            "chi2": _as(chi2, ensemble.dtype),
            "spread_ratio": spread_ratio_scaled(S, d, r2, colvar),
            "inflation": lam,
            "n_obs": n_obs,
            "n_rejected": n_rejected,
        }
        return analysis, diagnostics, new_state

    def _analysis(
        self, p: Prepared, generator: torch.Generator | None, locations: Any, n_params: int
    ) -> tuple[Tensor, ...]:  # pragma: no cover
        """Analysis mean ``(*batch, n)`` and anomalies ``(*batch, N, n)`` (over sqrt(N-1)).

        May return a third value: ``d^T (I + S^T S)^-1 d`` ``(*batch,)`` from the
        analysis' own factorisation when ``p.diagnose`` (else None); without
        it :meth:`step` computes the innovation chi-square separately."""
        raise NotImplementedError


@methods.register("etkf")
@dataclass(frozen=True, kw_only=True)
class ETKF(EnsembleMethod):
    """Ensemble transform Kalman filter, symmetric square root (:func:`etkf_update`).

    Parameters
    ----------
    inflation, rtps, rtpp, inflation_var, max_inflation, param_inflation, param_rtps, gross_error
        See :class:`EnsembleMethod`.
    rotate : bool
        Random mean-preserving rotation of the analysis anomalies (Sakov &
        Oke 2008b); needs ``generator`` for reproducibility.

    Examples
    --------
    >>> ETKF(inflation=1.013, rotate=True).rotate
    True
    """

    name: ClassVar[str] = "etkf"
    rotate: bool = False

    def _analysis(self, p, generator, locations, n_params):
        return _etkf_analysis(p)


@methods.register("denkf")
@dataclass(frozen=True, kw_only=True)
class DEnKF(EnsembleMethod):
    """Deterministic EnKF of Sakov & Oke (2008a) (:func:`denkf_update`).

    Examples
    --------
    >>> DEnKF(inflation=1.01).inflation
    1.01
    """

    name: ClassVar[str] = "denkf"

    def _analysis(self, p, generator, locations, n_params):
        return _denkf_analysis(p)


@methods.register("ensrf")
@dataclass(frozen=True, kw_only=True)
class EnSRF(EnsembleMethod):
    """Serial square-root filter of Whitaker & Hamill (2002), batched (:func:`ensrf_update`).

    Examples
    --------
    >>> EnSRF(rtps=0.5).rtps
    0.5
    """

    name: ClassVar[str] = "ensrf"

    def _analysis(self, p, generator, locations, n_params):
        return _ensrf_analysis(p)


@methods.register("enkf")
@dataclass(frozen=True, kw_only=True)
class EnKF(EnsembleMethod):
    r"""Stochastic EnKF with perturbed observations (:func:`enkf_update`).

    Parameters
    ----------
    inflation, rtps, rtpp, inflation_var, max_inflation, param_inflation, param_rtps, gross_error
        See :class:`EnsembleMethod`.
    centre_perturbations : bool
        Centre the observation perturbations over the members (default, as
        DAPPER's ``EnKF('PertObs')``): the analysis mean is then the Kalman
        mean exactly for linear H, and the analysis anomalies are the same
        as without centring. ``False`` gives the uncentred Burgers et al.
        (1998) draws, whose member mean adds the random error
        :math:`K R^{1/2} \bar\varepsilon` to the analysis mean (on
        Lorenz-96, N = 40, 20 seeds: RMSE 0.0026 +- 0.0006 higher).

    Examples
    --------
    >>> EnKF(inflation=1.06).centre_perturbations
    True
    """

    name: ClassVar[str] = "enkf"
    centre_perturbations: bool = True

    def _analysis(self, p, generator, locations, n_params):
        return _enkf_analysis(p, self.centre_perturbations, generator)


# --------------------------------------------------------------------------
# the filters as functions
# --------------------------------------------------------------------------


def etkf_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    *,
    inflation: float = 1.0,
    rtps: float = 0.0,
    rtpp: float = 0.0,
    rotate: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ETKF analysis with the symmetric square root (see module docstring).

    Parameters
    ----------
    ensemble : Tensor
        Forecast ensemble ``(*batch, N, n)``.
    hx : Tensor
        Observation operator applied to every member, ``(*batch, N, P)``.
    y : Tensor
        Observations ``(*batch, P)`` or ``(P,)``.
    r_std : Tensor or float
        Observation-error standard deviations, ``(*batch, P)``, ``(P,)`` or a
        scalar (diagonal R); ``inf`` switches an observation off.
    inflation : float
        Multiplicative inflation of the forecast anomalies (1 = none).
    rtps, rtpp : float
        Relaxation to prior spread / perturbations, in ``[0, 1]``.
    rotate : bool
        Apply a random mean-preserving rotation to the analysis anomalies.
    generator : torch.Generator, optional
        For the rotation (same device as ``ensemble``).

    Returns
    -------
    Tensor
        Analysis ensemble ``(*batch, N, n)``.

    Raises
    ------
    ShapeError
        If the shapes do not fit together.
    ConfigError
        For a non-float ensemble, non-positive ``r_std`` or bad settings.
    AnalysisError
        For a non-finite forecast (a diverged filter).

    Notes
    -----
    Equal to ``ETKF(...).analyse(...)`` (with its default gross-error check).
    Cost ``O(N^2 (n + P) + min(N, P)^3)`` per batch element: one batched
    ``eigh`` of an ``N x N`` matrix, or of a ``P x P`` one when ``P < N``;
    memory ``O(N (n + P) + N^2)``.

    Examples
    --------
    >>> import torch
    >>> ens = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    >>> ana = etkf_update(ens, ens, torch.tensor([0.0]), torch.tensor([1.0]))
    >>> ana.mean(0), ana.var(0)  # Kalman: mean 1/3, variance 2/3
    (tensor([0.3333], dtype=torch.float64), tensor([0.6667], dtype=torch.float64))
    """
    method = ETKF(inflation=inflation, rtps=rtps, rtpp=rtpp, rotate=rotate)
    return method.analyse(ensemble, hx, y, r_std, generator=generator)


def denkf_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    *,
    inflation: float = 1.0,
    rtps: float = 0.0,
    rtpp: float = 0.0,
) -> Tensor:
    """DEnKF analysis (Sakov & Oke 2008a): anomalies updated with half the gain.

    Parameters and shapes as in :func:`etkf_update` (no rotation).

    Returns
    -------
    Tensor
        Analysis ensemble ``(*batch, N, n)``.

    Notes
    -----
    One batched Cholesky factorisation of ``C = I + S S^T`` (``N x N``).

    Examples
    --------
    >>> import torch
    >>> ens = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    >>> ana = denkf_update(ens, ens, torch.tensor([0.0]), torch.tensor([1.0]))
    >>> ana.mean(0), ana.var(0)  # mean 1/3, variance 2/3 + 2/9
    (tensor([0.3333], dtype=torch.float64), tensor([0.8889], dtype=torch.float64))
    """
    return DEnKF(inflation=inflation, rtps=rtps, rtpp=rtpp).analyse(ensemble, hx, y, r_std)


def ensrf_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    *,
    inflation: float = 1.0,
    rtps: float = 0.0,
    rtpp: float = 0.0,
) -> Tensor:
    """EnSRF analysis: Whitaker & Hamill's serial square-root filter, batched.

    The observations are assimilated "serially" in their given order, but
    without a loop: through the lower Cholesky factor of ``I + S^T S`` (see
    module docstring). Parameters and shapes as in :func:`etkf_update`.

    Returns
    -------
    Tensor
        Analysis ensemble ``(*batch, N, n)``.

    Notes
    -----
    One batched Cholesky factorisation of a ``P x P`` matrix and two
    triangular solves: ``O(P^3 + N P^2)`` per batch element.

    Examples
    --------
    >>> import torch
    >>> ens = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    >>> ana = ensrf_update(ens, ens, torch.tensor([0.0]), torch.tensor([1.0]))
    >>> ana.mean(0), ana.var(0)  # Kalman: mean 1/3, variance 2/3
    (tensor([0.3333], dtype=torch.float64), tensor([0.6667], dtype=torch.float64))
    """
    return EnSRF(inflation=inflation, rtps=rtps, rtpp=rtpp).analyse(ensemble, hx, y, r_std)


def enkf_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    *,
    inflation: float = 1.0,
    rtps: float = 0.0,
    rtpp: float = 0.0,
    centre_perturbations: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stochastic EnKF analysis with perturbed observations.

    Parameters
    ----------
    ensemble, hx, y, r_std, inflation, rtps, rtpp
        As in :func:`etkf_update`.
    centre_perturbations : bool
        Subtract the member mean of the observation perturbations (default;
        the analysis mean is then the Kalman mean exactly for linear H, the
        anomalies are unchanged); see :class:`EnKF`.
    generator : torch.Generator, optional
        Draws the perturbations (same device as ``ensemble``); a fresh
        OS-seeded generator if None (not reproducible).

    Returns
    -------
    Tensor
        Analysis ensemble ``(*batch, N, n)``.

    Notes
    -----
    The gain is solved by Cholesky in ensemble space (``N x N``) when
    ``N <= P``, else in observation space (``P x P``); both give the same
    result; an ``N x N`` matrix is only formed in the first case. Memory
    ``O(N (n + P))``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(1)
    >>> ens = torch.randn(500, 2, generator=g, dtype=torch.float64)
    >>> ana = enkf_update(ens, ens[:, :1], torch.tensor([1.0]), torch.tensor([1.0]), generator=g)
    >>> round(float(ana[:, 0].var()), 1)   # Kalman: 1 * 1 / (1 + 1)
    0.5
    """
    method = EnKF(
        inflation=inflation, rtps=rtps, rtpp=rtpp, centre_perturbations=centre_perturbations
    )
    return method.analyse(ensemble, hx, y, r_std, generator=generator)
