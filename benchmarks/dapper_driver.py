"""DAPPER side of ``bench_vs_dapper.py``: run in DAPPER's own virtual environment.

Reads the truth ``xx (K+1, 40)`` and observations ``yy (K, 40)`` written by
``bench_vs_dapper.py`` (``.npz``), runs DAPPER's EnKF (Sqrt, DEnKF,
PertObs), EnKS, LETKF and Var3D on them with the Sakov & Oke (2008) Lorenz-96
model (``dapper.mods.Lorenz96``, dt = 0.05, R = I, every site every step),
and prints one JSON line per method: analysis RMSE after the burn-in and
cycles per second of ``xp.assimilate`` (DAPPER's own loop, statistics
included, live plotting off).

Usage: ``.dapper-venv/bin/python dapper_driver.py DATA.npz SPEC.json [--serve]``
(the spec lists the runs, see ``bench_vs_dapper.py``). Without ``--serve``
every run of the spec is made once, in order; with ``--serve`` the driver
reads run labels from stdin, one a line, and answers each with its JSON line,
so the caller can interleave DAPPER's runs with its own in one benchmark.
Imports only DAPPER and NumPy: it never imports xlatda.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(data_path: str, spec_path: str, serve: bool = False) -> None:
    import dapper.da_methods as da
    import dapper.mods as modelling
    from dapper.mods.Lorenz96 import dstep_dx, step
    from dapper.tools.localization import nd_Id_localization
    from dapper.tools.seeding import set_seed

    data = np.load(data_path)
    xx, yy = data["xx"], data["yy"]
    spec = json.loads(open(spec_path).read())
    nx = xx.shape[1]
    cycles = yy.shape[0]
    burn = int(spec["burn_in"])

    tseq = modelling.Chronology(float(spec["dt"]), dko=1, Ko=cycles - 1, BurnIn=burn * spec["dt"])
    dyn = {"M": nx, "model": step, "linear": dstep_dx, "noise": 0}
    obs = modelling.partial_Id_Obs(nx, np.arange(nx))
    obs["noise"] = float(spec["r_std"]) ** 2
    obs["localizer"] = nd_Id_localization((nx,), (2,))
    x0 = modelling.GaussRV(mu=xx[0], C=float(spec["init_std"]) ** 2)
    hmm = modelling.HiddenMarkovModel(dyn, obs, tseq, x0)

    runs = {run["label"]: run for run in spec["runs"]}
    labels = (line.strip() for line in iter(sys.stdin.readline, "")) if serve else iter(list(runs))
    for label in labels:
        if not label:
            continue
        run = runs[label]
        kind, kwargs = run["dapper"], dict(run["dapper_kwargs"])
        if kind == "EnKF":
            xp = da.EnKF(kwargs.pop("upd_a"), **kwargs)
        elif kind == "EnKS":
            xp = da.EnKS(kwargs.pop("upd_a"), **kwargs)
        elif kind == "LETKF":
            xp = da.LETKF(**kwargs)
        elif kind == "Var3D":
            xp = da.Var3D(**kwargs)
        else:
            raise ValueError(f"unknown DAPPER method {kind!r}")
        set_seed(int(spec["seed"]) + 1)  # DAPPER refuses seed 0
        start = time.perf_counter()
        xp.assimilate(hmm, xx, yy, liveplots=False)
        seconds = time.perf_counter() - start
        mu_a = np.asarray(xp.stats.mu.a)  # (cycles, nx): analysis means at obs times
        err = np.sqrt(((mu_a - xx[1:]) ** 2).mean(-1))[burn:]
        out = {"label": run["label"], "rmse": float(err.mean()),
               "cycles_per_s": cycles / seconds, "seconds": seconds, "method": repr(xp)}
        if kind == "EnKS":  # smoothed means at obs times (each with Lag later obs)
            mu_s = np.asarray(xp.stats.mu.s)
            out["rmse_smoothed"] = float(np.sqrt(((mu_s - xx[1:]) ** 2).mean(-1))[burn:].mean())
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], serve="--serve" in sys.argv[3:])
