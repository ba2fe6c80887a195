"""Speed of the public cycling path: ``xlatda.cycle`` on Lorenz-96 (issue 16, item 2).

Lorenz-96 with 40 variables, every variable observed every step (R = I),
DEnKF with N = 40 members and inflation 1.01, 800 cycles, one torch thread,
as a user calls it (``xlatda.cycle`` on xarray objects, progress bar off).
Reports cycles per second (best of ``--repeat`` runs after one warm-up of
50 cycles) and the analysis RMSE after 200 cycles of burn-in.

Run ``python benchmarks/bench_cycle_public.py`` (about a minute); writes
``benchmarks/out/cycle_public.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xlatda
from xlatda.dynamics.physical import Lorenz96

OUT = Path(__file__).resolve().parent / "out" / "cycle_public.md"


def twin(cycles: int, seed: int = 1):
    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
    k = np.tile(np.arange(40.0), cycles)
    t = np.repeat(truth.time.values[1:], 40)
    rng = np.random.default_rng(seed)
    vals = truth.x.isel(time=slice(1, None)).values.ravel() + rng.normal(size=k.size)
    obs = xr.Dataset({"x": ("obs", vals, {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    return truth, obs


def run(cycles: int, method: str, members: int, **settings):
    truth, obs = twin(cycles)
    start = time.perf_counter()
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=members,
                       init_std=1.0, seed=0, progress=False, **settings)
    seconds = time.perf_counter() - start
    a = res.analysis.x.mean("member")
    err = (a - truth.x.sel(time=a.time)).isel(time=slice(200, None))
    return cycles / seconds, float(np.sqrt((err**2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(50, "denkf", 40, inflation=1.01)  # warm-up
    rates, rmse = [], None
    for _ in range(args.repeat):
        rate, rmse = run(args.cycles, "denkf", 40, inflation=1.01)
        rates.append(rate)
    line = (f"| {args.label or 'xlatda.cycle'} | DEnKF N=40, {args.cycles} cycles, 1 thread | "
            f"{max(rates):.0f} | {rmse:.3f} |")
    print(line)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    header = "| code | case | cycles/s (best) | analysis RMSE |\n|---|---|---|---|\n"
    text = OUT.read_text() if OUT.exists() else header
    OUT.write_text(text + line + "\n")


if __name__ == "__main__":
    main()
