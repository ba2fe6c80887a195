"""The fault-injection catalogue: killed writers, corrupted stores, bad inputs.

Every case is a function of a scratch folder that returns a short outcome
("ModelStoreError: ...", "identical", ...) and raises ``AssertionError`` when
xlatda misbehaves: an untyped error, no error, a silent wrong result, or a
half-written store. ``tests/test_faults.py`` runs them under pytest;
``python -m benchmarks.fault_table`` writes the table of cases and outcomes.

Kills are real process deaths: a forked child runs the writer with a hook on
every write (each zarr store write, each ``os.replace``, each
``shutil.rmtree``) and calls ``os._exit`` at the k-th one (no ``finally``
block, no cleanup runs, as with SIGKILL), and a few cases SIGKILL a fresh
Python process at a time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import xlatda
import xlatda.methods.registry
from xlatda.errors import (
    ConfigError,
    KeywordError,
    LayoutError,
    ModelStoreError,
    NonFiniteError,
    ObservationError,
    StoreMismatchError,
    TimeSpanError,
    UnitsError,
    UnknownNameError,
    VariableNotFoundError,
    XlatdaError,
)
from xlatda.io import open_model
from xlatda.streaming import encode_to_zarr, stream_status

KILLED = 137
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One fault case: ``run(tmp) -> outcome`` (raises AssertionError on misbehaviour)."""

    id: str
    group: str
    run: Callable[[Path], str]
    slow: bool = False
    xfail: str | None = None


CASES: list[Case] = []


def add(group: str, id: str, run: Callable[[Path], str], *, slow: bool = False,
        xfail: str | None = None) -> None:
    CASES.append(Case(f"{group}/{id}", group, run, slow, xfail))


# -- outcome helpers -------------------------------------------------------------------
def expect(exc: type[XlatdaError], fn: Callable[[], Any], match: str | None = None) -> str:
    """Run ``fn``; require a typed ``exc`` (whose message matches ``match``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except XlatdaError as err:
        if not isinstance(err, exc):
            raise AssertionError(
                f"expected {exc.__name__}, got {type(err).__name__}: {err}") from err
        if match is not None and not re.search(match, str(err)):
            raise AssertionError(
                f"{type(err).__name__} message {str(err)!r} lacks {match!r}") from err
        return f"{type(err).__name__}: {_short(str(err))}"
    except Exception as err:
        raise AssertionError(f"untyped {type(err).__name__}: {err}") from err
    raise AssertionError(f"no error; expected {exc.__name__}")


def _short(text: str, n: int = 90) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def state_arrays(model: Any) -> dict[str, np.ndarray]:
    out = {}
    for part in ("encoder", "dynamics", "model_error", "score"):
        mod = getattr(model, part, None)
        if mod is not None:
            for k, v in mod.state_dict().items():
                out[f"{part}.{k}"] = v.detach().cpu().numpy()
    return out


def same_model(a: Any, b: Any) -> bool:
    sa, sb = state_arrays(a), state_arrays(b)
    return (a.model_id == b.model_id and sa.keys() == sb.keys()
            and all(np.array_equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa))


def hidden_leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name.startswith(f".{path.name}."))


# -- shared data (built once per process) ----------------------------------------------
@functools.cache
def lorenz(seed: int = 0, steps: int = 119) -> xr.Dataset:
    return xlatda.datasets.lorenz96(n=8, steps=steps, seed=seed)


@functools.cache
def model_full() -> Any:
    """PCA encoder + latent ODE + diagonal model error: 3 parts, 18 arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xlatda.fit(lorenz(), encoder="pca", latent_dim=4, dynamics="ode",
                          uncertainty="diagonal", epochs=1, progress=False)


@functools.cache
def model_pca(seed: int = 0) -> Any:
    return xlatda.fit(lorenz(seed), encoder="pca", latent_dim=4, progress=False)


