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

Footprint (area) observations, such as the block means of
:func:`xlatda.obs.coarsen`, carry the points they average and their weights
(``footprint_*`` in the :class:`~xlatda.obs.ObservationTable`): their row of
``H`` is the weighted sum of the point rows at those points
(:func:`footprint_points` gives the expansion, which latent operators
``H o D`` use to decode at the footprint's points). On a grid whose cell
centres are the footprint points, a row is exactly the mean over the block.

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

__all__ = ["build_operator", "footprint_points", "spatial_matrix", "time_weights"]


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


def footprint_points(table: ObservationTable) -> dict[str, Any] | None:
    """The points each entry of a table averages, flattened (None: all points).

    Parameters
    ----------
    table : ObservationTable
        A table with or without footprints.

    Returns
    -------
    dict or None
        None when the table has no footprint. Otherwise ``lat``, ``lon``,
        ``position`` (``(Q,)`` arrays or None): the expanded points;
        ``entry`` (``(Q,)`` int): the table entry each point belongs to;
        ``weight`` (``(Q,)``): its weight, summing to 1 per entry. Entries
        without a footprint (a zero or NaN row) appear once, at their own
        location, with weight 1. Points are ordered by entry, then by
        footprint column.

    Raises
    ------
    ObservationError
        If a footprint weight is negative or not finite where positive.
    """
    w = table.footprint_weight
    if w is None:
        return None
    w = np.nan_to_num(np.asarray(w, dtype=float), nan=0.0)
    if w.ndim != 2 or w.shape[0] != len(table) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ObservationError(
            "footprint weights must be a (P, K) array of finite non-negative numbers; "
            "rebuild the observations with xlatda.obs.coarsen or fix footprint_weight"
        )
    point = w.sum(1) == 0
    w = np.where(point[:, None], 0.0, w)
    total = np.where(point, 1.0, w.sum(1))
    w = w / total[:, None]
    k = w.shape[1]
    # one extra column per entry: the entry's own location (weight 1 for points)
    weight = np.concatenate([w, point[:, None].astype(float)], 1)
    keep = weight > 0
    entry = np.broadcast_to(np.arange(len(table))[:, None], weight.shape)[keep]

    def expand(fp, centre):
        if centre is None:
            return None
        centre = np.asarray(centre, dtype=float)
        cols = (np.zeros((len(table), k)) if fp is None
                else np.nan_to_num(np.asarray(fp, dtype=float), nan=0.0))
        return np.concatenate([cols, centre[:, None]], 1)[keep]

    return {"lat": expand(table.footprint_lat, table.lat),
            "lon": expand(table.footprint_lon, table.lon),
            "position": expand(table.footprint_position, table.position),
            "entry": entry, "weight": weight[keep]}


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
    fp = footprint_points(table)
    if fp is None:
        mat = spatial_matrix(layout, table.lat, table.lon, table.position, k=k,
                             periodic=periodic, dtype=dtype, device=device)
    else:
        mat = _footprint_matrix(layout, fp, len(table), k=k, periodic=periodic, dtype=dtype,
                                device=device)
    return ObservationOperator(mat, table.channel.to(mat.device), layout.n_channels,
                               spatial_shape=layout.spatial_shape)


def _footprint_matrix(layout: StateLayout, fp: dict[str, Any], n_entries: int, *, k: int,
                      periodic: bool, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``(P, S)``: each entry's row the weighted sum of its footprint points' rows."""
    pts = spatial_matrix(layout, fp["lat"], fp["lon"], fp["position"], k=k, periodic=periodic,
                         dtype=torch.float64, device="cpu").to_sparse_coo().coalesce()
    q, cols = pts.indices().numpy()
    vals = pts.values().numpy() * fp["weight"][q]
    keep = vals != 0  # exact zeros dropped: a NaN outside the footprint never enters
    idx = torch.as_tensor(np.stack([fp["entry"][q][keep], cols[keep]]))
    n_cols = int(pts.shape[1])
    mat = torch.sparse_coo_tensor(idx, torch.as_tensor(vals[keep]), (n_entries, n_cols),
                                  check_invariants=False)
    return mat.coalesce().to(dtype=dtype, device=device).to_sparse_csr()


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
