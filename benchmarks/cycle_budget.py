"""Per-cycle budget of ``xlatda.cycle`` against the bench's kernel loop, one process (issue 16).

In one process on one torch thread, the Lorenz-96 run of
``bench_vs_dapper.py`` (same truth, observations, settings, seed 0) is timed
as a ladder of loops, each adding one piece of what ``xlatda.cycle`` does on
top of the bench's bare kernel loop (``Lorenz96.step`` + ``method.analyse``):

``kernel``
    the bench's loop (``bench_vs_dapper.run_kernel``'s body);
``+ observe``
    ``hx`` from the cycle's observation operator (``PhysicalSpace.observe``)
    instead of ``hx = ens``;
``+ diagnostics``
    the kernel's cycling step with its host diagnostics
    (``EnsembleMethod._cycle_step``) instead of ``analyse``;
``+ monitor``
    the divergence monitor's update;
``call: loop``
    the cycle's own loop (``xlatda.cycle._drive`` without ``result()``);
``call: result``
    ``CycleRecorder.columns_to_datasets`` (the xarray output and the
    observation-space statistics, once per call, on both loops);
``call: set-up``
    the rest of the call (validation, ``to_tensors``, ``plan_windows``,
    the initial ensemble).

Each figure is the best of ``--repeat`` process-CPU times, in microseconds
per cycle; the three "call" rows come from the same calls (two wrappers
around ``_drive`` and ``result``). Run::

    python benchmarks/cycle_budget.py [--method DEnKF] [--cycles 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_dapper as bench


def _ladder(label: str, xx, yy, obs, truth):
    """The loops of the ladder (callables) for run ``label``."""
    import torch

    import xlatda
    from xlatda.dynamics.physical import Lorenz96
    from xlatda.initial import start_state
    from xlatda.methods.consistency import DivergenceMonitor
    from xlatda.methods.ensemble import ETKF, DEnKF, EnKF
    from xlatda.methods.letkf import LETKF
    from xlatda.methods.localization import IndexDistance
    from xlatda.methods.protocol import cycling_method
    from xlatda.obs.contract import to_tensors
    from xlatda.spaces import PhysicalSpace
    from xlatda.windows import plan_windows

    make = {"ETKF": lambda: ETKF(inflation=1.013), "DEnKF": lambda: DEnKF(inflation=1.01),
            "EnKF": lambda: EnKF(inflation=1.06),
            "LETKF": lambda: LETKF(inflation=1.04, radius=4.0)}
    members = next(r[2] for r in bench.RUNS if r[0] == label)
    model = Lorenz96(n=40, forcing=8.0, dt=bench.DT)
    _, L, _, _ = start_state(truth.isel(time=0), None, cycling_method('denkf')[1], '',
                             need_time=True)
    sp = PhysicalSpace(L, model)
    tables = [w.tables[0] for w in plan_windows(to_tensors(obs, L), 1, 0)]

    def loop(observe: bool, diagnose: bool, monitor: bool):
        method = make[label]()
        mon = DivergenceMonitor()
        with torch.inference_mode():
            y_all = torch.as_tensor(yy)
            r_std = torch.full((40,), bench.R_STD, dtype=torch.float64)
            locations = IndexDistance(40)
            g = torch.Generator().manual_seed(0)
            ens = torch.as_tensor(xx[0]) + bench.INIT_STD * torch.randn(
                members, 40, generator=g, dtype=torch.float64)
            means = torch.empty(len(yy), 40, dtype=torch.float64)
            mstate, kstate = None, None
            for k in range(len(yy)):
                ens_b = model.step(ens, bench.DT)
                hx = sp.observe(ens_b, tables[k]) if observe else ens_b
                y = tables[k].values if observe else y_all[k]
                if diagnose:
                    ens, diag, kstate = method._cycle_step(ens_b, hx, y, r_std, generator=g,
                                                           locations=locations, state=kstate)
                    if monitor:
                        mstate = mon.update(diag, mstate, where=k)
                else:
                    ens = method.analyse(ens_b, hx, y, r_std, generator=g, locations=locations)
                means[k] = ens.mean(0)
        return means

    _, method, members, settings, *_ = next(r for r in bench.RUNS if r[0] == label)

    def call():
        return xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=members,
                            init_std=bench.INIT_STD, seed=0, progress=False, **settings)

    return loop, call


def budget(label: str, cycles: int, repeat: int) -> list[str]:
    """The table rows of one method."""
    import importlib

    import torch

    from xlatda.cycle_records import CycleRecorder

    cyc = importlib.import_module("xlatda.cycle")  # the module (xlatda.cycle is the function)
    truth, obs, xx, yy = bench.make_data(cycles, 0)
    loop, call = _ladder(label, xx, yy, obs, truth)
    steps = [("kernel (bench loop)", lambda: loop(False, False, False)),
             ("+ observe (the cycle's operator)", lambda: loop(True, False, False)),
             ("+ diagnostics (_cycle_step)", lambda: loop(True, True, False)),
             ("+ monitor", lambda: loop(True, True, True))]
    acc = {"loop": 0.0, "result": 0.0}
    drive, result = cyc._drive, CycleRecorder.columns_to_datasets

    def timed_drive(*a, **k):
        t0 = time.process_time()
        out = drive(*a, **k)
        acc["loop"] += time.process_time() - t0
        return out

    def timed_result(self, *a, **k):
        t0 = time.process_time()
        out = result(self, *a, **k)
        acc["result"] += time.process_time() - t0
        acc["loop"] -= time.process_time() - t0
        return out

    cyc._drive, CycleRecorder.columns_to_datasets = timed_drive, timed_result
    best = {name: float("inf") for name, _ in steps}
    best_call = {"total": float("inf")}
    parts = {}
    try:
        for fn in [f for _, f in steps] + [call]:
            fn()  # warm-up
        for _ in range(repeat):  # interleaved: every loop sees the same minutes
            for name, fn in steps:
                t0 = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t0)
            acc.update(loop=0.0, result=0.0)
            t0 = time.process_time()
            call()
            total = time.process_time() - t0
            if total < best_call["total"]:
                best_call["total"] = total
                parts = dict(acc)
    finally:
        cyc._drive, CycleRecorder.columns_to_datasets = drive, result
    us = 1e6 / cycles
    rows = [f"{label} N={next(r[2] for r in bench.RUNS if r[0] == label)}, {cycles} cycles, "
            f"torch threads {torch.get_num_threads()}, best of {repeat} (CPU us per cycle)", "",
            "| loop | us/cycle | beyond the previous row |", "|---|---|---|"]
    prev = None
    for name, _ in steps:
        v = best[name] * us
        rows.append(f"| {name} | {v:.0f} | {'' if prev is None else f'{v - prev:+.0f}'} |")
        prev = v
    setup = best_call["total"] - parts["loop"] - parts["result"]
    rows += [f"| call: loop (_drive without the result) | {parts['loop'] * us:.0f} | "
             f"{parts['loop'] * us - prev:+.0f} (vs + monitor) |",
             f"| call: result() | {parts['result'] * us:.0f} | |",
             f"| call: set-up (before _drive) | {setup * us:.0f} | |",
             f"| call: total | {best_call['total'] * us:.0f} | kernel / call "
             f"{best['kernel (bench loop)'] / best_call['total']:.2f} |"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", nargs="+", default=["DEnKF", "EnKF"],
                   choices=[r[0] for r in bench.RUNS[:4]])
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for m in a.method:
        print("\n".join(budget(m, a.cycles, a.repeat)) + "\n", flush=True)


if __name__ == "__main__":
    main()
