r"""Orthonormalised associated Legendre functions from a stable recurrence.

The functions computed here are

.. math::

    \bar P_l^m(\cos\theta) = N_l^m P_l^m(\cos\theta), \qquad
    N_l^m = \sqrt{\frac{2l+1}{4\pi}\frac{(l-m)!}{(l+m)!}}, \qquad 0 \le m \le l,

with :math:`P_l^m(x) = (1-x^2)^{m/2} d^m P_l / dx^m` **without** the
Condon-Shortley phase :math:`(-1)^m`. With this normalisation
:math:`Y_l^m = \bar P_l^m(\cos\theta) e^{im\lambda}` is orthonormal on the unit
sphere, i.e. :math:`\int_{-1}^{1} (\bar P_l^m)^2 dx = 1 / (2\pi)`.

They are built in float64 by the standard three-term recurrence in the degree
(stable for all degrees and orders used in practice; no factorials appear):

.. math::

    \bar P_0^0 = \frac{1}{\sqrt{4\pi}}, \quad
    \bar P_m^m = \sqrt{\frac{2m+1}{2m}}\,\sin\theta\,\bar P_{m-1}^{m-1}, \\
    \bar P_l^m = a_l^m\left(\cos\theta\,\bar P_{l-1}^m - b_l^m \bar P_{l-2}^m\right),
    \quad a_l^m = \sqrt{\frac{4l^2-1}{l^2-m^2}}, \quad
    b_l^m = \sqrt{\frac{(l-1)^2-m^2}{4(l-1)^2-1}}.

The latitude derivative used for vector fields is obtained from

.. math::

    H_l^m = (1-x^2)\frac{d\bar P_l^m}{dx}
          = -l\,\epsilon_{l+1}^m \bar P_{l+1}^m + (l+1)\,\epsilon_l^m \bar P_{l-1}^m,
    \qquad \epsilon_l^m = \sqrt{\frac{l^2-m^2}{4l^2-1}}.

All loops run over the degree ``l`` only; each step is vectorised over the
points and over all orders ``m``.

References
----------
Holmes, S. A. and Featherstone, W. E. (2002). A unified approach to the
Clenshaw summation and the recursive computation of very high degree and
order normalised associated Legendre functions. J. Geodesy 76, 279-299.

Examples
--------
>>> import math, torch
>>> from xlatda.sphere.legendre import associated_legendre
>>> p = associated_legendre(2, 2, torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
>>> p.shape
torch.Size([2, 3, 3])
>>> round(float(p[0, 0, 0]) * math.sqrt(4 * math.pi), 12)  # Y_00 = 1/sqrt(4 pi)
1.0
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = ["associated_legendre", "legendre_derivative", "legendre_rows"]


def _check_degrees(lmax: int, mmax: int) -> tuple[int, int]:
    if int(lmax) != lmax or lmax < 0:
        raise ConfigError(f"lmax must be a non-negative integer, got {lmax!r}")
    if int(mmax) != mmax or mmax < 0 or mmax > lmax:
        raise ConfigError(f"mmax must be an integer in [0, lmax={lmax}], got {mmax!r}")
    return int(lmax), int(mmax)


def legendre_rows(lmax: int, mmax: int, colat: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(l, row)`` for ``l = 0 .. lmax``; ``row[..., m]`` is ``Pbar_l^m(cos colat)``.

    Parameters
    ----------
    lmax, mmax : int
        Largest degree and order (``mmax <= lmax``).
    colat : Tensor
        Colatitudes in radians, any shape; computed in float64.

    Yields
    ------
    l : int
        The degree.
    row : Tensor
        ``(*colat.shape, mmax + 1)`` float64; entries with ``m > l`` are 0.

    Notes
    -----
    Only two rows are alive at a time, so memory is ``O(points * mmax)``.
    The rows are built without in-place writes, so autograd can
    differentiate them with respect to ``colat``.

    Examples
    --------
    >>> import torch
    >>> rows = dict(legendre_rows(1, 1, torch.zeros(1, dtype=torch.float64)))
    >>> rows[1]  # at the north pole only m = 0 is non-zero
    tensor([[0.4886, 0.0000]], dtype=torch.float64)
    """
    lmax, mmax = _check_degrees(lmax, mmax)
    th = torch.as_tensor(colat).to(torch.float64)
    x, s = torch.cos(th), torch.sin(th)
    opts = {"dtype": torch.float64, "device": th.device}
    m = torch.arange(mmax + 1, **opts)
    first = torch.zeros(mmax + 1, **opts)
    first[0] = 1.0 / (4.0 * torch.pi) ** 0.5
    prev2 = torch.zeros((*th.shape, mmax + 1), **opts)
    prev1 = first.expand(*th.shape, mmax + 1)
    yield 0, prev1
    for l in range(1, lmax + 1):
        lf = float(l)
        below = m < l  # orders reached by the degree recurrence
        den = torch.where(below, lf * lf - m * m, torch.ones_like(m))
        a = torch.where(below, torch.sqrt((4.0 * lf * lf - 1.0) / den), torch.zeros_like(m))
        b2 = ((lf - 1.0) ** 2 - m * m).clamp_min(0.0) / (4.0 * (lf - 1.0) ** 2 - 1.0)
        row = a * (x[..., None] * prev1 - torch.sqrt(b2) * prev2)
        if l <= mmax:
            # diagonal: Pbar_l^l = sqrt((2l+1)/(2l)) sin(theta) Pbar_{l-1}^{l-1}
            diag = torch.zeros(mmax + 1, **opts)
            diag[l] = ((2.0 * lf + 1.0) / (2.0 * lf)) ** 0.5
            shifted = torch.nn.functional.pad(prev1[..., :-1], (1, 0))
            row = row + diag * s[..., None] * shifted
        prev2, prev1 = prev1, row
        yield l, row


