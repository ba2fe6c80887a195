"""Out-of-core encoding: stream a (larger-than-memory) store into a latent zarr store.

:func:`encode_to_zarr` reads the source one *region* (a slab of ``chunk``
samples along ``dim``) at a time, encodes it, and writes the latents into
the target store with ``to_zarr(region=...)``. Memory is that of one region
plus the model, whatever the size of the source.

The target is made in two steps: a metadata-only write (``compute=False``:
array shapes, chunks, coordinates, provenance attributes), then one region
write per slab. After a region's latents are written, its entry in a small
marker array (``_xlatda_progress/done``, one zarr chunk per region, so
regions written by different workers never share a chunk) is set to 1. Only
when every marker is set does the store's ``xlatda_stream["complete"]``
attribute become true. A killed run therefore leaves written regions marked
and the store marked incomplete; running the same call again
(``resume=True``) encodes only the regions not marked.

The metadata write goes to a hidden sibling folder renamed into place, so a
store either does not exist or holds its full record. The record holds a
*fingerprint* of the source (variables, shapes, dtypes, a hash of the
coordinates) and of the model (its id and a hash of its weights), and every
region stores the SHA-256 of the source slab it was encoded from
(``_xlatda_progress/sha256``). On resume, the written regions' hashes are
checked against the source (all of them when they hold at most 64 MiB of
source data, else 8 spread over them). A store holding another encoding (an
interrupted run on another source, another model) is refused with a
:class:`~xlatda.errors.StoreMismatchError` before any work, never resumed
into a mix; ``resume=False`` replaces it.

A region holding NaN or inf is refused with a
:class:`~xlatda.errors.NonFiniteError` naming the variable and the sample,
before its latents are written (the encoders have no mask for missing
values; fill them first, as for :func:`xlatda.fit`). Regions written before
stay marked, and the store stays incomplete.

On a dask.distributed cluster (an active ``distributed.Client``, or
``client=``), regions are encoded in parallel by the workers: each task reads
its slab from the source itself (a store path travels as a string), gets the
model as its store path (opened once per worker) or as the small state dict a
:class:`~xlatda.LatentModel` pickles to, and writes its region directly.

Examples
--------
>>> import tempfile, xlatda
>>> from xlatda.streaming import encode_to_zarr, stream_status
>>> ds = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)
>>> store = tempfile.mkdtemp() + "/z.zarr"
>>> z = encode_to_zarr(ds, model, store, chunk=16, progress=False)
>>> z.z.dims, z.z.chunks[0]
(('time', 'latent'), (16, 16, 9))
>>> stream_status(store)["complete"], stream_status(store)["done"]
(True, 3)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time as _time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ConfigError, LayoutError, NonFiniteError, StoreMismatchError
from xlatda.model import LatentModel
from xlatda.options import get_options
from xlatda.validation import check_store_target, refuse_unknown_keywords

__all__ = ["encode_to_zarr", "model_fingerprint", "model_from", "region_sha256",
           "source_fingerprint", "stream_status"]

ATTR = "xlatda_stream"
PROGRESS_GROUP = "_xlatda_progress"
FORMAT = "xlatda-stream/1"
_TARGET_BYTES = 64 * 2**20  # default region size: about this much source data
_VERIFY_ALL_BYTES = 64 * 2**20  # on resume, written regions up to this size are all re-hashed
_VERIFY_SAMPLES = 8  # else: this many, spread over them


# -- model and source references that travel to workers ------------------------------
_CACHE: dict[tuple[str, str, float], Any] = {}
_CACHE_LOCK = threading.Lock()


def _opened_once(kind: str, path: str, opener: Callable[[str], Any]) -> Any:
    """``opener(path)``, once per process and version of the store (keyed by its mtime).

    Regions of one run (on one worker) share the opened model or source;
    one entry per kind is kept.
    """
    path = os.path.abspath(path)
    key = (kind, path, os.path.getmtime(path))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    value = opener(path)
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == kind]:
            del _CACHE[old]
        _CACHE[key] = value
    return value


def model_from(ref: LatentModel | str) -> LatentModel:
    """The model itself, or the model at a store path (opened once per process)."""
    if isinstance(ref, LatentModel):
        return ref
    from xlatda.io import open_model

    return _opened_once("model", str(ref), open_model)


def _open_zarr(path: str) -> xr.Dataset:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
            return xr.open_zarr(path, consolidated=None)
    except Exception as err:
        raise ConfigError(f"{path!r} is not a zarr store xarray can open: {err}") from err


def _open_source(source: Any) -> xr.Dataset:
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, xr.DataArray):
        return source.to_dataset(name=source.name if source.name is not None else "data")
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            raise ConfigError(f"no source store at {str(source)!r}; check the path")
        # Opening reads every array's metadata (~20 ms a region otherwise).
        return _opened_once("source", str(source), _open_zarr)
    raise ConfigError(
        f"source must be a zarr store path or an xarray Dataset, got {type(source).__name__}"
    )


# -- regions ---------------------------------------------------------------------
def _default_chunk(ds: xr.Dataset, dim: str, variables: list[str]) -> int:
    chunks = ds.chunksizes.get(dim) if ds.chunks else None
    if chunks:
        return int(chunks[0])
    per_sample = sum(ds[v].dtype.itemsize * int(np.prod(ds[v].shape)) // max(ds.sizes[dim], 1)
                     for v in variables if dim in ds[v].dims)
    return int(max(1, min(ds.sizes[dim], _TARGET_BYTES // max(per_sample, 1))))


def _regions(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def stream_status(store: str | os.PathLike) -> dict[str, Any]:
    """What an :func:`encode_to_zarr` store holds: regions written, completeness.

    Parameters
    ----------
    store : path
        A target store of :func:`encode_to_zarr`.

    Returns
    -------
    dict
        ``{"regions": n, "done": k, "pending": [indices], "complete": bool,
        "record": <the xlatda_stream attribute>}``. ``complete`` is true only
        when the store says so *and* every region is marked written.

    Raises
    ------
    ConfigError
        If ``store`` is not such a store.
    """
    import zarr

    try:
        root = zarr.open_group(str(store), mode="r")
        record = dict(root.attrs).get(ATTR)
    except Exception as err:
        raise ConfigError(f"{str(store)!r} is not a readable zarr store: {err}") from err
    if not record or record.get("format") != FORMAT:
        raise ConfigError(f"{str(store)!r} was not written by xlatda.streaming.encode_to_zarr")
    n = int(record["regions"])
    try:
        done = np.asarray(root[PROGRESS_GROUP]["done"][...]).astype(bool)
    except KeyError:
        done = np.zeros(n, dtype=bool)
    return {"regions": n, "done": int(done.sum()), "pending": np.flatnonzero(~done).tolist(),
            "complete": bool(record.get("complete")) and bool(done.all()), "record": record}


def _is_done(store: str, i: int) -> bool:
    import zarr

    return bool(zarr.open_array(f"{store}/{PROGRESS_GROUP}/done", mode="r")[i])


def _write_sha(store: str, i: int, digest: str) -> None:
    import zarr

    arr = zarr.open_array(f"{store}/{PROGRESS_GROUP}/sha256", mode="r+")
    arr[i] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)


def _read_sha(store: str, i: int) -> str | None:
    import zarr

    try:
        row = np.asarray(zarr.open_array(f"{store}/{PROGRESS_GROUP}/sha256", mode="r")[i])
    except Exception:
        return None
    return bytes(row.astype(np.uint8)).hex()


def _verify_written(store: str, ds: xr.Dataset, dim: str, regions: list[tuple[int, int]],
                    done: list[int]) -> None:
    """Refuse a resume whose written regions were encoded from other data than ``ds``."""
    if not done:
        return
    per_sample = sum(int(ds[v].nbytes) for v in ds.data_vars) / max(ds.sizes[dim], 1)
    size = per_sample * sum(regions[i][1] - regions[i][0] for i in done)
    if size <= _VERIFY_ALL_BYTES or len(done) <= _VERIFY_SAMPLES:
        check = done
    else:
        pick = np.linspace(0, len(done) - 1, _VERIFY_SAMPLES).round().astype(int)
        check = [done[i] for i in sorted(set(pick.tolist()))]
    for i in check:
        a, b = regions[i]
        stored = _read_sha(store, i)
        sub = ds.isel({dim: slice(a, b)}).load(scheduler="synchronous")
        if stored != region_sha256(sub):
            raise StoreMismatchError(
                f"{store!r} holds latents of other data: region {i} ({dim} {a}:{b}) was encoded "
                f"from a source whose content differs from this one ({len(done)} of "
                f"{len(regions)} regions written); nothing was written. Remove the store, pass "
                "another one, or resume=False to replace it"
            )


def _mark_done(store: str, i: int) -> None:
    import zarr

    arr = zarr.open_array(f"{store}/{PROGRESS_GROUP}/done", mode="r+")
    arr[i] = 1


def _encode_region(
    store: str,
    index: int,
    bounds: tuple[int, int],
    dim: str,
    source: Any,
    model_ref: LatentModel | str,
    device: Any,
    dtype: Any,
    threads: int | None,
    variables: list[str],
    presliced: bool = False,
) -> int:
    """Read, encode and write one region, then mark it; runs in-process or on a worker."""
    from xlatda.encode_decode import encode

    if _is_done(store, index):  # a rerun of a finished task (e.g. after a worker died)
        return index
    a, b = bounds
    # No set_options here: options are process-global and tasks run in threads,
    # so a context manager in a task could restore another task's value.
    if threads is not None:
        torch.set_num_threads(threads)
    src = _open_source(source)[variables]
    sub = src if presliced else src.isel({dim: slice(a, b)})
    # Read this slab only, in this thread (no nested scheduler on workers).
    sub = sub.load(scheduler="synchronous")
    _refuse_nonfinite(sub, dim, a)
    digest = region_sha256(sub)
    z = encode(sub, model_from(model_ref), device=device, dtype=dtype)
    bad = ~np.isfinite(z["z"].values)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise NonFiniteError(
            f"the encoder returned NaN/inf latents for finite input at {dim} index {a + first}; "
            "check the model (e.g. open_model verifies its weights) and the input's range"
        )
    out = z[["z"]]
    out = out.drop_vars(list(out.coords))
    out.attrs = {}
    out["z"].attrs = {}
    out.to_zarr(store, region={dim: slice(a, b)}, mode="r+", consolidated=False)
    _write_sha(store, index, digest)
    _mark_done(store, index)
    return index


def _refuse_nonfinite(sub: xr.Dataset, dim: str, offset: int) -> None:
    for name, da in sub.data_vars.items():
        values = np.asarray(da.values)
        if values.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        first = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), bad.shape)
        i = int(first[da.dims.index(dim)]) if dim in da.dims else 0
        label = f" ({np.asarray(sub[dim].values)[i]})" if dim in sub.coords else ""
        raise NonFiniteError(
            f"source variable {str(name)!r} holds NaN/inf at {dim} index {offset + i}{label} "
            f"({int(bad.sum())} values in this region); encoders need complete fields: fill "
            "them (e.g. ds.fillna(...)) or drop those samples; regions before it stay written"
        )


# -- fingerprints ---------------------------------------------------------------------
def _hash_array(h: Any, values: Any) -> None:
    arr = np.ascontiguousarray(np.asarray(values))
    if arr.dtype.kind == "O":
        h.update(repr(arr.tolist()).encode())
    else:
        h.update(f"{arr.dtype.str}{list(arr.shape)}".encode())
        h.update(arr.tobytes())


def source_fingerprint(ds: xr.Dataset, dim: str) -> dict[str, Any]:
    """Identity of a source's structure: variables, shapes, dims, dtypes and coordinates.

    Its content is fingerprinted region by region as it is encoded
    (:func:`region_sha256`), so this reads no data variable.

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=9, seed=0)
    >>> fp = source_fingerprint(ds, "time")
    >>> fp["variables"], fp["shapes"]
    (['x'], {'x': [10, 8]})
    >>> fp == source_fingerprint(ds.copy(deep=True), "time")
    True
    """
    coords = hashlib.sha256()
    for name in sorted(map(str, ds.coords)):
        coords.update(name.encode())
        _hash_array(coords, ds[name].values)
    return {
        "dim": dim,
        "variables": sorted(map(str, ds.data_vars)),
        "shapes": {str(v): [int(x) for x in ds[v].shape] for v in ds.data_vars},
        "dims": {str(v): [str(d) for d in ds[v].dims] for v in ds.data_vars},
        "dtypes": {str(v): str(ds[v].dtype) for v in ds.data_vars},
        "coords_sha256": coords.hexdigest(),
    }


def region_sha256(sub: xr.Dataset) -> str:
    """SHA-256 of a (loaded) source slab's data variables: names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for name in sorted(map(str, sub.data_vars)):
        h.update(name.encode())
        _hash_array(h, sub[name].values)
    return h.hexdigest()


