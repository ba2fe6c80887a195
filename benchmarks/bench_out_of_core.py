"""Out-of-core encoding: a zarr store 4x a worker's memory cap, streamed by regions.

A synthetic source on the demo model's grid (height and vorticity, 32 x 64,
float32: 16 KiB per sample) is written to a zarr store four times the memory
limit of a one-worker, one-thread LocalCluster. ``encode_to_zarr`` streams it
to a latent store on that worker (the nanny kills the worker if it passes
95 % of the cap, so finishing at all proves the cap held; ``MemorySampler``
records the peak). Throughput is compared with encoding in memory in two ways: the kernel
alone (the same model on samples already loaded as NumPy, ``ds.lda.encode``,
one thread), and the same read-encode-write job on a part of the store that
fits in memory (what streaming replaces).
Models: the PCA of the shipped demo store (I/O-bound: a 48 x 4096 product per
sample) and, with ``--full``, a conv autoencoder fitted for one epoch
(compute-bound).
Targets: out-of-core at >= 80 % of in-memory throughput; peak worker memory
under the cap.

Run: ``python -m benchmarks --only out_of_core`` (``--full``: 1.5 GiB cap).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr

import xlatda

OUT = Path(__file__).resolve().parent / "out"
DEMO = Path(xlatda.__file__).resolve().parent / "data" / "demo_sw.zarr"
SAMPLE_BYTES = 2 * 32 * 64 * 4


def make_source(model, path: Path, n: int, chunk: int, seed: int = 0) -> xr.Dataset:
    """A lazy synthetic source on ``model``'s layout, written to ``path`` by dask."""
    L = model.layout
    one = L.to_dataset(torch.zeros((1, L.n_channels, *L.spatial_shape)),
                       sample_coords={"time": np.zeros(1)})
    mean, std = model.normalizer.select(torch.arange(L.n_channels))
    rs = dsa.random.RandomState(seed)
    data = {}
    for c, name in enumerate(L.variables):
        var = one[name]
        shape = (n, *L.spatial_shape)
        arr = rs.standard_normal(shape, chunks=(chunk, *L.spatial_shape)).astype("float32")
        arr = arr * np.float32(std[c]) + np.float32(mean[c])
        data[name] = (var.dims, arr, var.attrs)
    times = np.datetime64("2000-01-01T00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    coords = {k: v for k, v in one.coords.items() if k != "time"}
    ds = xr.Dataset(data, coords={**coords, "time": times}, attrs=one.attrs)
    for v in ds.variables:
        ds[v].encoding = {}
    with dask.config.set(scheduler="threads", num_workers=2):
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return xr.open_zarr(path, consolidated=False)


def _cluster(memory_limit: str, n_workers: int = 1):
    import distributed

    cfg = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
           "distributed.worker.memory.pause": False,
           "distributed.worker.memory.terminate": 0.95}
    with dask.config.set(cfg):
        cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
            dashboard_address=None, worker_dashboard_address=None,
            env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                 "MKL_NUM_THREADS": "1",
                 # Workers read these at start: no spilling or pausing, only the
                 # nanny's kill at 95 % of the cap.
                 "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False",
                 "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
                 "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
                 "DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "0.95"})
    return cluster, distributed.Client(cluster)


def _in_memory_rate(source: xr.Dataset, model, n: int, repeat: int) -> float:
    ds = source.isel(time=slice(0, n)).load()
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        ds.lda.encode(model).z.values  # noqa: B018
        best = min(best, time.perf_counter() - t)
    return n / best


def _in_memory_store_rate(src_path: Path, model, n: int, tmp: Path) -> float:
    """The same job on a source that fits in memory: read it all, encode, write latents."""
    store = tmp / "latents-in-memory.zarr"
    best = np.inf
    for _ in range(2):
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        ds = xr.open_zarr(src_path, consolidated=False).isel(time=slice(0, n))
        z = ds.load(scheduler="synchronous").lda.encode(model)
        z.to_zarr(store, mode="w", consolidated=False)
        best = min(best, time.perf_counter() - t)
    return n / best