def associated_legendre(lmax: int, mmax: int, colat: Tensor) -> Tensor:
    """Table of orthonormalised associated Legendre functions.

    Parameters
    ----------
    lmax, mmax : int
        Largest degree and order (``mmax <= lmax``).
    colat : Tensor
        Colatitudes in radians, any shape.

    Returns
    -------
    Tensor
        ``(*colat.shape, lmax + 1, mmax + 1)`` float64, entry ``[..., l, m]`` is
        ``Pbar_l^m(cos colat)`` (0 where ``m > l``).

    Examples
    --------
    >>> import torch
    >>> from xlatda.sphere import gaussian_grid
    >>> lat, w = gaussian_grid(8)
    >>> p = associated_legendre(5, 5, torch.deg2rad(90 - lat))
    >>> gram = torch.einsum("jl,j,jk->lk", p[:, :, 3], w, p[:, :, 3]) * 2 * torch.pi
    >>> torch.allclose(gram[3:, 3:], torch.eye(3, dtype=torch.float64))
    True
    """
    rows = [row for _, row in legendre_rows(lmax, mmax, colat)]
    return torch.stack(rows, dim=-2)


def legendre_derivative(lmax: int, mmax: int, colat: Tensor) -> tuple[Tensor, Tensor]:
    """Legendre table and its latitude derivative ``H = (1 - x^2) dPbar/dx``.

    Parameters
    ----------
    lmax, mmax : int
        Largest degree and order (``mmax <= lmax``).
    colat : Tensor
        Colatitudes in radians, any shape.

    Returns
    -------
    p, h : Tensor
        Both ``(*colat.shape, lmax + 1, mmax + 1)`` float64. ``h`` equals
        ``cos(lat) dPbar/dlat``.

    Examples
    --------
    >>> import math, torch
    >>> p, h = legendre_derivative(1, 0, torch.tensor([math.pi / 3], dtype=torch.float64))
    >>> # Pbar_1^0 = sqrt(3/(4 pi)) x  ->  H = sqrt(3/(4 pi)) (1 - x^2)
    >>> round(float(h[0, 1, 0]) / math.sqrt(3 / (4 * math.pi)), 12)
    0.75
    """
    lmax, mmax = _check_degrees(lmax, mmax)
    full = associated_legendre(lmax + 1, mmax, colat)
    l = torch.arange(lmax + 2, dtype=torch.float64, device=full.device)[:, None]
    m = torch.arange(mmax + 1, dtype=torch.float64, device=full.device)[None, :]
    eps = torch.sqrt(((l * l - m * m) / (4.0 * l * l - 1.0)).clamp_min(0.0))
    p = full[..., : lmax + 1, :]
    lo = l[: lmax + 1]
    upper = -lo * eps[1:] * full[..., 1:, :]
    below = torch.nn.functional.pad(full[..., :lmax, :], (0, 0, 1, 0))  # Pbar_{l-1}
    lower = (lo + 1.0) * eps[: lmax + 1] * below
    return p, upper + lower
