"""Latent data assimilation on shallow water: LAINR (latent EnKF) and LEVDA (latent 4DEnVar).

Issue 6's shallow-water targets (METHODS.md sections 1-2), at laptop scale:

1. Latent EnKF (stochastic, N = 32, inflation 1.05) with SINR + neural ODE
   vs the free run and vs the conv autoencoder + neural ODE (PCA for
   reference): 512 random locations x (height, vorticity) = 1024
   observations per analysis time, sigma_o = 0.1 in normalised units.
2. Latent 4DEnVar vs full-state 4DEnVar (physical space, the spectral
   :class:`~xlatda.dynamics.shallow_water.ShallowWater` model) with equal
   members, windows and iterations: wall time and RMSE.
3. 1 % observation density (20 locations x 2 channels = 40 values of the
   4096 of a 32 x 64 state): latent 4DEnVar vs latent EnKF.
4. Unknown parameter: the jet speed, with a jet-speed-conditioned latent ODE
   trained on trajectories of different jet speeds (LEVDA's control
   ``[z0; theta]``); and the Lorenz-96 forcing of
   ``examples/parameter_estimation.py``.

Data. :func:`xlatda.datasets.shallow_water` (Galewsky jet with random jet
speed 70..90 m/s, bump height, latitude and longitude; T42 model, output
truncated to a 32 x 64 Gauss grid), 48 h spin-up, then 4 days every 6 h.
Training: 12 trajectories (seed 0); validation: 1 trajectory (seed 500),
used for every choice below; evaluation: 2 held-out trajectories (seed
1000). Channels z-scored by the training mean and standard deviation; RMSE
is cos(lat)-weighted over height and vorticity in these units.

Cycling. Observations every 6 h from t = 18 h (14 analysis times); the
background at t = 12 h is the truth of t = 0 (a 12 h lag error). Latent
initial ensembles: the encoded background plus independent Gaussian
perturbations of ``alpha`` times the per-dimension std of the training
codes; physical initial ensemble: the background plus ``alpha`` times 32
(centred) climatological anomalies of training states. ``alpha`` is chosen
on the validation trajectory. Free run: the latent model's deterministic
forecast of the encoded background (and, for reference, the T21 physical
model from the background). The analysis is the mean of the decoded
analysis members.

The full-state 4DEnVar here runs the T21 model on the 32 x 64 grid, against
a truth from a T42 model (model error included); ``bench_sinr.py`` part (d)
runs the fair baseline, the truth's own T42 model on 64 x 128
(:func:`make_fine_data`, :func:`truncate_to`, ``physical_cycle(model=...)``).

Run ``python benchmarks/bench_sw_latent_da.py`` (quick) or ``--full``;
writes ``benchmarks/out/sw_latent_da.md``.
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
import xarray as xr

import xlatda
from xlatda.dynamics import Lorenz96
from xlatda.dynamics.shallow_water import ShallowWater

OUT = Path(__file__).resolve().parent / "out" / "sw_latent_da.md"
VARS = ["height", "vorticity"]
ALL_VARS = ["height", "vorticity", "divergence"]

QUICK: dict[str, Any] = {
    "data": {"n_train": 12, "n_test": 2, "days": 4, "every": "6h", "spinup": 48,
             "seed_train": 0, "seed_val": 500, "seed_test": 1000},
    "lag": 2,  # background at time index `lag` = truth at index 0
    "latent_dim": 128,
    "sinr": {"options": {"hidden": 64, "depth": 4, "max_freq": 8, "points_per_batch": 512,
                         "lr_weights": 2e-2, "lr_codes": 2e-2, "encode_steps": 150,
                         "encode_lr": 5e-2, "reuse_codes": True},
             "epochs": 80, "batch_size": 16},
    "autoencoder": {"options": {"channels": [16, 32, 32]}, "epochs": 60, "batch_size": 16,
                    "lr": 2e-3},
    "pca": {"options": {}, "epochs": 1, "batch_size": 16},
    "ode": {"width": 256, "depth": 2, "window": 6, "epochs": 300, "lr": 2e-3,
            "batch_size": 64},
    "members": 32,
    "inflation": 1.05,
    "sigma_o": 0.1,
    "n_points": 512,
    "sparse_points": 20,
    "alphas": [0.3, 1.0],
    "envar": {"window": 2, "iterations": 3},
    "sparse_windows": [2, 4],
    "jet_prior": (80.0, 5.0),
    "l96_cycles": 30,
}
FULL: dict[str, Any] = copy.deepcopy(QUICK)
FULL["data"].update(n_train=24, n_test=4, days=6)
FULL["sinr"]["epochs"] = 200
FULL["ode"]["epochs"] = 600
FULL["alphas"] = [0.2, 0.5, 1.0]
FULL["l96_cycles"] = 200


# -- data and scoring ------------------------------------------------------------
def make_data(cfg: dict) -> dict[str, xr.Dataset]:
    d = cfg["data"]

    def gen(n, seed):
        return xlatda.datasets.shallow_water(
            nlat=32, nlon=64, days=d["days"], output_every=d["every"], trajectories=n,
            seed=seed, spinup_hours=d["spinup"], variables=tuple(ALL_VARS), progress=False)

    return {"train": gen(d["n_train"], d["seed_train"]), "val": gen(1, d["seed_val"]),
            "test": gen(d["n_test"], d["seed_test"])}


class Scorer:
    """cos(lat)-weighted RMSE of (height, vorticity) in training z-score units."""

    def __init__(self, train: xr.Dataset) -> None:
        w = np.cos(np.deg2rad(train.lat))
        self.w = w / w.mean()
        self.mean = {v: float(train[v].weighted(w).mean()) for v in VARS}
        self.std = {v: float(train[v].weighted(w).std()) for v in VARS}

    def norm(self, ds: xr.Dataset, v: str) -> xr.DataArray:
        return (ds[v] - self.mean[v]) / self.std[v]

    def rmse_series(self, est: xr.Dataset, truth: xr.Dataset) -> np.ndarray:
        truth = truth.sel(time=est.time)
        sq = sum(((self.norm(est, v) - self.norm(truth, v)) ** 2 * self.w).mean(("lat", "lon"))
                 for v in VARS) / len(VARS)
        return np.sqrt(np.asarray(sq.values, float))

    def rmse(self, est: xr.Dataset, truth: xr.Dataset) -> float:
        return float(self.rmse_series(est, truth).mean())


def trajectory_case(truth_all: xr.Dataset, i: int, cfg: dict, scorer: Scorer, seed: int,
                    n_points: int, interpolation: str = "bilinear") -> dict[str, Any]:
    """Truth, observations and background of one evaluation trajectory.

    ``interpolation`` reads the truth at the scattered points
    (:func:`xlatda.obs.sample_points`): ``"spectral"`` gives the band-limited
    field's exact values, ``"bilinear"`` (this benchmark's tables so far) the
    grid's bilinear blend, whose error at 32 x 64 is about 2 sigma_o for
    vorticity and which the grid decoders' own bilinear operator shares.
    """
    truth = truth_all.isel(trajectory=i, drop=True)
    lag = cfg["lag"]
    t_bg = truth.time.values[lag]
    bg = truth.isel(time=slice(0, 1)).assign_coords(time=[t_bg])
    bg["time"].attrs = dict(truth.time.attrs)
    err = {v: cfg["sigma_o"] * scorer.std[v] for v in VARS}
    obs = xlatda.obs.sample_points(truth[VARS].isel(time=slice(lag + 1, None)), n=n_points,
                                   error_std=err, seed=seed, interpolation=interpolation)
    jet = float(truth_all.jet_speed.values[i])
    return {"truth": truth, "bg": bg, "obs": obs, "jet_speed": jet}


# -- models ----------------------------------------------------------------------
def fit_models(cfg: dict, train: xr.Dataset) -> dict[str, Any]:
    models, times = {}, {}
    for name in ("sinr", "autoencoder", "pca"):
        c = cfg[name]
        t0 = time.perf_counter()
        m = xlatda.fit(train[VARS], encoder=name, latent_dim=cfg["latent_dim"],
                       epochs=c["epochs"], batch_size=c["batch_size"], lr=c.get("lr"),
                       validation=None, progress=False, seed=0,
                       encoder_options=c["options"])
        t1 = time.perf_counter()
        m = fit_ode(m, train, cfg)
        times[name] = {"encoder_s": t1 - t0, "dynamics_s": time.perf_counter() - t1}
        models[name] = m
    return {"models": models, "times": times}


def fit_ode(model, train: xr.Dataset, cfg: dict, params: list[str] | None = None):
    """:func:`xlatda.fit_dynamics`, with ``val_fraction=0`` (see Notes of the module).

    ``xlatda.fit_dynamics`` does not pass ``val_fraction`` on to the training
    kernel, whose default (the last 10 % of every trajectory) needs
    trajectories of at least ``10 window`` snapshots; so the same steps are
    done here: encode, train :class:`LatentODE` on all windows, fit Q.
    """
    import dataclasses

    from xlatda.dynamics.latent_ode import LatentODE
    from xlatda.dynamics.training import fit_dynamics as fit_kernel
    from xlatda.uncertainty import fit_model_error, residuals

    o = cfg["ode"]
    z = xlatda.encode(train[VARS], model).z.transpose("trajectory", "time", "latent")
    traj = torch.as_tensor(z.values).to(model.dtype)
    theta = None
    if params:
        theta = torch.as_tensor(np.stack([train[p].values for p in params], -1),
                                dtype=model.dtype)
    step = model.time_step or {"value": 1.0, "units": "model"}
    dyn = LatentODE(model.latent_dim, n_params=len(params or ()), dt_unit=step["value"],
                    time_units=step["units"], seed=0, dtype=model.dtype, width=o["width"],
                    depth=o["depth"])
    hist = fit_kernel(dyn, traj, theta=theta, window=o["window"], epochs=o["epochs"],
                      batch_size=o["batch_size"], lr=o["lr"], val_fraction=0.0, seed=0,
                      progress=False)
    with torch.no_grad():
        res = residuals(dyn, traj, theta=theta)
    q = fit_model_error(res.reshape(-1, model.latent_dim), kind="diagonal", seed=0)
    history = dict(model.history, dynamics={"epochs_run": hist.get("epochs_run")},
                   parameters=list(params or ()))
    return dataclasses.replace(model, dynamics=dyn, model_error=q, history=history)


def code_std(model, train: xr.Dataset) -> np.ndarray:
    z = xlatda.encode(train[VARS], model).z
    return z.std([d for d in z.dims if d != "latent"]).values


# -- experiments -------------------------------------------------------------------
def latent_cycle(case, model, zstd, alpha, cfg, method="enkf", window=1, params=None,
                 obs=None, seed=0):
    settings = {"inflation": cfg["inflation"]}
    if method == "4denvar":
        settings["iterations"] = cfg["envar"]["iterations"]
    t0 = time.perf_counter()
    res = xlatda.cycle(case["bg"][VARS], case["obs"] if obs is None else obs, model,
                       method=method, members=cfg["members"], init_std=alpha * zstd,
                       window=window, params=params, seed=seed, progress=False, **settings)
    return res, time.perf_counter() - t0


def physical_members(case, train: xr.Dataset, alpha: float, n: int, seed: int) -> xr.Dataset:
    """Background + alpha x centred climatological anomalies (training states)."""
    flat = train[ALL_VARS].stack(sample=("trajectory", "time"))
    rng = np.random.default_rng(seed)
    pick = rng.choice(flat.sizes["sample"], size=n, replace=False)
    anom = flat.isel(sample=pick) - flat.mean("sample")
    anom = anom - anom.mean("sample")
    anom = anom.drop_vars(["sample", "trajectory", "time", "jet_speed", "bump_height",
                           "bump_lat", "bump_lon"], errors="ignore")
    anom = anom.rename({"sample": "member"}).assign_coords(member=np.arange(n))
    bg = case["bg"][ALL_VARS].drop_vars(["jet_speed", "bump_height", "bump_lat", "bump_lon"],
                                        errors="ignore")
    ens = bg + alpha * anom
    return ens.transpose("time", "member", "lat", "lon")


def make_fine_data(cfg: dict, nlat: int = 64, nlon: int = 128) -> dict[str, xr.Dataset]:
    """The trajectories of :func:`make_data` on the model's own ``nlat x nlon`` grid.

    The data set runs a T42 model on 64 x 128 whatever the output grid, so the
    same seeds give the same trajectories; on 64 x 128 they are the model's
    full state (no truncation), the state a full-resolution physical
    assimilation works with. Validation is not generated (nothing is chosen
    on it at this resolution).
    """
    d = cfg["data"]

    def gen(n, seed):
        return xlatda.datasets.shallow_water(
            nlat=nlat, nlon=nlon, days=d["days"], output_every=d["every"], trajectories=n,
            seed=seed, spinup_hours=d["spinup"], variables=tuple(ALL_VARS), progress=False)

    return {"train": gen(d["n_train"], d["seed_train"]), "test": gen(d["n_test"], d["seed_test"])}


def truncate_to(ds: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """Fields on a finer Gauss grid -> ``like``'s grid by spherical-harmonic truncation.

    The same operation the data set applies to its model states (expand,
    keep the degrees and orders the coarse grid represents, evaluate there),
    so a full-resolution analysis is scored exactly like the coarse truth.
    """
    from xlatda.sphere.transform import SphericalHarmonicTransform

    nlat, nlon = like.sizes["lat"], like.sizes["lon"]
    fine = SphericalHarmonicTransform(ds.sizes["lat"], ds.sizes["lon"], dtype=torch.float64)
    coarse = SphericalHarmonicTransform(nlat, nlon, dtype=torch.float64)
    lmax, mmax = min(fine.lmax, coarse.lmax), min(fine.mmax, coarse.mmax)
    coarse = SphericalHarmonicTransform(nlat, nlon, lmax=lmax, mmax=mmax, dtype=torch.float64)
    out = {}
    for v in ds.data_vars:
        da = ds[v].transpose(..., "lat", "lon")
        c = fine.forward(torch.as_tensor(da.values, dtype=torch.float64))
        y = coarse.inverse(c[..., : lmax + 1, : mmax + 1]).numpy()
        coords = {k: c_ for k, c_ in da.coords.items() if "lat" not in c_.dims
                  and "lon" not in c_.dims}
        out[v] = xr.DataArray(y, dims=da.dims, coords={**coords, "lat": like.lat,
                                                       "lon": like.lon}, attrs=da.attrs)
    return xr.Dataset(out)


def physical_cycle(case, train, alpha, cfg, seed=0, model=None, background=None):
    """Full-state 4DEnVar with the spectral model (default T21 on the 32 x 64 truth grid).

    ``model`` (e.g. ``ShallowWater(64, 128)``, the truth's own T42 model) with
    ``train`` and ``background`` on that model's grid; the analysis is on it too.
    """
    model = ShallowWater(32, 64) if model is None else model
    if background is not None:
        case = dict(case, bg=background)
    ens = physical_members(case, train, alpha, cfg["members"], seed)
    for v in ALL_VARS:
        ens[v].attrs = dict(train[v].attrs)
    t0 = time.perf_counter()
    res = xlatda.cycle(ens, case["obs"], model, method="4denvar",
                       space="physical", window=cfg["envar"]["window"],
                       iterations=cfg["envar"]["iterations"], inflation=cfg["inflation"],
                       seed=seed, progress=False)
    return res, time.perf_counter() - t0


def free_run(case, model, scorer) -> float:
    bg = case["bg"][VARS]
    n = case["obs"].time.to_index().unique().size
    fc = xlatda.forecast(bg, model, steps=n).isel(time=0)
    fc = fc.isel(lead=slice(1, None)).assign_coords(time=("lead", fc.valid_time.values[1:]))
    fc = fc.swap_dims({"lead": "time"})
    return scorer.rmse(fc, case["truth"])


def physical_free_run(case, scorer, cfg) -> tuple[float, float]:
    """T21 model from the background, and from the true state (model error alone)."""
    model = ShallowWater(32, 64)
    times = np.unique(case["obs"].time.values)
    lag = cfg["lag"]
    per = 24  # 6 h / 900 s
    out = []
    for start in (case["bg"].isel(time=0), case["truth"].isel(time=lag)):
        x = torch.as_tensor(np.stack([start[v].values for v in ALL_VARS]), dtype=torch.float64)
        traj = model.integrate(x[None], per * len(times), every=per)[0, 1:]
        est = xr.Dataset({v: (("time", "lat", "lon"), traj[:, k].numpy())
                          for k, v in enumerate(ALL_VARS)},
                         coords={"time": times, "lat": case["truth"].lat,
                                 "lon": case["truth"].lon})
        out.append(scorer.rmse(est, case["truth"]))
    return out[0], out[1]


def analysis_rmse(res, case, scorer) -> float:
    return scorer.rmse(res.analysis.mean("member"), case["truth"])


def l96_forcing(cycles: int) -> dict[str, Any]:
    """The run of examples/parameter_estimation.py."""
    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=3)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=20, error_std=1.0,
                                   seed=4)
    t0 = time.perf_counter()
    result = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="4denvar", window=5,
                          members=30, init_std=1.0, params={"forcing": (7.0, 1.0)},
                          inflation=1.02, progress=False)
    f = result.parameters.theta.sel(param="forcing").isel(time=-1).values
    return {"truth": 8.0, "mean": float(f.mean()), "std": float(f.std(ddof=1)),
            "min": float(f.min()), "max": float(f.max()), "seconds": time.perf_counter() - t0,
            "prior": "7 ± 1", "cycles": cycles}


# -- main --------------------------------------------------------------------------
def main(quick: bool = True) -> list[dict]:
    torch.set_num_threads(1)
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    rows: list[dict] = []
    log = print

    t0 = time.perf_counter()
    data = make_data(cfg)
    log(f"data {time.perf_counter() - t0:.1f} s")
    train = data["train"]
    scorer = Scorer(train)
    fitted = fit_models(cfg, train)
    models, fit_times = fitted["models"], fitted["times"]
    log(f"models {fit_times}")
    zstd = {k: code_std(m, train) for k, m in models.items()}

    val = trajectory_case(data["val"], 0, cfg, scorer, seed=77, n_points=cfg["n_points"])
    val_sparse = dict(val, obs=xlatda.obs.sample_points(
        val["truth"][VARS].isel(time=slice(cfg["lag"] + 1, None)), n=cfg["sparse_points"],
        error_std={v: cfg["sigma_o"] * scorer.std[v] for v in VARS}, seed=78))

    # validation choices: alpha per encoder (EnKF), alpha for the physical ensemble,
    # 4DEnVar window for sparse observations
    choice: dict[str, Any] = {"alpha": {}, "val_rmse": {}}
    for name, m in models.items():
        scores = {a: analysis_rmse(latent_cycle(val, m, zstd[name], a, cfg)[0], val, scorer)
                  for a in cfg["alphas"]}
        choice["alpha"][name] = min(scores, key=scores.get)
        choice["val_rmse"][name] = scores
    log(f"validation {choice}")
    pscores = {a: analysis_rmse(physical_cycle(val, train, a, cfg)[0], val, scorer)
               for a in cfg["alphas"]}
    choice["alpha"]["physical"] = min(pscores, key=pscores.get)
    choice["val_rmse"]["physical"] = pscores
    a_s = choice["alpha"]["sinr"]
    wscores = {}
    for w in cfg["sparse_windows"]:
        r, _ = latent_cycle(val_sparse, models["sinr"], zstd["sinr"], a_s, cfg,
                            method="4denvar", window=w)
        wscores[w] = analysis_rmse(r, val_sparse, scorer)
    choice["sparse_window"] = min(wscores, key=wscores.get)
    choice["val_rmse"]["sparse_4denvar_window"] = wscores
    log(f"validation {choice}  ({time.perf_counter() - t_start:.0f} s)")

    # parameter-conditioned latent ODE (jet speed)
    t0 = time.perf_counter()
    model_p = fit_ode(models["sinr"], train, cfg, params=["jet_speed"])
    fit_times["sinr_jet_conditioned_ode_s"] = time.perf_counter() - t0

    per: dict[str, list] = {}

    def add(key, value):
        per.setdefault(key, []).append(value)

    for i in range(data["test"].sizes["trajectory"]):
        case = trajectory_case(data["test"], i, cfg, scorer, seed=100 + i,
                               n_points=cfg["n_points"])
        sparse = xlatda.obs.sample_points(
            case["truth"][VARS].isel(time=slice(cfg["lag"] + 1, None)),
            n=cfg["sparse_points"], error_std={v: cfg["sigma_o"] * scorer.std[v] for v in VARS},
            seed=200 + i)
        case_s = dict(case, obs=sparse)
        for name, m in models.items():
            res, sec = latent_cycle(case, m, zstd[name], choice["alpha"][name], cfg, seed=i)
            add(f"enkf_{name}", analysis_rmse(res, case, scorer))
            add(f"enkf_{name}_s", sec)
            add(f"free_{name}", free_run(case, m, scorer))
        pf_bg, pf_truth = physical_free_run(case, scorer, cfg)
        add("free_physical_T21", pf_bg)
        add("physical_T21_from_truth", pf_truth)
        # target 2
        res, sec = latent_cycle(case, models["sinr"], zstd["sinr"], a_s, cfg, method="4denvar",
                                window=cfg["envar"]["window"], seed=i)
        add("envar_latent", analysis_rmse(res, case, scorer))
        add("envar_latent_s", sec)
        res, sec = latent_cycle(case, models["pca"], zstd["pca"], choice["alpha"]["pca"], cfg,
                                method="4denvar", window=cfg["envar"]["window"], seed=i)
        add("envar_latent_pca", analysis_rmse(res, case, scorer))
        add("envar_latent_pca_s", sec)
        res, sec = physical_cycle(case, train, choice["alpha"]["physical"], cfg, seed=i)
        add("envar_physical", analysis_rmse(res, case, scorer))
        add("envar_physical_s", sec)
        # target 3
        res, sec = latent_cycle(case_s, models["sinr"], zstd["sinr"], a_s, cfg, seed=i)
        add("sparse_enkf", analysis_rmse(res, case_s, scorer))
        res, sec = latent_cycle(case_s, models["sinr"], zstd["sinr"], a_s, cfg,
                                method="4denvar", window=choice["sparse_window"], seed=i)
        add("sparse_envar", analysis_rmse(res, case_s, scorer))
        # target 4
        prior = cfg["jet_prior"]
        res, sec = latent_cycle(case, model_p, zstd["sinr"], a_s, cfg, method="4denvar",
                                window=cfg["envar"]["window"], params={"jet_speed": prior},
                                seed=i)
        th = res.parameters.theta.sel(param="jet_speed").isel(time=-1).values
        add("jet", {"truth": case["jet_speed"], "mean": float(th.mean()),
                    "std": float(th.std(ddof=1)), "min": float(th.min()),
                    "max": float(th.max()), "rmse": analysis_rmse(res, case, scorer)})
        log(f"trajectory {i} done ({time.perf_counter() - t_start:.0f} s): "
            f"{ {k: v[-1] for k, v in per.items()} }")

    def m(key):
        return float(np.mean(per[key]))

    n_an = int(np.unique(case["obs"].time.values).size)
    common = {"trajectories": data["test"].sizes["trajectory"], "analyses": n_an}
    # target 1
    free = m("free_sinr")
    for name in models:
        rows.append({"target": "1 latent EnKF", "case": f"{name} + ODE, EnKF N=32 infl 1.05",
                     "rmse": m(f"enkf_{name}"), "reference": m(f"free_{name}"),
                     "reference_is": f"free run ({name} + ODE)",
                     "ratio": m(f"enkf_{name}") / m(f"free_{name}"),
                     "seconds": m(f"enkf_{name}_s"), "alpha": choice["alpha"][name],
                     "per_trajectory": per[f"enkf_{name}"], **common})
    r_free = m("enkf_sinr") / free
    r_ae = m("enkf_sinr") / m("enkf_autoencoder")
    rows.append({"target": "1 SINR / free run <= 0.5", "case": "ratio", "ratio": r_free,
                 "passed": r_free <= 0.5})
    rows.append({"target": "1 SINR / AE <= 0.5", "case": "ratio", "ratio": r_ae,
                 "passed": r_ae <= 0.5})
    rows.append({"target": "ref", "case": "free run, T21 physical model from background",
                 "rmse": m("free_physical_T21")})
    rows.append({"target": "ref", "case": "T21 physical model from the true state "
                 "(model error alone)", "rmse": m("physical_T21_from_truth")})
    # target 2
    speed = m("envar_physical_s") / m("envar_latent_s")
    ratio = m("envar_latent") / m("envar_physical")
    rows.append({"target": "2 4DEnVar", "case": "latent (SINR + ODE)", "rmse": m("envar_latent"),
                 "seconds": m("envar_latent_s"), "per_trajectory": per["envar_latent"],
                 **common})
    rows.append({"target": "2 4DEnVar", "case": "full state (ShallowWater T21)",
                 "rmse": m("envar_physical"), "seconds": m("envar_physical_s"),
                 "alpha": choice["alpha"]["physical"],
                 "per_trajectory": per["envar_physical"], **common})
    rows.append({"target": "2 speed-up >= 20x at RMSE ratio <= 1.1", "case": "latent vs full",
                 "ratio": ratio, "speedup": speed, "passed": speed >= 20 and ratio <= 1.1})
    speed_p = m("envar_physical_s") / m("envar_latent_pca_s")
    ratio_p = m("envar_latent_pca") / m("envar_physical")
    rows.append({"target": "2 4DEnVar", "case": "latent (PCA + ODE)",
                 "rmse": m("envar_latent_pca"), "seconds": m("envar_latent_pca_s"),
                 "alpha": choice["alpha"]["pca"], "per_trajectory": per["envar_latent_pca"],
                 **common})
    rows.append({"target": "2 speed-up >= 20x at RMSE ratio <= 1.1",
                 "case": "latent (PCA) vs full", "ratio": ratio_p, "speedup": speed_p,
                 "passed": speed_p >= 20 and ratio_p <= 1.1})
    # target 3
    rows.append({"target": "3 1% obs", "case": "latent EnKF (SINR)", "rmse": m("sparse_enkf"),
                 "per_trajectory": per["sparse_enkf"]})
    rows.append({"target": "3 1% obs", "case": f"latent 4DEnVar (SINR, window "
                 f"{choice['sparse_window']})", "rmse": m("sparse_envar"),
                 "per_trajectory": per["sparse_envar"]})
    rows.append({"target": "3 4DEnVar <= EnKF", "case": "ratio",
                 "ratio": m("sparse_envar") / m("sparse_enkf"),
                 "passed": m("sparse_envar") <= m("sparse_enkf")})
    # target 4
    for j in per["jet"]:
        rel = abs(j["mean"] - j["truth"]) / j["truth"]
        cover = abs(j["mean"] - j["truth"]) <= 2 * j["std"]
        rows.append({"target": "4 parameter", "case": "SW jet speed (jet-conditioned latent "
                     f"ODE, prior {cfg['jet_prior'][0]:g} ± {cfg['jet_prior'][1]:g})",
                     "truth": j["truth"], "estimate": j["mean"], "spread": j["std"],
                     "rel_error": rel, "prior_rel_error":
                     abs(cfg["jet_prior"][0] - j["truth"]) / j["truth"],
                     "covered_2std": bool(cover), "rmse": j["rmse"],
                     "passed": rel <= 0.1 and cover})
    l96 = l96_forcing(cfg["l96_cycles"])
    rel = abs(l96["mean"] - 8.0) / 8.0
    cover = abs(l96["mean"] - 8.0) <= 2 * l96["std"]
    rows.append({"target": "4 parameter", "case": f"L96 forcing (examples/parameter_estimation"
                 f".py, {l96['cycles']} cycles, prior 7 ± 1)", "truth": 8.0,
                 "estimate": l96["mean"], "spread": l96["std"], "rel_error": rel,
                 "prior_rel_error": 1 / 8, "covered_2std": bool(cover),
                 "seconds": l96["seconds"], "passed": rel <= 0.1 and cover})
    total = time.perf_counter() - t_start
    _write(rows, cfg, quick, choice, fit_times, total)
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)


def _write(rows, cfg, quick, choice, fit_times, total) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [
        "# Shallow-water latent data assimilation (issue 6 targets)",
        "",
        f"Mode: {'quick' if quick else 'full'}; total {total:.0f} s on "
        f"{torch.get_num_threads()} torch thread(s). Data: {cfg['data']}. Latent size "
        f"{cfg['latent_dim']}; N = {cfg['members']}, inflation {cfg['inflation']}, "
        f"sigma_o = {cfg['sigma_o']} (normalised), {cfg['n_points']} locations x 2 channels "
        f"per analysis (1 %: {cfg['sparse_points']} x 2); 4DEnVar window "
        f"{cfg['envar']['window']}, {cfg['envar']['iterations']} Gauss-Newton iterations.",
        "",
        f"Validation choices (trajectory seed {cfg['data']['seed_val']}): {choice}",
        "",
        f"Fit times (s): {fit_times}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    for r in main(quick=not args.full):
        print(r)
