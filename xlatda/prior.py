r"""The latent prior: the Gaussian distribution of the training codes.

:func:`xlatda.fit` encodes its training fields and stores the mean and
covariance of the codes in the model (``model.prior``). It is the
climatological background of latent assimilation: ``encode_obs`` uses it as
the prior of its Bayesian estimate, cycles draw initial ensembles from it, and
latent 3DVar uses its covariance as ``B``.

Maths
-----
From ``N`` training codes :math:`z_i \in \mathbb{R}^d` with mean
:math:`\mu` and sample covariance :math:`S`, the stored covariance is the
Ledoit–Wolf shrinkage towards the diagonal

.. math::

    \Sigma = (1 - \alpha) S + \alpha \,\mathrm{diag}(S),

with the intensity :math:`\alpha \in [0, 1]` estimated from the data
(Ledoit and Wolf 2004, the sum over off-diagonal entries of the estimated
variance of :math:`S_{jk}` divided by the sum of their squares): close to 0
when ``N`` is large compared with ``d``, larger when the off-diagonal entries
are noisy. A small floor (``1e-6`` of the mean variance) on the diagonal
keeps :math:`\Sigma` positive definite. The model keeps the Cholesky factor
``scale`` with :math:`\Sigma = LL^\top`.

For PCA codes :math:`S` is diagonal (the explained variances), so
:math:`\alpha` has nothing to shrink and :math:`\Sigma = S`.

References
----------
Ledoit, O. and Wolf, M. (2004). A well-conditioned estimator for
large-dimensional covariance matrices. J. Multivar. Anal. 88, 365-411.

Examples
--------
>>> import torch
>>> from xlatda.prior import LatentPrior
>>> gen = torch.Generator().manual_seed(0)
>>> codes = torch.randn(5000, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0])
>>> prior = LatentPrior.fit(codes)
>>> [round(v, 1) for v in prior.covariance().diagonal().sqrt().tolist()]
[1.0, 2.0, 3.0]
>>> prior.sample(4, generator=gen).shape
torch.Size([4, 3])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from xlatda.errors import ConfigError, ShapeError

__all__ = ["LatentPrior", "check_in_distribution", "ood_threshold", "shrinkage_intensity"]

#: Tail probability of the default out-of-distribution threshold (per state).
OOD_TAIL = 1e-6


def ood_threshold(latent_dim: int, tail: float = OOD_TAIL, factor: float = 2.0) -> float:
    """Mahalanobis distance beyond which a code counts as far out of distribution.

    ``factor`` times the square root of the ``1 - tail`` quantile of the
    chi-squared distribution with ``latent_dim`` degrees of freedom (the
    distribution of the squared distance of Gaussian draws from their mean):
    a code drawn from the prior passes the quantile itself with probability
    ``tail``. The factor 2 leaves room for the ordinary drift of real weather
    away from a short training period (on ERA5 t2m, codes of the week after a
    two-week training period reach 1.4 times the quantile) and flags only
    states that are far outside, such as a diverging forecast.

    Examples
    --------
    >>> round(ood_threshold(32), 2)
    18.46
    """
    from scipy.stats import chi2

    return float(factor * math.sqrt(chi2.isf(float(tail), int(latent_dim))))


def check_in_distribution(z: Tensor, prior: LatentPrior | None, *, where: str = "forecast",
                          threshold: float | None = None, stacklevel: int = 2) -> Tensor | None:
    """Warn (:class:`~xlatda.errors.OutOfDistributionWarning`) for codes far from the prior.

    Parameters
    ----------
    z : Tensor
        ``(..., d)`` codes.
    prior : LatentPrior or None
        The model's prior (None: nothing is checked).
    where : str
        What the codes are, for the message ("forecast", "analysis at ...").
    threshold : float, optional
        Mahalanobis distance; default :func:`ood_threshold`.

    Returns
    -------
    Tensor or None
        The distances ``(...)`` (None without a prior).
    """
    import warnings

    from xlatda.errors import OutOfDistributionWarning

    if prior is None:
        return None
    with torch.no_grad():
        dist = prior.mahalanobis(z.detach())
    limit = ood_threshold(prior.latent_dim) if threshold is None else float(threshold)
    bad = ~(dist <= limit)  # NaN counts as out of distribution
    if bool(bad.any()):
        worst = float(torch.nan_to_num(dist, nan=float("inf")).max())
        warnings.warn(
            f"{int(bad.sum())} of {bad.numel()} latent states of the {where} lie beyond "
            f"Mahalanobis distance {limit:.3g} of the training codes (largest {worst:.3g}; "
            f"half of it is exceeded by a training-like code with probability {OOD_TAIL:g}): "
            "the dynamics/decoder are extrapolating. Shorten the lead, assimilate more often, "
            "or train on data covering these states",
            OutOfDistributionWarning, stacklevel=stacklevel,
        )
    return dist


def shrinkage_intensity(codes: Tensor) -> float:
    """Ledoit–Wolf intensity of shrinking the sample covariance towards its diagonal.

    Parameters
    ----------
    codes : Tensor
        ``(N, d)`` samples.

    Returns
    -------
    float
        :math:`\\alpha \\in [0, 1]`; 0 for ``d = 1`` or a diagonal sample covariance.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> def draw(n):  # 20 variables sharing one common factor: correlation 0.5
    ...     return torch.randn(n, 20, generator=g) + torch.randn(n, 1, generator=g)
    >>> shrinkage_intensity(draw(10)) > 0.1 > shrinkage_intensity(draw(4000))
    True
    """
    x = torch.as_tensor(codes)
    n, d = x.shape
    if d < 2 or n < 2:
        return 0.0
    a = x - x.mean(0)
    s = a.T @ a / n
    off = ~torch.eye(d, dtype=torch.bool, device=x.device)
    # Estimated variance of each entry of S: mean over samples of (a_j a_k - S_jk)^2 / n.
    var = ((a[:, :, None] * a[:, None, :] - s) ** 2).mean(0) / n if d <= 256 else None
    if var is None:  # memory-light form for large d: E[a_j^2 a_k^2] - S_jk^2
        sq = a**2
        var = (sq.T @ sq / n - s**2) / n
    num = float(var[off].sum())
    den = float((s[off] ** 2).sum())
    if den <= 0:
        return 0.0
    return min(1.0, max(0.0, num / den))


class LatentPrior(nn.Module):
    """Gaussian distribution of the latent codes, ``N(mean, scale @ scale.T)``.

    Parameters
    ----------
    latent_dim : int
        Size ``d`` of the latent vector.
    rank : int, optional
        Columns ``k`` of ``scale`` (default ``d``: a full lower-triangular
        Cholesky factor).

    Attributes
    ----------
    mean : Tensor
        ``(d,)`` buffer.
    scale : Tensor
        ``(d, k)`` buffer with ``covariance = scale @ scale.T``.
    shrinkage : float
        Shrinkage intensity used at fit (also in ``config``).
    n_samples : int
        Number of training codes it was fitted on.
    """

    kind = "gaussian"

    def __init__(self, latent_dim: int, rank: int | None = None, *, shrinkage: float = 0.0,
                 n_samples: int = 0) -> None:
        super().__init__()
        d = int(latent_dim)
        k = d if rank is None else int(rank)
        if d < 1 or not 1 <= k <= d:
            raise ConfigError(f"need latent_dim >= 1 and 1 <= rank <= latent_dim, got {d}, {k}")
        self.latent_dim, self.rank = d, k
        self.shrinkage, self.n_samples = float(shrinkage), int(n_samples)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.eye(d, k))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON): what the model store keeps next to the arrays."""
        return {"latent_dim": self.latent_dim, "rank": self.rank,
                "shrinkage": self.shrinkage, "n_samples": self.n_samples}

    @classmethod
    def fit(cls, codes: Tensor, *, shrinkage: float | str = "auto",
            floor: float = 1e-6) -> LatentPrior:
        """Mean and (shrunk) covariance of training codes ``(N, d)``.

        Parameters
        ----------
        codes : Tensor
            ``(N, d)``, ``N >= 2``.
        shrinkage : "auto" or float
            Ledoit–Wolf intensity (:func:`shrinkage_intensity`), or a fixed
            value in ``[0, 1]``.
        floor : float
            Relative floor on the variances (times their mean).

        Returns
        -------
        LatentPrior
            In the codes' dtype and device.
        """
        z = torch.as_tensor(codes)
        if z.dim() != 2 or z.shape[0] < 2:
            raise ShapeError(f"codes must be (N >= 2, d), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ConfigError("the training codes contain NaN or inf; the prior cannot be fitted")
        z64 = z.to(torch.float64)
        n, d = z64.shape
        alpha = shrinkage_intensity(z64) if shrinkage == "auto" else float(shrinkage)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"shrinkage must be 'auto' or in [0, 1], got {shrinkage!r}")
        mean = z64.mean(0)
        a = z64 - mean
        s = a.T @ a / (n - 1)
        cov = (1 - alpha) * s + alpha * torch.diag(torch.diagonal(s))
        eps = floor * float(torch.diagonal(cov).mean().clamp_min(1e-300))
        cov = 0.5 * (cov + cov.T) + eps * torch.eye(d, dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov)
        prior = cls(d, shrinkage=alpha, n_samples=n).to(device=z.device)
        with torch.no_grad():
            prior.mean.copy_(mean)
            prior.scale.copy_(chol)
        return prior.to(dtype=z.dtype if z.is_floating_point() else torch.float64)

    # -- distribution ------------------------------------------------------
    def covariance(self):
        """The covariance as a :class:`xlatda.methods.covariance.DenseCovariance`."""
        from xlatda.methods.covariance import DenseCovariance

        return DenseCovariance(self.scale @ self.scale.T)

    def _check(self, z: Tensor) -> Tensor:
        z = torch.as_tensor(z).to(device=self.mean.device, dtype=self.mean.dtype)
        if z.shape[-1] != self.latent_dim:
            raise ShapeError(f"latents must end in {self.latent_dim}, got {tuple(z.shape)}")
        return z

    def _whiten(self, z: Tensor) -> Tensor:
        r = (self._check(z) - self.mean)[..., None]
        if self.rank == self.latent_dim:
            return torch.linalg.solve_triangular(
                self.scale, r.reshape(-1, self.latent_dim).T, upper=False
            ).T.reshape(r.shape[:-1])
        return (torch.linalg.pinv(self.scale) @ r)[..., 0]

    def mahalanobis(self, z: Tensor) -> Tensor:
        """Mahalanobis distance of ``z (..., d)`` from the mean, shape ``(...)``."""
        return self._whiten(z).norm(dim=-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density at ``z (..., d)`` (full-rank prior), shape ``(...)``."""
        if self.rank != self.latent_dim:
            raise ConfigError("log_prob needs a full-rank prior (rank == latent_dim)")
        w = self._whiten(z)
        logdet = 2 * torch.log(torch.diagonal(self.scale).abs()).sum()
        return -0.5 * ((w**2).sum(-1) + logdet + self.latent_dim * math.log(2 * math.pi))

    def sample(self, n: int | tuple[int, ...], *,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws ``(n, d)`` (or ``(*n, d)``) from the prior with ``generator``."""
        shape = (int(n),) if isinstance(n, int) else tuple(int(s) for s in n)
        eps = torch.randn(*shape, self.rank, generator=generator, dtype=self.mean.dtype)
        return self.mean + eps.to(self.mean.device) @ self.scale.T

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, rank={self.rank}, shrinkage={self.shrinkage:.3g}"
