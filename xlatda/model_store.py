"""The zarr model store engine: parts (torch modules) as arrays, config as JSON.

Knows no model class: a model to save names its store format and parts
(class attribute ``store_format``; :class:`~xlatda.LatentModel`
and :class:`~xlatda.pixel_score_model.PixelScoreModel` do), and reading a
store gives back its verified metadata and rebuilt parts, which the model
classes assemble (:func:`xlatda.io.open_model` picks the class by format).
The store layout, the integrity checks and the atomic saves are described
in :mod:`xlatda.io`.

Examples
--------
>>> import numpy as np
>>> array_sha256(np.zeros(3, "float32"))[:12]
'72b45b2e27d1'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from xlatda._version import __version__
from xlatda.errors import ModelStoreError, XlatdaError
from xlatda.validation import check_keywords

__all__ = ["FORMAT", "LATENT_PARTS", "SCORE_FORMAT", "array_sha256", "meta_sha256",
           "missing_mask", "parts_from_state", "read_store", "save_model", "store_error",
           "to_state"]

FORMAT = "xlatda-model/1"
SCORE_FORMAT = "xlatda-score/1"
LATENT_PARTS = ("encoder", "dynamics", "model_error", "score", "prior")
_FORMAT_PARTS = {FORMAT: LATENT_PARTS, SCORE_FORMAT: ("score",)}
CHECKSUM_ATTR = "xlatda_sha256"
_META_KEYS = ("format", "model_id", "layout", "normalizer", "time_step", "history", "versions",
              "parts", "missing")
_SPEC_KEYS = ("kind", "config", "tensors", "sha256")


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
    names, sums = [], {}
    for name, tensor in module.state_dict().items():
        arr = tensor.detach().cpu().contiguous()
        if arr.dtype == torch.bfloat16:
            raise ModelStoreError(f"{part}.{name} is bfloat16; cast the model to float32 first")
        values = arr.numpy()
        key = name.replace("/", "__")
        shape = values.shape if values.ndim else (1,)
        out = sub.create_array(key, shape=shape, dtype=values.dtype,
                               chunks=shape if values.size else (1,) * len(shape),
                               compressors=[_compressor()], fill_value=None,
                               config={"write_empty_chunks": True})
        out[...] = values.reshape(shape)
        out.attrs["scalar"] = values.ndim == 0
        names.append([name, key])
        sums[key] = array_sha256(values.reshape(shape))
    config = module.config
    json.dumps(config)  # refuse what JSON cannot hold, before the rename
    return {"kind": module.kind, "config": config, "tensors": names, "sha256": sums}


def array_sha256(values: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and raw (C-order) bytes, as hex.

    Examples
    --------
    >>> import numpy as np
    >>> array_sha256(np.zeros(3, "float32"))[:12]
    '72b45b2e27d1'
    """
    values = np.ascontiguousarray(values)
    h = hashlib.sha256(f"{values.dtype.str}|{list(values.shape)}|".encode())
    h.update(values.tobytes())
    return h.hexdigest()


