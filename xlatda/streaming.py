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

import os
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

from xlatda.errors import ConfigError, LayoutError
from xlatda.model import LatentModel
from xlatda.options import get_options

__all__ = ["encode_to_zarr", "stream_status"]

ATTR = "xlatda_stream"
PROGRESS_GROUP = "_xlatda_progress"
FORMAT = "xlatda-stream/1"
_TARGET_BYTES = 64 * 2**20  # default region size: about this much source data


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


def _model_from(ref: LatentModel | str) -> LatentModel:
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
    from xlatda.api import encode

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
    z = encode(sub, _model_from(model_ref), device=device, dtype=dtype)
    out = z[["z"]]
    out = out.drop_vars(list(out.coords))
    out.attrs = {}
    out["z"].attrs = {}
    out.to_zarr(store, region={dim: slice(a, b)}, mode="r+", consolidated=False)
    _mark_done(store, index)
    return index


# -- the target store ----------------------------------------------------------------
def _record(model: LatentModel, source: Any, dim: str, chunk: int, n: int, shape: tuple,
            out_dtype: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model_id": model.model_id,
        "source": str(source) if isinstance(source, (str, os.PathLike)) else "<Dataset>",
        "dim": dim,
        "chunk": int(chunk),
        "regions": int(n),
        "shape": [int(s) for s in shape],
        "dtype": out_dtype,
        "complete": False,
    }


def _compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = ("model_id", "source", "dim", "chunk", "regions", "shape", "dtype")
    return [k for k in keys if old.get(k) != new.get(k)]


def _init_store(template: xr.Dataset, store: str, dim: str, chunk: int, n_regions: int) -> None:
    import zarr

    enc_chunks = [chunk if d == dim else template.sizes[d] for d in template.z.dims]
    template.to_zarr(store, mode="w", compute=False, zarr_format=3, consolidated=False,
                     encoding={"z": {"chunks": enc_chunks}})
    root = zarr.open_group(store, mode="a")
    grp = root.require_group(PROGRESS_GROUP)
    grp.create_array("done", shape=(n_regions,), chunks=(1,), dtype="uint8", fill_value=0,
                     overwrite=True)


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
    LayoutError
        If the source does not match the model's layout.

    Notes
    -----
    The store's ``xlatda_stream`` attribute records the model id, source,
    ``dim``, ``chunk`` and ``complete``; ``complete`` becomes true only after
    every region is written and marked (see :func:`stream_status`).
    """
    from xlatda.api import encode

    model_obj = _model_from(model)
    if not isinstance(model_obj, LatentModel):  # pragma: no cover - _model_from guarantees
        raise ConfigError("model must be a LatentModel or the path of a model store")
    ds = _open_source(source)
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
    record = _record(model_obj, source, dim, chunk, len(regions), template.z.shape,
                     str(template.z.dtype))
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
            raise ConfigError(
                f"{store!r} holds another encoding (differs in {diff}); remove it, pass "
                "another store, or resume=False to replace it"
            )
        if PROGRESS_GROUP not in __import__("zarr").open_group(store, mode="r"):
            _init_progress(store, len(regions))
        pending = status["pending"]
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


def _init_progress(store: str, n: int) -> None:
    import zarr

    root = zarr.open_group(store, mode="a")
    root.require_group(PROGRESS_GROUP).create_array(
        "done", shape=(n,), chunks=(1,), dtype="uint8", fill_value=0, overwrite=True)


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