def model_fingerprint(model: LatentModel) -> dict[str, Any]:
    """Identity of a model: its id and a SHA-256 of every weight of its encoder."""
    h = hashlib.sha256()
    for name, t in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        _hash_array(h, t.detach().cpu().numpy())
    h.update(repr(model.normalizer.to_dict()).encode())
    return {"model_id": model.model_id, "weights_sha256": h.hexdigest()}


# -- the target store ----------------------------------------------------------------
def _record(model: LatentModel, source: Any, dim: str, chunk: int, n: int, shape: tuple,
            out_dtype: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model_id": model.model_id,
        "source": str(source) if isinstance(source, (str, os.PathLike)) else "<Dataset>",
        "dim": dim,
        "chunk": int(chunk),
        "regions": int(n),
        "shape": [int(s) for s in shape],
        "dtype": out_dtype,
        "fingerprint": fingerprint,
        "complete": False,
    }


def _compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = ("model_id", "source", "dim", "chunk", "regions", "shape", "dtype")
    diff = [k for k in keys if old.get(k) != new.get(k)]
    old_fp = old.get("fingerprint")
    if not isinstance(old_fp, dict):
        return [*diff, "fingerprint (the store has none: written by an older xlatda)"]
    for group in ("source", "model"):
        a, b = old_fp.get(group) or {}, new["fingerprint"][group]
        diff += [f"{group} {k}" for k in b if a.get(k) != b[k]]
    return diff


