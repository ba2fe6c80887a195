"""Perturbed-observation EnKF against DAPPER's EnKF('PertObs') over several seeds.

Lorenz-96 as in ``bench_vs_dapper.py`` (40 sites, every site observed every
step with R = I, N = 40, inflation 1.06, RMSE of the analysis mean after the
burn-in). For every seed a new truth and new observations are made
(``bench_vs_dapper.make_data``) and shared by all sides:

- ``xlatda.cycle(method="enkf")`` as a user calls it (library defaults);
- the bare kernel loop (``Lorenz96.step`` + ``EnKF.analyse``, as the
  ``kernel`` column of ``bench_vs_dapper.py``) with the observation
  perturbations uncentred and centred over the members
  (``centre_perturbations``), and centred with the inflation applied to
  the analysis after the update as DAPPER's ``post_process`` does
  (``kernel_centred_post``: the DAPPER algorithm line by line);
- DAPPER 1.7.1's ``EnKF('PertObs', N=40, infl=1.06)`` in its own venv
  (``benchmarks/.dapper-venv``, see ``bench_vs_dapper.py``).

Each seed's RMSE is a time mean over ``cycles - burn_in`` correlated
analyses; the spread over the seeds gives the standard error of the mean
RMSE, and the paired differences (same truth and observations) the standard
error of a difference. Run::

    python benchmarks/bench_enkf_seeds.py [--seeds 5] [--cycles 1000] [--burn-in 200]

writes ``benchmarks/out/enkf_seeds.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_vs_dapper as vs  # noqa: E402


def kernel_enkf(xx, yy, burn: int, seed: int, centre: bool, post: bool = False) -> float:
    """RMSE of the bare EnKF loop (one torch thread).

    ``post``: inflate the *analysis* anomalies by 1.06 after an un-inflated
    update (DAPPER's ``post_process``) instead of the forecast's before it.
    """
    import torch

    from xlatda.dynamics.physical import Lorenz96
    from xlatda.methods.ensemble import EnKF, inflate

    method = EnKF(inflation=1.0 if post else 1.06, centre_perturbations=centre)
    model = Lorenz96(n=40, forcing=8.0, dt=vs.DT)
    torch.set_num_threads(1)
    with torch.inference_mode():
        y_all = torch.as_tensor(yy)
        r_std = torch.full((40,), vs.R_STD, dtype=torch.float64)
        g = torch.Generator().manual_seed(seed)
        x0 = torch.as_tensor(xx[0])
        ens = x0 + vs.INIT_STD * torch.randn(40, 40, generator=g, dtype=torch.float64)
        means = torch.empty(len(yy), 40, dtype=torch.float64)
        for k in range(len(yy)):
            ens = model.step(ens, vs.DT)
            ens = method.analyse(ens, ens, y_all[k], r_std, generator=g)
            if post:
                ens = inflate(ens, 1.06)
            means[k] = ens.mean(0)
    return vs._rmse(means.numpy(), xx[1:], burn)


def _stat(values) -> str:
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.4f} ± {se:.4f}"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--burn-in", type=int, default=200)
    p.add_argument("--dapper-python", default=str(vs.VENV / "bin" / "python"))
    p.add_argument("--out", default="enkf_seeds.md")
    a = p.parse_args(argv)
    python = Path(a.dapper_python)
    cols = {"cycle": [], "kernel": [], "kernel_centred": [], "kernel_centred_post": [],
            "dapper": []}
    load = [os.getloadavg()[0]]
    for seed in range(a.seeds):
        truth, obs, xx, yy = vs.make_data(a.cycles, seed)
        cols["cycle"].append(vs.run_xlatda("EnKF", truth, obs, xx, a.burn_in, seed)["rmse"])
        cols["kernel"].append(kernel_enkf(xx, yy, a.burn_in, seed, centre=False))
        cols["kernel_centred"].append(kernel_enkf(xx, yy, a.burn_in, seed, centre=True))
        cols["kernel_centred_post"].append(
            kernel_enkf(xx, yy, a.burn_in, seed, centre=True, post=True))
        if python.exists():
            server = vs.DapperServer(xx, yy, a.burn_in, seed, python)
            try:
                cols["dapper"].append(server.run("EnKF")["rmse"])
            finally:
                server.close()
        print(f"seed {seed}: " + " ".join(f"{k} {v[-1]:.4f}" for k, v in cols.items() if v),
              flush=True)
        load.append(os.getloadavg()[0])
    lines = [f"EnKF N = 40, inflation 1.06, Lorenz-96, {a.cycles} cycles, RMSE after "
             f"{a.burn_in}, seeds 0-{a.seeds - 1} (mean ± standard error over seeds; "
             f"load {min(load):.1f}-{max(load):.1f})", "",
             "| side | " + " | ".join(f"seed {s}" for s in range(a.seeds)) + " | mean ± se |",
             "|---" * (a.seeds + 2) + "|"]
    for k, v in cols.items():
        if v:
            lines.append(f"| {k} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {_stat(v)} |")
    if cols["dapper"]:
        lines.append("")
        for k in ("cycle", "kernel", "kernel_centred", "kernel_centred_post"):
            diff = np.asarray(cols[k]) - np.asarray(cols["dapper"])
            lines.append(f"- {k} - dapper (paired): {_stat(diff)}")
    text = "\n".join(lines) + "\n"
    out = HERE / "out" / a.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