@functools.cache
def saved_bytes() -> Path:
    """A pristine saved copy of model_full, copied into each case's folder."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="xlatda-faults-")) / "m.zarr"
    model_full().save(path)
    return path


def fresh_store(tmp: Path) -> Path:
    path = tmp / "m.zarr"
    shutil.copytree(saved_bytes(), path)
    return path


ARRAYS = [  # arrays of model_full's store with data (one chunk each)
    "encoder/components", "encoder/explained_variance", "encoder/explained_variance_ratio",
    "encoder/mean", "encoder/singular_values", "encoder/_fitted",
    "dynamics/net.0.weight", "dynamics/net.0.bias", "dynamics/net.2.weight",
    "dynamics/net.2.bias", "dynamics/net.4.weight", "dynamics/net.4.bias",
    "dynamics/net.6.weight", "dynamics/net.6.bias", "dynamics/_fitted",
    "model_error/log_scale",
]


def chunk_file(store: Path, array: str) -> Path:
    files = sorted(p for p in (store / array).rglob("*") if p.is_file()
                   and p.name != "zarr.json")
    if not files:
        raise AssertionError(f"array {array} has no chunk file in the test store")
    return files[0]


def read_meta(store: Path) -> dict[str, Any]:
    return json.loads((store / "zarr.json").read_text())


def write_meta(store: Path, doc: dict[str, Any]) -> None:
    (store / "zarr.json").write_text(json.dumps(doc))


def opens_refused(store: Path, match: str | None = None) -> str:
    return expect(ModelStoreError, lambda: open_model(store), match)


# -- model store corruption ------------------------------------------------------------
def _flip(array: str, where: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        f = chunk_file(store, array)
        data = bytearray(f.read_bytes())
        i = {"middle": len(data) // 2, "last": len(data) - 1, "first": 0}[where]
        data[i] ^= 0x5A
        f.write_bytes(bytes(data))
        return opens_refused(store, r"corrupt|checksum|cannot be read|chunk")
    return run


def _delete_chunk(array: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        chunk_file(store, array).unlink()
        return opens_refused(store, r"missing")
    return run


def _truncate(array: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        f = chunk_file(store, array)
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
        return opens_refused(store)
    return run


def _delete_array_meta(array: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        (store / array / "zarr.json").unlink()
        return opens_refused(store)
    return run


for _a in ARRAYS:
    _id = _a.replace("/", ".")
    add("store-flip", f"{_id}-middle", _flip(_a, "middle"))
    add("store-flip", f"{_id}-last", _flip(_a, "last"))
    add("store-delete-chunk", _id, _delete_chunk(_a))
for _a in ARRAYS[::3]:
    _id = _a.replace("/", ".")
    add("store-truncate", _id, _truncate(_a))
    add("store-delete-array-meta", _id, _delete_array_meta(_a))


def _swap(tmp: Path) -> str:
    store = fresh_store(tmp)
    a, b = chunk_file(store, "dynamics/net.2.bias"), chunk_file(store, "dynamics/net.4.bias")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return opens_refused(store, "checksum")


add("store-corrupt", "swap-two-same-shape-chunks", _swap)


def _edit(mutate: Callable[[dict[str, Any]], None], match: str | None = None,
          exc: type[XlatdaError] = ModelStoreError) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        doc = read_meta(store)
        mutate(doc["attributes"])
        write_meta(store, doc)
        return expect(exc, lambda: open_model(store), match)
    return run


def _x(attrs: dict[str, Any]) -> dict[str, Any]:
    return attrs["xlatda"]


def _rename(d: dict[str, Any], old: str, new: str) -> None:
    d[new] = d.pop(old)


_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str | None]] = {
    "unknown-top-key": (lambda a: _x(a).__setitem__("extra", 1), r"unknown key 'extra'"),
    "typo-top-key": (lambda a: _rename(_x(a), "normalizer", "normaliser"),
                     r"did you mean 'normalizer'"),
    "unknown-part": (lambda a: _x(a)["parts"].__setitem__("prior2", {}), r"'prior2'"),
    "unknown-spec-key": (lambda a: _x(a)["parts"]["encoder"].__setitem__("kindd", "pca"),
                         r"'kindd'.*did you mean 'kind'"),
    "typo-config-key": (lambda a: _rename(_x(a)["parts"]["encoder"]["config"], "latent_dim",
                                          "latent_dimm"), r"did you mean 'latent_dim'"),
    "typo-dynamics-key": (lambda a: _x(a)["parts"]["dynamics"]["config"].__setitem__(
        "hiden", 8), r"'hiden'"),
    "changed-latent-dim": (lambda a: _x(a)["parts"]["encoder"]["config"].__setitem__(
        "latent_dim", 5), r"checksum|fit"),
    "changed-normalizer": (lambda a: _x(a)["normalizer"].__setitem__(
        "mean", [v + 1 for v in np.ravel(_x(a)["normalizer"]["mean"]).tolist()])
        if isinstance(_x(a)["normalizer"].get("mean"), list) else _x(a)["normalizer"]
        .__setitem__("edited", True), r"checksum"),
    "changed-model-id": (lambda a: _x(a).__setitem__("model_id", "0" * 16), r"checksum"),
    "changed-time-step": (lambda a: _x(a).__setitem__("time_step", {"value": 1.0,
                                                                    "units": "model"}),
                          r"checksum"),
    "changed-checksum": (lambda a: a.__setitem__("xlatda_sha256", "0" * 64), r"checksum"),
    "changed-array-sha": (lambda a: _x(a)["parts"]["encoder"]["sha256"].__setitem__(
        "mean", "0" * 64), r"checksum"),
    "unknown-format": (lambda a: _x(a).__setitem__("format", "xlatda-model/9"),
                       r"not an xlatda model store"),
    "no-xlatda-attr": (lambda a: a.pop("xlatda"), r"not an xlatda model store"),
    "parts-not-mapping": (lambda a: _x(a).__setitem__("parts", [1, 2]), r"parts"),
    "unknown-dynamics-kind": (lambda a: _x(a)["parts"]["dynamics"].__setitem__("kind", "lstm"),
                              r"lstm"),
    "unknown-encoder-kind": (lambda a: _x(a)["parts"]["encoder"].__setitem__("kind", "pcaa"),
                             r"pcaa"),
    "malformed-tensors": (lambda a: _x(a)["parts"]["encoder"].__setitem__("tensors", "mean"),
                          r"malformed"),
    "config-not-mapping": (lambda a: _x(a)["parts"]["encoder"].__setitem__("config", [4]),
                           r"not a mapping"),
    "missing-kind": (lambda a: _x(a)["parts"]["encoder"].pop("kind"), r"lacks"),
    "renamed-tensor": (lambda a: _x(a)["parts"]["encoder"]["tensors"][0].__setitem__(
        1, "nope"), r"nope|checksum"),
}
for _name, (_fn, _match) in _EDITS.items():
    add("store-config", _name, _edit(_fn, _match))


def _legacy(tmp: Path) -> str:
    """A store without checksums (as older xlatda wrote them) opens to the same model."""
    store = fresh_store(tmp)
    doc = read_meta(store)
    doc["attributes"].pop("xlatda_sha256")
    for spec in doc["attributes"]["xlatda"]["parts"].values():
        spec.pop("sha256")
    write_meta(store, doc)
    assert same_model(open_model(store), model_full())
    return "identical (legacy store without checksums)"


def _no_root_sum(tmp: Path) -> str:
    store = fresh_store(tmp)
    doc = read_meta(store)
    doc["attributes"].pop("xlatda_sha256")
    write_meta(store, doc)
    assert same_model(open_model(store), model_full())
    chunk = chunk_file(store, "encoder/mean")  # the per-array checksums still hold
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    return "identical; " + opens_refused(store)


add("store-config", "legacy-without-checksums", _legacy)
add("store-config", "no-root-checksum-arrays-still-checked", _no_root_sum)


def _struct(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = fresh_store(tmp)
        if kind == "root-json-deleted":
            (store / "zarr.json").unlink()
        elif kind == "root-json-garbage":
            (store / "zarr.json").write_bytes(b"\x00\xffnot json")
        elif kind == "root-json-truncated":
            text = (store / "zarr.json").read_text()
            (store / "zarr.json").write_text(text[: len(text) // 2])
        elif kind == "unknown-folder":
            import zarr

            zarr.open_group(str(store / "extra"), mode="w", zarr_format=3)
        elif kind == "unknown-array":
            import zarr

            g = zarr.open_group(str(store / "encoder"), mode="a")
            g.create_array("bonus", shape=(2,), dtype="f4")[...] = 1.0
        elif kind == "array-dtype-edited":
            meta = json.loads((store / "encoder/mean/zarr.json").read_text())
            meta["data_type"] = "float32" if meta["data_type"] == "float64" else "float64"
            (store / "encoder/mean/zarr.json").write_text(json.dumps(meta))
        elif kind == "array-shape-edited":
            meta = json.loads((store / "dynamics/net.0.bias/zarr.json").read_text())
            meta["shape"] = [meta["shape"][0] * 2]
            meta["chunk_grid"]["configuration"]["chunk_shape"] = meta["shape"]
            (store / "dynamics/net.0.bias/zarr.json").write_text(json.dumps(meta))
        elif kind == "part-folder-deleted":
            shutil.rmtree(store / "model_error")
        elif kind == "array-folder-deleted":
            shutil.rmtree(store / "encoder" / "mean")
        return opens_refused(store)
    return run


for _k in ("root-json-deleted", "root-json-garbage", "root-json-truncated", "unknown-folder",
           "unknown-array", "array-dtype-edited", "array-shape-edited", "part-folder-deleted",
           "array-folder-deleted"):
    add("store-structure", _k, _struct(_k))


def _not_a_store(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        path = tmp / "m.zarr"
        if kind == "missing":
            pass
        elif kind == "empty-folder":
            path.mkdir()
        elif kind == "a-file":
            path.write_text("hello")
        elif kind == "latent-store":
            encode_to_zarr(lorenz(), model_pca(), path, chunk=60, progress=False, client=False)
        return opens_refused(path)
    return run


for _k in ("missing", "empty-folder", "a-file", "latent-store"):
    add("store-open", _k, _not_a_store(_k))


def _save_refusals(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        path = tmp / "m.zarr"
        if kind == "exists":
            model_pca().save(path)
            return expect(ModelStoreError, lambda: model_pca(1).save(path), "overwrite=True")
        if kind == "read-only-folder":
            ro = tmp / "ro"
            ro.mkdir()
            ro.chmod(0o500)
            try:
                if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
                    (ro / "m.zarr").mkdir()
                    (ro / "m.zarr").chmod(0o500)
                    target = ro / "m.zarr" / "inner" / "m.zarr"
                    (ro / "m.zarr").chmod(0o500)
                    if os.access(ro / "m.zarr", os.W_OK):
                        target = Path("/proc/xlatda-no-such-dir/m.zarr")
                else:
                    target = ro / "m.zarr"
                out = expect(ModelStoreError, lambda: model_pca().save(target), r"write")
            finally:
                ro.chmod(0o700)
                for p in ro.rglob("*"):
                    p.chmod(0o700)
            assert not any(p.name.startswith(".") for p in ro.iterdir())
            return out
        if kind == "not-a-model":
            return expect(ModelStoreError, lambda: xlatda.io.save_model(object(), path),
                          "LatentModel")
        raise AssertionError(kind)
    return run


for _k in ("exists", "read-only-folder", "not-a-model"):
    add("store-save", _k, _save_refusals(_k))


def _round_trip(tmp: Path) -> str:
    path = tmp / "m.zarr"
    model_full().save(path)
    assert same_model(open_model(path), model_full())
    model_pca(1).save(path, overwrite=True)
    assert same_model(open_model(path), model_pca(1))
    assert hidden_leftovers(path) == []
    return "identical (save, overwrite, reopen)"


add("store-save", "round-trip-and-overwrite", _round_trip)


# -- killed writers (fork + os._exit at the k-th write) --------------------------------
class _Hooks:
    """Counts writes (zarr store sets, os.replace, shutil.rmtree); exits at the k-th."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.count = 0

    def tick(self) -> None:
        if self.kill_at is not None and self.count == self.kill_at:
            os._exit(KILLED)
        self.count += 1

    def install(self) -> Callable[[], None]:
        from zarr.storage import LocalStore

        orig_set, orig_replace, orig_rmtree = LocalStore.set, os.replace, shutil.rmtree
        hooks = self

        async def set_(self, key, value, *args, **kwargs):
            hooks.tick()
            return await orig_set(self, key, value, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            hooks.tick()
            orig_replace(src, dst, *args, **kwargs)
            hooks.tick()

        def rmtree(path, *args, **kwargs):
            hooks.tick()
            return orig_rmtree(path, *args, **kwargs)

        LocalStore.set, os.replace, shutil.rmtree = set_, replace, rmtree

        def undo() -> None:
            LocalStore.set, os.replace, shutil.rmtree = orig_set, orig_replace, orig_rmtree

        return undo


def count_writes(fn: Callable[[], Any]) -> int:
    hooks = _Hooks(None)
    undo = hooks.install()
    try:
        fn()
    finally:
        undo()
    return hooks.count


def run_killed(fn: Callable[[], Any], kill_at: int, log: Path) -> int:
    """Run ``fn`` in a forked child killed (``os._exit``) at its ``kill_at``-th write.

    Returns the child's exit code: ``KILLED`` or 0 when ``fn`` finished first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            _Hooks(kill_at).install()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
        except BaseException:
            log.write_text(traceback.format_exc())
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, KILLED):
        raise AssertionError(f"the writer failed before its kill point: {log.read_text()}")
    return code


@functools.cache
def _n_writes(kind: str) -> int:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="xlatda-count-"))
    if kind == "save-overwrite":
        model_full().save(tmp / "m.zarr")
        return count_writes(lambda: model_pca(1).save(tmp / "m.zarr", overwrite=True))
    if kind == "save-new":
        return count_writes(lambda: model_full().save(tmp / "m.zarr"))
    if kind == "encode":
        return count_writes(lambda: encode_to_zarr(lorenz(), model_pca(), tmp / "z.zarr",
                                                   chunk=20, progress=False, client=False))
    raise AssertionError(kind)


def _kill_point(kind: str, i: int, n: int) -> int:
    total = _n_writes(kind)
    if i < 0:  # counted from the end: the renames and deletions of a save
        return total + i
    return round(i * (total - 1) / max(n - 1, 1))


def _kill_save(kind: str, i: int, n: int) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        path = tmp / "m.zarr"
        k = _kill_point(kind, i, n)
        if kind == "save-overwrite":
            old, new = model_full(), model_pca(1)
            old.save(path)
            code = run_killed(lambda: new.save(path, overwrite=True), k, tmp / "log")
            recovered = not path.exists()
            got = open_model(path)  # recovers the old model if killed between the renames
            which = "old" if same_model(got, old) else "new" if same_model(got, new) else None
            assert which is not None, "the model at the path is neither the old nor the new one"
            if recovered:
                which += " (recovered by open_model from the .old sibling)"
        else:
            new = model_full()
            code = run_killed(lambda: new.save(path), k, tmp / "log")
            if path.exists():
                assert same_model(open_model(path), new), "a half-written model at the path"
                which = "new"
            else:
                expect(ModelStoreError, lambda: open_model(path), "no model store")
                which = "none (refused clearly)"
        left = hidden_leftovers(path)
        model_pca(0).save(path, overwrite=True)  # the next save cleans the leftovers
        assert hidden_leftovers(path) == [], hidden_leftovers(path)
        assert same_model(open_model(path), model_pca(0))
        state = "killed" if code == KILLED else "finished"
        return (f"{state} at write {k}/{_n_writes(kind)}: path holds the {which} model; "
                f"{len(left)} leftovers cleaned by the next save")
    return run


N_SAVE_KILLS = 24
for _i in range(N_SAVE_KILLS):
    add("kill-save-overwrite", f"{_i:02d}of{N_SAVE_KILLS}",
        _kill_save("save-overwrite", _i, N_SAVE_KILLS), slow=_i % 4 != 0)
for _i in range(1, 11):  # every one of the last 10 writes: renames, deletions
    add("kill-save-overwrite-tail", f"last-{_i:02d}", _kill_save("save-overwrite", -_i, 0),
        slow=_i % 2 == 0)
for _i in range(12):
    add("kill-save-new", f"{_i:02d}of12", _kill_save("save-new", _i, 12), slow=_i % 4 != 0)


@functools.cache
def encode_reference(seed: int) -> np.ndarray:
    import tempfile

    store = Path(tempfile.mkdtemp(prefix="xlatda-ref-")) / "z.zarr"
    return encode_to_zarr(lorenz(seed), model_pca(), store, chunk=20, progress=False,
                          client=False).z.values


def _encode(tmp: Path, seed: int, **kw: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode_to_zarr(lorenz(seed), model_pca(), tmp / "z.zarr", chunk=20,
                              progress=False, client=False, **kw).z.values


def _kill_encode(i: int, n: int) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        k = _kill_point("encode", i, n)
        code = run_killed(lambda: _encode(tmp, 0), k, tmp / "log")
        store = tmp / "z.zarr"
        done = stream_status(store)["done"] if store.exists() else 0
        # Another source on the same store: refused, or (nothing of A written) pure B.
        try:
            got_b = _encode(tmp, 1)
        except StoreMismatchError:
            other = "refused"
        else:
            assert np.array_equal(got_b, encode_reference(1)), "a mix of two sources"
            other = "encoded B alone"
            assert done == 0, "B was resumed into A's regions"
        again = _encode(tmp, 0, resume=False)
        assert np.array_equal(again, encode_reference(0))
        state = "killed" if code == KILLED else "finished"
        return (f"{state} at write {k}/{_n_writes('encode')} ({done} regions marked); "
                f"other source: {other}; replaced: identical")
    return run


def _kill_resume(i: int, n: int) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        k = _kill_point("encode", i, n)
        code = run_killed(lambda: _encode(tmp, 0), k, tmp / "log")
        resumed = _encode(tmp, 0)
        assert np.array_equal(resumed, encode_reference(0)), "resumed differs"
        assert stream_status(tmp / "z.zarr")["complete"]
        state = "killed" if code == KILLED else "finished"
        return f"{state} at write {k}/{_n_writes('encode')}; resumed: identical"
    return run


N_ENC_KILLS = 16
for _i in range(N_ENC_KILLS):
    add("kill-encode-resume", f"{_i:02d}of{N_ENC_KILLS}", _kill_resume(_i, N_ENC_KILLS),
        slow=_i % 3 != 0)
    add("kill-encode-reuse", f"{_i:02d}of{N_ENC_KILLS}", _kill_encode(_i, N_ENC_KILLS),
        slow=_i % 4 != 1)


# -- real SIGKILL of a fresh process ---------------------------------------------------
def _sigkill(task: str, delay: float) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        if task == "encode":
            model_pca().save(tmp / "m.zarr")
            lorenz().chunk(time=10).to_zarr(tmp / "src.zarr", zarr_format=3,
                                            consolidated=False)
        proc = subprocess.Popen([sys.executable, "-m", "tests.fault_worker", task, str(tmp)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"worker did not start: {line!r}"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if task == "cycle":
            from tests.fault_worker import cycle_run

            store = tmp / "c.zarr"
            had = 0
            if store.exists():  # windows committed when killed (the store may be torn)
                import zarr

                had = int(zarr.open_group(str(store), mode="r").attrs.get("xlatda_windows", 0))
            resumed = cycle_run(store).analysis.x.values
            assert np.array_equal(resumed, cycle_run_reference()), "resumed cycle differs"
            assert hidden_leftovers(store) == []
            return (f"SIGKILL after {delay:.2f} s ({had} of {len(resumed)} analyses stored); "
                    "rerun resumed: identical")
        if task == "save":
            got = open_model(tmp / "m.zarr")
            x = torch.as_tensor(lorenz().x.values[:3, None, :])
            assert torch.isfinite(got.encode_tensor(x)).all()
            model_pca().save(tmp / "m.zarr", overwrite=True)
            assert hidden_leftovers(tmp / "m.zarr") == []
            return f"SIGKILL after {delay:.2f} s: a readable model; next save left no leftovers"
        out = encode_to_zarr(tmp / "src.zarr", tmp / "m.zarr", tmp / "z.zarr", chunk=10,
                             progress=False, client=False).z.values
        assert np.allclose(out, encode_reference(0), rtol=0, atol=1e-6)
        ref = encode_to_zarr(tmp / "src.zarr", tmp / "m.zarr", tmp / "ref.zarr", chunk=10,
                             progress=False, client=False).z.values
        assert np.array_equal(out, ref)
        return f"SIGKILL after {delay:.2f} s; resumed: identical"
    return run


for _j, _d in enumerate((0.3, 0.05, 0.1, 0.2, 0.5, 0.8)):
    add("sigkill-save", f"{_d:.2f}s", _sigkill("save", _d), slow=_j > 0)
for _j, _d in enumerate((0.2, 0.05, 0.5, 1.0)):
    add("sigkill-encode", f"{_d:.2f}s", _sigkill("encode", _d), slow=_j > 0)
for _d in (6.0, 0.1, 4.5, 8.0, 10.0):  # about 4 s to start, 0.2 s per stored analysis
    add("sigkill-cycle", f"{_d:.2f}s", _sigkill("cycle", _d), slow=True)


@functools.cache
def cycle_run_reference() -> np.ndarray:
    from tests.fault_worker import cycle_run

    return cycle_run().analysis.x.values


# -- encode_to_zarr bad inputs -----------------------------------------------------------
def _nan_source(t: int, value: float) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        bad = lorenz().copy(deep=True)
        bad["x"][t, 3] = value
        out = expect(NonFiniteError, lambda: encode_to_zarr(
            bad, model_pca(), tmp / "z.zarr", chunk=20, progress=False, client=False),
            f"index {t}")
        status = stream_status(tmp / "z.zarr")
        assert not status["complete"] and status["done"] == t // 20
        return out
    return run


for _t, _v in ((0, np.nan), (37, np.nan), (119, np.nan), (55, np.inf), (80, -np.inf)):
    add("encode-input", f"nonfinite-at-{_t}-{_v}", _nan_source(_t, _v))


def _enc_bad(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = tmp / "z.zarr"
        call = functools.partial(encode_to_zarr, progress=False, client=False)
        if kind == "chunk-zero":
            return expect(ConfigError, lambda: call(lorenz(), model_pca(), store, chunk=0))
        if kind == "chunk-float":
            return expect(ConfigError, lambda: call(lorenz(), model_pca(), store, chunk=2.5))
        if kind == "spatial-dim":
            return expect(ConfigError, lambda: call(lorenz(), model_pca(), store, dim="k"))
        if kind == "unknown-dim":
            return expect(ConfigError, lambda: call(lorenz(), model_pca(), store, dim="tme"))
        if kind == "missing-variable":
            return expect(LayoutError, lambda: call(lorenz().rename(x="y"), model_pca(), store))
        if kind == "missing-source-path":
            return expect(ConfigError, lambda: call(tmp / "nope.zarr", model_pca(), store))
        if kind == "store-not-ours":
            import zarr

            zarr.open_group(str(store), mode="w", zarr_format=3)
            return expect(ConfigError, lambda: call(lorenz(), model_pca(), store))
        if kind == "other-model":
            call(lorenz(), model_pca(), store, chunk=20)
            return expect(StoreMismatchError, lambda: call(lorenz(), model_pca(1), store,
                                                           chunk=20), "model")
        if kind == "other-chunk":
            call(lorenz(), model_pca(), store, chunk=20)
            return expect(StoreMismatchError, lambda: call(lorenz(), model_pca(), store,
                                                           chunk=30), "chunk")
        if kind == "other-coords":
            call(lorenz(), model_pca(), store, chunk=20)
            shifted = lorenz().assign_coords(time=lorenz().time + 1.0)
            return expect(StoreMismatchError, lambda: call(shifted, model_pca(), store,
                                                           chunk=20), "coords")
        if kind == "complete-other-source":
            call(lorenz(), model_pca(), store, chunk=20)
            return expect(StoreMismatchError, lambda: call(lorenz(1), model_pca(), store,
                                                           chunk=20), "other data")
        if kind == "model-path-corrupt":
            model_pca().save(tmp / "m.zarr")
            f = chunk_file(tmp / "m.zarr", "encoder/components")
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x10
            f.write_bytes(bytes(data))
            out = expect(ModelStoreError, lambda: call(lorenz(), tmp / "m.zarr", store))
            assert not store.exists()
            return out
        if kind == "not-a-dataset":
            return expect(ConfigError, lambda: call(np.zeros((3, 8)), model_pca(), store))
        raise AssertionError(kind)
    return run


for _k in ("chunk-zero", "chunk-float", "spatial-dim", "unknown-dim", "missing-variable",
           "missing-source-path", "store-not-ours", "other-model", "other-chunk",
           "other-coords", "complete-other-source", "model-path-corrupt", "not-a-dataset"):
    add("encode-input", _k, _enc_bad(_k))


def _resume_false_replaces(tmp: Path) -> str:
    store = tmp / "z.zarr"
    encode_to_zarr(lorenz(1), model_pca(), store, chunk=20, progress=False, client=False)
    out = _encode(tmp, 0, resume=False)
    assert np.array_equal(out, encode_reference(0))
    assert hidden_leftovers(store) == []
    return "identical (resume=False replaced another encoding)"


add("encode-input", "resume-false-replaces", _resume_false_replaces)


# -- observation contract -----------------------------------------------------------------
def _obs(values: Any = (1.0, 2.0, 3.0), **attrs: Any) -> xr.Dataset:
    v = np.asarray(values, dtype=float)
    return xr.Dataset({"x": ("obs", v, {"error_std": 0.5, **attrs})},
                      coords={"k": ("obs", np.arange(v.size)), "time": ("obs", np.zeros(v.size))})


@functools.cache
def latlon_state() -> xr.Dataset:
    return xr.Dataset(
        {"h": (("lat", "lon"), np.zeros((3, 4)), {"units": "m"})},
        coords={"lat": ("lat", [0.0, 10.0, 20.0], {"standard_name": "latitude"}),
                "lon": ("lon", [0.0, 10.0, 20.0, 30.0], {"standard_name": "longitude"})})


def _latlon_obs(lat=(5.0, 15.0), lon=(5.0, 25.0), lat_units=None, lon_units=None):
    la = {"units": lat_units} if lat_units else {}
    lo = {"units": lon_units} if lon_units else {}
    return xr.Dataset({"h": ("obs", [1.0, 2.0], {"units": "m", "error_std": 0.5})},
                      coords={"lat": ("obs", list(lat), la), "lon": ("obs", list(lon), lo)})


def _validate(obs: xr.Dataset, state: xr.Dataset | None = None, **kw: Any) -> None:
    state = lorenz().isel(time=0) if state is None else state
    xlatda.obs.contract.validate(obs, xlatda.layout(state), **kw)


_OBS = {
    "inf-value": (lambda: _validate(_obs([1.0, np.inf, 2.0])), ObservationError, "inf"),
    "minus-inf-value": (lambda: _validate(_obs([-np.inf, 1.0, 2.0])), ObservationError,
                        r"inf at 1 observations \(first at obs index \[0\]\)"),
    "fill-9.97e36": (lambda: _validate(_obs([1.0, 9.969209968386869e36, 2.0])),
                     ObservationError, "fill value"),
    "fill-minus-1e30": (lambda: _validate(_obs([1.0, -1e30, 2.0])), ObservationError,
                        "fill value"),
    "fill-attr-undecoded": (lambda: _validate(_obs([1.0, -999.0, 2.0], _FillValue=-999.0)),
                            ObservationError, "_FillValue"),
    "missing-value-attr": (lambda: _validate(_obs([1.0, -99.0, 2.0], missing_value=-99.0)),
                           ObservationError, "missing_value"),
    "valid-max-attr": (lambda: _validate(_obs([1.0, 1e9, 2.0], valid_max=100.0)),
                       ObservationError, "valid range"),
    "valid-range-attr": (lambda: _validate(_obs([1.0, -50.0, 2.0], valid_range=[-20, 20])),
                         ObservationError, "valid range"),
    "bounds-gross-error": (lambda: _validate(_obs([1.0, 1e9, 2.0]), bounds={"x": (-30, 30)}),
                           ObservationError, "1e\\+09"),
    "lat-radians": (lambda: _validate(_latlon_obs(lat=(0.1, 0.2), lat_units="radians"),
                                      latlon_state()), UnitsError, "rad2deg"),
    "lon-radians": (lambda: _validate(_latlon_obs(lon=(0.1, 0.4), lon_units="rad"),
                                      latlon_state()), UnitsError, "degrees_east"),
    "lat-out-of-range": (lambda: _validate(_latlon_obs(lat=(5.0, 95.0)), latlon_state()),
                         ObservationError, r"\[-90, 90\]"),
    "string-times": (lambda: _validate(_obs().assign_coords(
        time=("obs", np.array(["2020-01-01"] * 3)))), ObservationError, "strings"),
    "object-string-times": (lambda: _validate(_obs().assign_coords(
        time=("obs", np.array(["2020-01-01", "x", "y"], dtype=object)))), ObservationError,
        "decode"),
    "nan-location": (lambda: _validate(_obs().assign_coords(k=("obs", [0.0, np.nan, 2.0]))),
                     ObservationError, "NaN"),
    "negative-error-std": (lambda: _validate(_obs().assign(
        x_error_std=("obs", [0.5, -1.0, 0.5]))), ObservationError, "positive"),
    "zero-error-std": (lambda: _validate(_obs(error_std=0.0)), ObservationError, "positive"),
    "missing-error-std": (lambda: _validate(xr.Dataset(
        {"x": ("obs", [1.0])}, coords={"k": ("obs", [0])})), ObservationError, "error_std"),
    "unknown-variable": (lambda: _validate(_obs().rename(x="y")), VariableNotFoundError, "'y'"),
    "units-mismatch": (lambda: _validate(_latlon_obs().assign(
        h=lambda d: d.h.assign_attrs(units="km")), latlon_state()), UnitsError, "'km'"),
    "empty": (lambda: _validate(_obs([])), ObservationError, "empty"),
    "two-dims": (lambda: _validate(xr.Dataset({"x": (("obs", "y"), np.ones((2, 2)))})),
                 ObservationError, "one dimension"),
    "not-a-dataset": (lambda: _validate(np.ones(3)), ObservationError, "Dataset"),
    "all-nan-row": (lambda: _validate(_obs([1.0, np.nan, 2.0])), ObservationError,
                    "no finite value"),
    "duplicates": (lambda: _validate(_obs().assign_coords(k=("obs", [1, 1, 2]))),
                   ObservationError, "more than once"),
    "mixed-time-types": (lambda: _validate(_obs().assign_coords(time=("obs", np.array(
        [np.datetime64("2020-01-01"), 1.0, 2.0], dtype=object)))), ObservationError, "time"),
}
for _name, (_fn, _exc, _match) in _OBS.items():
    add("obs-contract", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))


def _obs_ok(tmp: Path) -> str:
    obs = _obs([1.0, 2.0, 3.0], _FillValue=-999.0)  # a declared fill value that is not used
    _validate(obs, fill_threshold=None)
    _validate(_obs([1.0, 2e30, 3.0]), fill_threshold=None)
    return "accepted (no fill value present; fill_threshold=None)"


add("obs-contract", "accepts-valid-with-options", _obs_ok)


# -- validation helpers ----------------------------------------------------------------------
V = xlatda.validation
_HELPERS = {
    "members-0": (lambda: V.check_members(0), ConfigError, ">= 2"),
    "members-1": (lambda: V.check_members(1), ConfigError, ">= 2"),
    "members--3": (lambda: V.check_members(-3), ConfigError, "-3"),
    "members-8.5": (lambda: V.check_members(8.5), ConfigError, "8.5"),
    "members-True": (lambda: V.check_members(True), ConfigError, "integer"),
    "members-str": (lambda: V.check_members("4"), ConfigError, "integer"),
    "int-none": (lambda: V.check_int(None, "window"), ConfigError, "window"),
    "spread--0.5": (lambda: V.check_nonnegative(-0.5, "init_std"), ConfigError, "init_std"),
    "spread-nan": (lambda: V.check_nonnegative(float("nan"), "init_std"), ConfigError, "nan"),
    "spread-inf": (lambda: V.check_nonnegative(np.inf, "init_std"), ConfigError, "inf"),
    "spread-array": (lambda: V.check_nonnegative([0.1, -1.0], "init_std"), ConfigError,
                     r"index \(1,\)"),
    "spread-string": (lambda: V.check_nonnegative("big", "init_std"), ConfigError, "number"),
    "b-std--1": (lambda: V.check_positive(-1.0, "b_std"), ConfigError, "b_std"),
    "b-std-0": (lambda: V.check_positive(0.0, "b_std"), ConfigError, "> 0"),
    "b-array-tensor": (lambda: V.check_positive(torch.tensor([1.0, 0.0]), "B"), ConfigError,
                       "B"),
    "b-empty": (lambda: V.check_positive([], "B"), ConfigError, "empty"),
    "typo-inflaton": (lambda: V.check_keywords({"inflaton": 1.05}, ["inflation", "rtps"],
                                               where="etkf"), KeywordError, "'inflation'"),
    "typo-epoch": (lambda: V.check_keywords({"epoch": 2}, xlatda.fit, where="fit"),
                   KeywordError, "did you mean 'epochs'"),
    "typo-widht": (lambda: V.check_keywords(
        {"widht": 8}, xlatda.encoders.encoders.get("autoencoder"), where="autoencoder",
        exclude=["n_channels", "spatial_shape", "latent_dim", "grid"]), KeywordError,
        "widht"),
    "typo-raduis": (lambda: V.check_keywords({"raduis": 4}, ["radius", "inflation"],
                                             where="letkf"), KeywordError, "'radius'"),
    "keyword-no-close": (lambda: V.check_keywords({"zzz": 1}, ["radius"], where="letkf"),
                         KeywordError, "valid: radius"),
    "keyword-excluded": (lambda: V.check_keywords({"self": 1}, xlatda.fit, where="fit",
                                                  exclude=["ds"]), KeywordError, "self"),
    "finite-dataset": (lambda: V.check_finite(lorenz().x.isel(time=slice(0, 3)).where(
        lambda d: d.k != 2), what="background"), NonFiniteError, r"time=0 \(0\.0\), k=2"),
    "finite-tensor-inf": (lambda: V.check_finite(torch.tensor([[1.0, float("inf")]]),
                                                 what="ensemble"), NonFiniteError,
                          r"index \(0, 1\)"),
    "finite-numpy": (lambda: V.check_finite(np.array([np.nan]), what="x"), NonFiniteError,
                     "x holds"),
    "span-year-2100": (lambda: V.check_time_span(
        np.array(["2100-01-01"], dtype="datetime64[ns]"), np.datetime64("2020-01-01"),
        {"value": 3600.0, "units": "s"}), TimeSpanError, "701280 model steps"),
    "span-1e6-units": (lambda: V.check_time_span(np.array([1e6]), 0.0, 0.05), TimeSpanError,
                       "20000000"),
    "span-cftime-noleap": (lambda: V.check_time_span(
        np.array([__import__("cftime").DatetimeNoLeap(2020, 1, 2)]),
        np.datetime64("2020-01-01"), {"value": 3600.0, "units": "s"}), TimeSpanError,
        "noleap"),
    "span-string-times": (lambda: V.check_time_span(np.array(["2020-01-02"]),
                                                    np.datetime64("2020-01-01"), 3600.0),
                          TimeSpanError, "strings"),
    "span-dates-vs-numbers": (lambda: V.check_time_span(
        np.array([np.datetime64("2020-01-02")]), 0.0, 1.0), TimeSpanError, "one time axis"),
    "span-dt-zero": (lambda: V.check_time_span(np.array([1.0]), 0.0, 0.0), ConfigError, "> 0"),
    "span-dt-units": (lambda: V.check_time_span(np.array([1.0]), 0.0,
                                                {"value": 3600.0, "units": "s"}),
                      TimeSpanError, "seconds"),
    "gross-k-negative": (lambda: V.gross_error_mask(torch.zeros(2), 1.0, 1.0, k=-1),
                         ConfigError, "k"),
}
for _name, (_fn, _exc, _match) in _HELPERS.items():
    add("validation", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))


def _span_ok(tmp: Path) -> str:
    import cftime

    t0 = np.datetime64("2020-01-01T00")
    obs = np.array(["2020-01-01T06"], dtype="datetime64[ns]")
    n1 = V.check_time_span(obs, t0, {"value": 3600.0, "units": "s"})
    n2 = V.check_time_span(np.array([cftime.DatetimeGregorian(2020, 1, 1, 6)]), t0,
                           np.timedelta64(1, "h"))
    n3 = V.check_time_span(np.array([cftime.DatetimeNoLeap(2020, 1, 1, 6)]),
                           cftime.DatetimeNoLeap(2020, 1, 1), np.timedelta64(1, "h"))
    assert n1 == n2 == n3 == 6, (n1, n2, n3)
    mask = V.gross_error_mask(torch.tensor([0.1, 10.0]), torch.tensor([1.0, 1.0]), 0.0, k=3)
    assert mask.tolist() == [False, True]
    return "identical (6 steps for datetime64, converted cftime, cftime; gross check masks 1)"


add("validation", "time-span-conversions", _span_ok)


# -- public API inputs (fit, options, registries) ----------------------------------------------
def _fit_nan() -> None:
    bad = lorenz().copy(deep=True)
    bad["x"][3, 3] = np.nan
    xlatda.fit(bad, encoder="pca", latent_dim=4, progress=False)


_API = {
    "fit-nan": (_fit_nan, LayoutError, "NaN"),
    "fit-latent-0": (lambda: xlatda.fit(lorenz(), latent_dim=0, progress=False), ConfigError,
                     "latent_dim"),
    "fit-unknown-encoder": (lambda: xlatda.fit(lorenz(), encoder="pcaa", progress=False),
                            UnknownNameError, "pcaa"),
    "fit-epochs-0": (lambda: xlatda.fit(lorenz(), encoder="autoencoder", epochs=0,
                                        progress=False), ConfigError, "epochs"),
    "fit-validation-2": (lambda: xlatda.fit(lorenz(), encoder="autoencoder", validation=2.0,
                                            epochs=1, progress=False), ConfigError,
                         "validation"),
    "options-typo": (lambda: xlatda.set_options(progres=False), ConfigError, "progres"),
    "options-bad-dtype": (lambda: xlatda.set_options(dtype="float16"), ConfigError, "dtype"),
    "unknown-method": (lambda: xlatda.methods.registry.get_method("kalman"), UnknownNameError,
                       "kalman"),
    "decode-wrong-latent": (lambda: xlatda.decode(xr.Dataset(
        {"z": (("time", "latent"), np.zeros((2, 3)))}), model_pca()), XlatdaError, "latent"),
}
for _name, (_fn, _exc, _match) in _API.items():
    add("api-input", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))


# -- cycle (public xlatda.cycle and xlatda.assimilate) ----------------------------------
def _cycle(**kw: Any) -> Any:
    from xlatda.dynamics.physical import Lorenz96

    truth = lorenz(0, 10)
    obs = kw.pop("obs", None)
    if obs is None:
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, 4)), n=4, error_std=0.5,
                                       seed=1)
    bg = kw.pop("background", truth.isel(time=0))
    model = kw.pop("model", None)
    args = {"method": "etkf", "members": 5, "init_std": 1.0, "progress": False, **kw}
    return xlatda.cycle(bg, obs, Lorenz96(n=8) if model is None else model, **args)


def _nan_bg() -> xr.Dataset:
    bg = lorenz(0, 10).isel(time=0).copy(deep=True)
    bg["x"][2] = np.nan
    return bg


def _cycle_reuse(tmp: Path) -> str:
    _cycle(store=tmp / "c.zarr")
    return expect(StoreMismatchError, lambda: _cycle(store=tmp / "c.zarr", method="enkf",
                                                     seed=9))


_CYCLE = {
    "typo-inflaton": (lambda: _cycle(inflaton=1.05), KeywordError, "did you mean 'inflation'"),
    "members-0": (lambda: _cycle(members=0), ConfigError, "members must be an integer >= 2"),
    "members--3": (lambda: _cycle(members=-3), ConfigError, "members.*-3"),
    "members-8.5": (lambda: _cycle(members=8.5), ConfigError, "members.*8.5"),
    "init-std--0.5": (lambda: _cycle(init_std=-0.5), ConfigError, "init_std"),
    "b-std--1": (lambda: _cycle(method="3dvar", b_std=-1.0), ConfigError, "b_std"),
    "nan-background-3dvar": (lambda: _cycle(method="3dvar", b_std=1.0, background=_nan_bg()),
                             NonFiniteError, r"background variable 'x'.*k=2"),
    "nan-background-etkf": (lambda: _cycle(background=_nan_bg()), NonFiniteError,
                            r"background variable 'x'.*k=2"),
}
for _name, (_fn, _exc, _match) in _CYCLE.items():
    add("cycle", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))
add("cycle", "store-reused-by-another-experiment", _cycle_reuse)


def _cycle_ok(tmp: Path) -> str:
    a = _cycle(store=tmp / "c.zarr").analysis.x.values
    b = _cycle().analysis.x.values
    assert np.array_equal(a, b)
    return "identical (with and without a store)"


add("cycle", "store-same-as-no-store", _cycle_ok)


# -- cycle inputs through the public API (issue 15's list) ----------------------------------
class Hourly:
    """x(t + 1 h) = x(t): a physical model on an hourly step (datetimes are in seconds)."""

    dt = 3600.0
    state_shape = (8,)

    def step(self, x, dt, theta=None):
        return x


@functools.cache
def hourly_truth(steps: int = 6) -> xr.Dataset:
    truth = lorenz(0, steps)
    hours = np.datetime64("2000-01-01T00") + np.arange(steps + 1) * np.timedelta64(1, "h")
    return truth.assign_coords(time=("time", hours.astype("datetime64[ns]"),
                                      {"standard_name": "time", "axis": "T"}))


def _hourly_obs(steps: int = 6) -> xr.Dataset:
    return xlatda.obs.sample_points(hourly_truth(steps).isel(time=slice(1, None)), n=4,
                                    error_std=0.5, seed=1)


def _l96_obs() -> xr.Dataset:
    return xlatda.obs.sample_points(lorenz(0, 10).isel(time=slice(1, 4)), n=4, error_std=0.5,
                                    seed=1)


def _with_value(obs: xr.Dataset, i: int, value: float) -> xr.Dataset:
    out = obs.copy(deep=True)
    out["x"][i] = value
    return out


def _ens_bg(value: float) -> xr.Dataset:
    bg = lorenz(0, 10).isel(time=0)
    pert = np.random.default_rng(0).normal(size=(5, 8))
    ens = (bg.x.expand_dims(member=5) + xr.DataArray(pert, dims=("member", "k"))).to_dataset(
        name="x")
    ens["x"][2, 3] = value
    return ens


def _one_time_obs() -> xr.Dataset:
    obs = _l96_obs()
    return obs.where(obs.time == obs.time[0], drop=True)


def _cftime_obs(cls_name: str) -> xr.Dataset:
    import cftime

    obs = _hourly_obs()
    cls = getattr(cftime, cls_name)
    hours = (obs.time.values - np.datetime64("2000-01-01")) // np.timedelta64(1, "h")
    return obs.assign_coords(time=("obs", np.array([cls(2000, 1, 1, int(h)) for h in hours])))


def _hourly(**kw: Any) -> Any:
    obs = kw.pop("obs", None)
    obs = _hourly_obs() if obs is None else obs
    args = {"method": "etkf", "members": 5, "init_std": 1.0, "progress": False, **kw}
    return xlatda.cycle(hourly_truth().isel(time=0), obs, Hourly(), **args)


def _latlon_assimilate(**obs_kw: Any) -> Any:
    return xlatda.assimilate(latlon_state().assign_coords(time=0.0), _latlon_obs(**obs_kw),
                             members=5, init_std=1.0)


_CYCLE_INPUT = {
    "typo-raduis-letkf": (lambda: _cycle(method="letkf", raduis=4), KeywordError,
                          "did you mean 'radius'"),
    "typo-b-sdt-3dvar": (lambda: _cycle(method="3dvar", b_sdt=1.0), KeywordError,
                         "did you mean 'b_std'"),
    "typo-inflaton-assimilate": (lambda: xlatda.assimilate(
        _ens_bg(0.0), _one_time_obs(), inflaton=1.05), KeywordError, "'inflation'"),
    "unknown-progress-assimilate": (lambda: xlatda.assimilate(
        _ens_bg(0.0), _one_time_obs(), progress=False), KeywordError, "'progress'"),
    "members-1-etkf": (lambda: _cycle(members=1), ConfigError, ">= 2"),
    "members-True": (lambda: _cycle(members=True), ConfigError, "integer"),
    "members-0-assimilate": (lambda: xlatda.assimilate(
        lorenz(0, 10).isel(time=0), _one_time_obs(), members=0, init_std=1.0), ConfigError,
        "members"),
    "init-std-nan": (lambda: _cycle(init_std=float("nan")), ConfigError, "init_std"),
    "b-std-0": (lambda: _cycle(method="3dvar", b_std=0.0), ConfigError, "b_std"),
    "b-std--1-assimilate": (lambda: xlatda.assimilate(
        lorenz(0, 10).isel(time=0), _one_time_obs(), method="3dvar", b_std=-1.0),
        ConfigError, "b_std"),
    "nan-ensemble-background-etkf": (lambda: _cycle(background=_ens_bg(np.nan)),
                                     NonFiniteError, r"background variable 'x'.*member=2"),
    "inf-ensemble-background-enkf": (lambda: _cycle(method="enkf", background=_ens_bg(np.inf)),
                                     NonFiniteError, r"member=2.*k=3"),
    "nan-ensemble-background-assimilate": (lambda: xlatda.assimilate(
        _ens_bg(np.nan), _one_time_obs()), NonFiniteError, r"member=2"),
    "nan-background-letkf": (lambda: _cycle(method="letkf", radius=2, background=_nan_bg()),
                             NonFiniteError, "background"),
    "inf-observation": (lambda: _cycle(obs=_with_value(_l96_obs(), 1, np.inf)),
                        ObservationError, "inf"),
    "fill-9.97e36-observation": (lambda: _cycle(obs=_with_value(
        _l96_obs(), 1, 9.969209968386869e36)), ObservationError, "fill value"),
    "lat-radians-assimilate": (lambda: _latlon_assimilate(lat=(0.1, 0.2), lat_units="radians"),
                               UnitsError, "radians"),
    "lon-radians-assimilate": (lambda: _latlon_assimilate(lon=(0.1, 0.4), lon_units="rad"),
                               UnitsError, "rad"),
    "span-1e6-units": (lambda: _cycle(obs=_l96_obs().assign_coords(time=_l96_obs().time + 1e6)),
                       TimeSpanError, "20000003 model steps"),
    "span-1e6-units-latent": (lambda: _cycle(obs=_l96_obs().assign_coords(
        time=_l96_obs().time + 1e6), model=model_full()), TimeSpanError, "model steps"),
    "span-year-2100": (lambda: _hourly(obs=_hourly_obs().assign_coords(time=(
        "obs", np.full(_hourly_obs().sizes["obs"], np.datetime64("2100-01-01", "ns"))))),
        TimeSpanError, "876600 model steps"),
    "cftime-obs-datetime-background": (lambda: _hourly(obs=_cftime_obs("DatetimeGregorian")),
                                       TimeSpanError, "cftime"),
    "cftime-noleap-obs-datetime-background": (lambda: _hourly(
        obs=_cftime_obs("DatetimeNoLeap")), TimeSpanError, "noleap"),
    "background-missing-variable": (lambda: _cycle(background=lorenz(0, 10).isel(
        time=0).rename(x="y"), model=model_full()), VariableNotFoundError,
        r"the background lacks .*'x'"),
}

for _name, (_fn, _exc, _match) in _CYCLE_INPUT.items():
    add("cycle-input", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))


# -- cycle stores: exact times, reuse refused, resumes bit-identical, killed writers ---------
def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _stored(res: Any) -> dict[str, np.ndarray]:
    out = {"analysis": res.analysis.x.values, "background": res.background.x.values,
           "time": res.analysis.time.values}
    for name in res.diagnostics.data_vars:
        out[f"diag.{name}"] = res.diagnostics[name].values
    return out


def same_result(a: Any, b: Any) -> bool:
    sa, sb = _stored(a), _stored(b)
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k], equal_nan=True)
                                          for k in sa)


def _first_times(obs: xr.Dataset, n: int) -> xr.Dataset:
    times = np.unique(obs.time.values)
    return obs.where(obs.time <= times[n - 1], drop=True)


def _hourly_store(tmp: Path) -> str:
    store = tmp / "h.zarr"
    full = _hourly()
    _hourly(obs=_first_times(_hourly_obs(), 3), store=store)
    part = open_cycle(store)
    want = hourly_truth().time.values[1:4]
    assert np.array_equal(part.analysis.time.values, want), part.analysis.time.values
    resumed = _hourly(store=store)
    assert np.array_equal(resumed.analysis.time.values, hourly_truth().time.values[1:])
    assert same_result(resumed, full), "the resumed hourly cycle differs"
    return "identical (hourly labels exact in the store; resumed 3 -> 6 analyses)"


def open_cycle(store: Path) -> Any:
    return xlatda.cycle_store.open_result(store)


def _reuse(change: dict[str, Any]) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        store = tmp / "c.zarr"
        _cycle(store=store)
        before = tree_bytes(store)
        out = expect(StoreMismatchError, lambda: _cycle(store=store, **change()),
                     "another experiment")
        assert tree_bytes(store) == before, "the refused run changed the store"
        return out
    return run


_REUSE = {
    "other-method-and-seed": lambda: {"method": "enkf", "seed": 9},
    "other-seed": lambda: {"seed": 3},
    "other-inflation": lambda: {"inflation": 1.1},
    "other-members": lambda: {"members": 6},
    "other-observations": lambda: {"obs": _with_value(_l96_obs(), 0, 1.5)},
    "other-model": lambda: {"model": __import__("xlatda.dynamics.physical").dynamics
                            .physical.Lorenz96(n=8, forcing=9.0)},
    "other-background": lambda: {"background": lorenz(1, 10).isel(time=0)},
}
for _name, _fn in _REUSE.items():
    add("cycle-store", f"reused-{_name}", _reuse(_fn))
add("cycle-store", "hourly-datetime-labels-and-resume", _hourly_store)


def _resume_identical(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        kw: dict[str, Any] = {}
        obs = xlatda.obs.sample_points(lorenz(0, 10).isel(time=slice(1, 9)), n=4,
                                       error_std=0.5, seed=1)
        if kind == "latent":
            kw = {"model": model_full()}
        elif kind == "4denvar":
            kw = {"method": "4denvar", "window": 2}
        full = _cycle(obs=obs, **kw)
        store = tmp / "c.zarr"
        _cycle(obs=_first_times(obs, 4), store=store, **kw)
        resumed = _cycle(obs=obs, store=store, **kw)
        assert same_result(resumed, full), f"the resumed {kind} cycle differs"
        return f"identical ({kind}: 4 stored analyses, resumed to 8)"
    return run


for _k in ("physical", "latent", "4denvar"):
    add("cycle-store", f"resume-bit-identical-{_k}", _resume_identical(_k))


def _no_dynamics_store(tmp: Path) -> str:
    store = tmp / "c.zarr"
    out = expect(XlatdaError, lambda: _cycle(model=model_pca(), store=store), "dynamics")
    assert not store.exists(), "a store was written before the refusal"
    return out


def _unwritable_store(kind: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        if kind == "file":
            store = tmp / "c.zarr"
            store.write_text("not a store")
        else:
            store = Path("/proc/xlatda-no-such-dir/c.zarr")
            if os.geteuid() != 0:
                ro = tmp / "ro"
                ro.mkdir()
                ro.chmod(0o500)
                store = ro / "c.zarr"
        try:
            return expect(xlatda.errors.StoreError, lambda: _cycle(store=store), "store")
        finally:
            if (tmp / "ro").exists():
                (tmp / "ro").chmod(0o700)
    return run


add("cycle-store", "model-without-dynamics-refused-before-writing", _no_dynamics_store)
add("cycle-store", "read-only-target-folder", _unwritable_store("read-only"))
add("cycle-store", "target-is-a-file", _unwritable_store("file"))


@functools.cache
def cycle_reference() -> Any:
    return _cycle().analysis.x.values


@functools.cache
def _n_cycle_writes() -> int:
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="xlatda-count-"))
    return count_writes(lambda: _cycle(store=tmp / "c.zarr"))


def _kill_cycle(i: int, n: int) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        total = _n_cycle_writes()
        k = round(i * (total - 1) / max(n - 1, 1))
        store = tmp / "c.zarr"
        code = run_killed(lambda: _cycle(store=store), k, tmp / "log")
        resumed = _cycle(store=store)
        assert np.array_equal(resumed.analysis.x.values, cycle_reference()), "resumed differs"
        assert np.array_equal(open_cycle(store).analysis.x.values, cycle_reference())
        assert hidden_leftovers(store) == [], hidden_leftovers(store)
        state = "killed" if code == KILLED else "finished"
        return f"{state} at write {k}/{total}; rerun resumed: identical"
    return run


def _open_torn(tmp: Path) -> str:
    """A store torn between two groups' appends: opening it says to rerun, rerun repairs it."""
    store = tmp / "c.zarr"
    _cycle(store=store)
    import zarr

    group = zarr.open_group(str(store / "diagnostics"), mode="a")
    arr = next(a for _, a in group.arrays() if a.metadata.dimension_names == ("time",)
               and a.name.split("/")[-1] != "time")
    arr.resize((arr.shape[0] - 1,))
    out = expect(ConfigError, lambda: open_cycle(store).diagnostics.load(), "rerun")
    assert np.array_equal(_cycle(store=store).analysis.x.values, cycle_reference())
    return out + "; rerun repaired it: identical"


add("cycle-store", "torn-store-opened", _open_torn)

N_CYCLE_KILLS = 16
for _i in range(N_CYCLE_KILLS):
    add("kill-cycle", f"{_i:02d}of{N_CYCLE_KILLS}", _kill_cycle(_i, N_CYCLE_KILLS),
        slow=_i % 8 != 1)


# -- gross errors: rejected by the background check, counted in the diagnostics ---------------
def _gross(value: float, method: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        kw: dict[str, Any] = {"method": method}
        if method == "3dvar":
            kw["b_std"] = 1.0
        elif method == "3dvar-latent":  # B: the model's latent prior; H = H o D nonlinear
            kw = {"method": "3dvar", "model": model_full()}
        elif method == "letkf":
            kw["radius"] = 3
        res = _cycle(obs=_with_value(_l96_obs(), 1, value), **kw)
        clean = _cycle(**kw)
        rejected = res.diagnostics["n_rejected"].values
        assert rejected[0] == 1 and not rejected[1:].any(), rejected
        a = res.analysis.x.values
        assert np.isfinite(a).all()
        err = float(np.abs(a - clean.analysis.x.values).max())
        assert err < 2.0, f"the analysis moved by {err} after a rejected observation"
        return f"rejected 1 (diagnostics n_rejected); analysis finite (|diff| {err:.2f})"
    return run


for _m in ("etkf", "enkf", "letkf", "3dvar", "3dvar-latent"):
    add("gross-error", f"height-1e9-{_m}", _gross(1e9, _m))
add("gross-error", "value-1e5-etkf", _gross(1e5, "etkf"))


# -- encode inputs and keyword typos of the public functions --------------------------------
def _encode_nan(lazy: bool, value: float) -> Callable[[], Any]:
    def run() -> Any:
        ds = lorenz().copy(deep=True)
        ds["x"][5, 3] = value
        if lazy:
            ds = ds.chunk(time=20)
        return xlatda.encode(ds, model_pca()).compute()
    return run


def _ro_encode() -> Any:
    return encode_to_zarr(lorenz(), model_pca(), "/proc/xlatda-no-such-dir/z.zarr",
                          chunk=60, progress=False, client=False)


_PUBLIC = {
    "encode-nan": (_encode_nan(False, np.nan), NonFiniteError, r"index \(5, 0, 3\)"),
    "encode-inf": (_encode_nan(False, np.inf), NonFiniteError, "NaN/inf"),
    "encode-nan-lazy": (_encode_nan(True, np.nan), NonFiniteError, r"index \(5, 0, 3\)"),
    "encode-to-zarr-read-only-target": (_ro_encode, xlatda.errors.StoreError, "cannot write"),
    "fit-typo-epoch": (lambda: xlatda.fit(lorenz(), encoder="pca", epoch=2, progress=False),
                       KeywordError, "did you mean 'epochs'"),
    "fit-encoder-options-widht": (lambda: xlatda.fit(
        lorenz(), encoder="autoencoder", epochs=1, encoder_options={"widht": 8},
        progress=False), KeywordError, "'widht' for encoder 'autoencoder'"),
    "fit-encoder-options-laten-dim": (lambda: xlatda.fit(
        lorenz(), encoder="pca", encoder_options={"latent_dim": 3}, progress=False),
        KeywordError, "latent_dim"),
    "fit-dynamics-options-widht": (lambda: xlatda.fit(
        lorenz(), encoder="pca", latent_dim=4, dynamics="ode", epochs=1, progress=False,
        dynamics_options={"widht": 8}), KeywordError, "did you mean 'width'"),
    "fit-dynamics-typo": (lambda: xlatda.fit_dynamics(model_pca(), lorenz(), epochs=1,
                                                      depht=2, progress=False),
                          KeywordError, "did you mean 'depth'"),
    "fit-score-typo": (lambda: xlatda.fit_score(lorenz(), model_pca(), epoch=1), KeywordError,
                       "did you mean 'epochs'"),
    "encode-typo": (lambda: xlatda.encode(lorenz(), model_pca(), devise="cpu"), KeywordError,
                    "did you mean 'device'"),
    "decode-typo": (lambda: xlatda.decode(xlatda.encode(lorenz(), model_pca()), model_pca(),
                                          dtpye="float64"), KeywordError, "'dtype'"),
    "encode-to-zarr-typo": (lambda: encode_to_zarr(lorenz(), model_pca(), "/tmp/x.zarr",
                                                   chunks=3), KeywordError, "'chunk'"),
}
for _name, (_fn, _exc, _match) in _PUBLIC.items():
    add("api-input", _name, (lambda f, e, m: lambda tmp: expect(e, f, m))(_fn, _exc, _match))
