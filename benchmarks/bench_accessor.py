"""Overhead of the xarray/dask path over the raw torch kernels.

``ds.lda.encode(model)`` / ``z.lda.decode(model)`` against
``model.encode_tensor`` / ``model.decode_tensor`` on the same tensors, for
PCA and the conv autoencoder on shallow-water-sized fields (2 x 32 x 64),
eager (NumPy-backed) and chunked (dask, synchronous scheduler). Target: the
xarray path at most 1.10x the raw torch time.

What is compared (checked for fairness, issue 16):

* "torch" is the model's tensor API on a tensor already stacked in the
  compute dtype (float32), under ``torch.inference_mode``: normalisation,
  the fixed-mask fill and the encoder, i.e. ``model.encode_tensor(x)`` /
  ``model.decode_tensor(z)``, the same computation as the xarray path minus
  the stacking, the NaN/inf check and the xarray wrapping.
* "xarray" is what a user calls: ``ds.lda.encode(model)`` / ``z.lda.decode(model)``
  with the result read (``.values``) or computed (``.compute()``, every
  variable of a decoded Dataset). The dask input is chunked as a user would,
  ``ds.chunk(time=n // 4)`` (4 chunks), and computed with the synchronous
  scheduler, so both sides run on one core (torch on 1 thread); the default
  threaded scheduler would run the chunks side by side against a 1-thread
  raw call.
* "dask floor" (dask cases): the raw call wrapped in ``dask.array.map_blocks``
  over the same 4 chunks, one task per chunk, same scheduler: what any dask
  path pays at these chunks (graph, scheduler, the final concatenation). The
  table gives the xarray call's CPU time over the floor's.
* Raw and xarray calls alternate after a warm-up of each, and the best of
  many runs is kept (41 at <= 1024 samples, where a call takes milliseconds,
  9 above), so a busy machine slows both alike; best wall-clock and best
  process-CPU times are both reported (the CPU ratio leaves out waiting for
  a core on a loaded machine).

Run: ``python benchmarks/bench_accessor.py [--full] [--encoders pca]``.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr

import xlatda

OUT = Path(__file__).resolve().parent / "out"


def _field(n: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    lat = -90 + (np.arange(32) + 0.5) * 180 / 32
    lon = np.arange(64) * 360 / 64
    base = rng.normal(size=(n, 2, 32, 64)).astype("float32")
    return xr.Dataset(
        {"height": (("time", "lat", "lon"), 9000 + 100 * base[:, 0], {"units": "m"}),
         "vorticity": (("time", "lat", "lon"), 1e-5 * base[:, 1], {"units": "s-1"})},
        coords={"time": np.arange(n, dtype=float),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})},
    )


def _best_of(fns, repeat: int) -> tuple[list[float], list[float]]:
    """Best wall and CPU times of each of ``fns``, run alternately.

    Returns ``(best walls, best CPU times)`` in the order of ``fns``.
    Alternating makes a busy machine slow all alike; the process CPU time
    (one torch thread, synchronous dask) leaves out the time spent waiting
    for a core, which on a loaded 2-core machine is most of the spread of
    wall times.
    """
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t, c = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - t)
    return [min(w) for w in wall], [min(c) for c in cpu]


def _best_pair(raw, wrapped, repeat: int) -> tuple[float, float, float, float]:
    """``(wall raw, wall wrapped, cpu raw, cpu wrapped)`` of :func:`_best_of`."""
    (w_raw, w_xr), (c_raw, c_xr) = _best_of((raw, wrapped), repeat)
    return w_raw, w_xr, c_raw, c_xr


def _dask_floors(model, x: torch.Tensor, z: torch.Tensor, n: int):
    """The dask floor of each case: the raw kernel in one ``map_blocks`` task per
    chunk (the chunks of the xarray case), computed with the same scheduler.

    No graph work beyond the input's chunks and one task per chunk; named by
    hand, since dask would otherwise tokenize the closure (pickling the model).
    """
    per = n // 4
    xd = dsa.from_array(x.numpy(), chunks=(per, *x.shape[1:]))
    zd = dsa.from_array(z.numpy(), chunks=(per, z.shape[1]))

    def enc_block(b):
        with torch.inference_mode():
            return model.encode_tensor(torch.from_numpy(b)).numpy()

    def dec_block(b):
        with torch.inference_mode():
            return model.decode_tensor(torch.from_numpy(b)).numpy()

    def encode():
        dsa.map_blocks(enc_block, xd, drop_axis=list(range(2, x.dim())),
                       chunks=(xd.chunks[0], (z.shape[1],)), dtype=np.float32,
                       name=f"floor-encode-{uuid.uuid4().hex}",
                       meta=np.empty((0, 0), np.float32)).compute()

    def decode():
        dsa.map_blocks(dec_block, zd, new_axis=list(range(2, x.dim())),
                       chunks=(zd.chunks[0], *((s,) for s in x.shape[1:])), dtype=np.float32,
                       name=f"floor-decode-{uuid.uuid4().hex}",
                       meta=np.empty((0,) * x.dim(), np.float32)).compute()

    return {"encode dask": encode, "decode dask": decode}


def _measure(ds: xr.Dataset, model, encoder: str, n: int, repeat: int) -> list[dict]:
    x = model.layout.to_tensor(ds)
    with torch.inference_mode():
        z_t = model.encode_tensor(x)

    def raw_encode():
        with torch.inference_mode():
            model.encode_tensor(x)

    def raw_decode():
        with torch.inference_mode():
            model.decode_tensor(z_t)

    z = ds.lda.encode(model)
    chunked = ds.chunk(time=n // 4)
    zc = z.chunk(time=n // 4)
    cases = {
        "encode eager": (raw_encode, lambda: ds.lda.encode(model).z.values),
        "decode eager": (raw_decode, lambda: z.lda.decode(model).height.values),
        "encode dask": (raw_encode, lambda: chunked.lda.encode(model).z.compute()),
        "decode dask": (raw_decode, lambda: zc.lda.decode(model).compute()),
        # the public functions the accessor calls (the same path since session 13)
        "xlatda.encode eager": (raw_encode, lambda: xlatda.encode(ds, model).z.values),
        "xlatda.decode eager": (raw_decode, lambda: xlatda.decode(z, model).height.values),
    }
    floors = _dask_floors(model, x, z_t, n)
    rows = []
    with dask.config.set(scheduler="synchronous"):
        for name, (raw, wrapped) in cases.items():
            fns = (raw, wrapped, floors[name]) if name in floors else (raw, wrapped)
            for fn in fns:  # warm up (first dask graph, first allocations)
                fn()
            walls, cpus = _best_of(fns, repeat)
            (t_raw, t_xr), (c_raw, c_xr) = walls[:2], cpus[:2]
            row = {"encoder": encoder, "case": name, "samples": n, "raw_s": t_raw,
                   "xarray_s": t_xr, "ratio": t_xr / t_raw, "samples_per_s": n / t_xr,
                   "raw_cpu_s": c_raw, "xarray_cpu_s": c_xr, "cpu_ratio": c_xr / c_raw}
            if name in floors:  # the dask floor: the raw kernel, one map_blocks task per chunk
                row.update({"floor_s": walls[2], "floor_cpu_s": cpus[2],
                            "floor_ratio": t_xr / walls[2], "floor_cpu_ratio": c_xr / cpus[2]})
            rows.append(row)
    return rows


def main(quick: bool = True, encoders: tuple[str, ...] = ("pca", "autoencoder"),
         out: str = "accessor.md") -> list[dict]:
    torch.set_num_threads(1)
    # PCA is one memory-bound matmul: a fixed few ms of xarray bookkeeping dominate
    # small calls, so it is measured at a small and a realistic batch size.
    sizes = {"pca": (512, 4096) if quick else (512, 4096, 16384),
             "autoencoder": (512,) if quick else (512, 4096)}
    repeat = 9 if quick else 15
    rows = []
    for encoder, ns in sizes.items():
        if encoder not in encoders:
            continue
        for n in ns:
            ds = _field(n)
            model = xlatda.fit(ds.isel(time=slice(0, 256)), encoder=encoder, latent_dim=64,
                               epochs=1, progress=False)
            rows.extend(_measure(ds, model, encoder, n, repeat if n > 1024 else max(repeat, 41)))
    OUT.mkdir(exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Best of {repeat} runs (41 at <= 1024 samples), 1 torch thread, dask synchronous "
             f"scheduler, chunks time=n/4; 1-minute load average at the end {load:.1f}.", "",
             "| encoder | case | samples | torch [s] | xarray [s] | ratio | samples/s "
             "| torch CPU [s] | xarray CPU [s] | CPU ratio | dask floor CPU [s] "
             "| CPU ratio to floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = (f"{r['floor_cpu_s']:.4f} | {r['floor_cpu_ratio']:.2f}" if "floor_s" in r
                 else "– | –")
        lines.append(f"| {r['encoder']} | {r['case']} | {r['samples']} | {r['raw_s']:.4f} | "
                     f"{r['xarray_s']:.4f} | {r['ratio']:.2f} | {r['samples_per_s']:.0f} | "
                     f"{r['raw_cpu_s']:.4f} | {r['xarray_cpu_s']:.4f} | {r['cpu_ratio']:.2f} | "
                     f"{floor} |")
    (OUT / out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true")
    p.add_argument("--encoders", default="pca,autoencoder", help="comma-separated subset")
    p.add_argument("--out", default="accessor.md", help="table file under benchmarks/out/")
    a = p.parse_args()
    main(quick=not a.full, encoders=tuple(a.encoders.split(",")), out=a.out)
