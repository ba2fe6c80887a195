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

import numpy as np
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


def _encode_states(ds: xr.Dataset, model: Any, device: Any, dtype: Any) -> xr.Dataset:
    """:func:`xlatda.encode` without auxiliary inputs, stacking and normalising in one copy.

    Same result as ``xlatda.encode(ds, model)`` (tests check they are
    identical, also with a fixed missing mask, and that NaN/inf fields are
    refused alike); :func:`xlatda._bridge.apply_state` fuses the stack, the
    normalisation and the encoder into one pass (one dask task per chunk).
    """
    from xlatda import api
    from xlatda._bridge import apply_state
    from xlatda.latent_data import latent_coords
    from xlatda.model import LatentModel

    if not isinstance(model, LatentModel):
        return api.encode(ds, model, device=device, dtype=dtype)
    ds = model.layout.align(ds)  # the model's grid in another order: reordered onto it
    dev, tdtype = model.place(device, dtype)
    # The work of xlatda.encode: NaN/inf refused (outside the model's fixed
    # mask), masked points filled with 0 after normalising.
    # An encoder that starts by subtracting a fixed field (PCA's mean) lets the
    # bridge take it off in its normalising pass (same values, no pass or array
    # of the encoder's own for it).
    encode, center = model.encoder.encode, None
    if hasattr(model.encoder, "encode_centered"):
        encode, center = model.encoder.encode_centered, model.encoder.input_center
    z = apply_state(ds, model.layout, encode, normalizer=model.normalizer, center=center,
                    out_core=[api.LATENT_DIM], out_sizes={api.LATENT_DIM: model.latent_dim},
                    out_coords=latent_coords(model.latent_dim),
                    device=dev, dtype=tdtype,
                    grad=bool(getattr(model.encoder, "encode_needs_grad", False)),
                    missing=model.missing, check_finite="fields to encode",
                    nonfinite_propagates=bool(getattr(model.encoder, "nonfinite_propagates",
                                                      False)))
    return api.latent_dataset(z, model, f"encoded by {model.encoder_kind}")


def _decode_states(z: Any, model: Any, device: Any, dtype: Any) -> xr.Dataset:
    """:func:`xlatda.decode` on the training layout, denormalising in place.

    Same result as ``xlatda.decode(z, model)`` (tests check they are
    identical); the decoder's output is mapped back to physical units in
    place instead of through two new arrays (the model's fixed mask set to
    NaN in the same pass), and becomes the Dataset's variables without a
    further copy.
    """
    from xlatda import api
    from xlatda._bridge import apply_torch
    from xlatda.layout import CHANNEL_DIM
    from xlatda.model import LatentModel

    latent = z["z"] if isinstance(z, xr.Dataset) and "z" in z.data_vars else z
    if (not isinstance(model, LatentModel) or not isinstance(latent, xr.DataArray)
            or (isinstance(z, xr.Dataset) and z.attrs.get("xlatda_model_id", model.model_id)
                != model.model_id)
            or latent.sizes.get(api.LATENT_DIM) != model.latent_dim):
        return api.decode(z, model, device=device, dtype=dtype)  # raises the right error
    L = model.layout
    dev, tdtype = model.place(device, dtype)
    out_dtype = np.result_type(*[np.dtype(s.dtype) for s in L.specs])
    sizes = {CHANNEL_DIM: L.n_channels, **dict(zip(L.spatial_dims, L.spatial_shape))}
    fields = apply_torch(latent, model.encoder.decode, in_core=[api.LATENT_DIM],
                         out_core=[CHANNEL_DIM, *L.spatial_dims], out_sizes=sizes,
                         device=dev, dtype=tdtype, denormalize=model.normalizer,
                         missing=model.missing)
    if fields.dtype != out_dtype and out_dtype.kind == "f":
        fields = fields.astype(out_dtype)
    return L.unstack(fields)


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
        if aux is None:
            return _encode_states(self._ds, model, device, dtype)
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

        if at is None:
            return _decode_states(self._obj, model, device, dtype)
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