def _init_store(template: xr.Dataset, store: str, dim: str, chunk: int, n_regions: int) -> None:
    """Write the metadata (and progress markers) to a hidden sibling, then rename it into place.

    A kill leaves either no store (or the previous one) or a complete record.
    """
    import zarr

    target = Path(store)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.{token}.tmp"
    old = target.parent / f".{target.name}.{token}.old"
    try:
        enc_chunks = [chunk if d == dim else template.sizes[d] for d in template.z.dims]
        template.to_zarr(str(tmp), mode="w", compute=False, zarr_format=3, consolidated=False,
                         encoding={"z": {"chunks": enc_chunks}})
        root = zarr.open_group(str(tmp), mode="a")
        grp = root.require_group(PROGRESS_GROUP)
        grp.create_array("done", shape=(n_regions,), chunks=(1,), dtype="uint8", fill_value=0,
                         overwrite=True)
        grp.create_array("sha256", shape=(n_regions, 32), chunks=(1, 32), dtype="uint8",
                         fill_value=0, overwrite=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _set_complete(store: str) -> None:
    import zarr

    root = zarr.open_group(store, mode="a")
    record = dict(root.attrs[ATTR])
    record["complete"] = True
    record["completed_at"] = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime())
    root.attrs[ATTR] = record


