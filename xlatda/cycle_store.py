"""The zarr store of a cycle: write after every window, resume exactly, open.

Layout of a store (zarr format 3, one group per part)::

    analysis/     fields (time, member, ...)      appended per window
    background/   fields (time, member, ...)
    diagnostics/  (time,)
    parameters/   theta (time, member, param)     with params= only
    resume/       carry (window, member, control) float64, the ensemble carried on
                  state_<name> (window, ...)       the method's state
                  window_end (window,)             time of each window's last analysis

and the root attribute ``xlatda_cycle`` with the state variables, the
parameter names and the experiment fingerprint (method, settings, seed,
members, window, initial ensemble, observation hash and model identity).

The groups are written in this order for every window, ``resume`` last,
and then the root attribute ``xlatda_windows`` (the number of complete
windows; zarr writes each metadata file atomically) commits the window. The
first window is written into a hidden sibling folder (``.<name>.tmp-*``)
renamed into place when complete, so a store exists only with one committed
window (leftover folders of killed runs are removed by the next first
write). A run killed later leaves some groups longer than others, or arrays
resized but not written; :func:`resume` cuts them back to the last committed
window that every group holds, and continues from that window's
carried float64 control vectors and method state: a resumed cycle is
bit-identical to an uninterrupted one (nothing is re-encoded from the
stored fields). A store that holds another experiment is refused.

Datetime times are stored as int64 nanoseconds since 1970-01-01, so hourly
(or finer) analyses keep their exact labels whatever the first write holds.

Examples
--------
>>> fingerprint({"method": "etkf", "seed": 0}) == fingerprint({"seed": 0, "method": "etkf"})
True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.cycle_records import CycleResult
from xlatda.errors import ConfigError, StoreMismatchError

__all__ = ["ResumePoint", "fingerprint", "model_identity", "open_result", "resume",
           "write_window"]

_F64 = torch.float64
RECORD_GROUPS = ("analysis", "background", "diagnostics", "parameters")
COMMITTED = "xlatda_windows"  # root attribute: number of complete windows
_TIME_ENCODING = {"units": "nanoseconds since 1970-01-01", "dtype": "int64"}


def _digest(value: Any) -> Any:
    """A JSON-able stand-in for a setting: exact for data, the type for objects."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _digest(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) or np.isscalar(value):
        arr = np.ascontiguousarray(np.asarray(value))
        if arr.dtype.kind in "biufcM":
            return hashlib.sha1(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes()).hexdigest()
        return [str(v) for v in arr.ravel()]
    tensors = getattr(value, "state_dict", None)
    if callable(tensors):
        try:
            return _digest({k: v for k, v in tensors().items()})
        except Exception:  # pragma: no cover - exotic modules
            pass
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def fingerprint(parts: dict[str, Any]) -> str:
    """Hash of an experiment's defining parts (settings, seed, observations, model)."""
    text = json.dumps(_digest(parts), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def model_identity(model: Any) -> Any:
    """What identifies ``model`` in a fingerprint: its content, never its identity.

    A :class:`~xlatda.LatentModel`: its ``model_id`` and a digest of every
    weight (encoder, dynamics, model error, priors), the normalisation and the
    fixed mask, so a model edited or re-fitted in place is another model. Any
    other model (a physical one): its class and attributes, tensors and arrays by
    content and functions by their code and closure (a ``CallableModel`` wrapping
    another function is another model); attributes named ``*cache*`` (filled on
    first use) are left out.

    Examples
    --------
    >>> from xlatda.dynamics import Lorenz96
    >>> model_identity(Lorenz96(n=8)) == model_identity(Lorenz96(n=8))
    True
    >>> model_identity(Lorenz96(n=8)) == model_identity(Lorenz96(n=8, forcing=9.0))
    False
    """
    ident = getattr(model, "model_id", None)
    if ident is not None and hasattr(model, "encoder"):
        parts = {name: getattr(model, name, None) for name in
                 ("encoder", "dynamics", "model_error", "score", "prior", "missing",
                  "time_step")}
        norm = getattr(model, "normalizer", None)
        parts["normalizer"] = norm.to_dict() if hasattr(norm, "to_dict") else norm
        return [ident, _content(parts)]
    return _content(model)


def _content(value: Any, depth: int = 0) -> Any:
    """A JSON-able digest of ``value`` by content (see :func:`model_identity`)."""
    import types

    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if depth > 4:
        return f"<{type(value).__qualname__}>"
    if isinstance(value, (list, tuple)):
        return [_content(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _content(v, depth + 1)
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic, torch.nn.Module)):
        return [type(value).__qualname__, _digest(value)]
    if isinstance(value, types.ModuleType):
        return f"<module {value.__name__}>"
    if isinstance(value, types.MethodType):
        return [_content(value.__self__, depth + 1), _content(value.__func__, depth + 1)]
    if isinstance(value, types.FunctionType):
        cells = []
        for cell in value.__closure__ or ():
            try:
                cells.append(_content(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        return {"function": value.__qualname__, "code": _code_digest(value.__code__),
                "defaults": _content(value.__defaults__, depth + 1), "closure": cells}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        attrs = {k: v for k, v in vars(value).items() if "cache" not in k.lower()}
        return [type(value).__qualname__, _content(attrs, depth + 1)]
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _code_digest(code: Any) -> str:
    """SHA-1 of a code object's bytecode, names and constants (nested code included)."""
    import types

    def consts(c: Any) -> str:
        if isinstance(c, types.CodeType):
            return _code_digest(c)
        if isinstance(c, frozenset):
            return repr(sorted(map(repr, c)))
        return repr(c)

    text = "|".join([code.co_code.hex(), repr(code.co_names), repr(code.co_varnames),
                     *map(consts, code.co_consts)])
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    """Where a stored cycle stops: the next window and what to carry into it."""

    windows: int
    records: int
    carry: torch.Tensor | None
    state: dict[str, torch.Tensor]
    time: float


def _encoded(ds: xr.Dataset, tname: str) -> xr.Dataset:
    ds = ds.copy()
    for v in ds.variables:
        ds[v].encoding = {}
    if tname in ds.coords and ds[tname].dtype.kind == "M":
        ds[tname].encoding = dict(_TIME_ENCODING)
    return ds


def _resume_dataset(index: int, carry: torch.Tensor | None, state: dict[str, torch.Tensor],
                    t_end: float, digest: bytes) -> xr.Dataset:
    data: dict[str, Any] = {
        "window_end": ("window", np.array([t_end], dtype=np.float64)),
        "obs_digest": (("window", "digest_byte"), np.frombuffer(digest, np.uint8)[None]),
    }
    if carry is not None:
        data["carry"] = (("window", "member", "control"),
                         carry.detach().to("cpu", _F64).numpy()[None])
    for name, value in state.items():
        arr = torch.as_tensor(value).detach().cpu().numpy()
        data[f"state_{name}"] = (("window", *(f"state_{name}_{i}" for i in range(arr.ndim))),
                                 arr[None])
    return xr.Dataset(data, coords={"window": np.array([index])})


def write_window(store: str | Path, parts: dict[str, xr.Dataset], tname: str, *, index: int,
                 carry: torch.Tensor | None, state: dict[str, torch.Tensor], t_end: float,
                 digest: bytes, meta: dict[str, Any]) -> None:
    """Append one window's records and its resume point (see the module docstring)."""
    import zarr

    final = Path(str(store))
    first = not final.exists()
    if first:  # the first window goes to a hidden sibling, renamed into place when complete
        _remove_leftovers(final)
        target = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
        zarr.open_group(str(target), mode="w", zarr_format=3,
                        attributes={"xlatda_cycle": meta})
    else:
        target = final
    path = str(target)
    groups = dict(parts)
    groups["resume"] = _resume_dataset(index, carry, state, t_end, digest)
    for name, ds in groups.items():
        dim = "window" if name == "resume" else tname
        ds = _encoded(ds, tname)
        if first:
            ds.to_zarr(path, group=name, mode="w", zarr_format=3, consolidated=False)
        else:
            ds.to_zarr(path, group=name, append_dim=dim, mode="a", consolidated=False)
    # The commit mark (one atomic file write): windows before it are complete.
    zarr.open_group(path, mode="a").attrs[COMMITTED] = int(index) + 1
    if first:
        os.replace(target, final)


def _remove_leftovers(final: Path) -> None:
    """Hidden first-window folders of killed runs (``.<name>.tmp-*``)."""
    if final.parent.is_dir():
        for p in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def open_result(store: str | Path) -> CycleResult:
    """The stored cycle as a :class:`~xlatda.cycle_records.CycleResult` (lazy).

    Only the committed windows are shown: a run stopped while appending a
    window may have written some of its groups (an analysis without its
    background, diagnostics or resume point); those records are left out, as
    a rerun would recompute them.

    Raises
    ------
    ConfigError
        If the store was left torn by a killed run (groups of different
        lengths): rerunning the same cycle resumes and repairs it.
    """
    path = str(store)
    torn = ConfigError(
        f"{path!r} was interrupted in the middle of writing an analysis; rerun the "
        "same xlatda.cycle(..., store=...) call: it resumes after the last complete "
        "analysis and repairs the store")
    try:
        opened = {n: xr.open_zarr(path, group=n, consolidated=False)
                  for n in ("analysis", "background", "diagnostics")}
    except ValueError as err:
        if "conflicting sizes" not in str(err):
            raise
        raise torn from None
    try:
        opened["parameters"] = xr.open_zarr(path, group="parameters", consolidated=False)
    except (FileNotFoundError, KeyError, OSError, ValueError):
        opened["parameters"] = None
    n = _committed_records(path, opened["analysis"])
    if n is not None:
        tdim = _record_dim(opened["analysis"])
        for name, ds in opened.items():
            if ds is None:
                continue
            if ds.sizes.get(tdim, 0) < n:
                raise torn
            opened[name] = ds.isel({tdim: slice(0, n)})
    return CycleResult(opened["analysis"], opened["background"], opened["diagnostics"],
                       opened["parameters"])


def _record_dim(analysis: xr.Dataset) -> str:
    """The time dimension the records are appended along (each variable's first)."""
    return next(iter(analysis.data_vars.values())).dims[0]


def _committed_records(path: str, analysis: xr.Dataset) -> int | None:
    """Records of the committed windows (analysis times up to the last committed
    window's end); None for a store without the marks (the records as they are)."""
    import zarr

    from xlatda.windows import float_times

    committed = dict(zarr.open_group(path, mode="r").attrs).get(COMMITTED)
    if committed is None or not analysis.data_vars:
        return None
    try:
        ends = np.asarray(xr.open_zarr(path, group="resume", consolidated=False)
                          ["window_end"].values)
    except (FileNotFoundError, KeyError, OSError, ValueError):
        return None
    w = min(int(committed), len(ends))
    if w == 0:
        return 0
    times = float_times(analysis[_record_dim(analysis)].values)
    end = float(ends[w - 1])
    # (both times come from the same labels through float_times: equal to rounding)
    return int(np.sum(times <= end + 4 * np.spacing(abs(end))))


def _length(group: Any, dim: str) -> int:
    """Entries along ``dim`` that every array of ``group`` holds (a torn append differs)."""
    sizes = [arr.shape[list(arr.metadata.dimension_names or ()).index(dim)]
             for _, arr in group.arrays() if dim in (arr.metadata.dimension_names or ())]
    return min(sizes) if sizes else 0


def _cut(group: Any, dim: str, n: int) -> None:
    for _, arr in group.arrays():
        dims = list(arr.metadata.dimension_names or ())
        if dim in dims and arr.shape[dims.index(dim)] > n:
            shape = list(arr.shape)
            shape[dims.index(dim)] = n
            arr.resize(tuple(shape))


def resume(store: str | Path | None, meta: dict[str, Any], tname: str,
           windows: list[Any], back: int = 0) -> ResumePoint | None:
    """The last complete window of ``store``, or None to start afresh.

    ``meta`` is this experiment's root attribute (variables, parameters,
    fingerprint); ``windows`` this run's
    :class:`~xlatda.windows.ObservationWindow` list. Groups longer than the
    last complete window are cut back. The stored windows must have this
    run's observations: a store whose first window differs holds another
    experiment and is refused; a later difference (a run over a longer or
    other period) resumes from the first window that differs. When windows
    are left to run, the last ``back`` complete ones are recomputed too (a
    smoothed cycle's last analyses saw fewer later observations than the
    new run has).

    Raises
    ------
    ConfigError
        If the store is unreadable.
    StoreMismatchError
        (a ``ConfigError``) If it holds another experiment.
    """
    if store is None or not Path(str(store)).exists():
        return None
    import zarr

    path = str(store)
    try:
        root = zarr.open_group(path, mode="a")
        stored = dict(root.attrs).get("xlatda_cycle")
        committed = dict(root.attrs).get(COMMITTED)
        groups = [g for g in (*RECORD_GROUPS, "resume") if g in root]
        lengths = {g: _length(root[g], tname if g != "resume" else "window") for g in groups}
    except Exception:  # anything unreadable is not resumable
        raise ConfigError(
            f"{path!r} exists but is not a readable cycling store; remove it or pass "
            "another store path"
        ) from None
    if stored != meta:
        what = ("variables/parameters differ" if stored is None
                or stored.get("state_variables") != meta["state_variables"]
                or stored.get("parameters") != meta["parameters"]
                else "method, settings, seed, observations or model differ")
        raise StoreMismatchError(
            f"{path!r} holds another experiment ({what}); remove it or pass another store path"
        )
    needed = ["analysis", "background", "diagnostics"] + (
        ["parameters"] if meta["parameters"] else [])
    n_rec = min(lengths.get(g, 0) for g in needed)
    ends = np.cumsum([0, *(len(win) for win in windows)])
    w = min(lengths.get("resume", 0), len(windows))
    if committed is not None:  # a window written after the last mark may be torn
        w = min(w, int(committed))
    while w > 0 and ends[w] > n_rec:
        w -= 1
    if w:
        digests = np.asarray(root["resume"]["obs_digest"][:w])
        same = [bytes(digests[j].tobytes()) == windows[j].digest() for j in range(w)]
        if not same[0]:
            raise StoreMismatchError(
                f"{path!r} holds another experiment (its first analysis used other "
                "observations); remove it or pass another store path"
            )
        w = same.index(False) if False in same else w
    if back and w < len(windows):
        w = max(w - int(back), 0)
    if w == 0:  # nothing complete: start again in a clean store
        shutil.rmtree(path)
        return None
    for g in groups:
        _cut(root[g], "window" if g == "resume" else tname, int(w if g == "resume" else ends[w]))
    root.attrs[COMMITTED] = int(w)
    res = xr.open_zarr(path, group="resume", consolidated=False).isel(window=w - 1)
    carry = (torch.as_tensor(np.asarray(res["carry"].values), dtype=_F64)
             if "carry" in res else None)
    state = {name[len("state_"):]: torch.as_tensor(np.asarray(res[name].values))
             for name in res.data_vars if name.startswith("state_")}
    return ResumePoint(windows=w, records=int(ends[w]), carry=carry, state=state,
                       time=float(res["window_end"].values))
