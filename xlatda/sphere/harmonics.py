r"""Real spherical harmonics at arbitrary points.

The real, orthonormal harmonics used by xlatda (for example as the filters of
the SINR decoder) are

.. math::

    Y_{lm}(\theta, \lambda) =
    \begin{cases}
      \sqrt2\, N_l^m P_l^m(\cos\theta) \cos(m\lambda) & m > 0 \\
      N_l^0 P_l(\cos\theta) & m = 0 \\
      \sqrt2\, N_l^{|m|} P_l^{|m|}(\cos\theta) \sin(|m|\lambda) & m < 0
    \end{cases}

with :math:`\theta` the colatitude, :math:`\lambda` the longitude (radians),
:math:`N_l^m` as in :mod:`xlatda.sphere.legendre` and :math:`P_l^m` without the
Condon-Shortley phase, so that
:math:`\int Y_{lm} Y_{l'm'} d\Omega = \delta_{ll'}\delta_{mm'}`. In terms of
SciPy's complex harmonics (which include the Condon-Shortley phase),
:math:`Y_{lm} = \sqrt2 (-1)^m \mathrm{Re}\, Y_l^m` for :math:`m > 0` and
:math:`Y_{l,-m} = \sqrt2 (-1)^m \mathrm{Im}\, Y_l^m`.

Examples
--------
>>> import math, torch
>>> from xlatda.sphere import real_sph_harm
>>> l = torch.tensor([0, 1, 1, 1])
>>> m = torch.tensor([0, -1, 0, 1])
>>> colat = torch.tensor([math.pi / 2], dtype=torch.float64)  # equator
>>> y = real_sph_harm(l, m, colat, torch.zeros(1, dtype=torch.float64))
>>> (y * math.sqrt(4 * math.pi / 3)).round(decimals=6)  # degree 1 ~ (y, z, x)
tensor([[0.5774, 0.0000, 0.0000, 1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError
from xlatda.sphere.legendre import legendre_rows

__all__ = ["real_sph_harm", "sph_harm_indices"]


def sph_harm_indices(lmax: int) -> tuple[Tensor, Tensor]:
    """All ``(degree, order)`` pairs with ``degree <= lmax``, ordered by ``l`` then ``m``.

    Returns
    -------
    degree, order : LongTensor
        ``((lmax + 1) ** 2,)`` each; order runs ``-l .. l`` within a degree.

    Examples
    --------
    >>> sph_harm_indices(1)
    (tensor([0, 1, 1, 1]), tensor([ 0, -1,  0,  1]))
    """
    if int(lmax) != lmax or lmax < 0:
        raise ConfigError(f"lmax must be a non-negative integer, got {lmax!r}")
    deg = torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])
    order = torch.cat([torch.arange(-l, l + 1, dtype=torch.long) for l in range(lmax + 1)])
    return deg, order


def real_sph_harm(degree: Tensor, order: Tensor, colat: Tensor, lon: Tensor) -> Tensor:
    """Real orthonormal spherical harmonics ``Y_lm`` at arbitrary points.

    Parameters
    ----------
    degree : LongTensor
        ``(K,)`` degrees ``l >= 0``.
    order : LongTensor
        ``(K,)`` orders ``m`` with ``|m| <= l``; negative orders are the sine
        harmonics (see the module docstring for the convention).
    colat : Tensor
        Colatitudes in radians in ``[0, pi]``, any shape ``(...)``.
    lon : Tensor
        Longitudes in radians, broadcastable against ``colat``.

    Returns
    -------
    Tensor
        ``(..., K)`` in the dtype of ``colat`` (float32 if ``colat`` is not
        floating), on its device.

    Raises
    ------
    ShapeError
        If ``degree`` and ``order`` are not 1-D of the same length.
    ConfigError
        If a degree is negative or an order exceeds its degree.

    Notes
    -----
    The Legendre functions are computed in float64 by the recurrence of
    :func:`xlatda.sphere.legendre.legendre_rows`, with a Python loop over the
    degree only (``max(degree) + 1`` iterations, each vectorised over all
    points and orders). Memory is ``O(points * (K + max(l) max|m|))``. The result is
    differentiable with respect to ``colat`` and ``lon``.

    Examples
    --------
    >>> import torch
    >>> y = real_sph_harm(torch.tensor([2, 2]), torch.tensor([-2, 2]),
    ...                   torch.rand(100, dtype=torch.float64) * 3.14,
    ...                   torch.rand(100, dtype=torch.float64) * 6.28)
    >>> y.shape, y.dtype
    (torch.Size([100, 2]), torch.float64)
    """
    degree = torch.as_tensor(degree)
    order = torch.as_tensor(order)
    if degree.dim() != 1 or order.shape != degree.shape:
        raise ShapeError(
            "degree and order must be 1-D tensors of the same length, got shapes "
            f"{tuple(degree.shape)} and {tuple(order.shape)}"
        )
    if degree.is_floating_point() or order.is_floating_point():
        raise ConfigError("degree and order must be integer tensors (torch.long)")
    colat = torch.as_tensor(colat)
    lon = torch.as_tensor(lon, device=colat.device)
    out_dtype = colat.dtype if colat.is_floating_point() else torch.get_default_dtype()
    th, ph = torch.broadcast_tensors(colat.to(torch.float64), lon.to(torch.float64))
    k = degree.numel()
    if k == 0:
        return torch.zeros((*th.shape, 0), dtype=out_dtype, device=th.device)
    deg_cpu = degree.detach().to("cpu", torch.long)
    ord_cpu = order.detach().to("cpu", torch.long)
    if bool((deg_cpu < 0).any()) or bool((ord_cpu.abs() > deg_cpu).any()):
        bad = int(torch.nonzero((deg_cpu < 0) | (ord_cpu.abs() > deg_cpu))[0, 0])
        raise ConfigError(
            "need degree >= 0 and |order| <= degree for every pair; pair "
            f"{bad} has degree {int(deg_cpu[bad])} and order {int(ord_cpu[bad])}"
        )
    mabs = ord_cpu.abs()
    lmax, mmax = int(deg_cpu.max()), int(mabs.max())
    dev = th.device

    # Legendre table (..., lmax + 1, mmax + 1), then one gather of the pairs.
    table = torch.stack([row for _, row in legendre_rows(lmax, mmax, th)], dim=-2)
    flat = (deg_cpu * (mmax + 1) + mabs).to(dev)
    p = table.flatten(-2).index_select(-1, flat)

    # cos(m lon) for m >= 0 and sin(|m| lon) for m < 0, from a small table.
    mvec = torch.arange(mmax + 1, dtype=torch.float64, device=dev)
    angle = ph[..., None] * mvec
    trig_table = torch.cat((torch.cos(angle), torch.sin(angle)), dim=-1)
    tidx = torch.where(ord_cpu >= 0, mabs, mabs + mmax + 1).to(dev)
    scale = torch.full((k,), math.sqrt(2.0), dtype=torch.float64)
    scale = scale.masked_fill(ord_cpu == 0, 1.0).to(dev)
    trig = trig_table.index_select(-1, tidx) * scale
    return (p * trig).to(out_dtype)
