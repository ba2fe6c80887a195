"""The ``.lda`` accessor on Datasets and DataArrays.

Thin by design: each method validates its arguments and hands off to a
public function (``xlatda.layout``, ``xlatda.obs.*``, ``xlatda.metrics``,
``xlatda.api``). It holds no state: xarray rebuilds accessors for every new
object, so nothing is cached on them. A DataArray goes through a
one-variable Dataset; results that are states come back as DataArrays.

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> da = xr.DataArray(np.zeros((2, 3, 4)), dims=("time", "lat", "lon"), name="h",
...                   coords={"lat": ("lat", [0.0, 10.0, 20.0], {"standard_name": "latitude"}),
...                           "lon": ("lon", [0.0, 90.0, 180.0, 270.0],
...                                   {"standard_name": "longitude"})})
>>> da.lda.layout().kind
'latlon'
>>> tuple(da.lda.to_tensor().shape)
(2, 1, 3, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

from xlatda._threads import decoded_size, size_of, with_thread_scope
from xlatda.errors import ConfigError

if TYPE_CHECKING:
    from xlatda.layout import StateLayout

# The functions behind the methods are imported on first use: registering the
# accessor (``import xlatda``) must not import torch.

__all__ = ["DataArrayLdaAccessor", "DatasetLdaAccessor"]


def _own_size(self: _LdaBase, *args: Any, **kwargs: Any) -> int | None:
    return size_of(self._obj)


def _decoded_size(self: _LdaBase, model: Any = None, *args: Any, **kwargs: Any) -> int | None:
    return decoded_size(self._obj, model)


# Every method that runs torch work runs in a thread scope sized by the object
# it is called on (see xlatda._threads: small problems run on one thread).
_scoped = with_thread_scope(size=_own_size)


class _LdaBase:
    """Shared implementation; ``self._ds`` is always a Dataset."""

    _obj: xr.Dataset | xr.DataArray

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    # -- helpers -------------------------------------------------------
    @property
    def _ds(self) -> xr.Dataset:
        obj = self._obj
        if isinstance(obj, xr.DataArray):
            return obj.to_dataset(name=obj.name if obj.name is not None else "data")
        return obj

    def _back(self, result: Any) -> Any:
        """Return states as DataArrays when the accessor was on a DataArray."""
        if isinstance(self._obj, xr.DataArray) and isinstance(result, xr.Dataset):
            name = self._obj.name if self._obj.name is not None else "data"
            if name in result.data_vars and len(result.data_vars) == 1:
                return result[name]
        return result

    # -- layout --------------------------------------------------------
    def layout(self, **kwargs: Any) -> StateLayout:
        """The :class:`~xlatda.StateLayout` of this state (see :func:`xlatda.layout`)."""
        from xlatda.layout import layout

        return layout(self._ds, **kwargs)

    @_scoped
    def to_tensor(self, *, dtype: Any = None, device: Any = None, **layout_kwargs: Any):
        """Tensor ``(sample, [member,] channel, *spatial)``; computes dask data.

        See :meth:`xlatda.StateLayout.to_tensor`.
        """
        from xlatda.layout import layout

        ds = self._ds
        return layout(ds, **layout_kwargs).to_tensor(ds, dtype=dtype, device=device)

    # -- observations --------------------------------------------------
    def sample_points(
        self,
        n: int,
        error_std: float | dict[str, float],
        *,
        seed: int = 0,
        variables: Sequence[str] | None = None,
        times: str = "each",
        noise: bool = True,
        kind: str | None = None,
    ) -> xr.Dataset:
        """Scattered noisy observations of this state (:func:`xlatda.obs.sample_points`)."""
        from xlatda.obs import sample_points

        return sample_points(self._ds, n, error_std, seed=seed, variables=variables,
                             times=times, noise=noise, kind=kind)

    def to_observations(
        self, error_std: float | dict[str, float] | None = None, *, kind: str | None = None
    ) -> xr.Dataset:
        """This gridded field (NaN gaps allowed) as points (:func:`xlatda.obs.from_grid`)."""
        from xlatda.obs import from_grid

        return from_grid(self._ds, error_std, kind=kind)

    def coarsen_obs(
        self, r: int, error_std: float | dict[str, float], *, seed: int | None = None
    ) -> xr.Dataset:
        """Block-mean (footprint) observations (:func:`xlatda.obs.coarsen`)."""
        from xlatda.obs import coarsen

        return coarsen(self._ds, r, error_std, seed=seed)

    def sparsify_obs(
        self, g: int, error_std: float | dict[str, float], *, seed: int | None = None
    ) -> xr.Dataset:
        """Every g-th point as observations (:func:`xlatda.obs.sparsify`)."""
        from xlatda.obs import sparsify

        return sparsify(self._ds, g, error_std, seed=seed)

    @_scoped
    def observe(self, obs: xr.Dataset) -> xr.Dataset:
        """This state seen through the observation operator (:func:`xlatda.obs.observe`)."""
        if not isinstance(obs, xr.Dataset):
            raise ConfigError(f"obs must be an observation Dataset, got {type(obs).__name__}")
        from xlatda.obs import observe

        return observe(self._ds, obs)

    # -- latent models -------------------------------------------------
    @_scoped
    def encode(self, model: Any, *, aux: Any = None, device: Any = None,
               dtype: Any = None) -> xr.Dataset:
        """Encode this state to latent vectors (:func:`xlatda.encode`).

        ``aux``: auxiliary inputs of a multimodal model (fitted with ``aux=``).
        For an observation Dataset (dimension ``obs``), encode the scattered
        values instead (zero-shot for SINR; see :func:`xlatda.encode_obs`).
        """
        from xlatda import api

        if "obs" in self._ds.dims:
            if aux is not None:
                raise ConfigError("aux is for encoding states; observation sets take no aux")
            return api.encode_obs(self._ds, model, device=device, dtype=dtype)
        return api.encode(self._ds, model, aux=aux, device=device, dtype=dtype)

    @_scoped
    def encode_to_zarr(self, model: Any, store: Any, **kwargs: Any) -> xr.Dataset:
        """Stream this (lazy) Dataset's latents into a zarr store region by region.

        Resumable after an interruption; see :func:`xlatda.streaming.encode_to_zarr`.
        """
        from xlatda.streaming import encode_to_zarr

        return encode_to_zarr(self._ds, model, store, **kwargs)

    @with_thread_scope(size=_decoded_size)
    def decode(
        self, model: Any, *, at: xr.Dataset | None = None, device: Any = None, dtype: Any = None
    ) -> xr.Dataset:
        """Decode latent vectors ``z`` back to fields (:func:`xlatda.decode`)."""
        from xlatda import api

        return api.decode(self._obj, model, at=at, device=device, dtype=dtype)

    @_scoped
    def evolve(
        self,
        model: Any,
        *,
        steps: int | None = None,
        lead: Any = None,
        members: int | None = None,
        noise: bool = False,
        theta: Any = None,
        seed: int = 0,
    ) -> xr.Dataset:
        """Integrate latents ``z`` forward in time (:func:`xlatda.evolve`)."""
        from xlatda.forecast import evolve

        return evolve(self._obj, model, steps=steps, lead=lead, members=members, noise=noise,
                      theta=theta, seed=seed)

    @_scoped
    def forecast(
        self,
        model: Any,
        *,
        steps: int | None = None,
        lead: Any = None,
        members: int | None = None,
        noise: bool = False,
        theta: Any = None,
        seed: int = 0,
    ) -> xr.Dataset | xr.DataArray:
        """Forecast this state: encode, evolve, decode (:func:`xlatda.forecast`)."""
        from xlatda.forecast import forecast

        return self._back(forecast(self._ds, model, steps=steps, lead=lead, members=members,
                                   noise=noise, theta=theta, seed=seed))

    # -- assimilation --------------------------------------------------
    @_scoped
    def assimilate(
        self,
        obs: xr.Dataset,
        model: Any = None,
        *,
        method: str = "etkf",
        space: str | None = None,
        members: int | None = None,
        init_std: Any = None,
        seed: int = 0,
        **settings: Any,
    ) -> xr.Dataset | xr.DataArray:
        """One analysis of this state with ``obs`` (:func:`xlatda.assimilate`).

        ``**settings`` are the method's own settings (``inflation=``,
        ``radius=``, ``b_std=``), forwarded by name to the method's dataclass,
        which refuses unknown ones.
        """
        from xlatda.cycle import assimilate

        if not isinstance(obs, xr.Dataset):
            raise ConfigError(f"obs must be an observation Dataset, got {type(obs).__name__}")
        out = assimilate(self._ds, obs, model, method=method, space=space, members=members,
                         init_std=init_std, seed=seed, **settings)
        return self._back(out)

    # -- scores --------------------------------------------------------
    def rmse(self, other: xr.Dataset | xr.DataArray, dim: Any = None, **kwargs: Any):
        """Root mean square error against ``other`` (:func:`xlatda.metrics.rmse`)."""
        from xlatda import metrics

        return self._back(metrics.rmse(self._obj, other, dim=dim, **kwargs))


@xr.register_dataset_accessor("lda")
class DatasetLdaAccessor(_LdaBase):
    """``ds.lda``: latent data assimilation on a Dataset."""


@xr.register_dataarray_accessor("lda")
class DataArrayLdaAccessor(_LdaBase):
    """``da.lda``: latent data assimilation on a DataArray (via a one-variable Dataset)."""
