r"""Model error added to a forecast ensemble: the square-root ("Sqrt-Core") way.

A forecast ensemble :math:`E = \bar x 1^\top + \sqrt{N-1}\, X` must carry the
model-error covariance :math:`Q` on top of the spread of the dynamics:
:math:`P^f = X X^\top + Q`. Adding a random draw of :math:`N(0, Q)` to each
member does so only on average; with a few dozen members every cycle adds a
sampling error of relative size :math:`\sqrt{d / N}` to :math:`P^f` (and to the
mean), and in a latent filter whose spread is mostly model error that noise
is most of the ensemble.

Raanes, Carrassi & Bertino (2015) add :math:`Q` deterministically instead:
with the pseudo-inverse :math:`X^+`,

.. math::

    X \leftarrow X\, \bigl(I_N + X^+ Q X^{+\top}\bigr)^{1/2},

which keeps the ensemble mean and gives :math:`X X^\top + \Pi Q \Pi` exactly,
:math:`\Pi` the projection on the span of the perturbations. When the
ensemble spans the whole (latent) space (``N - 1 >= d`` and no collapse)
that is :math:`P^f` itself. The part of :math:`Q` the ensemble cannot hold,
:math:`(I - \Pi) Q (I - \Pi)`, is added as a random draw (what a stochastic
model error would add there anyway), so nothing is lost when ``N - 1 < d``.

References
----------
Raanes, P. N., Carrassi, A. and Bertino, L. (2015). Extending the square root
method to account for additive forecast noise in ensemble methods. Monthly
Weather Review 143, 3857-3873.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> ens = torch.randn(50, 3, generator=g, dtype=torch.float64)
>>> Q = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
>>> out = add_model_error(ens, Q, generator=g)
>>> torch.allclose(out.mean(0), ens.mean(0))
True
>>> gain = torch.cov(out.T) - torch.cov(ens.T)
>>> torch.allclose(gain, Q, atol=1e-10)
True
"""

from __future__ import annotations

import torch
from torch import Tensor

from xlatda.errors import ShapeError

__all__ = ["add_model_error", "gaussian_draws"]


def gaussian_draws(cov: Tensor, n: int, *, generator: torch.Generator) -> Tensor:
    """``(n, d)`` float64 draws of ``N(0, cov)`` for a symmetric PSD (possibly singular) ``cov``.

    Examples
    --------
    >>> import torch
    >>> cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> x = gaussian_draws(cov, 20000, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(torch.cov(x.T), cov, atol=0.1))
    True
    """
    c = cov.to(torch.float64)
    w, V = torch.linalg.eigh(0.5 * (c + c.T))
    eps = torch.randn(int(n), c.shape[0], generator=generator, dtype=torch.float64)
    return (eps * w.clamp_min(0.0).sqrt()) @ V.T


def add_model_error(ensemble: Tensor, Q: Tensor, *, generator: torch.Generator,
                    rtol: float = 1e-10) -> Tensor:
    r"""The ensemble with model-error covariance ``Q`` added (see the module docstring).

    Parameters
    ----------
    ensemble : Tensor
        ``(N, d)`` members.
    Q : Tensor
        ``(d, d)`` covariance to add (already scaled to the forecast length).
    generator : torch.Generator
        Source of the draw for the part of ``Q`` outside the ensemble's span.
    rtol : float
        Singular values of the perturbations below ``rtol`` times the largest
        count as zero (directions the ensemble does not span).

    Returns
    -------
    Tensor
        ``(N, d)``, same mean; sample covariance ``X Xᵀ + Π Q Π`` plus a draw
        of ``N(0, (I - Π) Q (I - Π))``.
    """
    if ensemble.dim() != 2 or Q.shape != (ensemble.shape[1], ensemble.shape[1]):
        raise ShapeError(f"need an (N, d) ensemble and a (d, d) Q, got "
                         f"{tuple(ensemble.shape)} and {tuple(Q.shape)}")
    n, d = ensemble.shape
    E = ensemble.to(torch.float64)
    Qd = Q.to(torch.float64)
    if n < 2:
        eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return (E + eps @ torch.linalg.cholesky(Qd + 1e-12 * torch.eye(d)).T).to(ensemble)
    mean = E.mean(0)
    X = (E - mean).T / (n - 1) ** 0.5  # (d, N)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = S > rtol * S.max().clamp_min(torch.finfo(torch.float64).tiny)
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    if S.numel():
        # (I + V C Vᵀ)^{1/2} = I + V ((I + C)^{1/2} - I) Vᵀ, C = S⁻¹ Uᵀ Q U S⁻¹
        C = (U.T @ Qd @ U) / S[:, None] / S[None, :]
        w, V = torch.linalg.eigh(0.5 * (C + C.T) + torch.eye(S.numel(), dtype=torch.float64))
        root = (V * w.clamp_min(0.0).sqrt()) @ V.T - torch.eye(S.numel(), dtype=torch.float64)
        X = X + (U * S) @ root @ Vh
    out = mean + (n - 1) ** 0.5 * X.T
    if S.numel() < d:  # the rest of Q, where the ensemble has no spread
        proj = torch.eye(d, dtype=torch.float64) - U @ U.T
        out = out + gaussian_draws(proj @ Qd @ proj, n, generator=generator)
    return out.to(ensemble)