def meta_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of a store's ``xlatda`` attribute as canonical JSON (sorted keys)."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _parts_of(model: Any) -> tuple[str, ...]:
    fmt = getattr(type(model), "store_format", None)
    if fmt not in _FORMAT_PARTS:
        raise ModelStoreError(
            f"can only save a LatentModel or a PixelScoreModel, got {type(model).__name__}"
        )
    return _FORMAT_PARTS[fmt]


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
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _recover(target)
        _clean_leftovers(target)
    except XlatdaError:
        raise
    except OSError as err:
        raise ModelStoreError(f"cannot write to {str(parent)!r}: {err}; check that the folder "
                              "exists and is writable") from err
    if target.exists() and not overwrite:
        raise ModelStoreError(
            f"{str(target)!r} already exists; pass overwrite=True to replace it or choose "
            "another path"
        )
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = parent / f".{target.name}.{token}.tmp"
    backup = parent / f".{target.name}.{token}.old"
    try:
        tmp.mkdir()
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
            meta = _meta(model, parts)
            group.attrs.update({"xlatda": meta, CHECKSUM_ATTR: meta_sha256(meta)})
        built = tmp / "store"
        _fsync_tree(built)
        if target.exists():
            os.replace(target, backup)  # from here to the next rename: recoverable
            try:
                os.replace(built, target)
            except BaseException:
                os.replace(backup, target)
                raise
        else:
            os.replace(built, target)
        _fsync_dir(parent)
    except XlatdaError:
        raise
    except Exception as err:
        raise ModelStoreError(f"could not write the model to {str(target)!r}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)


# -- atomic save helpers --------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk before it is renamed into place."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _owner_alive(name: str) -> bool:
    """Whether the process that made a hidden ``.<model>.<pid>.<token>.<suffix>`` still runs."""
    bits = name.rsplit(".", 3)
    try:
        pid = int(bits[1])
    except (IndexError, ValueError):
        return False  # not ours (or an older xlatda's): no owner to wait for
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def _leftovers(target: Path, suffix: str) -> list[Path]:
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return []
    prefix = f".{target.name}."
    found = [p for p in parent.iterdir()
             if p.name.startswith(prefix) and p.name.endswith(suffix) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _recover(target: Path) -> bool:
    """If a save was killed between its two renames, put the old model back at ``target``."""
    if target.exists():
        return False
    for old in _leftovers(target, ".old"):
        if _owner_alive(old.name):
            continue
        inner = old / "old"  # the layout of saves by xlatda before checksums
        source = inner if inner.is_dir() and not (old / "zarr.json").exists() else old
        if not (source / "zarr.json").exists():
            continue
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
        return True
    return False


def _clean_leftovers(target: Path) -> None:
    """Remove hidden ``.tmp``/``.old`` siblings of killed saves (their process is gone)."""
    for leftover in (*_leftovers(target, ".tmp"), *_leftovers(target, ".old")):
        if leftover.suffix == ".old" and not target.exists():
            continue  # the only copy of a model; _recover did not take it (still owned)
        if not _owner_alive(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


def _meta(model: Any, parts: dict[str, Any]) -> dict[str, Any]:
    latent = type(model).store_format == FORMAT
    meta = {
        "format": type(model).store_format,
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


def to_state(model: Any) -> dict[str, Any]:
    """The model as plain data: JSON-able metadata and numpy arrays.

    This is what travels to dask workers (``pickle`` of a LatentModel uses
    it): a small state dict, rebuilt on the other side from the registries,
    never a live pickled torch module (so CUDA tensors never travel).
    """
    parts, arrays = {}, {}
    for part in _parts_of(model):
        module = getattr(model, part)
        if module is None:
            continue
        state = {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}
        parts[part] = {"kind": module.kind, "config": module.config,
                       "tensors": [[n, n] for n in state]}
        arrays[part] = state
    return {"meta": _meta(model, parts), "arrays": arrays,
            "device": str(model.device)}


def parts_from_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """The metadata and the rebuilt parts (on CPU) of a :func:`to_state` dict."""
    meta = state["meta"]
    parts = {}
    for part, spec in meta["parts"].items():
        module = _module_class(part, spec["kind"])(**spec["config"])
        module.load_state_dict({n: torch.from_numpy(a) for n, a in state["arrays"][part].items()},
                               strict=True)
        parts[part] = module
    return meta, parts


def missing_mask(spec: dict[str, Any] | None) -> np.ndarray | None:
    """The fixed NaN mask of a store's ``missing`` entry (or None)."""
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


def store_error(target: str, what: str, fix: str = "") -> ModelStoreError:
    fix = fix or ("the store is damaged; restore it from a copy or save the model again")
    return ModelStoreError(f"model store {target!r}: {what}; {fix}")


def _check_keys(given: Any, known: Any, *, target: str, where: str) -> None:
    try:
        check_keywords(given, known, where=where, kind="key")
    except XlatdaError as err:
        raise store_error(target, str(err), "the store was edited or written by another "
                           "xlatda version; save the model again") from None


def _checked_spec(part: str, spec: Any, target: str) -> tuple[type, dict[str, Any]]:
    """The class and config of a part, refusing unknown or missing keys."""
    if not isinstance(spec, dict):
        raise store_error(target, f"the config of part {part!r} is not a mapping")
    _check_keys(spec, _SPEC_KEYS, target=target, where=f"part {part!r}")
    missing = [k for k in ("kind", "config", "tensors") if k not in spec]
    if missing:
        raise store_error(target, f"part {part!r} lacks the config keys {missing}")
    tensors = spec["tensors"]
    if not isinstance(tensors, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in tensors):
        raise store_error(target, f"the tensor list of part {part!r} is malformed")
    try:
        cls = _module_class(part, spec["kind"])
    except XlatdaError as err:
        raise store_error(target, f"part {part!r}: {err}") from None
    config = spec["config"]
    if not isinstance(config, dict):
        raise store_error(target, f"the config of part {part!r} is not a mapping")
    _check_keys(config, cls, target=target, where=f"{part} {spec['kind']!r}")
    return cls, config


def _read_module(group: zarr.Group, part: str, spec: dict[str, Any], target: str) -> nn.Module:
    cls, config = _checked_spec(part, spec, target)
    try:
        module = cls(**config)
    except Exception as err:
        raise store_error(target, f"part {part!r} cannot be rebuilt from its config "
                           f"({type(err).__name__}: {err})") from None
    if part not in group or not isinstance(group[part], zarr.Group):
        raise store_error(target, f"the arrays of part {part!r} are missing")
    sub = group[part]
    sums = spec.get("sha256")
    keys = [key for _, key in spec["tensors"]]
    extra = sorted(set(sub.keys()) - set(keys))
    if extra:
        raise store_error(target, f"part {part!r} holds unknown arrays {extra}; known: "
                           f"{sorted(keys)}")
    state = {}
    for name, key in spec["tensors"]:
        if key not in sub:
            raise store_error(target, f"array {part}/{key} is missing")
        arr = sub[key]
        # Stores with checksums write every chunk (even all-zero ones), so a chunk
        # not on disk was lost; older stores skipped chunks equal to the fill value.
        if sums is not None and arr.size and arr.nchunks_initialized < arr.nchunks:
            lost = arr.nchunks - arr.nchunks_initialized
            raise store_error(target, f"array {part}/{key} has {lost}"
                               f" of {arr.nchunks} chunks missing (it would read as the fill "
                               f"value {arr.fill_value})")
        try:
            values = np.asarray(arr[...])
        except Exception as err:
            raise store_error(target, f"array {part}/{key} cannot be read, a chunk is corrupt "
                               f"({type(err).__name__}: {err})") from None
        if sums is not None:
            if key not in sums:
                raise store_error(target, f"array {part}/{key} has no checksum")
            if array_sha256(values) != sums[key]:
                raise store_error(target, f"array {part}/{key} does not match its checksum "
                                   "(its bytes changed after it was written)")
        if arr.attrs.get("scalar", False):
            values = values.reshape(())
        state[name] = torch.from_numpy(values.copy())
    try:
        module.load_state_dict(state, strict=True)
    except Exception as err:
        raise store_error(target, f"the weights of part {part!r} do not fit its config "
                           f"({type(err).__name__}: {err})") from None
    return module


def read_store(path: Any) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """The verified metadata and rebuilt parts (on CPU) of the store at ``path``.

    Everything :func:`xlatda.io.open_model` checks is checked here, before
    any part is built: the config's and every array's checksum, every chunk
    present, no unknown part, array or key. A save killed between its two
    renames is recovered first.

    Raises
    ------
    ModelStoreError
        If ``path`` is not an xlatda model store, names an unknown format,
        or is damaged; the message says which.
    """
    target = Path(path)
    name = str(target)
    if not target.exists():
        try:
            recovered = _recover(target)
        except OSError as err:
            raise ModelStoreError(f"no model store at {name!r}, and the copy left by an "
                                  f"interrupted save cannot be restored: {err}") from err
        if not recovered:
            raise ModelStoreError(f"no model store at {name!r}; check the path")
    try:
        group = zarr.open_group(name, mode="r")
        attrs = dict(group.attrs)
        meta = attrs.get("xlatda")
    except Exception as err:
        raise ModelStoreError(f"{name!r} is not a readable zarr group: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, SCORE_FORMAT):
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ModelStoreError(
            f"{name!r} is not an xlatda model store (format {fmt!r},"
            f" expected {FORMAT!r} or {SCORE_FORMAT!r})"
        )
    _check_keys(meta, _META_KEYS, target=name, where="the model config")
    parts_meta = meta.get("parts")
    if not isinstance(parts_meta, dict):
        raise store_error(name, "the config has no 'parts' mapping")
    known = _FORMAT_PARTS[meta["format"]]
    _check_keys(parts_meta, known, target=name, where="the model parts")
    for part, spec in parts_meta.items():
        _checked_spec(part, spec, name)  # unknown keys named before the checksum
    if CHECKSUM_ATTR in attrs and attrs[CHECKSUM_ATTR] != meta_sha256(meta):
        raise store_error(name, "the model config does not match its checksum (it was edited "
                           "after it was written)")
    folders = sorted(set(group.keys()) - set(parts_meta))
    if folders:
        raise store_error(name, f"the store holds unknown parts {folders}; known: "
                           f"{sorted(parts_meta)}")
    if meta["format"] == FORMAT and "encoder" not in parts_meta:
        raise store_error(name, "the model has no encoder part")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Numcodecs codecs are not in the Zarr.*")
        parts = {p: _read_module(group, p, spec, name) for p, spec in parts_meta.items()}
    return meta, parts
