r"""Benchmark: a latent neural ODE learns Lorenz-96, and its learned Q is calibrated.

Setting (identity "encoder"): Lorenz-96 with 40 variables, F = 8, RK4 with
dt = 0.05 (one data step = one ODE time unit, ``dt_unit = 0.05``). The
latent vector is the state standardised by the climatological mean and
standard deviation of each variable (from the training trajectories), so
an RMSE of 1 is the climatological spread.

1. Train :class:`xlatda.dynamics.latent_ode.LatentODE` with
   :func:`xlatda.dynamics.training.fit_dynamics` on trajectories from random
   initial states (after 20 time units of spin-up), with separate validation
   trajectories for early stopping / best weights.
2. **Forecast valid time** on held-out initial conditions: the time until
   the RMSE (over the 40 standardised variables) of the free-running latent
   forecast against the truth first exceeds 0.5 (interpolated linearly
   between steps). Target: >= 0.6 time units
   (about one Lyapunov time, 1/1.7).
3. **Calibration**: fit a diagonal Q (:func:`xlatda.uncertainty.fit_model_error`)
   to one-step residuals of separate calibration trajectories; on the
   held-out trajectories, run one-step ensemble forecasts
   ``z^j = G(z_k) + eps^j``, ``eps^j ~ N(0, Q)`` from the true state and
   compare the ensemble spread with the error of the ensemble mean. The
   spread-skill ratio ``sqrt((N + 1)/N) * spread / RMSE`` (Fortin et al.
   2014) is 1 for a calibrated ensemble. Target: in [0.8, 1.25].

Run ``python benchmarks/bench_dynamics.py`` (quick, a few minutes on two
CPU cores) or ``python benchmarks/bench_dynamics.py --full``; the report is
written to ``benchmarks/out/dynamics.md`` (``dynamics_full.md`` for
``--full``).

References
----------
Lorenz (1996), Predictability: a problem partly solved.
Li, Dong, Zhang (2023), arXiv:2309.09574 (latent ODE, data-driven Q).
Fortin, Abaza, Anctil, Turcotte (2014), Why should ensemble spread match
the RMSE of the ensemble mean? J. Hydrometeor.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from xlatda.dynamics.latent_ode import LatentODE
from xlatda.dynamics.physical import Lorenz96
from xlatda.dynamics.training import fit_dynamics
from xlatda.uncertainty import fit_model_error, residuals

OUT = Path(__file__).resolve().parent / "out"

DT = 0.05
THRESHOLD = 0.5
TARGET_VALID = 0.6
TARGET_SSR = (0.8, 1.25)

CONFIGS: dict[str, dict[str, Any]] = {
    "quick": {
        "n_train": 100,
        "len_train": 500,
        "n_val": 10,
        "len_val": 200,
        "n_calib": 20,
        "len_calib": 200,
        "n_test": 20,
        "len_test": 300,
        "width": 256,
        "depth": 3,
        "window": 8,
        "batch_size": 64,
        "epochs": 20,
        "steps_per_epoch": 50,
        "lr": 4e-3,
        "patience": None,
        "ic_spacing": 40,
        "lead_steps": 60,
        "members": 20,
    },
    "full": {
        "n_train": 200,
        "len_train": 1000,
        "n_val": 20,
        "len_val": 300,
        "n_calib": 40,
        "len_calib": 300,
        "n_test": 40,
        "len_test": 400,
        "width": 256,
        "depth": 3,
        "window": 10,
        "batch_size": 64,
        "epochs": 40,
        "steps_per_epoch": 100,
        "lr": 3e-3,
        "patience": 10,
        "ic_spacing": 40,
        "lead_steps": 80,
        "members": 20,
    },
}


def lorenz96_trajectories(n: int, length: int, seed: int) -> torch.Tensor:
    """``(n, length, 40)`` float64 Lorenz-96 trajectories after 20 time units of spin-up."""
    model = Lorenz96(n=40, forcing=8.0, dt=DT)
    gen = torch.Generator().manual_seed(seed)
    x0 = 8.0 + torch.randn(n, 40, generator=gen, dtype=torch.float64)
    x0 = model.integrate(x0, steps=400)[:, -1]
    return model.integrate(x0, steps=length - 1)


def crossing_time(rmse: torch.Tensor) -> torch.Tensor:
    """Time (model units) at which each row of ``rmse`` (``(n, L+1)``) first exceeds the
    threshold, interpolated linearly between steps; ``L * DT`` if it never does."""
    lead = rmse.shape[1] - 1
    bad = rmse > THRESHOLD
    k = torch.where(
        bad.any(1), bad.double().argmax(1), torch.full_like(bad[:, 0], lead, dtype=torch.long)
    )
    k = k.clamp_min(1)
    lo, hi = rmse.gather(1, (k - 1)[:, None])[:, 0], rmse.gather(1, k[:, None])[:, 0]
    frac = ((THRESHOLD - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    frac = torch.where(bad.any(1), frac, torch.ones_like(frac))
    return ((k - 1).double() + frac.double()) * DT


def valid_times(
    model: LatentODE, z: torch.Tensor, spacing: int, lead: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid times of forecasts from ICs every ``spacing`` steps, and their RMSE curves."""
    starts = range(0, z.shape[1] - lead, spacing)
    ics = torch.stack([z[:, s] for s in starts], 1)  # (n, n_ic, d)
    truth = torch.stack([z[:, s : s + lead + 1] for s in starts], 1)  # (n, n_ic, L+1, d)
    with torch.no_grad():
        pred = model.integrate(ics, steps=lead)
    rmse = (pred - truth).pow(2).mean(-1).sqrt().reshape(-1, lead + 1).cpu()
    return crossing_time(rmse), rmse


