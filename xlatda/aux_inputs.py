"""Auxiliary encoder inputs (SLAMS multimodal training): stacking, standardising, masking.

A model fitted with ``aux=`` (:func:`xlatda.fit`) sees, besides the state,
auxiliary fields on the state grid: each auxiliary variable becomes two
channels, its standardised values (NaN set to 0) and an observed/missing
mask. These helpers build those channels for training
(:func:`aux_training`) and for encoding (:func:`with_aux`), lazily where
the inputs are dask-backed.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xlatda.errors import LayoutError
from xlatda.latent_data import as_dataset
from xlatda.layout import CHANNEL_DIM, StateLayout, layout
from xlatda.model import LatentModel

__all__ = ["aux_channels", "aux_stack", "aux_training", "with_aux"]


def aux_stack(aux: xr.Dataset | xr.DataArray, ds: xr.Dataset, L: StateLayout,
               variables: list[str] | None = None) -> tuple[xr.DataArray, StateLayout]:
    """Auxiliary fields stacked like the state, checked against it."""
    aux = L.align(as_dataset(aux))  # on the state's grid order, as the state is
    La = layout(aux, variables=variables)
    if La.spatial_dims != L.spatial_dims or La.spatial_shape != L.spatial_shape:
        raise LayoutError(
            f"aux must be on the state grid {dict(zip(L.spatial_dims, L.spatial_shape))}, got "
            f"{dict(zip(La.spatial_dims, La.spatial_shape))}; regrid or rasterize it first"
        )
    a = La.stack(aux)
    lead = list(L.lead_dims(ds))
    alead = list(La.lead_dims(aux))
    if alead != lead or any(a.sizes[d] != ds.sizes[d] for d in lead):
        raise LayoutError(
            f"aux must have the state's sample dims {[(d, ds.sizes[d]) for d in lead]}, got "
            f"{[(d, a.sizes[d]) for d in alead]}"
        )
    return a, La


def aux_channels(a: xr.DataArray, mean: np.ndarray, std: np.ndarray, dtype) -> xr.DataArray:
    """Standardised values (NaN -> 0) followed by observed masks, along channel (lazy-safe)."""
    m = xr.DataArray(np.asarray(mean, float), dims=[CHANNEL_DIM])
    s = xr.DataArray(np.asarray(std, float), dims=[CHANNEL_DIM])
    observed = a.notnull()
    vals = ((a - m) / s).where(observed, 0.0).astype(dtype)
    out = xr.concat([vals, observed.astype(dtype)], dim=CHANNEL_DIM)
    return out.transpose(*a.dims)


def aux_training(aux, ds: xr.Dataset, L: StateLayout, tdtype) -> tuple[torch.Tensor, dict]:
    a, La = aux_stack(aux, ds, L)
    values = np.asarray(a.values, dtype=np.float64)
    ch = a.dims.index(CHANNEL_DIM)
    moved = np.moveaxis(values, ch, 0).reshape(values.shape[ch], -1)
    mean = np.array([np.nanmean(r) if np.isfinite(r).any() else 0.0 for r in moved])
    std = np.array([np.nanstd(r) if np.isfinite(r).any() else 1.0 for r in moved])
    std = np.where(std > 0, std, 1.0)
    chans = aux_channels(a, mean, std, np.float64).values
    lead = chans.shape[: ch]
    x = torch.as_tensor(chans).reshape(int(np.prod(lead)) if lead else 1, *chans.shape[ch:])
    spec = {"variables": list(La.variables), "channels": list(La.channels),
            "mean": mean.tolist(), "std": std.tolist()}
    return x.to(tdtype), spec


def with_aux(stacked: xr.DataArray, aux, ds: xr.Dataset, model: LatentModel, spec: dict):
    a, _ = aux_stack(aux, ds, model.layout, variables=spec["variables"])
    if a.sizes[CHANNEL_DIM] != len(spec["mean"]):
        raise LayoutError(
            f"aux has {a.sizes[CHANNEL_DIM]} channels, the model was fitted with "
            f"{len(spec['mean'])} ({spec['channels']})"
        )
    chans = aux_channels(a, np.asarray(spec["mean"]), np.asarray(spec["std"]),
                          stacked.dtype).transpose(*stacked.dims)
    # Positional, like the state (join="override"); lazy if either side is.
    combined = xr.concat([stacked, chans], dim=CHANNEL_DIM, join="override", coords="minimal",
                         compat="override")
    C = model.layout.n_channels
    enc = model.encoder

    def fn(x: torch.Tensor) -> torch.Tensor:
        state = model.normalizer.normalize(model._cast(x[:, :C]))
        return enc.encode(state, model._cast(x[:, C:]))

    return combined, fn
