"""Point values of a band-limited global field: spectral interpolation to observations.

A field on a global Gauss (or equiangular) latitude-longitude grid is, for a
spectral model, the grid image of a spherical-harmonic expansion; its value
between the nodes is that expansion, not the bilinear blend of the four
nearest nodes. On the 32 x 64 outputs of :func:`xlatda.datasets.shallow_water`
(truncated to T31, so exactly band-limited) bilinear interpolation misses the
vorticity at random points by about 0.2 of its standard deviation, twice a
typical observation error: synthetic point observations drawn that way
carry an interpolation error that a grid decoder with a bilinear operator
shares (and is rewarded for) and a mesh-free decoder that evaluates the
continuous field (SINR) is charged for.

:func:`spectral_matrix` gives the ``(P, S)`` operator that reads the
expansion at points (:meth:`xlatda.sphere.SphericalHarmonicTransform.point_matrix`);
:func:`xlatda.obs.observe` and :func:`xlatda.obs.sample_points` use it with
``interpolation="spectral"``.

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.shallow_water(nlat=16, nlon=32, hours=2, trajectories=1,
...                                    model_grid=(32, 64), progress=False)
>>> truth = ds.isel(trajectory=0, time=[0])
>>> obs = xlatda.obs.sample_points(truth, n=5, error_std=1.0, noise=False,
...                                interpolation="spectral", seed=0)
>>> obs.sizes["obs"]
5
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xlatda.errors import ConfigError
from xlatda.layout import StateLayout
from xlatda.sphere.grids import equiangular_grid, gaussian_grid
from xlatda.sphere.transform import SphericalHarmonicTransform

__all__ = ["INTERPOLATIONS", "check_interpolation", "global_grid", "spectral_matrix"]

#: How :func:`xlatda.obs.observe` reads a gridded state at observation points.
INTERPOLATIONS = ("bilinear", "spectral")

_TOL = 1e-6  # degrees


def check_interpolation(interpolation: str) -> str:
    """Refuse an unknown interpolation name (before any work)."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    return interpolation


def global_grid(layout: StateLayout) -> tuple[str, bool, np.ndarray]:
    """The grid kind, whether its rows run south to north, and its longitudes; or refuse.

    Raises
    ------
    ConfigError
        Unless the layout is a global Gauss or equiangular grid with
        equally spaced increasing longitudes.
    """
    if layout.kind != "latlon":
        raise ConfigError(
            "interpolation='spectral' needs a gridded latitude-longitude state; this one is "
            f"{layout.kind!r}: use interpolation='bilinear'"
        )
    lat, lon = layout.lat, layout.lon
    nlat, nlon = lat.size, lon.size
    for kind, make in (("gauss", gaussian_grid), ("equiangular", equiangular_grid)):
        ref = make(nlat)[0].numpy()
        matches = [np.allclose(lat, rows, atol=_TOL, rtol=0.0) for rows in (ref, ref[::-1])]
        if not any(matches):
            continue
        flipped = not matches[0]
        steps = np.diff(np.concatenate([lon, [lon[0] + 360.0]]))
        if not np.allclose(steps, 360.0 / nlon, atol=_TOL, rtol=0.0):
            raise ConfigError(
                "interpolation='spectral' needs longitudes equally spaced over the whole "
                f"circle (360 / {nlon} degrees, increasing); got steps from {steps.min():g} to "
                f"{steps.max():g}: use interpolation='bilinear'"
            )
        return kind, flipped, lon
    raise ConfigError(
        f"interpolation='spectral' needs a global Gauss or equiangular grid (as "
        f"xlatda.sphere.gaussian_grid({nlat}) / equiangular_grid({nlat})); these "
        f"{nlat} latitudes are neither: use interpolation='bilinear'"
    )


def spectral_matrix(layout: StateLayout, lat: Any, lon: Any, *,
                    dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
    """Dense ``(P, S)`` map from the layout's grid to the expansion's values at points.

    The expansion has the grid's exact truncation (``nlat - 1`` on a Gauss
    grid, ``(nlat - 1) // 2`` on an equiangular one, order below
    ``nlon / 2``). Columns follow the layout's spatial order, whichever of
    latitude and longitude comes first and whichever way the rows run.

    Raises
    ------
    ConfigError
        For a state that is not on a global Gauss or equiangular grid.
    """
    kind, flipped, grid_lon = global_grid(layout)
    nlat, nlon = layout.lat.size, layout.lon.size
    sht = SphericalHarmonicTransform(nlat, nlon, grid=kind, dtype=torch.float64)
    mat = sht.point_matrix(torch.as_tensor(np.asarray(lat, float)),
                           torch.as_tensor(np.asarray(lon, float)),
                           grid_lon=torch.tensor(np.asarray(grid_lon, float)))
    mat = mat.reshape(-1, nlat, nlon)
    if flipped:  # the layout's rows run south to north
        mat = mat.flip(1)
    if layout.spatial_dims[0] != layout.axes.lat:
        mat = mat.transpose(1, 2)
    return mat.reshape(mat.shape[0], -1).to(dtype=dtype, device=device)
