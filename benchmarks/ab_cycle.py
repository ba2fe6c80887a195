"""A/B of ``xlatda.cycle`` on Lorenz-96 between source trees, in alternating subprocesses.

Each round runs, once per tree and trees alternating (the tree that starts
rotates), a fresh process whose ``xlatda`` comes from that tree
(``PYTHONPATH``); the process times ``xlatda.cycle`` for each method of
``bench_vs_dapper.RUNS`` asked for (its data, settings and seed) and the
bench's bare kernel loop, calls alternating, best of ``--repeat`` process-CPU
times, torch on one thread (``OMP_NUM_THREADS=1``). The measurement code is
this checkout's for every tree. Printed per method and tree: the median over
rounds of the best cycles/s of the call and of the kernel loop and of their
ratio, with every round's ratio, and the RMSE of the call (a check that the
trees compute the same thing). Both sides see the same minutes of a shared
machine, so only the comparison within one run means something.

Run (a tree made with ``git archive <commit> | tar -x -C /tmp/before``)::

    python benchmarks/ab_cycle.py before=/tmp/before after=. [--methods DEnKF EnKF]
        [--rounds 5] [--repeat 3] [--cycles 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(methods: list[str], cycles: int, repeat: int) -> None:
    """One process: best CPU times of the call and the kernel loop per method (JSON)."""
    sys.path.insert(0, str(HERE))
    import bench_vs_dapper as bench
    import torch

    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    torch.set_num_threads(1)
    truth, obs, xx, yy = bench.make_data(cycles, 0)
    out = {}
    for label in methods:
        _, method, members, settings, *_ = next(r for r in bench.RUNS if r[0] == label)

        def call(method=method, members=members, settings=settings):
            return xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method,
                                members=members, init_std=bench.INIT_STD, seed=0,
                                progress=False, **settings)

        res = call()  # warm-up
        mean = res.analysis.x.mean("member").transpose("time", ...).values
        rmse = bench._rmse(mean, xx[1:], 200)
        best_c = best_k = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            call()
            best_c = min(best_c, time.process_time() - t0)
            t0 = time.process_time()
            bench.run_kernel(label, xx, yy, 0, 0)
            best_k = min(best_k, time.process_time() - t0)
        out[label] = {"cycle": cycles / best_c, "kernel": cycles / best_k, "rmse": rmse}
    print(json.dumps({"xlatda": xlatda.__file__, "rows": out}))


def main(trees: dict[str, str], methods: list[str], rounds: int, repeat: int,
         cycles: int) -> str:
    rows: dict[tuple[str, str], list[dict]] = {}
    names = list(trees)
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            env = {**os.environ, "PYTHONPATH": str(Path(trees[name]).resolve()),
                   "OMP_NUM_THREADS": "1"}
            text = subprocess.run(
                [sys.executable, __file__, "--child", "--methods", *methods, "--cycles",
                 str(cycles), "--repeat", str(repeat)],
                env=env, check=True, capture_output=True, text=True, cwd="/tmp",
            ).stdout.strip().splitlines()[-1]
            res = json.loads(text)
            for label, row in res["rows"].items():
                rows.setdefault((label, name), []).append(row)
            print(f"round {r + 1} {name}: " + ", ".join(
                f"{k} {v['cycle']:.0f}/{v['kernel']:.0f}" for k, v in res["rows"].items()),
                flush=True)
        load.append(os.getloadavg()[0])
    lines = [f"xlatda.cycle vs kernel loop, Lorenz-96, {cycles} cycles, 1 thread, best of "
             f"{repeat} CPU times per process, {rounds} rounds alternating; 1-minute load "
             f"{min(load):.1f}-{max(load):.1f}", "",
             "| method | tree | cycle cycles/s | kernel cycles/s | cycle / kernel "
             "(median; rounds) | RMSE |", "|---|---|---|---|---|---|"]
    for label in methods:
        for name in names:
            rs = rows[(label, name)]
            ratios = [x["cycle"] / x["kernel"] for x in rs]
            lines.append(
                f"| {label} | {name} | {statistics.median(x['cycle'] for x in rs):.0f} | "
                f"{statistics.median(x['kernel'] for x in rs):.0f} | "
                f"{statistics.median(ratios):.3f}; "
                + " ".join(f"{x:.2f}" for x in ratios) + f" | {rs[0]['rmse']:.4f} |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trees", nargs="*", help="name=path of a source tree")
    p.add_argument("--methods", nargs="+", default=["DEnKF", "EnKF"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        child(a.methods, a.cycles, a.repeat)
    else:
        main(dict(t.split("=", 1) for t in a.trees), a.methods, a.rounds, a.repeat, a.cycles)