def _out_of_core(client, src_path: Path, model_path: Path, n: int, chunk: int,
                 tmp: Path) -> tuple[float, float]:
    from distributed.diagnostics import MemorySampler

    from xlatda.streaming import encode_to_zarr

    store = tmp / "latents.zarr"
    shutil.rmtree(store, ignore_errors=True)
    ms = MemorySampler()
    with xlatda.set_options(torch_threads=1), ms.sample("encode", measure="process",
                                                        interval=0.1):
        t = time.perf_counter()
        encode_to_zarr(src_path, model_path, store, chunk=chunk, progress=False, client=client)
        secs = time.perf_counter() - t
    peak = float(ms.to_pandas()["encode"].max())
    return n / secs, peak


def main(quick: bool = True) -> list[dict]:
    torch.set_num_threads(1)
    cap_mib = 768 if quick else 1536
    n = 4 * cap_mib * 2**20 // SAMPLE_BYTES
    # Regions of 2048 samples (32 MiB): large enough that the per-region cost
    # (zarr metadata, a task, the marker) is small, small enough that the
    # slab and its copies stay well under the cap.
    chunk = 2048
    tmp = Path(tempfile.mkdtemp(prefix="xlatda-ooc-"))
    rows = []
    try:
        pca = xlatda.open_model(DEMO)
        pca.save(tmp / "pca.zarr")
        source = make_source(pca, tmp / "source.zarr", n, chunk)
        size = sum(f.stat().st_size for f in (tmp / "source.zarr").rglob("*") if f.is_file())
        ae = None
        if not quick:  # one thread encodes ~400 AE samples/s here: 4x the cap takes minutes
            train = source.isel(time=slice(0, 512)).load()
            ae = xlatda.fit(train, encoder="autoencoder", latent_dim=48, epochs=1,
                            progress=False)
            ae.save(tmp / "ae.zarr")
        cluster, client = _cluster(f"{cap_mib}MiB")
        try:
            models = [("pca (demo store)", pca)] + ([] if quick else [("autoencoder", ae)])
            for name, model in models:
                path = tmp / ("pca.zarr" if model is pca else "ae.zarr")
                n_mem = 8192 if model is pca else 2048
                mem_rate = _in_memory_rate(source, model, n_mem, 3 if quick else 5)
                n_ooc = n
                src_path = tmp / "source.zarr"
                with dask.config.set(scheduler="synchronous"):
                    job_rate = _in_memory_store_rate(src_path, model, n_mem, tmp)
                ooc_rate, peak = _out_of_core(client, src_path, path, n_ooc, chunk, tmp)
                rows.append({
                    "model": name, "source_MiB": round(n_ooc * SAMPLE_BYTES / 2**20),
                    "cap_MiB": cap_mib, "samples": n_ooc,
                    "in_memory_samples_per_s": mem_rate, "out_of_core_samples_per_s": ooc_rate,
                    "ratio": ooc_rate / mem_rate,
                    "in_memory_job_samples_per_s": job_rate, "ratio_to_job": ooc_rate / job_rate,
                    "peak_worker_MiB": peak / 2**20,
                    "peak_under_cap": peak < cap_mib * 2**20,
                })
        finally:
            client.close()
            cluster.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    lines = [f"Source on disk: {size / 2**20:.0f} MiB (zarr, compressed) for the PCA row.", "",
             "in-memory kernel: samples already loaded as NumPy, `ds.lda.encode` only; "
             "in-memory job: the same read-encode-write job on a part of the store that fits "
             "in memory (one process, one thread).", "",
             "| model | source [MiB] | cap [MiB] | samples | in-memory kernel [samples/s] | "
             "in-memory job [samples/s] | out-of-core [samples/s] | ratio to kernel | "
             "ratio to job | peak worker [MiB] | under cap |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['source_MiB']} | {r['cap_MiB']} | {r['samples']} | "
            f"{r['in_memory_samples_per_s']:.0f} | {r['in_memory_job_samples_per_s']:.0f} | "
            f"{r['out_of_core_samples_per_s']:.0f} | {r['ratio']:.2f} | "
            f"{r['ratio_to_job']:.2f} | {r['peak_worker_MiB']:.0f} | {r['peak_under_cap']} |")
    (OUT / f"out_of_core{'' if quick else '_full'}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true")
    main(quick=not p.parse_args().full)
