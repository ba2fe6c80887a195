"""The fixed-lag smoother of ``xlatda.cycle(..., lag=L)`` beside DAPPER's EnKS.

Same Lorenz-96 truth and observations as ``bench_vs_dapper.py`` (40 sites,
all observed every step with error 1, dt = 0.05), in one benchmark run:
xlatda's ETKF (24 members, inflation 1.013, the settings of that benchmark)
with ``lag`` = 0 (the filter), 1, 2, 4, 8, and DAPPER 1.7.1's ensemble Kalman
smoother ``EnKS("Sqrt", N=24, Lag=L, infl=1.013, rot=False)`` (Evensen's EnKS:
the past ensembles updated with the analysis transform; without DAPPER's
random rotation, which turns the current members against the stored past
ones: with ``rot=True`` its smoothed RMSE grows with the lag beyond 1), the analysis mean
RMSE after the burn-in at the observation times (smoothed for ``L >= 1``:
each state with the next ``L`` observation times), and cycles per second of
each call. For a linear-Gaussian model the two smoothers are the same
estimate (Raanes 2016); on Lorenz-96 they should agree to sampling error.
DAPPER inflates after its analysis (xlatda before), so the filters differ a
little too.

Run::

    python benchmarks/bench_smoother_vs_dapper.py [--cycles 800] [--seeds 2]

(DAPPER in ``benchmarks/.dapper-venv``, created on first use from the
package index); writes ``benchmarks/out/smoother_vs_dapper.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_vs_dapper as V  # noqa: E402

LAGS = (0, 1, 2, 4, 8)
MEMBERS, INFLATION = 24, 1.013


def dapper_runs() -> list[tuple]:
    """Runs in ``bench_vs_dapper.RUNS``' layout for the DAPPER side."""
    out = [("filter", "etkf", MEMBERS, {}, "EnKF",
            {"upd_a": "Sqrt", "N": MEMBERS, "infl": INFLATION, "rot": False})]
    out += [(f"lag {lag}", "etkf", MEMBERS, {}, "EnKS",
             {"upd_a": "Sqrt", "N": MEMBERS, "Lag": lag, "infl": INFLATION, "rot": False})
            for lag in LAGS if lag]
    return out


def run_xlatda(truth, obs, xx, burn: int, seed: int, lag: int) -> dict:
    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    t0 = time.perf_counter()
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="etkf", members=MEMBERS,
                       init_std=V.INIT_STD, seed=seed, progress=False, inflation=INFLATION,
                       lag=lag)
    seconds = time.perf_counter() - t0
    mean = res.analysis.x.mean("member").transpose("time", ...).values
    return {"rmse": V._rmse(mean, xx[1:], burn), "cycles_per_s": (xx.shape[0] - 1) / seconds}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=800)
    p.add_argument("--burn", type=int, default=100)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "out" / "smoother_vs_dapper.md")
    a = p.parse_args(argv)
    python = V.setup_venv()
    rows: dict[tuple[str, int], list[dict]] = {}
    warm = V.make_data(20, 99)  # imports and first calls out of the timings
    for lag in LAGS:
        run_xlatda(warm[0], warm[1], warm[2], 5, 0, lag)
    for seed in range(a.seeds):
        truth, obs, xx, yy = V.make_data(a.cycles, seed)
        server = V.DapperServer(xx, yy, a.burn, seed, python, runs=dapper_runs())
        try:
            for lag in LAGS:  # interleaved: each lag on both sides before the next
                rows.setdefault(("xlatda", lag), []).append(
                    run_xlatda(truth, obs, xx, a.burn, seed, lag))
                d = server.run("filter" if lag == 0 else f"lag {lag}")
                rows.setdefault(("dapper", lag), []).append(
                    {"rmse": d.get("rmse_smoothed", d["rmse"]),
                     "cycles_per_s": d["cycles_per_s"]})
                print(f"seed {seed} lag {lag}: xlatda {rows[('xlatda', lag)][-1]}, "
                      f"DAPPER {rows[('dapper', lag)][-1]}", flush=True)
        finally:
            server.close()
    mean = lambda key, field: float(np.mean([r[field] for r in rows[key]]))  # noqa: E731
    lines = ["# Fixed-lag smoother: xlatda.cycle(lag=L) against DAPPER's EnKS\n",
             f"Command: `python benchmarks/bench_smoother_vs_dapper.py "
             f"{' '.join(argv or sys.argv[1:])}`; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n",
             f"Lorenz-96, 40 sites all observed every step (error {V.R_STD}), {a.cycles} cycles, "
             f"burn-in {a.burn}, seeds {list(range(a.seeds))} (means over seeds). ETKF / EnKF "
             f"'Sqrt', N = {MEMBERS}, inflation {INFLATION}. RMSE of the (smoothed) analysis "
             "mean at the observation times.\n",
             "| lag | xlatda RMSE | DAPPER RMSE | xlatda cycles/s | DAPPER cycles/s |",
             "|---|---|---|---|---|"]
    for lag in LAGS:
        lines.append(f"| {lag} | {mean(('xlatda', lag), 'rmse'):.4f} | "
                     f"{mean(('dapper', lag), 'rmse'):.4f} | "
                     f"{mean(('xlatda', lag), 'cycles_per_s'):.0f} | "
                     f"{mean(('dapper', lag), 'cycles_per_s'):.0f} |")
    text = "\n".join(lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