def _strip_encoding(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for v in ds.variables:
        ds[v].encoding = {}
    return ds


def _active_client(client: Any) -> Any:
    if client is False:
        return None
    if client is not None:
        return client
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


# -- public function ------------------------------------------------------------------
@refuse_unknown_keywords
def encode_to_zarr(
    source: str | os.PathLike | xr.Dataset,
    model: LatentModel | str | os.PathLike,
    store: str | os.PathLike,
    *,
    dim: str = "time",
    chunk: int | None = None,
    device: Any = None,
    dtype: Any = None,
    progress: bool | Callable[[dict[str, Any]], Any] | None = None,
    resume: bool = True,
    client: Any = None,
) -> xr.Dataset:
    """Encode a (larger-than-memory) source to a latent zarr store, region by region.

    Parameters
    ----------
    source : path or Dataset
        A zarr store path (opened lazily; workers open it themselves) or a
        Dataset, usually dask-backed (e.g. ``xr.open_zarr(...)``), on the
        model's layout.
    model : LatentModel or path
        The model, or the path of its store (workers then open it from the
        path, once each).
    store : path
        Target zarr store for ``z(..., latent)`` with provenance attributes.
    dim : str
        Sample dimension to stream along.
    chunk : int, optional
        Samples per region (and the target's zarr chunk along ``dim``).
        Default: the source's dask chunk along ``dim``, else about 64 MiB of
        source data per region.
    device, dtype :
        Compute device and dtype (default: the model's).
    progress : bool or callable, optional
        A progress bar (default: the ``progress`` option), or a function
        called in this process after every written region with
        ``{"region": i, "done": k, "total": n}``.
    resume : bool
        If ``store`` already holds this encoding (same model, source, ``dim``,
        ``chunk``), encode only the regions not yet written. ``False``
        replaces any existing store.
    client : distributed.Client or False, optional
        Cluster to run regions on (default: the active client, if any);
        ``False`` runs in this process, one region at a time.

    Returns
    -------
    Dataset
        The target store opened lazily (``xr.open_zarr``).

    Raises
    ------
    ConfigError
        Bad arguments, or a ``store`` holding something else (before any work).
    StoreMismatchError
        (a ConfigError) If ``store`` holds another encoding (another source,
        model, ``dim`` or ``chunk``; see the fingerprint in the Notes) and
        ``resume`` is True: nothing is written.
    LayoutError
        If the source does not match the model's layout.
    NonFiniteError
        If a region holds NaN or inf (named by variable and sample); the
        regions before it stay written and the store incomplete.

    Notes
    -----
    The store's ``xlatda_stream`` attribute records the model id, source,
    ``dim``, ``chunk``, the fingerprint (:func:`source_fingerprint`,
    :func:`model_fingerprint`) and ``complete``; ``complete`` becomes true
    only after every region is written and marked (see :func:`stream_status`).
    """
    from xlatda.encode_decode import encode

    model_obj = model_from(model)
    if not isinstance(model_obj, LatentModel):  # pragma: no cover - model_from guarantees
        raise ConfigError("model must be a LatentModel or the path of a model store")
    ds = _open_source(source)
    check_store_target(store)
    L = model_obj.layout
    variables = list(L.variables)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise LayoutError(f"the source lacks the model's variables {missing}")
    ds = ds[variables]
    if dim not in ds.dims:
        raise ConfigError(f"dim {dim!r} is not a dimension of the source {dict(ds.sizes)}")
    if dim in L.spatial_dims:
        raise ConfigError(f"dim {dim!r} is a spatial dimension of the model; stream along a "
                          "sample dimension (time, trajectory, member)")
    if chunk is None:
        chunk = _default_chunk(ds, dim, variables)
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = int(chunk)
    n = ds.sizes[dim]
    regions = _regions(n, chunk)
    store = str(store)

    # Lazy template: shapes, dims, coords and attrs of the result, nothing computed.
    lazy = ds.chunk({dim: chunk}) if ds.chunks is None or not ds.chunks else ds
    template = encode(lazy, model_obj, device=device, dtype=dtype)
    coords = {k: v.load() for k, v in template.coords.items() if k != "latent"}
    template = _strip_encoding(template.assign_coords(coords)).chunk({dim: chunk})
    fingerprint = {"source": source_fingerprint(ds, dim), "model": model_fingerprint(model_obj)}
    record = _record(model_obj, source, dim, chunk, len(regions), template.z.shape,
                     str(template.z.dtype), fingerprint)
    template.attrs["history"] = (template.attrs.get("history", "") +
                                 f"; streamed by xlatda.streaming.encode_to_zarr from "
                                 f"{record['source']} in {len(regions)} regions of {chunk}")
    template.attrs["xlatda_source"] = record["source"]
    template.attrs[ATTR] = record

    pending = list(range(len(regions)))
    if Path(store).exists() and resume:
        try:
            status = stream_status(store)
        except ConfigError:
            raise ConfigError(
                f"{store!r} exists but was not written by encode_to_zarr; remove it, pass "
                "another store, or resume=False to replace it"
            ) from None
        diff = _compatible(status["record"], record)
        if diff:
            state = "complete" if status["complete"] else (
                f"interrupted, {status['done']} of {status['regions']} regions written")
            raise StoreMismatchError(
                f"{store!r} holds another encoding ({state}; differs in {diff}); nothing was "
                "written. Remove it, pass another store, or resume=False to replace it"
            )
        pending = status["pending"]
        done = [i for i in range(len(regions)) if i not in set(pending)]
        _verify_written(store, ds, dim, regions, done)
    else:
        _init_store(template, store, dim, chunk, len(regions))

    progress = get_options()["progress"] if progress is None else progress
    callback = progress if callable(progress) else None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(regions), initial=len(regions) - len(pending),
                   desc="encode_to_zarr", leave=False)
    done_count = len(regions) - len(pending)
    threads = get_options()["torch_threads"]
    src_ref = source if isinstance(source, (str, os.PathLike)) else None

    def report(i: int) -> None:
        nonlocal done_count
        done_count += 1
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback({"region": i, "done": done_count, "total": len(regions)})

    cl = _active_client(client)
    try:
        if cl is None:
            for i in pending:
                src_i = src_ref if src_ref is not None else ds
                _encode_region(store, i, regions[i], dim, src_i, model, device, dtype,
                               threads, variables)
                report(i)
        elif pending:
            _run_on_client(cl, pending, regions, store, dim, src_ref, ds, model, device, dtype,
                           threads, variables, report)
    finally:
        if bar is not None:
            bar.close()
    status = stream_status(store)
    if status["pending"]:  # pragma: no cover - every task raised or marked
        raise ConfigError(f"regions {status['pending']} of {store!r} were not written")
    if not status["complete"]:
        _set_complete(store)
    return xr.open_zarr(store, consolidated=False)


def _run_on_client(cl, pending, regions, store, dim, src_ref, ds, model, device, dtype,
                   threads, variables, report) -> None:
    from distributed import as_completed

    # A LatentModel goes to every worker once (as its small state dict); a path
    # travels as a string and each worker opens it once.
    model_ref = model if not isinstance(model, LatentModel) else cl.scatter(
        model, broadcast=True, hash=False)
    if isinstance(model_ref, (os.PathLike,)):
        model_ref = str(model_ref)
    futures = []
    run = uuid.uuid4().hex[:8]
    for i in pending:
        if src_ref is not None:
            src_i: Any = str(src_ref)
        else:
            # Only this region's slab of the (lazy) Dataset travels with the task.
            src_i = ds.isel({dim: slice(*regions[i])})
        futures.append(cl.submit(
            _encode_region, store, i, regions[i], dim, src_i, model_ref, device, dtype,
            threads, variables, src_ref is None, key=f"xlatda-encode-region-{run}-{i}",
            pure=False, retries=0))
    try:
        for fut in as_completed(futures):
            i = fut.result()  # re-raises a worker's error here
            fut.release()  # nothing to keep: the region is on disk and marked
            report(i)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
