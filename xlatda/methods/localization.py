r"""Distance-based localisation: the Gaspari-Cohn taper and state/obs distances.

**Gaspari-Cohn function** (Gaspari & Cohn 1999, eq. 4.10). With half-width
:math:`c` and :math:`r = |d| / c`,

.. math::

    \mathrm{GC}(d; c) = \begin{cases}
      -\tfrac14 r^5 + \tfrac12 r^4 + \tfrac58 r^3 - \tfrac53 r^2 + 1,
        & 0 \le r \le 1,\\
      \tfrac1{12} r^5 - \tfrac12 r^4 + \tfrac58 r^3 + \tfrac53 r^2 - 5 r + 4
        - \tfrac23 r^{-1}, & 1 < r < 2,\\
      0, & r \ge 2.
    \end{cases}

It is a fifth-order piecewise rational function, twice differentiable,
monotone decreasing from 1 at :math:`d = 0` to 0 at :math:`d = 2c` (its
*support* is :math:`2c`), and a compactly supported correlation function
in :math:`\mathbb R^3`, so ``GC(|x_i - x_j|; c)`` is a positive semi-definite
matrix for points on a line or in space. On a periodic line of length
:math:`L` with the arc (index) distance it stays positive semi-definite while
:math:`2c \le L/2` (the taper is then the periodisation of the line taper).

**The "localisation radius".** Settings named ``radius`` (as in
:class:`~xlatda.methods.letkf.LETKF`) follow the convention of Sakov's
EnKF-Matlab and DAPPER: the radius is the distance at which the taper has
fallen to :math:`e^{-1/2}` (where a Gaussian of standard deviation
``radius`` would be), so

.. math:: c = \kappa \cdot \mathrm{radius}, \qquad
          \kappa = 1/r_\ast \approx 1.7386, \quad
          \mathrm{GC}(r_\ast) = e^{-1/2},

and observations farther than :math:`2 \kappa\,\mathrm{radius} \approx
3.48\,\mathrm{radius}` have no influence. The "localisation radius 4" of the
Lorenz-96 LETKF benchmark (METHODS.md §5) is ``radius=4`` in index units:
half-width :math:`c \approx 6.95`, support :math:`\approx 13.9` grid points
each side. (DAPPER rounds :math:`\kappa` to 1.82; Sakov uses 1.7386, the
exact value used here.) :func:`gaspari_cohn` itself takes the half-width
:math:`c`; :func:`halfwidth` converts a radius.

**Distances.** A :class:`Localization` holds the positions of the state's
grid points and of the observations and gives distances between them:

- :class:`IndexDistance`: generic positions on a line (Lorenz-96: state
  points ``0..n-1``), optionally periodic;
- :class:`GreatCircleDistance`: latitude/longitude in degrees, great-circle
  distance in km.

A state vector of ``channels * n_points`` values (channel-major, i.e.
``x.reshape(channels, n_points)``) shares its grid points across channels:
each grid point is one *local domain* of the LETKF.

References
----------
Gaspari, G., Cohn, S. E. (1999). Construction of correlation functions in two
and three dimensions. Q. J. R. Meteorol. Soc. 125.
Sakov, P., Bertino, L. (2011). Relation between two common localisation
methods for the EnKF. Comput. Geosci. 15.

Examples
--------
>>> import torch
>>> from xlatda.methods.localization import IndexDistance, gaspari_cohn, halfwidth
>>> gaspari_cohn(torch.tensor([0.0, 1.0, 2.0]), 1.0)
tensor([1.0000, 0.2083, 0.0000])
>>> round(float(gaspari_cohn(torch.tensor(4.0), halfwidth(4.0))), 4)  # exp(-1/2)
0.6065
>>> loc = IndexDistance(40)                         # Lorenz-96, every point observed
>>> loc.obs_distances()[0, [1, 20, 39]]
tensor([ 1., 20.,  1.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError

__all__ = [
    "GC_RADIUS_FACTOR",
    "GreatCircleDistance",
    "IndexDistance",
    "Localization",
    "gaspari_cohn",
    "halfwidth",
]

#: Half-width c of the Gaspari-Cohn taper per unit of localisation radius:
#: ``GC(radius; GC_RADIUS_FACTOR * radius) = exp(-1/2)``.
GC_RADIUS_FACTOR = 1.7385885412543750

EARTH_RADIUS_KM = 6371.0


def gaspari_cohn(d: Tensor | Any, c: float) -> Tensor:
    """Gaspari-Cohn taper of distances ``d`` for half-width ``c`` (support ``2c``).

    Parameters
    ----------
    d : Tensor or array-like
        Distances, any shape (the sign is ignored).
    c : float
        Half-width, ``> 0``; ``inf`` gives a taper of ones (no localisation).

    Returns
    -------
    Tensor
        Same shape as ``d``, values in ``[0, 1]`` (floating dtype of ``d``, or
        float64).

    Raises
    ------
    ConfigError
        If ``c`` is not positive.

    Examples
    --------
    >>> import torch
    >>> gaspari_cohn(torch.tensor([0.0, 0.5, 3.0]), 1.5)
    tensor([1.0000, 0.8431, 0.0000])
    """
    if not (isinstance(c, (int, float)) and c > 0):
        raise ConfigError(f"the Gaspari-Cohn half-width c must be a positive number, got {c!r}")
    d = torch.as_tensor(d)
    if not d.is_floating_point():
        d = d.to(torch.float64)
    r = d.abs() / c
    inner = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r * r + 1.0
    rs = r.clamp(min=1.0)
    outer = (
        ((((rs / 12.0 - 0.5) * rs + 0.625) * rs + 5.0 / 3.0) * rs - 5.0) * rs
        + 4.0
        - (2.0 / 3.0) / rs
    )
    out = torch.where(r <= 1.0, inner, torch.where(r < 2.0, outer, torch.zeros_like(r)))
    return out.clamp(0.0, 1.0)


def halfwidth(radius: float) -> float:
    """Gaspari-Cohn half-width ``c`` for a localisation ``radius`` (see module docs).

    Examples
    --------
    >>> round(halfwidth(4.0), 3)
    6.954
    """
    if not (isinstance(radius, (int, float)) and radius > 0):
        raise ConfigError(f"localisation radius must be a positive number, got {radius!r}")
    return GC_RADIUS_FACTOR * float(radius)


class Localization:
    """Positions of state grid points and observations, and distances between them.

    Subclasses set ``n_points``, ``n_obs``, ``channels`` and implement
    ``_pairwise(a, b)``, the distances between two position sets.

    Attributes
    ----------
    n_points : int
        Number of grid points (local domains) D.
    channels : int
        State values per grid point; the state vector has
        ``n_state = channels * n_points`` values, channel-major.
    n_obs : int
        Number of observations P.
    """

    n_points: int
    n_obs: int
    channels: int

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    @property
    def n_state(self) -> int:
        """Length of the state vector, ``channels * n_points``."""
        return self.channels * self.n_points

    # positions of the two sets; subclasses store what _pairwise needs
    _state_pos: Any
    _obs_pos: Any

    def _pairwise(self, a: Any, b: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def obs_distances(self) -> Tensor:
        """Distances grid point -> observation, ``(n_points, n_obs)`` float64 on CPU."""
        return self._pairwise(self._state_pos, self._obs_pos)

    def state_distances(self) -> Tensor:
        """Distances between grid points, ``(n_points, n_points)`` float64 on CPU."""
        return self._pairwise(self._state_pos, self._state_pos)

    def obs_obs_distances(self) -> Tensor:
        """Distances between observations, ``(n_obs, n_obs)`` float64 on CPU."""
        return self._pairwise(self._obs_pos, self._obs_pos)

    def local_observations(
        self,
        c: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Observations within the Gaspari-Cohn support ``2c`` of each grid point.

        Parameters
        ----------
        c : float
            Gaspari-Cohn half-width (``inf``: every observation, weight 1).
        dtype, device
            Of the returned weights (indices go to ``device``).

        Returns
        -------
        index : Tensor
            ``(n_points, K)`` int64 indices into the observations, ``K`` the
            largest number of observations near one grid point; points with
            fewer are padded with weight 0.
        weight : Tensor
            ``(n_points, K)`` taper ``GC(distance; c)``.

        Notes
        -----
        Builds the dense ``(n_points, n_obs)`` distance matrix once and caches
        the result per ``(c, dtype, device)`` on this object.
        """
        dev = torch.device("cpu") if device is None else torch.device(device)
        key = (float(c), dtype, str(dev))
        if key not in self._cache:
            dist = self.obs_distances()
            if dist.shape[-1] == 0:
                k = 0
            elif math.isinf(c):
                k = dist.shape[-1]
            else:
                k = int((dist < 2.0 * c).sum(-1).max())
            dsel, index = torch.topk(dist, k, dim=-1, largest=False)
            weight = gaspari_cohn(dsel, c)
            self._cache[key] = (index.to(dev), weight.to(dtype=dtype, device=dev))
        return self._cache[key]

    def taper(self, radius: float, kind: str = "obs") -> Tensor:
        """Gaspari-Cohn taper of a localisation ``radius`` over the full state.

        Parameters
        ----------
        radius : float
            Localisation radius (see module docs; ``c = halfwidth(radius)``).
        kind : {"obs", "state", "obs_obs"}
            ``"obs"``: ``(n_state, n_obs)`` state-observation taper (for
            ``P H^T``); ``"state"``: ``(n_state, n_state)`` (for ``P``);
            ``"obs_obs"``: ``(n_obs, n_obs)`` (for ``H P H^T``).

        Returns
        -------
        Tensor
            float64 on CPU; state rows repeat over channels.
        """
        c = halfwidth(radius)
        if kind == "obs":
            return gaspari_cohn(self.obs_distances(), c).repeat(self.channels, 1)
        if kind == "state":
            return gaspari_cohn(self.state_distances(), c).repeat(self.channels, self.channels)
        if kind == "obs_obs":
            return gaspari_cohn(self.obs_obs_distances(), c)
        raise ConfigError(f"kind must be 'obs', 'state' or 'obs_obs', got {kind!r}")

    def _set_channels(self, channels: int) -> None:
        if not (isinstance(channels, int) and channels >= 1):
            raise ConfigError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels


