"""Ladder of timings from ``model.encode_tensor`` to ``ds.lda.encode`` (task speed5).

Every rung adds one layer of the eager PCA encode path; all rungs run
alternately in one process, one torch thread, and the best process-CPU
time of each is printed (ms). Run:
``python benchmarks/speed5_ladder.py [--samples 512] [--repeat 61]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import dask
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accessor import _dask_floors, _field

import xlatda
from xlatda._bridge import apply_state, apply_torch


def rungs(n: int):
    ds = _field(n)
    model = xlatda.fit(ds.isel(time=slice(0, 256)), encoder="pca", latent_dim=64, epochs=1,
                       progress=False)
    L = model.layout
    x = L.to_tensor(ds)
    enc = model.encoder
    norm = model.normalizer
    h = ds["height"].values
    v = ds["vorticity"].values
    z = ds.lda.encode(model)
    zt = torch.from_numpy(z.z.values)

    def stack_norm():
        out = torch.empty(x.shape, dtype=torch.float32)
        m, s = norm.mean_as(out), norm.std_as(out)
        torch.sub(torch.from_numpy(h)[:, None], m[0], out=out[:, 0:1])
        torch.sub(torch.from_numpy(v)[:, None], m[1], out=out[:, 1:2])
        # the division and PCA's centring in one pass, as apply_state does
        return torch.addcdiv(-enc.input_center, out, s.reshape(1, 2, 1, 1), out=out)

    def kernel():
        with torch.inference_mode():
            xn = stack_norm()
            y = enc.encode_centered(xn)
            bool(y.sum().isfinite())

    def raw():
        with torch.inference_mode():
            model.encode_tensor(x)

    def raw_dec():
        with torch.inference_mode():
            model.decode_tensor(zt)

    def dec_kernel():
        with torch.inference_mode():
            y = enc.decode(zt)
            y.mul_(norm.std_as(y).reshape(1, 2, 1, 1)).add_(norm.mean_as(y).reshape(1, 2, 1, 1))
            y.numpy()

    def dec_bridge():
        apply_torch(z.z, enc.decode, in_core=["latent"], out_core=["channel", "lat", "lon"],
                    out_sizes={"channel": 2, "lat": 32, "lon": 64}, denormalize=norm)

    def bridge():
        apply_state(ds, L, enc.encode_centered, normalizer=norm, center=enc.input_center,
                    out_core=["latent"],
                    out_sizes={"latent": 64}, check_finite="fields to encode",
                    nonfinite_propagates=True)

    chunked = ds.chunk(time=n // 4)
    zc = z.chunk(time=n // 4)
    per = n // 4
    xs = [x[i * per:(i + 1) * per] for i in range(4)]
    def raw_chunks():
        for xi in xs:
            with torch.inference_mode():
                model.encode_tensor(xi)

    floors = _dask_floors(model, x, zt, n)  # one map_blocks task per chunk

    return {
        "raw encode_tensor": raw,
        "kernel (stack+norm+PCA+check)": kernel,
        "apply_state": bridge,
        "xlatda.encode": lambda: xlatda.encode(ds, model).z.values,
        "ds.lda.encode": lambda: ds.lda.encode(model).z.values,
        "raw 4 chunks": raw_chunks,
        "dask floor encode": floors["encode dask"],
        "dask lda.encode": lambda: chunked.lda.encode(model).z.compute(),
        "raw decode_tensor": raw_dec,
        "decode kernel (PCA+denorm)": dec_kernel,
        "apply_torch decode": dec_bridge,
        "z.lda.decode": lambda: z.lda.decode(model).height.values,
        "dask floor decode": floors["decode dask"],
        "dask lda.decode": lambda: zc.lda.decode(model).compute(),
    }


def main(n: int, repeat: int) -> None:
    torch.set_num_threads(1)
    fns = rungs(n)
    best = dict.fromkeys(fns, float("inf"))
    with dask.config.set(scheduler="synchronous"):
        for fn in fns.values():
            fn()
        for _ in range(repeat):
            for k, fn in fns.items():
                c = time.process_time()
                fn()
                best[k] = min(best[k], time.process_time() - c)
    print(f"samples {n}, best of {repeat} CPU, 1 thread, load {os.getloadavg()[0]:.1f}")
    for k, t in best.items():
        print(f"{k:32s} {t * 1e3:8.3f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--repeat", type=int, default=61)
    a = p.parse_args()
    main(a.samples, a.repeat)
