"""Jet speed of the Galewsky shallow-water jet, recovered with the state (LEVDA).

Issue 6's parameter target on shallow water. The jet speed ``u0`` sets the
*initial* state (the balanced zonal jet); it does not enter the equations, so
after a spin-up the state carries it and a ``u0``-conditioned dynamics model
has almost no sensitivity to it (``bench_sw_latent_da.py`` measures that
formulation: the parameter spread collapses without learning). Here ``u0`` is
what it physically is, a parameter of the initial condition:

- prior: ``u0_j ~ N(80, 5^2)`` m/s, and for each member the Galewsky initial
  state built from ``u0_j`` with its own random bump (height, latitude,
  longitude), so the state and parameter ensembles are drawn *jointly*;
- latent model: PCA + neural ODE trained on trajectories from ``t = 0``
  (no spin-up; jet speeds 70..90, random bumps), no parameter input;
- analysis: latent 4DEnVar over the first window of observations (control
  ``[z0; u0]``, ``params={"jet_speed": u0_members}``), so ``u0`` is updated
  through its ensemble correlation with the observed evolution;
- observations: ``n_points`` random locations x (height, vorticity) every
  3 h, sigma_o = 0.1 training standard deviations.

Target: the estimate within 10 % of the truth, and the truth inside the
posterior spread (|mean - truth| <= 2 std). Several truths (different jet
speeds and bumps) are run; each row is one truth.

Run ``python benchmarks/bench_sw_jet_speed.py`` (quick) or ``--full``; writes
``benchmarks/out/sw_jet_speed.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xlatda

OUT = Path(__file__).resolve().parent / "out" / "sw_jet_speed.md"
VARS = ("height", "vorticity")

QUICK: dict[str, Any] = {
    "n_train": 16, "train_hours": 48, "every": "3h", "seed_train": 0,
    "latent_dim": 48,
    "ode": {"width": 128, "depth": 2, "window": 6, "epochs": 200, "lr": 2e-3,
            "batch_size": 64, "val_fraction": 0},
    "truths": [(81.0, 1000), (74.0, 1001), (87.0, 1002)],
    "prior": (80.0, 5.0),
    "members": 32,
    "n_points": 256,
    "sigma_o": 0.1,
    "window": 4,
    "iterations": 3,
}
FULL: dict[str, Any] = copy.deepcopy(QUICK)
FULL.update(n_train=32, train_hours=72, members=48,
            truths=[(81.0, 1000), (74.0, 1001), (87.0, 1002), (78.0, 1003), (84.0, 1004)])
FULL["ode"]["epochs"] = 400


def _sw(trajectories: int, hours: float, seed: int, jet_speed=None, every="3h"):
    return xlatda.datasets.shallow_water(
        nlat=32, nlon=64, hours=hours, output_every=every, trajectories=trajectories,
        seed=seed, jet_speed=jet_speed, variables=VARS, progress=False)


def _rmse(a, b, std) -> float:
    w = np.cos(np.deg2rad(a.lat))
    w = w / w.mean()
    errs = [float(((((a[v] - b[v]) / std[v]) ** 2) * w).mean()) for v in VARS]
    return float(np.sqrt(np.mean(errs)))


def main(quick: bool = True) -> list[dict]:
    """Run the benchmark; returns one row per truth and writes the markdown table."""
    torch.set_num_threads(1)
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    train = _sw(cfg["n_train"], cfg["train_hours"], cfg["seed_train"], every=cfg["every"])
    std = {v: float(train[v].std()) for v in VARS}
    t0 = time.perf_counter()
    model = xlatda.fit(train, encoder="pca", latent_dim=cfg["latent_dim"], progress=False)
    model = xlatda.fit_dynamics(model, train, uncertainty="diagonal", progress=False,
                                seed=0, **cfg["ode"])
    fit_s = time.perf_counter() - t0
    rows = []
    mean, sd = cfg["prior"]
    n_obs_times = cfg["window"]
    for u_true, seed in cfg["truths"]:
        hours = 3 * n_obs_times
        truth = _sw(1, hours, seed, jet_speed=u_true, every=cfg["every"]).isel(trajectory=0)
        rng = np.random.default_rng(seed)
        u_members = mean + sd * rng.standard_normal(cfg["members"])
        background = _sw(cfg["members"], 3, seed + 5000, jet_speed=u_members.tolist(),
                         every=cfg["every"]).isel(time=0)  # the initial states
        background = background.rename(trajectory="member").drop_vars(
            [c for c in ("jet_speed", "bump_height", "bump_lat", "bump_lon")
             if c in background.coords])
        error_std = {v: cfg["sigma_o"] * std[v] for v in VARS}
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=cfg["n_points"],
                                       error_std=error_std, seed=seed)
        t1 = time.perf_counter()
        res = xlatda.cycle(background, obs, model, method="4denvar",
                           window=cfg["window"], iterations=cfg["iterations"],
                           params={"jet_speed": u_members.tolist()}, seed=seed,
                           progress=False)
        secs = time.perf_counter() - t1
        theta = res.parameters.theta.sel(param="jet_speed").isel(time=-1).values
        est, spread = float(theta.mean()), float(theta.std(ddof=1))
        ana = res.analysis.mean("member")
        rows.append({
            "truth_m_s": u_true, "prior": f"{mean:g} ± {sd:g}",
            "estimate_m_s": est, "spread_m_s": spread,
            "rel_error": abs(est - u_true) / u_true,
            "prior_rel_error": abs(mean - u_true) / u_true,
            "within_10pct": abs(est - u_true) <= 0.1 * u_true,
            "covered_2std": abs(est - u_true) <= 2 * spread,
            "analysis_rmse": _rmse(ana, truth.sel(time=ana.time), std),
            "background_rmse": _rmse(res.background.mean("member"),
                                     truth.sel(time=ana.time), std),
            "seconds": secs,
        })
    wall = time.perf_counter() - t_start
    _write(rows, cfg, quick, fit_s, wall)
    return rows


def _write(rows, cfg, quick, fit_s, wall) -> None:
    OUT.parent.mkdir(exist_ok=True)
    keys = list(rows[0])
    lines = [
        "# Shallow-water jet speed as a parameter of the initial state (latent 4DEnVar)",
        "",
        f"Mode: {'quick' if quick else 'full'}; {cfg['n_train']} training trajectories of "
        f"{cfg['train_hours']} h every {cfg['every']} (from t = 0), PCA-{cfg['latent_dim']} + "
        f"neural ODE (fit {fit_s:.0f} s); N = {cfg['members']}, {cfg['n_points']} locations x 2 "
        f"channels every 3 h, sigma_o = {cfg['sigma_o']} std; one 4DEnVar window of "
        f"{cfg['window']} observation times, {cfg['iterations']} Gauss-Newton iterations. "
        f"Whole run {wall:.0f} s.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    main(quick=not p.parse_args().full)
