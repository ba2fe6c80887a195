"""The zarr model store: config as JSON attributes, weights as arrays.

Layout of a store (a zarr v3 group)::

    model.zarr/
      attrs["xlatda"] = {format, model_id, layout, normalizer, time_step,
                         history, versions, parts: {encoder: {kind, config},
                         dynamics: {...}, model_error: {...}, score: {...}}}
      encoder/<tensor name>       one array per state_dict entry
      dynamics/<tensor name>
      model_error/<tensor name>
      score/<tensor name>         optional: the score prior of method="score"
      prior/<tensor name>         optional: the latent prior (mean, scale)

The score part (:class:`~xlatda.methods.diffusion.ScorePrior`) holds the
ε-network's weights and the latent standardisation as arrays; its config
(network kind and constructor arguments, window, time step, schedule) is
JSON. Stores written before it existed open unchanged.

A pixel-space score model (:class:`xlatda.generative.PixelScoreModel`) is
written the same way with format ``xlatda-score/1``: layout, normaliser and
one ``score`` part, no encoder; :func:`open_model` returns it as such.

Every weight is stored with its exact dtype and compressed with numcodecs'
Zstd, so a round trip is bit-exact. Opening a store reads JSON and arrays
only: it never unpickles and never runs code from the store; modules are
rebuilt from registries by name, and unknown names are refused.

Writes go to a temporary sibling folder that is renamed into place at the
end, so an interrupted or failed save never leaves a half-written model at
the target, and an existing model is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from xlatda._version import __version__
from xlatda.errors import ModelStoreError, XlatdaError
from xlatda.layout import StateLayout
from xlatda.model import LatentModel
from xlatda.normalize import Normalizer

__all__ = ["from_state", "open_model", "save_model", "to_state"]

FORMAT = "xlatda-model/1"
SCORE_FORMAT = "xlatda-score/1"
_PARTS = ("encoder", "dynamics", "model_error", "score", "prior")


def _module_class(part: str, kind: str) -> type:
    """The class to rebuild a part from: looked up by name, never unpickled."""
    if part == "encoder":
        from xlatda.encoders import encoders

        return encoders.get(kind)
    if part == "dynamics":
        from xlatda.dynamics import dynamics

        return dynamics.get(kind)
    if part == "prior":
        from xlatda.prior import LatentPrior

        if kind != LatentPrior.kind:
            raise ModelStoreError(f"unknown prior part kind {kind!r}; expected 'gaussian'")
        return LatentPrior
    if part == "score":
        from xlatda.methods.diffusion import ScorePrior

        if kind != ScorePrior.kind:
            raise ModelStoreError(f"unknown score part kind {kind!r}; expected 'score_prior'")
        return ScorePrior
    from xlatda.uncertainty import ModelError

    return ModelError  # one class; its kind (scalar/diagonal/cholesky) is in the config


def _versions() -> dict[str, str]:
    import numcodecs
    import xarray

    return {"xlatda": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__, "xarray": xarray.__version__,
            "numpy": np.__version__}


def _compressor():
    # numcodecs' Zstd, wrapped for zarr v3 (zarr >= 3.1.3 ships the wrapper;
    # older zarr versions take it from numcodecs itself).
    try:
        from zarr.codecs.numcodecs import Zstd
    except ImportError:  # pragma: no cover - older zarr
        from numcodecs.zarr3 import Zstd
    return Zstd(level=5)


def _write_module(group: zarr.Group, part: str, module: nn.Module) -> dict[str, Any]:
    sub = group.create_group(part)
    names = []
    for name, tensor in module.state_dict().items():
        arr = tensor.detach().cpu().contiguous()
        if arr.dtype == torch.bfloat16:
            raise ModelStoreError(f"{part}.{name} is bfloat16; cast the model to float32 first")
        values = arr.numpy()
        key = name.replace("/", "__")
        shape = values.shape if values.ndim else (1,)
        out = sub.create_array(key, shape=shape, dtype=values.dtype,
                               chunks=shape if values.size else (1,) * len(shape),
                               compressors=[_compressor()], fill_value=None)
        out[...] = values.reshape(shape)
        out.attrs["scalar"] = values.ndim == 0
        names.append([name, key])
    config = module.config
    json.dumps(config)  # refuse what JSON cannot hold, before the rename
    return {"kind": module.kind, "config": config, "tensors": names}


def _parts_of(model: Any) -> tuple[str, ...]:
    from xlatda.generative import PixelScoreModel

    if isinstance(model, PixelScoreModel):
        return ("score",)
    if not isinstance(model, LatentModel):
        raise ModelStoreError(
            f"can only save a LatentModel or a PixelScoreModel, got {type(model).__name__}"
        )
    return _PARTS


def save_model(model: Any, path: Any, *, overwrite: bool = False) -> None:
    """Write ``model`` to a zarr v3 store at ``path``.

    Parameters
    ----------
    model : LatentModel or xlatda.generative.PixelScoreModel
        The model to save.
    path : str or path-like
        Target folder (by convention ending in ``.zarr``).
    overwrite : bool
        Replace an existing store. Without it an existing target is refused
        before anything is written.

    Raises
    ------
    ModelStoreError
        If the target exists (and ``overwrite`` is False), or the write fails;
        the target is then left as it was.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise ModelStoreError(
            f"{str(target)!r} already exists; pass overwrite=True to replace it or choose "
            "another path"
        )
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        with warnings.catch_warnings():
            # numcodecs' zarr v3 codecs warn that they are not in the core spec.
            warnings.filterwarnings("ignore", message=".*Numcodecs codecs are not in the Zarr.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="numcodecs")
            group = zarr.open_group(str(tmp / "store"), mode="w-", zarr_format=3)
            parts = {}
            for part in _parts_of(model):
                module = getattr(model, part)
                if module is not None:
                    parts[part] = _write_module(group, part, module)
            group.attrs["xlatda"] = _meta(model, parts)
        built = tmp / "store"
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, backup / "old")
            try:
                os.replace(built, target)
            except BaseException:
                os.replace(backup / "old", target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(built, target)
    except XlatdaError:
        raise
    except Exception as err:
        raise ModelStoreError(f"could not write the model to {str(target)!r}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _meta(model: Any, parts: dict[str, Any]) -> dict[str, Any]:
    latent = isinstance(model, LatentModel)
    meta = {
        "format": FORMAT if latent else SCORE_FORMAT,
        "model_id": model.model_id,
        "layout": model.layout.to_dict(),
        "normalizer": model.normalizer.to_dict(),
        "time_step": model.time_step if latent else None,
        "history": model.history,
        "versions": _versions(),
        "parts": parts,
    }
    missing = getattr(model, "missing", None)
    if missing is not None:
        meta["missing"] = {"shape": list(missing.shape),
                           "index": np.flatnonzero(missing).tolist()}
    return json.loads(json.dumps(meta, default=_json_default))


def to_state(model: LatentModel) -> dict[str, Any]:
    """The model as plain data: JSON-able metadata and numpy arrays.

    This is what travels to dask workers (``pickle`` of a LatentModel uses
    it): a small state dict, rebuilt on the other side from the registries,
    never a live pickled torch module (so CUDA tensors never travel).
    """
    parts, arrays = {}, {}
    for part in _PARTS:
        module = getattr(model, part)
        if module is None:
            continue
        state = {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}
        parts[part] = {"kind": module.kind, "config": module.config,
                       "tensors": [[n, n] for n in state]}
        arrays[part] = state
    return {"meta": _meta(model, parts), "arrays": arrays,
            "device": str(model.device)}


def from_state(state: dict[str, Any]) -> LatentModel:
    """Inverse of :func:`to_state` (the model comes back on CPU)."""
    meta = state["meta"]
    parts = {}
    for part, spec in meta["parts"].items():
        module = _module_class(part, spec["kind"])(**spec["config"])
        module.load_state_dict({n: torch.from_numpy(a) for n, a in state["arrays"][part].items()},
                               strict=True)
        parts[part] = module
    return _assemble(meta, parts)


def _assemble(meta: dict[str, Any], parts: dict[str, nn.Module]) -> Any:
    if meta.get("format") == SCORE_FORMAT:
        from xlatda.generative import PixelScoreModel

        return PixelScoreModel(
            layout=StateLayout.from_dict(meta["layout"]),
            normalizer=Normalizer.from_dict(meta["normalizer"]),
            score=parts["score"],
            history=meta.get("history", {}),
            model_id=meta["model_id"],
        )
    return LatentModel(
        layout=StateLayout.from_dict(meta["layout"]),
        normalizer=Normalizer.from_dict(meta["normalizer"]),
        encoder=parts["encoder"],
        dynamics=parts.get("dynamics"),
        model_error=parts.get("model_error"),
        time_step=meta.get("time_step"),
        history=meta.get("history", {}),
        model_id=meta["model_id"],
        score=parts.get("score"),
        prior=parts.get("prior"),
        missing=_missing(meta.get("missing")),
    )


def _missing(spec: dict[str, Any] | None) -> np.ndarray | None:
    if not spec:
        return None
    out = np.zeros(int(np.prod(spec["shape"])), dtype=bool)
    out[np.asarray(spec["index"], dtype=np.int64)] = True
    return out.reshape(spec["shape"])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in the model config")


def _read_module(group: zarr.Group, part: str, spec: dict[str, Any]) -> nn.Module:
    cls = _module_class(part, spec["kind"])
    module = cls(**spec["config"])
    sub = group[part]
    state = {}
    for name, key in spec["tensors"]:
        arr = sub[key]
        values = np.asarray(arr[...])
        if arr.attrs.get("scalar", False):
            values = values.reshape(())
        state[name] = torch.from_numpy(values.copy())
    module.load_state_dict(state, strict=True)
    return module


def open_model(path: Any, *, device: Any = None) -> Any:
    """Open a model written by :meth:`LatentModel.save` (or ``PixelScoreModel.save``).

    Parameters
    ----------
    path : str or path-like
        The store.
    device : str or torch.device, optional
        Where to put the weights (default CPU).

    Returns
    -------
    LatentModel or xlatda.generative.PixelScoreModel
        A :class:`~xlatda.LatentModel` (with its score prior when it was
        saved with one), or the pixel-space score model of a store written
        by ``PixelScoreModel.save``.

    Raises
    ------
    ModelStoreError
        If ``path`` is not an xlatda model store or names an unknown format.
    """
    target = Path(path)
    if not target.exists():
        raise ModelStoreError(f"no model store at {str(target)!r}; check the path")
    try:
        group = zarr.open_group(str(target), mode="r")
        meta = dict(group.attrs).get("xlatda")
    except Exception as err:
        raise ModelStoreError(f"{str(target)!r} is not a readable zarr group: {err}") from err
    if not meta or meta.get("format") not in (FORMAT, SCORE_FORMAT):
        raise ModelStoreError(
            f"{str(target)!r} is not an xlatda model store (format {meta and meta.get('format')!r},"
            f" expected {FORMAT!r} or {SCORE_FORMAT!r})"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Numcodecs codecs are not in the Zarr.*")
        parts = {p: _read_module(group, p, spec) for p, spec in meta["parts"].items()}
    model = _assemble(meta, parts)
    if device is not None:
        model.to(device=device)
    return model
