"""Latent Datasets: the ``latent`` dimension, provenance attributes, and input checks.

What :func:`xlatda.encode` returns and :func:`xlatda.decode`,
:func:`xlatda.evolve` and :func:`xlatda.fit_score` take: a Dataset with a
variable ``z(..., latent)`` and attributes naming the model that made it.

Examples
--------
>>> import xarray as xr
>>> as_dataset(xr.DataArray([1.0, 2.0], dims="x", name="a")).data_vars["a"].dims
('x',)
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr

from xlatda.errors import ConfigError
from xlatda.model import LatentModel

__all__ = ["LATENT_DIM", "as_dataset", "check_latent", "encoder_needs_grad", "latent_coords",
           "latent_dataset"]

LATENT_DIM = "latent"


def as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        return obj.to_dataset(name=obj.name if obj.name is not None else "data")
    if not isinstance(obj, xr.Dataset):
        raise ConfigError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    return obj


def check_latent(z: xr.Dataset | xr.DataArray, model: LatentModel) -> xr.DataArray:
    if isinstance(z, xr.Dataset):
        if "z" not in z.data_vars:
            raise ConfigError(
                "a latent Dataset needs a variable 'z' (as returned by ds.lda.encode(model))"
            )
        mid = z.attrs.get("xlatda_model_id")
        if mid is not None and mid != model.model_id:
            raise ConfigError(
                f"these latents come from model {mid!r} but decode got model "
                f"{model.model_id!r}; decode with the model that encoded them"
            )
        da = z["z"]
    else:
        da = z
    if LATENT_DIM not in da.dims or da.sizes[LATENT_DIM] != model.latent_dim:
        raise ConfigError(
            f"latents need a dimension {LATENT_DIM!r} of size {model.latent_dim}, got "
            f"{dict(da.sizes)}"
        )
    return da


@functools.lru_cache(maxsize=64)
def latent_coords(latent_dim: int) -> xr.Coordinates:
    """The ``latent`` coordinate ``0 .. latent_dim - 1``, its index built once.

    For :func:`xlatda._bridge.apply_state`, which lends the (immutable) index
    to each result and copies the variable, so results share nothing writable.
    """
    return xr.Coordinates({LATENT_DIM: np.arange(latent_dim)})


def latent_dataset(z: xr.DataArray, model: LatentModel, source: str) -> xr.Dataset:
    """Wrap latent vectors ``z(..., latent)`` as a Dataset with provenance attrs."""
    out = z.to_dataset(name="z")
    if LATENT_DIM not in out.coords:  # (the accessor's fused encode sets it already)
        out = out.assign_coords({LATENT_DIM: np.arange(model.latent_dim)})
    out["z"].attrs = {"long_name": "latent state", "units": "1"}
    out.attrs = {
        "xlatda_model_id": model.model_id,
        "xlatda_encoder": model.encoder_kind,
        "xlatda_latent_dim": model.latent_dim,
        "xlatda_variables": list(model.layout.variables),
        "history": f"{source} with xlatda {__import__('xlatda').__version__}",
    }
    return out


def encoder_needs_grad(model: LatentModel) -> bool:
    return bool(getattr(model.encoder, "encode_needs_grad", False))
