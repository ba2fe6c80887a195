r"""Local ensemble transform Kalman filter (LETKF) with R-localisation.

Hunt, Kostelich & Szunyogh (2007): every grid point :math:`g` gets its own
ETKF analysis using only the observations near it, each observation's error
variance inflated by the inverse of a distance taper (R-localisation):

.. math::

    r_{g,p} = r_p / \sqrt{\rho_{g,p}}, \qquad
    \rho_{g,p} = \mathrm{GC}(\mathrm{dist}(g, p);\ c).

With the notation of :mod:`xlatda.methods.ensemble` (members as rows,
inflated anomalies :math:`X`, scaled observation anomalies :math:`S`,
scaled innovation :math:`d`), the local quantities are
:math:`S_g = S\,\mathrm{diag}(\rho_g)^{1/2}`,
:math:`d_g = \mathrm{diag}(\rho_g)^{1/2} d`,

.. math::

    C_g = I_N + S_g S_g^\top = V_g \Lambda_g V_g^\top, \quad
    w_g = C_g^{-1} S_g d_g, \quad T_g = V_g \Lambda_g^{-1/2} V_g^\top,

and the state values at :math:`g` (all channels) are updated with
:math:`\bar x_a = \bar x + w_g^\top X`, :math:`X_a = T_g X`. Observations
beyond the support :math:`2c` have :math:`\rho = 0` and are left out, so each
local problem only holds the ``K`` nearest observations (``K`` the largest
count within the support over all points, smaller counts padded with zero
weight). All ``D`` local :math:`N \times N` eigendecompositions are one
batched symmetric eigendecomposition over a ``(*batch, D, N, N)`` tensor
(robust: float64, eigenvalue floor, SVD fallback; see
:func:`~xlatda.methods.ensemble.etkf_transform`): no Python loop over grid
points. With an infinite radius every :math:`\rho = 1` and the
LETKF is the global ETKF.

The taper is the Gaspari-Cohn function with half-width
:math:`c = 1.7386 \times` ``radius`` (the taper equals :math:`e^{-1/2}` at
``radius``; see :mod:`xlatda.methods.localization`). Inflation (before),
RTPP, RTPS and the optional random rotation (after, one rotation per batch
element shared by all grid points so that the ensemble stays spatially
coherent) are as in the global filters.

References
----------
Hunt, B. R., Kostelich, E. J., Szunyogh, I. (2007). Efficient data
assimilation for spatiotemporal chaos: a local ensemble transform Kalman
filter. Physica D 230.
Sakov, P., Bertino, L. (2011). Relation between two common localisation
methods for the EnKF. Comput. Geosci. 15.

Examples
--------
>>> import torch
>>> from xlatda.methods.letkf import LETKF
>>> from xlatda.methods.localization import IndexDistance
>>> g = torch.Generator().manual_seed(0)
>>> ens = torch.randn(8, 40, generator=g, dtype=torch.float64)      # (N, n)
>>> loc = IndexDistance(40, obs_positions=torch.arange(0, 40, 2))     # every 2nd point
>>> hx = ens[:, ::2]                                                  # (N, P)
>>> ana = LETKF(radius=4.0, inflation=1.04).analyse(
...     ens, hx, torch.zeros(20), torch.ones(20), locations=loc)
>>> tuple(ana.shape)
(8, 40)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.ensemble import EnsembleMethod, Prepared, etkf_transform
from xlatda.methods.localization import Localization, halfwidth
from xlatda.methods.registry import methods

__all__ = ["LETKF", "letkf_update"]


def _local_analysis(
    p: Prepared, locations: Any, radius: float, n_params: int
) -> tuple[Tensor, Tensor]:
    """Analysis mean and anomalies: one local ETKF per grid point, batched."""
    if not isinstance(locations, Localization):
        raise ConfigError(
            "the LETKF needs locations=<Localization> (e.g. IndexDistance(n) or "
            f"GreatCircleDistance(...)) giving state-observation distances, got {locations!r}"
        )
    n_members, n_total = p.X.shape[-2], p.X.shape[-1]
    n_state = n_total - n_params
    n_obs = p.S.shape[-1]
    if n_state != locations.n_state or n_obs != locations.n_obs:
        extra = f" (plus {n_params} parameters)" if n_params else ""
        raise ShapeError(
            f"the ensemble has {n_state} state values{extra} and {n_obs} observations but "
            f"{locations!r} describes {locations.n_state} state values "
            f"({locations.channels} channels x {locations.n_points} points) and "
            f"{locations.n_obs} observations"
        )
    c = halfwidth(radius)  # validates; inf stays inf
    index, weight = locations.local_observations(c, dtype=p.X.dtype, device=p.X.device)
    n_points, channels = locations.n_points, locations.channels
    batch = p.X.shape[:-2]

    sqrt_w = weight.sqrt()  # (D, K)
    S_loc = p.S[..., index].transpose(-3, -2) * sqrt_w.unsqueeze(-2)  # (*b, D, N, K)
    d_loc = p.d[..., index] * sqrt_w  # (*b, D, K)
    w, T = etkf_transform(S_loc, d_loc)  # (*b, D, N), (*b, D, N, N)

    # state laid out as (*b, D, N, channels) so that each domain's transform applies
    Xs = p.X[..., :n_state]
    Xp = Xs.reshape(*batch, n_members, channels, n_points).movedim(-1, -3)
    dmean = (w.unsqueeze(-2) @ Xp).squeeze(-2)  # (*b, D, channels)
    mean_a = p.mean[..., :n_state] + dmean.movedim(-2, -1).reshape(*batch, n_state)
    Xa = (T @ Xp).movedim(-3, -1).reshape(*batch, n_members, n_state)
    if n_params:  # global parameters: the unlocalised (global ETKF) transform
        wg, Tg = etkf_transform(p.S, p.d)
        Xt = p.X[..., n_state:]
        mean_t = p.mean[..., n_state:] + (wg.unsqueeze(-2) @ Xt).squeeze(-2)
        mean_a = torch.cat([mean_a, mean_t], -1)
        Xa = torch.cat([Xa, Tg @ Xt], -1)
    return mean_a, Xa


def letkf_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor | float,
    locations: Localization,
    *,
    radius: float,
    inflation: float = 1.0,
    rtps: float = 0.0,
    rtpp: float = 0.0,
    rotate: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """LETKF analysis with Gaspari-Cohn R-localisation (see module docstring).

    Parameters
    ----------
    ensemble : Tensor
        Forecast ensemble ``(*batch, N, n)``, ``n = locations.n_state``
        (channel-major: ``channels`` blocks of ``n_points`` values).
    hx : Tensor
        Observation operator applied to each member, ``(*batch, N, P)``,
        ``P = locations.n_obs``.
    y : Tensor
        Observations ``(*batch, P)`` or ``(P,)``.
    r_std : Tensor or float
        Observation-error standard deviations ``(*batch, P)``, ``(P,)`` or
        scalar.
    locations : Localization
        Positions of grid points and observations (same for the whole batch).
    radius : float
        Localisation radius in the units of ``locations`` (index units, km);
        ``inf`` for none.
    inflation, rtps, rtpp, rotate, generator
        As in :func:`~xlatda.methods.ensemble.etkf_update`.

    Returns
    -------
    Tensor
        Analysis ensemble ``(*batch, N, n)``.

    Raises
    ------
    ShapeError
        If the state or observation count does not match ``locations``.
    ConfigError
        For bad settings or a missing ``locations``.

    Notes
    -----
    Equal to ``LETKF(radius=radius, ...).analyse(...)``. Memory
    ``O(D (N^2 + N K))`` per batch element for ``D`` grid points and ``K``
    local observations; compute ``O(D (N^3 + N^2 K))`` in one batched
    ``eigh``. The local observation lists are computed once per
    ``locations`` object and radius and cached on it.
    """
    method = LETKF(radius=radius, inflation=inflation, rtps=rtps, rtpp=rtpp, rotate=rotate)
    return method.analyse(ensemble, hx, y, r_std, generator=generator, locations=locations)


@methods.register("letkf")
@dataclass(frozen=True, kw_only=True)
class LETKF(EnsembleMethod):
    """Local ETKF with Gaspari-Cohn R-localisation (:func:`letkf_update`).

    Parameters
    ----------
    radius : float
        Localisation radius, required, in the distance units of the
        ``locations`` passed to :meth:`analyse` (grid indices for
        :class:`~xlatda.methods.localization.IndexDistance`, km for
        :class:`~xlatda.methods.localization.GreatCircleDistance`); the
        taper is ``exp(-1/2)`` there and zero beyond ``3.48 * radius``.
        ``inf`` turns localisation off (global ETKF). Lorenz-96: 4.
    inflation, rtps, rtpp, inflation_var, max_inflation, param_inflation, param_rtps, gross_error
        See :class:`~xlatda.methods.ensemble.EnsembleMethod`. An adaptive
        inflation is one value for the whole domain (estimated from all
        observations, un-localised); the gross-error check and the
        diagnostics use all observations too.
    rotate : bool
        Random mean-preserving rotation of the analysis anomalies (one per
        batch element, shared by all grid points).

    Notes
    -----
    With ``n_params > 0`` (:meth:`step`) the last ``n_params`` entries of the
    control vector are global parameters without a position: they are
    updated with the global (unlocalised) ETKF transform of all observations.

    Raises
    ------
    ConfigError
        If ``radius`` is missing or not positive.

    Examples
    --------
    >>> m = LETKF(radius=4.0, inflation=1.04, rotate=True)
    >>> m.radius, m.inflation, m.rotate
    (4.0, 1.04, True)
    """

    name: ClassVar[str] = "letkf"
    radius: float | None = None
    rotate: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.radius
        if not (isinstance(r, (int, float)) and r > 0):
            raise ConfigError(
                "LETKF needs a positive localisation radius in the units of its locations "
                f"(e.g. LETKF(radius=4.0) for Lorenz-96 grid indices), got radius={r!r}"
            )

    def _analysis(self, p, generator, locations, n_params):
        return _local_analysis(p, locations, float(self.radius), n_params)
