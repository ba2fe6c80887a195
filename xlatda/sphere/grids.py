"""Latitude-longitude grids on the sphere and their quadrature weights.

Two latitude grids are offered, both ordered **north to south** (latitude
descending, colatitude ascending), as in most reanalysis products:

``"gauss"``
    Gauss-Legendre nodes: ``sin(lat)`` are the roots of the Legendre
    polynomial ``P_nlat``. The quadrature is exact for polynomials in
    ``mu = sin(lat)`` of degree ``<= 2 nlat - 1``, so a field band-limited to
    degree ``lmax <= nlat - 1`` is analysed exactly.
``"equiangular"``
    Equally spaced latitudes at cell midpoints, ``colat_j = (j + 1/2) pi / nlat``
    (no point on a pole), with Fejér's first quadrature rule. It is exact for
    polynomials in ``mu`` of degree ``<= nlat - 1``, so exact analysis needs
    ``lmax <= (nlat - 1) // 2``.

Weights ``w_j`` integrate over ``mu = sin(lat)`` and sum to 2, so for a field
``f`` on an ``nlat x nlon`` grid

    integral of f over the unit sphere  ~=  sum_j w_j * (2 pi / nlon) * sum_i f[j, i].

Longitudes are ``360 i / nlon`` degrees, ``i = 0 .. nlon - 1``.

Everything is returned as float64 torch tensors on the CPU (convert with
``.to(...)`` or ``.numpy()``).

Examples
--------
>>> from xlatda.sphere import gaussian_grid, longitudes
>>> lat, w = gaussian_grid(4)
>>> lat
tensor([ 59.4444,  19.8757, -19.8757, -59.4444], dtype=torch.float64)
>>> float(w.sum())
2.0
>>> longitudes(4)
tensor([  0.,  90., 180., 270.], dtype=torch.float64)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = ["GRIDS", "equiangular_grid", "gaussian_grid", "latitude_grid", "longitudes"]

GRIDS = ("gauss", "equiangular")


def _check_n(n: int, name: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or int(n) != n or n < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def gaussian_grid(nlat: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre latitudes (degrees, north to south) and weights.

    Parameters
    ----------
    nlat : int
        Number of latitudes (>= 1).

    Returns
    -------
    lat : Tensor
        ``(nlat,)`` float64 latitudes in degrees, descending.
    weights : Tensor
        ``(nlat,)`` float64 Gauss weights in ``mu = sin(lat)``; they sum to 2.

    Raises
    ------
    ConfigError
        If ``nlat`` is not a positive integer.

    Examples
    --------
    >>> lat, w = gaussian_grid(2)
    >>> lat
    tensor([ 35.2644, -35.2644], dtype=torch.float64)
    >>> w
    tensor([1., 1.], dtype=torch.float64)
    """
    nlat = _check_n(nlat, "nlat")
    mu, w = np.polynomial.legendre.leggauss(nlat)  # ascending mu = south to north
    mu, w = mu[::-1].copy(), w[::-1].copy()
    lat = np.degrees(np.arcsin(mu))
    return torch.from_numpy(lat), torch.from_numpy(w)


def equiangular_grid(nlat: int) -> tuple[Tensor, Tensor]:
    """Equally spaced midpoint latitudes (degrees, north to south) and Fejér weights.

    Parameters
    ----------
    nlat : int
        Number of latitudes (>= 1); latitude ``j`` is ``90 - (j + 1/2) 180 / nlat``.

    Returns
    -------
    lat : Tensor
        ``(nlat,)`` float64 latitudes in degrees, descending, no pole points.
    weights : Tensor
        ``(nlat,)`` float64 weights of Fejér's first rule in ``mu = sin(lat)``;
        they sum to 2.

    Raises
    ------
    ConfigError
        If ``nlat`` is not a positive integer.

    Notes
    -----
    Fejér's first rule for ``int_{-1}^{1} g(mu) dmu`` with nodes at the
    Chebyshev points ``theta_j = (j + 1/2) pi / N`` has weights
    ``w_j = (2 / N) (1 - 2 sum_{k=1}^{N//2} cos(2 k theta_j) / (4 k^2 - 1))``.

    References
    ----------
    Waldvogel, J. (2006). Fast construction of the Fejér and Clenshaw-Curtis
    quadrature rules. BIT Numerical Mathematics 46, 195-202.

    Examples
    --------
    >>> lat, w = equiangular_grid(4)
    >>> lat
    tensor([ 67.5000,  22.5000, -22.5000, -67.5000], dtype=torch.float64)
    >>> round(float(w.sum()), 12)
    2.0
    """
    nlat = _check_n(nlat, "nlat")
    theta = (np.arange(nlat) + 0.5) * math.pi / nlat
    k = np.arange(1, nlat // 2 + 1)
    series = (np.cos(2.0 * np.outer(theta, k)) / (4.0 * k**2 - 1.0)).sum(axis=1)
    w = (2.0 / nlat) * (1.0 - 2.0 * series)
    lat = 90.0 - np.degrees(theta)
    return torch.from_numpy(lat), torch.from_numpy(w)


def latitude_grid(nlat: int, grid: str = "gauss") -> tuple[Tensor, Tensor]:
    """Latitudes and weights of the grid named ``grid`` ("gauss" or "equiangular").

    Raises
    ------
    ConfigError
        For an unknown grid name.

    Examples
    --------
    >>> lat, w = latitude_grid(3, "equiangular")
    >>> lat
    tensor([ 60.,   0., -60.], dtype=torch.float64)
    """
    name = str(grid).lower()
    if name in ("gauss", "gaussian", "legendre-gauss"):
        return gaussian_grid(nlat)
    if name in ("equiangular", "equidistant", "regular"):
        return equiangular_grid(nlat)
    raise ConfigError(f"unknown grid {grid!r}; use one of {GRIDS}")


def longitudes(nlon: int) -> Tensor:
    """Equally spaced longitudes in degrees, ``0 <= lon < 360``.

    Parameters
    ----------
    nlon : int
        Number of longitudes (>= 1).

    Returns
    -------
    Tensor
        ``(nlon,)`` float64, ``360 i / nlon``.

    Examples
    --------
    >>> longitudes(3)
    tensor([  0., 120., 240.], dtype=torch.float64)
    """
    nlon = _check_n(nlon, "nlon")
    return torch.arange(nlon, dtype=torch.float64) * (360.0 / nlon)
