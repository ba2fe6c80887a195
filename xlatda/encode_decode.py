"""Encode states to latent Datasets and decode them back, on the grid or anywhere.

These are :func:`xlatda.encode` and :func:`xlatda.decode` (also
``ds.lda.encode`` / ``z.lda.decode``): they check the input against the
model's layout, turn it into tensors through :mod:`xlatda._bridge` (lazily,
chunk by chunk over sample dimensions), call the model, and put CF metadata
back.

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.lorenz96(n=8, steps=60, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
>>> z = encode(ds, model)
>>> z.z.dims
('time', 'latent')
>>> float(abs(decode(z, model).x - ds.x).max()) < 1e-3
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda._bridge import apply_torch
from xlatda._threads import decoded_size, with_thread_scope
from xlatda.aux_inputs import with_aux
from xlatda.cf import find_axes
from xlatda.errors import ConfigError, LayoutError
from xlatda.latent_data import (
    LATENT_DIM,
    as_dataset,
    check_latent,
    encoder_needs_grad,
    latent_dataset,
)
from xlatda.layout import CHANNEL_DIM
from xlatda.model import LatentModel
from xlatda.validation import finite_inputs, refuse_unknown_keywords

__all__ = ["decode", "encode"]


@refuse_unknown_keywords
@with_thread_scope
def encode(
    ds: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    aux: xr.Dataset | xr.DataArray | None = None,
    device: Any = None,
    dtype: Any = None,
) -> xr.Dataset:
    """Encode states to latent vectors.

    Parameters
    ----------
    ds : Dataset or DataArray
        States on the model's layout (same variables and grid; the grid may
        come in another order: latitudes south to north, longitudes 0..360,
        ``(lon, lat)`` dims); any sample dims (time, trajectory, member) are
        kept.
    model : LatentModel
        A fitted model.
    aux : Dataset or DataArray, optional
        Auxiliary inputs for a model fitted with ``aux=`` (same variables as
        in training, on the same grid and samples as ``ds``); omitted, they
        are treated as missing everywhere.
    device, dtype :
        Where and in which precision to compute (default: the model's).

    Returns
    -------
    Dataset
        Variable ``z`` over the sample dims plus ``latent``, with provenance
        attrs. Lazy when ``ds`` is dask-backed (chunks along sample dims).
    """
    if aux is None and isinstance(model, LatentModel):
        return _encode_fused(as_dataset(ds), model, device, dtype)
    return _encode_general(ds, model, aux=aux, device=device, dtype=dtype)


def _encode_general(ds: Any, model: LatentModel, *, aux: Any = None, device: Any = None,
                    dtype: Any = None) -> xr.Dataset:
    """:func:`encode` through the layout's stack and :func:`~xlatda._bridge.apply_torch`:
    the path of models with auxiliary inputs, and the reference the fused path is
    tested against (``tests/test_accessor_fused.py``)."""
    L = model.layout
    ds = L.align(as_dataset(ds))  # the model's grid in another order: reordered onto it
    stacked = L.stack(ds)  # checks ds against the layout first
    dev, tdtype = model.place(device, dtype)
    fn = finite_inputs(model.encode_tensor, what="fields to encode", allowed=model.missing)
    if aux is not None:
        spec = getattr(model.encoder, "aux_spec", None)
        if not spec:
            raise ConfigError(
                "this model was fitted without auxiliary inputs; drop aux= or refit with "
                "xlatda.fit(ds, ..., aux=aux)"
            )
        stacked, fn = with_aux(stacked, aux, ds, model, spec)
    z = apply_torch(stacked, fn, in_core=[CHANNEL_DIM, *L.spatial_dims],
                    out_core=[LATENT_DIM], out_sizes={LATENT_DIM: model.latent_dim},
                    device=dev, dtype=tdtype, grad=encoder_needs_grad(model))
    return latent_dataset(z, model, f"encoded by {model.encoder_kind}")



def _encode_fused(ds: xr.Dataset, model: LatentModel, device: Any, dtype: Any) -> xr.Dataset:
    """:func:`encode` without auxiliary inputs, stacking and normalising in one copy.

    Identical to :func:`_encode_general` (tests check it, also with a fixed
    missing mask, and that NaN/inf fields are refused alike):
    :func:`xlatda._bridge.apply_state` fuses the stack, the normalisation and
    the encoder into one pass (one dask task per chunk).
    """
    from xlatda._bridge import apply_state
    from xlatda.latent_data import latent_coords

    ds = model.layout.align(ds)  # the model's grid in another order: reordered onto it
    dev, tdtype = model.place(device, dtype)
    # NaN/inf refused (outside the model's fixed mask), masked points filled with 0
    # after normalising. An encoder that starts by subtracting a fixed field (PCA's
    # mean) lets the bridge take it off in its normalising pass (same values, no pass
    # or array of the encoder's own for it).
    encode_fn, center = model.encoder.encode, None
    if hasattr(model.encoder, "encode_centered"):
        encode_fn, center = model.encoder.encode_centered, model.encoder.input_center
    z = apply_state(ds, model.layout, encode_fn, normalizer=model.normalizer, center=center,
                    out_core=[LATENT_DIM], out_sizes={LATENT_DIM: model.latent_dim},
                    out_coords=latent_coords(model.latent_dim),
                    device=dev, dtype=tdtype,
                    grad=bool(getattr(model.encoder, "encode_needs_grad", False)),
                    missing=model.missing, check_finite="fields to encode",
                    nonfinite_propagates=bool(getattr(model.encoder, "nonfinite_propagates",
                                                      False)))
    return latent_dataset(z, model, f"encoded by {model.encoder_kind}")


@refuse_unknown_keywords
@with_thread_scope(size=decoded_size)
def decode(
    z: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    at: xr.Dataset | None = None,
    device: Any = None,
    dtype: Any = None,
) -> xr.Dataset:
    """Decode latent vectors to fields on the training layout, or anywhere.

    Parameters
    ----------
    z : Dataset or DataArray
        Latents as returned by :func:`encode` (or evolved).
    model : LatentModel
        The model that encoded them.
    at : Dataset, optional
        Where to decode instead of the training grid: an observation-like
        Dataset with dimension ``obs`` and latitude/longitude (or generic
        position) coordinates, or a Dataset holding a latitude/longitude grid.
        SINR evaluates its decoder there directly (mesh-free); other encoders
        interpolate from the training grid.
    device, dtype :
        Compute device and dtype (default: the model's).

    Returns
    -------
    Dataset
        On the training layout: identical in structure, coordinates and
        attributes to the training data, with the sample coords of ``z``.
        With ``at``: every state variable at those points or on that grid.
        Lazy when ``z`` is dask-backed.
    """
    if at is None:
        return _decode_fused(z, model, device, dtype)
    da = check_latent(z, model)
    dev, tdtype = model.place(device, dtype)
    return _decode_at(da, model, at, dev, tdtype)


def _decode_general(z: Any, model: LatentModel, device: Any = None,
                    dtype: Any = None) -> xr.Dataset:
    """:func:`decode` on the training layout through :func:`~xlatda._bridge.apply_torch`
    and a masking ``where``: the reference :func:`_decode_fused` is tested against, and
    what gives the right error for latents the fused path does not take."""
    L = model.layout
    fields = _decode_on_grid(check_latent(z, model), model, model.decode_tensor, device, dtype)
    if model.missing is not None:
        keep = xr.DataArray(~model.missing, dims=[CHANNEL_DIM, *L.spatial_dims])
        fields = fields.where(keep)
    return L.unstack(fields)


def _decode_fused(z: Any, model: Any, device: Any, dtype: Any) -> xr.Dataset:
    """:func:`decode` on the training layout, denormalising in place.

    Identical to :func:`_decode_general` (tests check it); the decoder's output
    is mapped back to physical units in place instead of through two new arrays
    (the model's fixed mask set to NaN in the same pass), and becomes the
    Dataset's variables without a further copy. Anything else (not a
    LatentModel, another model's latents, the wrong latent size) goes the
    general way, which raises the right error.
    """
    latent = z["z"] if isinstance(z, xr.Dataset) and "z" in z.data_vars else z
    if (not isinstance(model, LatentModel) or not isinstance(latent, xr.DataArray)
            or (isinstance(z, xr.Dataset) and z.attrs.get("xlatda_model_id", model.model_id)
                != model.model_id)
            or latent.sizes.get(LATENT_DIM) != model.latent_dim):
        return _decode_general(z, model, device, dtype)
    fields = _decode_on_grid(latent, model, model.encoder.decode, device, dtype,
                             denormalize=model.normalizer, missing=model.missing)
    return model.layout.unstack(fields)


def _decode_on_grid(da: xr.DataArray, model: LatentModel, fn: Any, device: Any, dtype: Any,
                    **bridge: Any) -> xr.DataArray:
    """``fn`` of the latents through :func:`~xlatda._bridge.apply_torch` onto the stacked
    training grid ``(..., channel, *spatial)``, in the layout's floating dtype (the two
    decode paths; ``bridge``: the fused path's in-place denormalisation and mask)."""
    L = model.layout
    dev, tdtype = model.place(device, dtype)
    out_dtype = np.result_type(*[np.dtype(s.dtype) for s in L.specs])
    sizes = {CHANNEL_DIM: L.n_channels, **dict(zip(L.spatial_dims, L.spatial_shape))}
    fields = apply_torch(da, fn, in_core=[LATENT_DIM], out_core=[CHANNEL_DIM, *L.spatial_dims],
                         out_sizes=sizes, device=dev, dtype=tdtype, **bridge)
    if fields.dtype != out_dtype and out_dtype.kind == "f":
        fields = fields.astype(out_dtype)
    return fields


def _decode_at(da: xr.DataArray, model: LatentModel, at: xr.Dataset, dev, tdtype) -> xr.Dataset:
    L = model.layout
    if "obs" in at.dims:
        axes = find_axes(at) if L.kind != "generic" else None
        if L.kind == "generic":
            pos = np.asarray(at[L.spatial_dims[0]].values, float)
            points = model.points_tensor(position=pos)
            coords = {L.spatial_dims[0]: at[L.spatial_dims[0]]}
        else:
            if axes.lat is None:
                raise LayoutError("`at` has no latitude/longitude coordinates along 'obs'")
            points = model.points_tensor(at[axes.lat].values, at[axes.lon].values)
            coords = {axes.lat: at[axes.lat], axes.lon: at[axes.lon]}
        shape_dims, shape = ["obs"], (at.sizes["obs"],)
    else:
        axes = find_axes(at)
        if axes.lat is None or at[axes.lat].ndim != 1:
            raise LayoutError(
                "`at` must be points along 'obs' or a Dataset with 1-D latitude and longitude "
                "coordinates (a grid)"
            )
        glat, glon = np.meshgrid(at[axes.lat].values, at[axes.lon].values, indexing="ij")
        points = model.points_tensor(glat.ravel(), glon.ravel())
        coords = {axes.lat: at[axes.lat], axes.lon: at[axes.lon]}
        shape_dims = [at[axes.lat].dims[0], at[axes.lon].dims[0]]
        shape = glat.shape
    n_pts = points.shape[0]
    C = L.n_channels
    all_points = points.repeat(C, 1)
    channel = torch.arange(C, device=points.device).repeat_interleave(n_pts)

    def fn(z: torch.Tensor) -> torch.Tensor:
        vals = model.decode_points(z, all_points, channel)
        return vals.reshape(z.shape[0], C, *shape)

    sizes = {CHANNEL_DIM: C, **dict(zip(shape_dims, shape))}
    fields = apply_torch(da, fn, in_core=[LATENT_DIM], out_core=[CHANNEL_DIM, *shape_dims],
                         out_sizes=sizes, device=dev, dtype=tdtype)
    out = xr.Dataset(coords=coords)
    for i, label in enumerate(L.channels):
        name = label.replace("@", "_") if "@" in label else label
        spec = next(s for s in L.specs if s.name == label.split("@")[0])
        out[name] = fields.isel({CHANNEL_DIM: i}, drop=True)
        out[name].attrs = dict(spec.attrs)
    for c, v in da.coords.items():
        if c != LATENT_DIM and set(v.dims) <= set(fields.dims):
            out = out.assign_coords({c: v})
    out.attrs = {"history": f"decoded by {model.encoder_kind} at {n_pts} points",
                 "xlatda_model_id": model.model_id}
    return out