def spread_skill(
    model: LatentODE, z: torch.Tensor, q: Any, members: int, seed: int
) -> dict[str, float]:
    """One-step ensemble forecasts from the truth with noise from ``q``."""
    gen = torch.Generator(device=z.device).manual_seed(seed)
    with torch.no_grad():
        mean_fc = model.step(z[:, :-1])  # (n, T-1, d)
        eps = q.sample((members, *mean_fc.shape[:-1]), generator=gen)
        ens = mean_fc + eps  # (N, n, T-1, d)
        target = z[:, 1:]
        spread2 = ens.var(0, unbiased=True).mean()
        mse = (ens.mean(0) - target).pow(2).mean()
    ratio = math.sqrt((members + 1) / members) * math.sqrt(float(spread2) / float(mse))
    return {"spread": math.sqrt(float(spread2)), "rmse": math.sqrt(float(mse)), "ratio": ratio}


def main(
    quick: bool = True, threads: int | None = 1, seed: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Run the benchmark, write the Markdown report and return the numbers.

    Parameters
    ----------
    quick : bool
        Small configuration (a few minutes on two CPU cores) or the full one.
    threads : int, optional
        Torch threads during the run (restored afterwards). One thread is the
        default: on a shared two-core machine, two torch threads competing
        with other processes were an order of magnitude slower.
    seed : int
        Seed of data, weights and training.
    device : str
        Torch device of the model and the latent data ("cuda" on a GPU).
    """
    cfg = CONFIGS["quick" if quick else "full"]
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(cfg, quick, seed, device)
    finally:
        torch.set_num_threads(old_threads)


def _run(cfg: dict[str, Any], quick: bool, seed: int, device: str) -> dict[str, Any]:
    t_start = time.perf_counter()
    x_train = lorenz96_trajectories(cfg["n_train"], cfg["len_train"], seed + 1)
    x_val = lorenz96_trajectories(cfg["n_val"], cfg["len_val"], seed + 2)
    x_cal = lorenz96_trajectories(cfg["n_calib"], cfg["len_calib"], seed + 3)
    x_test = lorenz96_trajectories(cfg["n_test"], cfg["len_test"], seed + 4)
    mean, std = x_train.mean((0, 1)), x_train.std((0, 1))

    def encode(x: torch.Tensor) -> torch.Tensor:
        return ((x - mean) / std).to(device=device, dtype=torch.float32)

    z_train, z_val, z_cal, z_test = map(encode, (x_train, x_val, x_cal, x_test))
    t_data = time.perf_counter() - t_start

    model = LatentODE(
        40,
        width=cfg["width"],
        depth=cfg["depth"],
        method="rk4",
        step_size=1.0,
        dt_unit=DT,
        seed=seed,
        dtype="float32",
        device=device,
    )
    hist = fit_dynamics(
        model,
        z_train,
        window=cfg["window"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        steps_per_epoch=cfg["steps_per_epoch"],
        lr=cfg["lr"],
        val_trajectories=z_val,
        patience=cfg["patience"],
        seed=seed,
        progress=False,
    )

    vt, rmse = valid_times(model, z_test, cfg["ic_spacing"], cfg["lead_steps"])
    one_step = float((model.step(z_test[:, :-1]) - z_test[:, 1:]).pow(2).mean().sqrt().detach())
    increment = float((z_test[:, 1:] - z_test[:, :-1]).pow(2).mean().sqrt())
    # persistence forecast (z stays constant), for reference
    pers = (z_test[:, : cfg["lead_steps"] + 1] - z_test[:, :1]).pow(2).mean(-1).sqrt()
    pers_vt = float(crossing_time(pers.cpu()).mean())

    r_cal = residuals(model, z_cal)
    q = fit_model_error(r_cal, kind="diagonal")
    q_adam = fit_model_error(r_cal, kind="diagonal", solver="adam", iterations=400, lr=0.05)
    q_gap = float(
        ((q_adam.covariance() - q.covariance()).diagonal().abs() / q.covariance().diagonal()).max()
    )
    ss = spread_skill(model, z_test, q, cfg["members"], seed)
    seconds = time.perf_counter() - t_start

    result = {
        "mode": "quick" if quick else "full",
        "valid_time_mean": float(vt.mean()),
        "valid_time_median": float(vt.median()),
        "valid_time_p10": float(vt.quantile(0.1)),
        "share_valid_ge_target": float((vt >= TARGET_VALID).double().mean()),
        "n_forecasts": int(vt.numel()),
        "persistence_valid_time": pers_vt,
        "one_step_rmse": one_step,
        "increment_rms": increment,
        "spread": ss["spread"],
        "skill_rmse": ss["rmse"],
        "spread_skill_ratio": ss["ratio"],
        "q_mean_std": float(q.covariance().diagonal().mean().sqrt()),
        "q_adam_vs_closed_form_rel_gap": q_gap,
        "best_epoch": hist["best_epoch"],
        "epochs_run": hist["epochs_run"],
        "best_val_loss": hist["best_val_loss"],
        "train_seconds": hist["seconds"],
        "data_seconds": t_data,
        "total_seconds": seconds,
        "rmse_curve": rmse.mean(0).tolist(),
        "config": cfg,
    }
    write_report(result)
    return result


def write_report(res: dict[str, Any]) -> Path:
    """Write the Markdown report to ``benchmarks/out/dynamics[_full].md``."""
    OUT.mkdir(parents=True, exist_ok=True)
    ok_vt = res["valid_time_mean"] >= TARGET_VALID
    ok_ss = TARGET_SSR[0] <= res["spread_skill_ratio"] <= TARGET_SSR[1]
    cfg = res["config"]
    curve = res["rmse_curve"]
    leads = list(range(0, len(curve), 4))
    lines = [
        "# Latent ODE on Lorenz-96 (identity encoder)",
        "",
        f"Mode: **{res['mode']}**; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s); total {res['total_seconds']:.0f} s "
        f"(training {res['train_seconds']:.0f} s).",
        "",
        "Lorenz-96, 40 variables, F = 8, dt = 0.05 per step (= 1 ODE time unit); "
        "latent = state standardised by the training climatology (per variable).",
        f"LatentODE: MLP width {cfg['width']}, {cfg['depth']} hidden layers, SiLU, "
        f"RK4 with one step per data step. Training: {cfg['n_train']} trajectories x "
        f"{cfg['len_train']} steps, windows of {cfg['window']} snapshots, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps, "
        f"lr {cfg['lr']} (cosine), re-anchoring fading linearly over the first half; "
        f"best epoch {res['best_epoch']} of {res['epochs_run']}.",
        "",
        "| metric | value | target |",
        "|---|---|---|",
        f"| forecast valid time, mean (RMSE > {THRESHOLD} clim. std) | "
        f"{res['valid_time_mean']:.3f} | >= {TARGET_VALID} {'(met)' if ok_vt else '(MISSED)'} |",
        f"| valid time, median / 10th percentile | {res['valid_time_median']:.3f} / "
        f"{res['valid_time_p10']:.3f} | |",
        f"| share of forecasts with valid time >= {TARGET_VALID} | "
        f"{res['share_valid_ge_target']:.2f} (of {res['n_forecasts']}) | |",
        f"| persistence valid time (reference) | {res['persistence_valid_time']:.3f} | |",
        f"| one-step RMSE / RMS one-step increment | {res['one_step_rmse']:.4f} / "
        f"{res['increment_rms']:.4f} | |",
        f"| spread-skill ratio, diagonal Q, {cfg['members']} members | "
        f"{res['spread_skill_ratio']:.3f} | [{TARGET_SSR[0]}, {TARGET_SSR[1]}] "
        f"{'(met)' if ok_ss else '(MISSED)'} |",
        f"| spread / RMSE of ensemble mean | {res['spread']:.4f} / {res['skill_rmse']:.4f} | |",
        f"| Adam vs closed-form diagonal Q, max relative gap | "
        f"{res['q_adam_vs_closed_form_rel_gap']:.2e} | |",
        "",
        "Mean RMSE (standardised units) of the free forecast by lead time:",
        "",
        "| lead (time units) | " + " | ".join(f"{k * DT:.2f}" for k in leads) + " |",
        "|---" * (len(leads) + 1) + "|",
        "| RMSE | " + " | ".join(f"{curve[k]:.3f}" for k in leads) + " |",
        "",
    ]
    path = OUT / ("dynamics.md" if res["mode"] == "quick" else "dynamics_full.md")
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the full configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    res = main(quick=not args.full, threads=args.threads, seed=args.seed, device=args.device)
    keys = (
        "valid_time_mean",
        "valid_time_median",
        "spread_skill_ratio",
        "one_step_rmse",
        "total_seconds",
    )
    print({k: round(res[k], 4) for k in keys})
    print(f"report: {OUT / ('dynamics_full.md' if args.full else 'dynamics.md')}")
