"""Apply the observation operator to a state Dataset: ``H(x)`` at the obs.

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> state = xr.Dataset(
...     {"h": (("lat", "lon"), np.add.outer(np.arange(3.0), np.arange(4.0)), {"units": "m"})},
...     coords={"lat": ("lat", [0.0, 10.0, 20.0], {"standard_name": "latitude"}),
...             "lon": ("lon", [0.0, 10.0, 20.0, 30.0], {"standard_name": "longitude"})})
>>> obs = xr.Dataset({"h": ("obs", [0.0, 0.0], {"error_std": 1.0})},
...                  coords={"lat": ("obs", [5.0, 15.0]), "lon": ("obs", [5.0, 25.0])})
>>> xlatda.obs.observe(state, obs).h.values
array([1., 4.])
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xlatda._bridge import apply_torch
from xlatda.errors import ObservationError
from xlatda.layout import CHANNEL_DIM, StateLayout, layout
from xlatda.obs.contract import OBS_DIM, to_tensors, validate
from xlatda.obs.operator import build_operator, footprint_points, time_weights
from xlatda.obs.spectral import check_interpolation, spectral_matrix
from xlatda.sparse_interp import ObservationOperator

__all__ = ["observe"]


def observe(
    state: xr.Dataset | xr.DataArray,
    obs: xr.Dataset,
    *,
    state_layout: StateLayout | None = None,
    dtype: str | torch.dtype = "float64",
    interpolation: str = "bilinear",
) -> xr.Dataset:
    """Model equivalents of observations: the state seen through ``H``.

    Parameters
    ----------
    state : Dataset or DataArray
        State fields; a time dimension is interpolated linearly to the
        observation times; ``member`` and other sample dims are kept.
    obs : Dataset
        Observation set (its values are not used, only where and when).
    state_layout : StateLayout, optional
        Layout of ``state`` (found from it by default).
    dtype : str or torch.dtype
        Compute dtype.
    interpolation : {"bilinear", "spectral"}
        How a gridded state is read between its nodes: ``"bilinear"`` (the
        layout's observation operator, :func:`~xlatda.obs.operator.build_operator`,
        the same ``H`` the assimilation uses) or ``"spectral"``: the value of
        the field's spherical-harmonic expansion at the point (global Gauss
        or equiangular grids only; :mod:`xlatda.obs.spectral`), the exact
        value of a band-limited field such as the outputs of
        :func:`xlatda.datasets.shallow_water`. Point observations only.

    Returns
    -------
    Dataset
        Same variables and coordinates as ``obs`` (without error std), with
        values ``H(x)``; leading dims of ``state`` other than time kept.
        Lazy when ``state`` is dask-backed.
    """
    if isinstance(state, xr.DataArray):
        state = state.to_dataset(name=state.name if state.name is not None else "data")
    check_interpolation(interpolation)
    L = state_layout or layout(state)
    validate(obs, L, check_domain=False)
    table = to_tensors(obs, L)
    if interpolation == "spectral":
        if footprint_points(table) is not None:
            raise ObservationError(
                "interpolation='spectral' reads point values; these observations are block "
                "means (footprint_* from xlatda.obs.coarsen): use interpolation='bilinear'")
        op = ObservationOperator(spectral_matrix(L, table.lat, table.lon), table.channel,
                                 L.n_channels, spatial_shape=L.spatial_shape)
    else:
        op = build_operator(L, table)
    stacked = L.stack(state)
    tname = L.axes.time
    timed = tname in stacked.dims and table.time is not None
    if timed:
        lo, hi, w = time_weights(np.asarray(state[tname].values), table.time)
        lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
        w_t = torch.as_tensor(w)
        entries = torch.arange(len(table))

        def fn(x: torch.Tensor) -> torch.Tensor:  # (B, T, C, *S) -> (B, P)
            y = op(x)  # (B, T, P)
            wt = w_t.to(y.dtype)
            a, b = y[:, lo_t, entries], y[:, hi_t, entries]
            # at a model time only that time's value: a NaN of the other time
            # (e.g. a cell outside this time's footprint) must not leak in as 0 * NaN
            mix = (1 - wt) * a + wt * b
            return torch.where(wt == 0, a, torch.where(wt == 1, b, mix))

        in_core = [tname, CHANNEL_DIM, *L.spatial_dims]
    else:
        def fn(x: torch.Tensor) -> torch.Tensor:
            return op(x)

        in_core = [CHANNEL_DIM, *L.spatial_dims]
    entry_dim = "_entry"
    values = apply_torch(stacked, fn, in_core=in_core, out_core=[entry_dim],
                         out_sizes={entry_dim: len(table)}, dtype=dtype)
    out = xr.Dataset(coords={k: v for k, v in obs.coords.items()})
    n_obs = obs.sizes[OBS_DIM]
    for name in [v for v in obs.data_vars if not str(v).endswith("_error_std")]:
        sel = np.flatnonzero(table.variable == name)
        row_to_entry = np.full(n_obs, -1)
        row_to_entry[table.obs_index[sel]] = sel
        take = xr.DataArray(np.where(row_to_entry >= 0, row_to_entry, 0), dims=OBS_DIM)
        da = values.isel({entry_dim: take})
        mask = xr.DataArray(row_to_entry >= 0, dims=OBS_DIM)
        out[name] = da.where(mask)
        out[name].attrs = {k: a for k, a in obs[name].attrs.items() if k != "error_std"}
    return out
