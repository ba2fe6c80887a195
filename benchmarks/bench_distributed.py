"""Encode throughput on a 2-worker LocalCluster vs 1 worker (1 thread each).

A synthetic zarr source on the demo model's grid (32 x 64, height and
vorticity) is encoded on the cluster two ways: ``encode_to_zarr`` (regions
in parallel, each worker opening the source and the model store itself) and
the lazy path ``xlatda.encode(xr.open_zarr(src), model).z.compute()``.
Models: the demo store's PCA (I/O-bound) and a conv autoencoder
(compute-bound). Target: 2 workers >= 1.6x one worker. The table also gives
the machine's load average during each run: on a shared 2-core machine other
processes take CPU time the second worker would need.

Run: ``python -m benchmarks --only distributed`` (``--full``: 4x the samples).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import xarray as xr

import xlatda

OUT = Path(__file__).resolve().parent / "out"


def _run(client, kind: str, src: Path, model_path: Path, model, n: int, chunk: int,
         tmp: Path) -> float:
    from xlatda.streaming import encode_to_zarr

    with xlatda.set_options(torch_threads=1):
        t = time.perf_counter()
        if kind == "encode_to_zarr":
            store = tmp / "z.zarr"
            shutil.rmtree(store, ignore_errors=True)
            encode_to_zarr(src, model_path, store, chunk=chunk, progress=False, client=client)
        else:
            lazy = xlatda.encode(xr.open_zarr(src, consolidated=False), model)
            client.compute(lazy.z, sync=True)
        return n / (time.perf_counter() - t)


def main(quick: bool = True) -> list[dict]:
    import distributed

    try:
        from benchmarks.bench_out_of_core import DEMO, _cluster, make_source
    except ImportError:  # run as a script
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.bench_out_of_core import DEMO, _cluster, make_source

    torch.set_num_threads(1)
    chunk = 512
    n = 16384 if quick else 65536
    tmp = Path(tempfile.mkdtemp(prefix="xlatda-dist-"))
    rows = []
    try:
        pca = xlatda.open_model(DEMO)
        pca.save(tmp / "pca.zarr")
        source = make_source(pca, tmp / "src.zarr", n, chunk)
        ae = xlatda.fit(source.isel(time=slice(0, 512)).load(), encoder="autoencoder",
                        latent_dim=48, epochs=1, progress=False)
        ae.save(tmp / "ae.zarr")
        models = {"pca (demo store)": (pca, tmp / "pca.zarr", n),
                  "autoencoder": (ae, tmp / "ae.zarr", n // 4)}
        rates: dict[tuple, float] = {}
        loads: dict[tuple, float] = {}
        for workers in (1, 2):
            cluster, client = _cluster("4GiB", n_workers=workers)
            try:
                client.wait_for_workers(workers)
                for name, (model, path, n_model) in models.items():
                    src = tmp / "src.zarr"
                    if n_model < n:
                        src = tmp / f"src_{n_model}.zarr"
                        if not src.exists():
                            part = source.isel(time=slice(0, n_model))
                            for v in part.variables:
                                part[v].encoding = {}
                            part.to_zarr(src, zarr_format=3, consolidated=False)
                    for kind in ("encode_to_zarr", "lazy encode"):
                        _run(client, kind, src, path, model, n_model, chunk, tmp)  # warm-up
                        best = 0.0
                        for _ in range(2 if quick else 3):
                            best = max(best, _run(client, kind, src, path, model, n_model,
                                                  chunk, tmp))
                        rates[(name, kind, workers)] = best
                        loads[(name, kind, workers)] = os.getloadavg()[0]
            finally:
                client.close()
                cluster.close()
        for name, (_, _, n_model) in models.items():
            for kind in ("encode_to_zarr", "lazy encode"):
                r1, r2 = rates[(name, kind, 1)], rates[(name, kind, 2)]
                rows.append({"model": name, "path": kind, "samples": n_model,
                             "1_worker_samples_per_s": r1, "2_workers_samples_per_s": r2,
                             "speedup": r2 / r1, "load_avg_1min": loads[(name, kind, 2)]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    lines = [f"distributed {distributed.__version__}; {os.cpu_count()} cores; 1 thread per "
             "worker, torch_threads=1.", "",
             "| model | path | samples | 1 worker [samples/s] | 2 workers [samples/s] | "
             "speedup | load avg (1 min) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['path']} | {r['samples']} | "
                     f"{r['1_worker_samples_per_s']:.0f} | {r['2_workers_samples_per_s']:.0f} | "
                     f"{r['speedup']:.2f} | {r['load_avg_1min']:.1f} |")
    (OUT / f"distributed{'' if quick else '_full'}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true")
    main(quick=not p.parse_args().full)
