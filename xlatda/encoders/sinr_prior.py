r"""EOFs shrunk towards a smoothness prior, and the prior's weight chosen by cross-validation.

The grid fit of SINR's linear path (``linear_fit="grid"``, see
:class:`xlatda.encoders.sinr.SINR`) takes the leading eigenvectors of the
weighted training covariance shrunk towards a prior covariance,

.. math::

    S_\gamma = S + \gamma\, \frac{\operatorname{tr} S}{\operatorname{tr} K_w} K_w ,

where :math:`K_w` is the prior's (Sobolev, on the stretched sphere)
covariance at the grid points in the weighted metric. :func:`shrunk_eofs`
computes them; :func:`choose_prior` picks :math:`\gamma` from a grid by
blocked cross-validation on the training fields alone: the fields are split
into ``folds`` contiguous blocks (in the order given, which for time series
keeps neighbouring, correlated times together), the EOFs are fitted on all
blocks but one, and the held-out block is scored by its weighted
reconstruction error in those EOFs (its weighted projection: the EOFs are
orthonormal in the weighted inner product, and SINR's grid encoder returns
that projection). For the scores the plain PCA comes from the fields' small
Gram matrix and the shrunk EOFs from an orthogonal (subspace) iteration
warm-started along the grid (the dense eigendecomposition where it does not
converge in 500 steps), instead of one dense eigendecomposition of the
``P x P`` matrix per candidate and fold (ERA5 UK box, ``P`` = 1617, one busy
core: 4.6 s against 56 s for the 24 of them, scores equal to 6 digits);
the chosen weight's EOFs are then computed exactly by :func:`shrunk_eofs`.
The :math:`\gamma` of the lowest summed error wins (the smallest one on a
tie). No validation data are needed, so ``fit`` can choose
the prior a user would otherwise search by hand.

Pure torch; no xarray.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = ["PRIOR_FOLDS", "PRIOR_GRID", "choose_prior", "shrunk_eofs"]

#: Candidate weights :math:`\gamma` of ``linear_prior="auto"`` (0: the plain PCA).
PRIOR_GRID: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
#: Contiguous blocks of the cross-validation of ``linear_prior="auto"``.
PRIOR_FOLDS = 4


def shrunk_eofs(x: Tensor, wh: Tensor, kw: Tensor | None, gamma: float,
                k: int) -> tuple[Tensor, Tensor]:
    r"""Mean and the ``k`` leading shrunk EOFs of fields ``x (N, P)`` (float64).

    Parameters
    ----------
    x : Tensor
        ``(N, P)`` training values at the points used.
    wh : Tensor
        ``(P,)`` positive weights summing to 1.
    kw : Tensor or None
        ``(P, P)`` prior covariance in the weighted metric,
        :math:`\mathrm{diag}(\hat w)^{1/2} K \mathrm{diag}(\hat w)^{1/2}`;
        only read when ``gamma > 0``.
    gamma : float
        Weight of the prior (0: the weighted PCA).
    k : int
        Number of EOFs.

    Returns
    -------
    mean : Tensor
        ``(P,)``.
    eofs : Tensor
        ``(P, k')``, ``k' = min(k, P)``, unit weighted mean square and
        orthonormal in the weighted inner product; components of (numerically)
        zero variance are zero.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(30, 5, dtype=torch.float64)
    >>> wh = torch.full((5,), 0.2, dtype=torch.float64)
    >>> mean, eofs = shrunk_eofs(x, wh, None, 0.0, 2)
    >>> torch.allclose(eofs.t() @ (wh[:, None] * eofs), torch.eye(2, dtype=torch.float64))
    True
    """
    mean = x.mean(0)
    a = (x - mean) * wh.sqrt()
    cov = a.t() @ a
    if gamma > 0.0:
        scale = float(cov.diagonal().sum()) / float(kw.diagonal().sum())
        cov = cov + gamma * scale * kw
    val, vec = torch.linalg.eigh(cov)
    val, vec = val.flip(-1)[:k], vec.flip(-1)[:, :k]
    tol = float(val.max().clamp_min(0.0)) * max(cov.shape) * torch.finfo(cov.dtype).eps
    vec = vec * (val > tol)
    return mean, vec / wh.sqrt()[:, None]


def _dual_eofs(a: Tensor, k: int) -> Tensor:
    """Leading ``k`` eigenvectors of ``a.T @ a`` from the small Gram ``a @ a.T`` (``(P, k)``).

    Directions beyond the rank of ``a`` are zero (as in :func:`shrunk_eofs`).
    """
    val, u = torch.linalg.eigh(a @ a.t())
    val, u = val.flip(-1)[:k], u.flip(-1)[:, :k]
    tol = float(val.max().clamp_min(0.0)) * max(a.shape) * torch.finfo(a.dtype).eps
    keep = val > tol
    vec = (a.t() @ u[:, keep]) / val[keep].sqrt()
    out = a.new_zeros(a.shape[1], k)
    out[:, : vec.shape[1]] = vec
    return out


def _subspace_eofs(cov: Tensor, start: Tensor, k: int, *, rtol: float = 1e-7,
                   max_iter: int = 500) -> tuple[Tensor | None, Tensor]:
    """Leading ``k`` eigenvectors of ``cov`` by subspace iteration from ``start (P, m)``.

    Orthogonal iteration with a Rayleigh-Ritz check every 5 steps: stops when the
    ``k`` leading Ritz values move by less than ``rtol`` of the largest. Returns the
    eigenvectors ``(P, k)`` (``None`` if ``max_iter`` steps did not converge) and the
    final iterate ``(P, m)`` (a warm start for a nearby matrix). Deterministic for a
    given start.
    """
    x = torch.linalg.qr(start)[0]
    prev = None
    for it in range(max_iter):
        x = torch.linalg.qr(cov @ x)[0]
        if it % 5 == 4:
            vals = torch.linalg.eigvalsh(x.t() @ cov @ x)[-k:]
            if prev is not None and float((vals - prev).abs().max()) <= rtol * float(vals[-1]):
                _, u = torch.linalg.eigh(x.t() @ cov @ x)
                return x @ u.flip(-1)[:, :k], x
            prev = vals
    return None, x


def _block_error(x: Tensor, wh: Tensor, mean: Tensor, eofs: Tensor) -> float:
    """Summed weighted squared error of ``x`` projected on ``mean + span(eofs)``."""
    anom = x - mean
    rec = ((anom * wh) @ eofs) @ eofs.t()
    return float((((anom - rec) ** 2) * wh).sum())


def choose_prior(x: Tensor, wh: Tensor, kw: Tensor, k: int, *,
                 grid: tuple[float, ...] = PRIOR_GRID,
                 folds: int = PRIOR_FOLDS) -> tuple[float, list[float]]:
    r"""The prior weight of ``grid`` with the lowest blocked cross-validation error.

    Parameters
    ----------
    x : Tensor
        ``(N, P)`` training values (float64), in their natural (time) order.
    wh, kw, k
        As in :func:`shrunk_eofs`.
    grid : tuple of float
        Candidate weights, each ``>= 0``.
    folds : int
        Contiguous blocks (at most ``N``; at least 2 fields are needed).

    Returns
    -------
    gamma : float
        The chosen weight.
    scores : list of float
        Mean weighted squared held-out error per candidate (same order as
        ``grid``), per field and unit weight.

    Raises
    ------
    ConfigError
        With fewer than 2 fields, an empty grid or a negative candidate.

    Examples
    --------
    Fields that are a smooth pattern times a random amplitude plus white
    noise: a prior that favours smooth EOFs generalises better than the
    plain PCA, which fits part of the noise.

    >>> import torch
    >>> g = torch.Generator().manual_seed(1)
    >>> t = torch.linspace(0, 4, 40, dtype=torch.float64)
    >>> kern = torch.exp(-(t[:, None] - t[None]) ** 2 / 0.5)  # a smooth prior covariance
    >>> x = torch.randn(36, 1, generator=g, dtype=torch.float64) * torch.sin(t * 3.14159 / 4)
    >>> x = x + 0.5 * torch.randn(36, 40, generator=g, dtype=torch.float64)
    >>> wh = torch.full((40,), 1 / 40, dtype=torch.float64)
    >>> gamma, scores = choose_prior(x, wh, kern / 40, 3)
    >>> gamma > 0, scores[0] > min(scores)
    (True, True)
    """
    n = x.shape[0]
    if n < 2:
        raise ConfigError(
            f"linear_prior='auto' cross-validates over the training fields and needs at "
            f"least 2 of them, got {n}; pass a number instead (0: the plain PCA)")
    if not grid or any(not float(g) >= 0.0 for g in grid):
        raise ConfigError(f"the prior grid must hold weights >= 0, got {grid!r}")
    blocks = torch.arange(n).tensor_split(min(int(folds), n))
    order = sorted(range(len(grid)), key=lambda i: float(grid[i]))
    totals = [0.0] * len(grid)
    k = min(int(k), x.shape[1])
    extra = min(x.shape[1], k + max(8, k // 2)) - k
    gen = torch.Generator().manual_seed(0)
    for held in blocks:
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        xt = x[keep]
        mean = xt.mean(0)
        a = (xt - mean) * wh.sqrt()
        cov = scale = None
        warm = None
        for i in order:
            gamma = float(grid[i])
            if gamma == 0.0:  # the weighted PCA, exactly, from the small Gram matrix
                vec = _dual_eofs(a, k)
            else:  # S + gamma c K_w: orthogonal iteration, warm-started along the grid
                if cov is None:
                    cov = a.t() @ a
                    scale = float(cov.diagonal().sum()) / float(kw.diagonal().sum())
                if warm is None:
                    pad = torch.randn(x.shape[1], extra, generator=gen, dtype=x.dtype)
                    warm = torch.cat([_dual_eofs(a, k), pad], 1)
                shrunk = cov + gamma * scale * kw
                vec, warm = _subspace_eofs(shrunk, warm, k)
                if vec is None:  # not converged: the dense eigendecomposition
                    val, vec = torch.linalg.eigh(shrunk)
                    vec = vec.flip(-1)[:, :k] * (val.flip(-1)[:k] > 0)
            totals[i] += _block_error(x[held], wh, mean, vec / wh.sqrt()[:, None])
    scores = [t / n for t in totals]
    best = min(range(len(grid)), key=lambda i: (scores[i], i))
    return float(grid[best]), scores