def _positions(values: Any, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1) if values is not None else None
    if t is not None and not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} must be finite numbers")
    return t


class IndexDistance(Localization):
    """Distances along one generic dimension (grid index units), optionally periodic.

    Parameters
    ----------
    n : int
        Number of grid points; the state points sit at ``0, 1, ..., n-1``
        (or at ``state_positions``) and, if periodic, the period is ``n``.
    obs_positions : array-like, optional
        ``(P,)`` observation positions in the same units (need not be
        integers); default every grid point, ``0..n-1``.
    periodic : bool
        Periodic domain of length ``n`` (Lorenz-96).
    channels : int
        State values per grid point (state vector ``channels * n``).
    state_positions : array-like, optional
        ``(n,)`` positions of the grid points if not ``0..n-1``.

    Examples
    --------
    >>> loc = IndexDistance(10, obs_positions=[0.5, 9.0])
    >>> loc.obs_distances()[0]
    tensor([0.5000, 1.0000], dtype=torch.float64)
    >>> IndexDistance(10, obs_positions=[9.0], periodic=False).obs_distances()[0]
    tensor([9.], dtype=torch.float64)
    """

    def __init__(
        self,
        n: int,
        obs_positions: Any = None,
        *,
        periodic: bool = True,
        channels: int = 1,
        state_positions: Any = None,
    ) -> None:
        super().__init__()
        if not (isinstance(n, int) and n >= 1):
            raise ConfigError(f"n must be a positive int (number of grid points), got {n!r}")
        self.n_points = n
        self.periodic = bool(periodic)
        self._set_channels(channels)
        state = _positions(state_positions, "state_positions")
        if state is None:
            state = torch.arange(n, dtype=torch.float64)
        if state.numel() != n:
            raise ShapeError(f"state_positions must have n = {n} values, got {state.numel()}")
        obs = _positions(obs_positions, "obs_positions")
        self._state_pos = state
        self._obs_pos = torch.arange(n, dtype=torch.float64) if obs is None else obs
        self.n_obs = int(self._obs_pos.numel())

    def _pairwise(self, a: Tensor, b: Tensor) -> Tensor:
        diff = (a.unsqueeze(-1) - b.unsqueeze(-2)).abs()
        if self.periodic:
            diff = torch.remainder(diff, float(self.n_points))
            diff = torch.minimum(diff, self.n_points - diff)
        return diff

    def __repr__(self) -> str:
        return (
            f"IndexDistance(n={self.n_points}, n_obs={self.n_obs}, "
            f"periodic={self.periodic}, channels={self.channels})"
        )


