"""Does an estimated parameter keep an honest spread in cycled 4DEnVar? (issue 13, item 6)

Two shallow-water jet-speed formulations (32 x 64 grid, PCA + latent ODE,
height and vorticity observed at random points every 3 h / 6 h, sigma_o =
0.1 training std, prior ``u0 ~ N(80, 5^2)`` m/s, 4DEnVar over windows of 2
observation times), each with ``param_rtps`` off (the default) and on:

- ``informed``: ``u0`` is a parameter of the *initial state*
  (``bench_sw_jet_speed.py``): each member's initial state is the Galewsky
  jet of its own ``u0``, so the observations of the evolving state inform
  it;
- ``uninformed``: a jet-speed-conditioned latent ODE on trajectories after a
  48 h spin-up (``bench_sw_latent_da.py`` target 4): the physical dynamics
  do not depend on ``u0``, only the learned ODE (spuriously) does, and the
  initial ensemble is drawn from the model's latent prior.

Columns: the truth, the final estimate and spread, ``z = (estimate -
truth) / spread`` (covered: ``|z| <= 2``), the ratio of the final spread to
the spread after the first window, and the analysis RMSE (training-std
units). Run ``python benchmarks/bench_param_spread.py`` (writes
``benchmarks/out/param_spread.md``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import xlatda

OUT = Path(__file__).resolve().parent / "out" / "param_spread.md"
VARS = ("height", "vorticity")
RTPS = (None, 0.5, 0.8)
INFORMED_TRUTHS = [(81.0, 1000), (74.0, 1001), (87.0, 1002)]
UNINFORMED_TRUTHS = [(84.0, 2000), (77.0, 2001), (80.5, 2002)]


def _sw(n, seed, hours, every, spinup=0.0, jet=None):
    return xlatda.datasets.shallow_water(nlat=32, nlon=64, hours=hours, output_every=every,
                                         spinup_hours=spinup, trajectories=n, seed=seed,
                                         jet_speed=jet, variables=VARS, progress=False)


def _row(case, u_true, rtps, res, truth, std):
    theta = res.parameters.theta.sel(param="jet_speed").values  # (time, member)
    m, s = theta.mean(-1), theta.std(-1, ddof=1)
    ana = res.analysis.mean("member")
    tr = truth.sel(time=ana.time)
    rmse = float(np.sqrt(np.mean([float((((ana[v] - tr[v]) / std[v]) ** 2).mean()) for v in VARS])))
    return {"case": case, "param_rtps": "off" if rtps is None else rtps, "truth": u_true,
            "estimate": float(m[-1]), "spread": float(s[-1]), "z": float((m[-1] - u_true) / s[-1]),
            "covered": bool(abs(m[-1] - u_true) <= 2 * s[-1]),
            "spread_end/first": float(s[-1] / s[0]), "analysis_rmse": rmse}


def informed(quick: bool) -> list[dict]:
    train = _sw(8 if quick else 16, 0, 36 if quick else 48, "3h")
    std = {v: float(train[v].std()) for v in VARS}
    model = xlatda.fit(train, encoder="pca", latent_dim=32 if quick else 48, progress=False)
    model = xlatda.fit_dynamics(model, train, width=128, depth=2, window=6, epochs=150,
                                lr=2e-3, val_fraction=0, seed=0, progress=False)
    rows = []
    n_obs, members = 8, 20
    for u_true, seed in INFORMED_TRUTHS:
        truth = _sw(1, seed, 3 * n_obs, "3h", jet=u_true).isel(trajectory=0)
        u = 80.0 + 5.0 * np.random.default_rng(seed).standard_normal(members)
        bg = _sw(members, seed + 5000, 3, "3h", jet=u.tolist()).isel(time=0)
        bg = bg.rename(trajectory="member").drop_vars(
            ["jet_speed", "bump_height", "bump_lat", "bump_lon"])
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=256,
                                       error_std={v: 0.1 * std[v] for v in VARS}, seed=seed)
        for a in RTPS:
            kw = {} if a is None else {"param_rtps": a}
            res = xlatda.cycle(bg, obs, model, method="4denvar", window=2,
                               params={"jet_speed": u.tolist()}, seed=seed, progress=False, **kw)
            rows.append(_row("informed (u0 of the initial state)", u_true, a, res, truth, std))
    return rows


def uninformed(quick: bool) -> list[dict]:
    train = _sw(8 if quick else 12, 0, 72, "6h", spinup=48)
    std = {v: float(train[v].std()) for v in VARS}
    model = xlatda.fit(train, encoder="pca", latent_dim=48, progress=False)
    model = xlatda.fit_dynamics(model, train, params=["jet_speed"], width=128, depth=2, window=6,
                                epochs=150, lr=2e-3, val_fraction=0, seed=0, progress=False)
    rows = []
    for u_true, seed in UNINFORMED_TRUTHS:
        truth = _sw(1, seed, 72, "6h", spinup=48, jet=u_true).isel(trajectory=0)
        bg = truth.isel(time=0).drop_vars(["jet_speed", "bump_height", "bump_lat", "bump_lon"])
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=256,
                                       error_std={v: 0.1 * std[v] for v in VARS}, seed=seed)
        for a in RTPS:
            kw = {} if a is None else {"param_rtps": a}
            res = xlatda.cycle(bg, obs, model, method="4denvar", window=2,
                               params={"jet_speed": (80.0, 5.0)}, seed=seed, progress=False, **kw)
            rows.append(_row("uninformed (jet-conditioned ODE after spin-up)", u_true, a, res,
                             truth, std))
    return rows


def main(quick: bool = True) -> list[dict]:
    """Run both cases; returns one row per (case, truth, param_rtps) and writes the table."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = informed(quick) + uninformed(quick)
    wall = time.perf_counter() - start
    keys = list(rows[0])
    lines = ["# Parameter spread in cycled 4DEnVar (shallow-water jet speed)", "",
             f"Mode: {'quick' if quick else 'full'}; prior N(80, 5^2) m/s, 20 members, windows "
             f"of 2 observation times, 256 random points x 2 variables, sigma_o = 0.1 std. "
             f"Whole run {wall:.0f} s.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    main(quick=not p.parse_args().full)
