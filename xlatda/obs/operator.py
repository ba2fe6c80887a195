"""Observation operators from a state layout and an observation table.

The tensor kernels live in :mod:`xlatda.obs_geometry` (interpolation
matrices) and :mod:`xlatda.sparse_interp` (the sparse autograd operator);
this module chooses the right one for the layout kind and maps observation
locations to it:

- ``"latlon"``: bilinear in latitude/longitude, periodic in longitude on
  global grids, across the pole near the poles;
- ``"points"``: inverse-distance weights over the nearest state points
  (``k=1``: nearest point);
- ``"generic"``: linear interpolation along the index (periodic).

It also provides linear-in-time weights (:func:`time_weights`) so that
observations at arbitrary times can be compared with states at model times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xlatda.cf import is_datetime
from xlatda.errors import ObservationError
from xlatda.layout import StateLayout
from xlatda.obs.observation_table import ObservationTable
from xlatda.obs_geometry import (
    grid_interpolation_matrix,
    index_interpolation_matrix,
    nearest_point_matrix,
)
from xlatda.sparse_interp import ObservationOperator

__all__ = ["build_operator", "spatial_matrix", "time_weights"]


def spatial_matrix(
    layout: StateLayout,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    position: np.ndarray | None = None,
    *,
    k: int = 1,
    periodic: bool = True,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> torch.Tensor:
    """Sparse ``(P, S)`` interpolation matrix from the layout's grid to points.

    Columns follow the layout's spatial order (row-major over
    ``layout.spatial_dims``), whatever the order of latitude and longitude.
    """
    if layout.kind == "latlon":
        if lat is None or lon is None:
            raise ObservationError("lat/lon layouts need observation latitudes and longitudes")
        mat = grid_interpolation_matrix(layout.lat, layout.lon, lat, lon, dtype=dtype,
                                        device=device)
        if layout.spatial_dims[0] != layout.axes.lat:
            # The state is laid out (lon, lat): permute columns i*nlon+j -> j*nlat+i.
            nlat, nlon = layout.lat.size, layout.lon.size
            coo = mat.to_sparse_coo().coalesce()
            rows, cols = coo.indices()
            cols = (cols % nlon) * nlat + cols // nlon
            mat = torch.sparse_coo_tensor(
                torch.stack([rows, cols]), coo.values(), mat.shape
            ).coalesce().to_sparse_csr()
        return mat
    if layout.kind == "points":
        return nearest_point_matrix(layout.lat, layout.lon, lat, lon, k=k, dtype=dtype,
                                    device=device)
    n = int(np.prod(layout.spatial_shape))
    return index_interpolation_matrix(n, position, periodic=periodic, dtype=dtype, device=device)


def build_operator(
    layout: StateLayout,
    table: ObservationTable,
    *,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    k: int = 1,
    periodic: bool = True,
) -> ObservationOperator:
    """The observation operator ``H`` for a table over a multi-channel state.

    Returns
    -------
    ObservationOperator
        ``H(x)`` maps ``(..., C, *spatial)`` to ``(..., P)`` (one value per
        table entry). Differentiable, batched.

    Raises
    ------
    ObservationError
        If points lie outside a regional grid or a non-periodic dimension.
    """
    mat = spatial_matrix(layout, table.lat, table.lon, table.position, k=k,
                         periodic=periodic, dtype=dtype, device=device)
    return ObservationOperator(mat, table.channel.to(mat.device), layout.n_channels,
                               spatial_shape=layout.spatial_shape)


def _as_float_time(values: np.ndarray) -> np.ndarray:
    if is_datetime(values):
        arr = np.asarray(values)
        if arr.dtype.kind == "O":  # cftime
            import cftime

            return np.asarray(cftime.date2num(arr, "seconds since 1970-01-01"), dtype=float)
        return arr.astype("datetime64[ns]").astype(np.int64).astype(float) / 1e9
    return np.asarray(values, dtype=float)


def time_weights(
    model_times: np.ndarray, obs_times: np.ndarray, *, tolerance: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-in-time interpolation of model times to observation times.

    Returns
    -------
    lo, hi : ndarray of int (P,)
        Indices of the model times bracketing each observation.
    w : ndarray (P,)
        Weight of ``hi`` (``1 - w`` on ``lo``).

    Raises
    ------
    ObservationError
        If an observation lies outside the span of ``model_times``.
    """
    mt = _as_float_time(model_times)
    ot = _as_float_time(obs_times)
    if mt.size == 1:
        if np.any(np.abs(ot - mt[0]) > tolerance * max(1.0, abs(mt[0]))):
            raise ObservationError(
                "observation times differ from the single state time; select observations "
                "at that time or pass a state with a time dimension covering them"
            )
        zeros = np.zeros(ot.size, dtype=int)
        return zeros, zeros, np.zeros(ot.size)
    span = (mt[0], mt[-1])
    eps = tolerance * max(1.0, abs(span[1] - span[0]))
    outside = (ot < span[0] - eps) | (ot > span[1] + eps)
    if outside.any():
        raise ObservationError(
            f"{int(outside.sum())} observations lie outside the state's time span; "
            "select observations within it (obs.where(..., drop=True)) or extend the state"
        )
    hi = np.clip(np.searchsorted(mt, ot, side="left"), 1, mt.size - 1)
    lo = hi - 1
    w = np.clip((ot - mt[lo]) / (mt[hi] - mt[lo]), 0.0, 1.0)
    return lo, hi, w