class GreatCircleDistance(Localization):
    """Great-circle distances (km) between grid points and observations on the sphere.

    Parameters
    ----------
    state_lat, state_lon : array-like
        ``(n_points,)`` latitude and longitude of the grid points, degrees
        (a regular grid must be given as its flattened points).
    obs_lat, obs_lon : array-like
        ``(P,)`` observation latitude and longitude, degrees.
    channels : int
        State values per grid point (state vector ``channels * n_points``).
    earth_radius_km : float
        Sphere radius (6371 km).

    Notes
    -----
    Haversine formula, accurate at small and large separations.

    Examples
    --------
    >>> loc = GreatCircleDistance([0.0, 0.0], [0.0, 90.0], [0.0], [180.0])
    >>> loc.obs_distances().round()
    tensor([[20015.],
            [10008.]], dtype=torch.float64)
    """

    def __init__(
        self,
        state_lat: Any,
        state_lon: Any,
        obs_lat: Any,
        obs_lon: Any,
        *,
        channels: int = 1,
        earth_radius_km: float = EARTH_RADIUS_KM,
    ) -> None:
        super().__init__()
        self._set_channels(channels)
        if not earth_radius_km > 0:
            raise ConfigError(f"earth_radius_km must be positive, got {earth_radius_km!r}")
        self.earth_radius_km = float(earth_radius_km)
        pos = []
        for kind, lat, lon in (("state", state_lat, state_lon), ("obs", obs_lat, obs_lon)):
            la = _positions(lat, f"{kind}_lat")
            lo = _positions(lon, f"{kind}_lon")
            if la.shape != lo.shape:
                raise ShapeError(
                    f"{kind}_lat and {kind}_lon must have the same length, "
                    f"got {la.numel()} and {lo.numel()}"
                )
            if bool((la.abs() > 90).any()):
                raise ConfigError(f"{kind}_lat must lie in [-90, 90] degrees")
            pos.append((torch.deg2rad(la), torch.deg2rad(lo)))
        self._state_pos, self._obs_pos = pos
        self.n_points = int(self._state_pos[0].numel())
        self.n_obs = int(self._obs_pos[0].numel())

    def _pairwise(self, a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
        lat1, lon1 = a[0].unsqueeze(-1), a[1].unsqueeze(-1)
        lat2, lon2 = b[0].unsqueeze(-2), b[1].unsqueeze(-2)
        h = (
            torch.sin(0.5 * (lat2 - lat1)).square()
            + torch.cos(lat1) * torch.cos(lat2) * torch.sin(0.5 * (lon2 - lon1)).square()
        )
        return 2.0 * self.earth_radius_km * torch.asin(h.clamp(0.0, 1.0).sqrt())

    def __repr__(self) -> str:
        return (
            f"GreatCircleDistance(n_points={self.n_points}, n_obs={self.n_obs}, "
            f"channels={self.channels})"
        )
