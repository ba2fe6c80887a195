"""SINR benchmark: encode speed, held-out ERA5 reconstruction, latent EnKF and 4DEnVar.

Four parts, one run; the table goes to ``benchmarks/out/sinr.md`` (the
committed tables: parts a b there, c d in ``benchmarks/out/sinr_da.md``).

(a) **Encode throughput** (one CPU thread) and held-out reconstruction RMSE
of the SINR encoder on 32 x 64 shallow-water fields
(:func:`xlatda.datasets.shallow_water`, height and vorticity standardised
by the training set, errors cos(lat) weighted), for ``encode_method="solve"``
(the exact affine least squares; the decoder is affine in the code) and
``"adam"`` (LAINR's iterative auto-decoding, 150 steps at lr 5e-2), on the
same trained decoder (the ``"cpu_linear"`` preset of
:data:`xlatda.encoders.sinr.SINR_PRESETS`, latent 128). ``solve`` is timed
warm (the affine map of the grid is cached once per set of weights; its
one-off cost is reported separately). Target: >= 100 samples/s at no worse
RMSE than ``adam``.

(b) **Held-out reconstruction on ERA5 2 m temperature**
(``../shared/data/era5_t2m_2019-03_uk.nc``: hourly, March 2019, UK box
50-58 N, 10 W - 2 E at 0.25 degrees, 33 x 49). Training: days 1-14 (336
fields); validation: days 15-24 (hyper-parameters are chosen on it); held
out: days 25-31 (168 fields), never used for a choice. Standardised by the
training mean and standard deviation (one number each); RMSE in kelvin,
cos(lat) weighted. PCA, the convolutional autoencoder and SINR at latent 32
and 64 (SINR: one channel, so the code is the whole latent). SINR
candidates, chosen on the validation days: the grid-fitted linear path
(``linear_fit="grid"``, degree ``"auto"``), whose stretch (``"box"`` /
``"conformal"``), prior ``linear_prior`` and smoothness are first chosen
among its untrained PCA starts (``FULL["era5"]["sinr_starts"]``, seconds
each, every start's validation RMSE is printed), then trained with the
network residual from the chosen start; and round 3's projection path
(preset ``"cpu_linear"`` as it is). Each keeps its best validation epoch.
Diagnostics of the gap to PCA (rank of the patch's harmonics, projection
error per degree): ``benchmarks/sinr_era5_diagnostics.py``.

*How SINR's spherical basis handles the limited-area domain.* SINR's
filters are spherical harmonics of the position, so every decoded field is
band-limited to degree ``D_max`` (``(L + 1) F + L (L + 1) / 2``; 50 for
depth 4, ``F = 8``) on the *whole sphere*. The UK box spans 8 x 12
degrees, a fifth of the shortest wavelength of degree 10: on raw
coordinates the band limit is spent on the rest of the globe and a degree-50
field varies little more than linearly across the box. With
``region="auto"`` the encoder stretches the box isotropically onto a patch
of 120 x 106 degrees (factor 15, :func:`xlatda.encoders.sinr.region_to_sphere`)
before evaluating the harmonics, so degree 50 resolves half-wavelengths of
0.24 degrees in the box, the grid spacing. The table reports both (the raw
coordinates as ``region=None``).

(c) **Latent EnKF, SINR vs autoencoder** at LAINR's setting, with the data,
neural ODE and cycling of ``bench_sw_latent_da.py`` (1024 scattered
observations of height and vorticity per analysis, sigma_o = 0.1
normalised, N = 32, inflation 1.05, latent 128, the same ODE for both
encoders), against each model's free run, with each encoder's floor
(the RMSE of ``decode(encode(truth))``) and the observations' own estimate
(``encode_obs`` with the latent prior at each time, no dynamics). SINR
variants, chosen on the validation trajectory: the ``"cpu"`` preset
(LAINR's decoder, latent coordinates ``latent_basis="pca"``) and the same
with the linear spherical-harmonic path started at the training PCA
(preset ``"cpu_linear"``: ``linear_degree="auto"``, 31 on this grid; see
the SINR module docstring).

SINR in (a), (b) and (c): the ``"cpu_linear"`` preset's linear path makes the decoder contain the
per-channel weighted PCA of the training fields (projected on the harmonics
of degree ``<= linear_degree``), which is the best affine subspace a SINR
channel can be; the network trains a residual on it (the path frozen,
``lr_linear=0``, chosen on validation data: training the path too gave
higher validation errors on ERA5 and shallow water).

(d) **Latent 4DEnVar vs full-state 4DEnVar at the truth's resolution**
(``--parts c d``): the SINR + ODE model of (c) against 4DEnVar with the
truth's own model (``ShallowWater`` T42 on 64 x 128, no model error; the
older baseline of ``bench_sw_latent_da.py`` runs T21 on 32 x 64), same
observations, members, window and iterations; the full-state analysis is
truncated to 32 x 64 as the data set truncates the truth and scored alike.
Beside the pure ensemble method at N = 32 and the default N, each size is
also run with the latent configuration chosen on part c's validation
trajectory (``DA["envar"]["candidates"]``: weak- or strong-constraint
windows, or the hybrid control variable ``beta`` of
:mod:`xlatda.methods.envar4d`); the validation table is printed too.

Run ``python benchmarks/bench_sinr.py --data ../shared/data`` (``--parts a b c d``
to choose parts; about an hour on one CPU core, most of it the T42 run of (d))
or ``--quick`` (smaller data and fewer epochs, about 5 minutes of CPU; a smoke run).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlatda.datasets.shallow_water import shallow_water
from xlatda.encoders.autoencoder import ConvAutoencoder
from xlatda.encoders.pca import PCA
from xlatda.encoders.sinr import SINR, SINR_PRESETS

OUT = Path(__file__).resolve().parent / "out" / "sinr.md"
ERA5_FILE = "era5_t2m_2019-03_uk.nc"


def _find_data() -> Path:
    """The shared data folder: the first ``shared/data`` holding the ERA5 file above this file.

    ``../shared/data`` beside the repository (``/work/main`` -> ``/work/shared``) and
    beside a parent of a worktree (``/work/wt/NAME`` -> ``/work/shared``) alike;
    ``--data`` for another place.
    """
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "data" / ERA5_FILE).exists():
            return parent / "shared" / "data"
    return here.parents[2] / "shared" / "data"


#: The shared data folder (``--data`` for another place).
DATA = _find_data()

FULL: dict[str, Any] = {
    "sw": {"trajectories_train": 8, "trajectories_test": 2, "days": 5, "output_every": "6h",
           "spinup_hours": 48, "seed": 0, "latent_dim": 128, "epochs": 80, "adam_samples": 24,
           "adam": {"steps": 150, "lr": 5e-2}},
    "era5": {"latents": (32, 64), "epochs": 250, "patience": 30,
             # the grid-fitted linear path (round 5): its PCA starts are scored on the
             # validation days (seconds each), the best one is trained with the network
             # residual (early stopping on the validation days)
             "sinr_grid": {"region": "auto", "hidden": 64, "depth": 4, "max_freq": 8,
                           "linear_fit": "grid"},
             "sinr_starts": {"region_stretch": ("box", "conformal"),
                             "linear_smoothness": (1.0, 2.0, 3.0),
                             "linear_prior": (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)},
             "sinr": [  # further candidates, chosen on the validation days with the above
                 # round 3's preset: projection path of degree 'auto' (47 here) from the PCA
                 {"region": "auto", "hidden": 64, "depth": 4, "max_freq": 8},
             ],
             "sinr_raw": {"region": None, "hidden": 64, "depth": 4, "max_freq": 8},
             "ae": {"init": {"channels": [16, 32, 32]},
                    "fit": {"epochs": 60, "batch_size": 16, "lr": 2e-3, "patience": 15}}},
}
#: (c) LAINR's filtering setting at laptop scale, the data and ODE of bench_sw_latent_da.py.
DA: dict[str, Any] = {
    "data": {"n_train": 12, "n_test": 2, "days": 4, "every": "6h", "spinup": 48,
             "seed_train": 0, "seed_val": 500, "seed_test": 1000},
    "lag": 2, "latent_dim": 128, "members": 32, "inflation": 1.05, "sigma_o": 0.1,
    "n_points": 512, "alphas": [0.3, 1.0],
    # the truth read at the scattered points: its band-limited expansion (the data set's
    # fields are exactly T31), not the bilinear blend of the grid (see xlatda.obs.spectral)
    "interpolation": "spectral",
    # (d): the full-state T42 run costs minutes per trajectory, so on the first test ones only
    "envar": {"window": 2, "iterations": 3, "physical_alpha": 1.0, "trajectories": 1,
              # latent 4DEnVar configurations, one chosen per ensemble size on the validation
              # trajectory: the pure ensemble method (weak constraint, the cycle's default for a
              # model with Q; strong constraint) and the hybrid control variable (beta > 0)
              "candidates": [("ensemble", {}), ("ensemble, strong", {"model_error": "ignore"}),
                             ("hybrid 0.1", {"beta": 0.1}), ("hybrid 0.3", {"beta": 0.3}),
                             ("hybrid 0.5", {"beta": 0.5})]},
    "ode": {"width": 256, "depth": 2, "window": 6, "epochs": 300, "lr": 2e-3, "batch_size": 64},
    "sinr": {"epochs": 200, "batch_size": 16},
    # SINR variants (preset 'cpu' plus these options), chosen on the validation trajectory
    # ("cpu linear path" = preset cpu_linear; round 3 of issue 17 ran it alone: 0.430)
    "sinr_candidates": [("cpu", {}), ("cpu linear path", {"linear_degree": "auto",
                                                         "lr_linear": 0.0})],
    "autoencoder": {"options": {"channels": [16, 32, 32]}, "epochs": 60, "batch_size": 16,
                    "lr": 2e-3},
}
QUICK_DA: dict[str, Any] = {
    **DA, "data": dict(DA["data"], n_train=4, n_test=1, days=2),
    "ode": dict(DA["ode"], epochs=40), "sinr": {"epochs": 10, "batch_size": 16},
    "autoencoder": dict(DA["autoencoder"], epochs=10), "alphas": [1.0],
    "sinr_candidates": DA["sinr_candidates"][:2],
}

QUICK: dict[str, Any] = {
    "sw": dict(FULL["sw"], trajectories_train=3, trajectories_test=1, days=3, epochs=20,
               adam_samples=6),
    "era5": dict(FULL["era5"], latents=(32,), epochs=10, sinr=FULL["era5"]["sinr"][:1],
                 sinr_starts={"region_stretch": ("box",), "linear_smoothness": (2.0,),
                              "linear_prior": (0.0, 1.0)},
                 ae={"init": {"channels": [16, 32, 32]},
                     "fit": {"epochs": 20, "batch_size": 16, "lr": 2e-3, "patience": 20}}),
}


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def weighted_rmse(pred: torch.Tensor, truth: torch.Tensor, lat: torch.Tensor) -> float:
    """cos(lat)-weighted RMSE over samples, channels and points (weights mean 1)."""
    w = torch.cos(torch.deg2rad(lat)).clamp_min(0.0)
    w = (w / w.mean()).to(truth.dtype)[:, None]
    return float(((pred.to(truth.dtype) - truth) ** 2 * w).mean().sqrt())


# ---------------------------------------------------------------- (a) shallow water
def shallow_water_part(s: dict[str, Any]) -> dict[str, Any]:
    n_tr, n_te = s["trajectories_train"], s["trajectories_test"]
    ds = shallow_water(nlat=32, nlon=64, days=s["days"], output_every=s["output_every"],
                       trajectories=n_tr + n_te, seed=s["seed"],
                       spinup_hours=s["spinup_hours"], dtype="float64", progress=False)
    x = torch.from_numpy(np.stack([ds["height"].values, ds["vorticity"].values], axis=2))
    train, test = x[:n_tr].reshape(-1, 2, 32, 64), x[n_tr:].reshape(-1, 2, 32, 64)
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True)
    train, test = ((train - mean) / std).float(), ((test - mean) / std).float()
    lat = torch.tensor(ds["lat"].values, dtype=torch.float64)
    grid = {"kind": "latlon", "lat": lat.tolist(), "lon": ds["lon"].values.tolist()}
    enc = SINR.from_preset("cpu_linear", 2, (32, 64), s["latent_dim"], grid, seed=0,
                           epochs=s["epochs"])
    hist, t_fit = _time(lambda: enc.fit(train, progress=False))
    rows = []
    with torch.no_grad():
        _, t_affine = _time(lambda: enc.affine_map())  # one-off per set of weights
        z, t_solve = _time(lambda: enc.encode(test, method="solve"))
        rows.append({"method": "solve", "samples": test.shape[0],
                     "rmse": weighted_rmse(enc.decode(z), test, lat),
                     "per_s": test.shape[0] / t_solve})
        sub = test[: s["adam_samples"]]
        z_s = z[: s["adam_samples"]]
        za, t_adam = _time(lambda: enc.encode(sub, method="adam", progress=False, **s["adam"]))
        rows.append({"method": f"adam ({s['adam']['steps']} steps, lr {s['adam']['lr']})",
                     "samples": sub.shape[0], "rmse": weighted_rmse(enc.decode(za), sub, lat),
                     "per_s": sub.shape[0] / t_adam})
        rows.append({"method": "solve, same samples as adam", "samples": sub.shape[0],
                     "rmse": weighted_rmse(enc.decode(z_s), sub, lat), "per_s": float("nan")})
    return {"rows": rows, "fit_s": t_fit, "affine_s": t_affine, "train": train.shape[0],
            "test": test.shape[0], "epochs": hist["epochs_run"], "latent": s["latent_dim"]}


# ---------------------------------------------------------------- (b) ERA5 t2m
def era5_data(path: Path) -> dict[str, Any]:
    import xarray as xr

    da = xr.open_dataset(path)["t2m"].load()
    day = da["time"].dt.day.values
    x = torch.from_numpy(da.values.astype(np.float64))[:, None]  # (T, 1, 33, 49)
    split = {"train": day <= 14, "val": (day >= 15) & (day <= 24), "test": day >= 25}
    parts = {k: x[torch.from_numpy(v)] for k, v in split.items()}
    mean, std = float(parts["train"].mean()), float(parts["train"].std())
    lat = torch.tensor(da["latitude"].values, dtype=torch.float64)
    grid = {"kind": "latlon", "lat": lat.tolist(), "lon": da["longitude"].values.tolist()}
    norm = {k: ((v - mean) / std).float() for k, v in parts.items()}
    return {"x": norm, "std": std, "lat": lat, "grid": grid}


def _score(enc, data: dict[str, Any], part: str) -> float:
    x = data["x"][part]
    with torch.no_grad():
        xh = enc.decode(enc.encode(x))
    return weighted_rmse(xh, x.double(), data["lat"]) * data["std"]  # kelvin


def era5_part(s: dict[str, Any], path: Path) -> dict[str, Any]:
    data = era5_data(path)
    shape, grid = tuple(data["x"]["train"].shape[-2:]), data["grid"]
    xtr, xval = data["x"]["train"], data["x"]["val"]
    rows, choices, start_table = [], {}, {}
    for k in s["latents"]:
        enc = PCA(1, shape, k, grid)
        _, t = _time(lambda enc=enc: enc.fit(xtr))
        rows.append({"method": "PCA", "latent": k, "val": _score(enc, data, "val"),
                     "test": _score(enc, data, "test"), "fit_s": t, "note": ""})
        enc = ConvAutoencoder(1, shape, k, grid, seed=0, **s["ae"]["init"])
        h, t = _time(lambda enc=enc: enc.fit(xtr, xval, progress=False, **s["ae"]["fit"]))
        rows.append({"method": "AE", "latent": k, "val": _score(enc, data, "val"),
                     "test": _score(enc, data, "test"), "fit_s": t,
                     "note": f"{h.get('epochs', '?')} epochs (early stop on val)"})
        cands = []
        starts = []  # (val RMSE of the PCA start, options, seconds): the grid path's choices
        coarse_pca = _coarse_pca(data, k)
        for opts in _start_grid(s["sinr_starts"]):
            enc = SINR.from_preset("cpu_linear", 1, shape, k, grid, seed=0,
                                   **s["sinr_grid"], **opts)
            _, t = _time(lambda enc=enc: enc.init_pca(xtr))
            starts.append({"val": _score(enc, data, "val"), "opts": opts, "init_s": t,
                           "degree": enc.linear_degree,
                           "between": _coarse_sinr(data, k, {**s["sinr_grid"], **opts})})
        # mesh-free: a start is eligible if, refitted on every other row and column, it
        # decodes the dropped validation points no worse than that PCA with bilinear blending
        ok = [r for r in starts if r["between"] <= coarse_pca]
        start = min(ok or starts, key=lambda r: r["val"])
        start_table[k] = {"rows": starts, "coarse_pca": coarse_pca}
        for opts in [{**s["sinr_grid"], **start["opts"]}, *s["sinr"], s["sinr_raw"]]:
            enc = SINR.from_preset("cpu_linear", 1, shape, k, grid, seed=0,
                                   **dict(opts, epochs=s["epochs"]))
            h, t = _time(lambda enc=enc: enc.fit(xtr, xval, patience=s["patience"],
                                                 progress=False))
            lin = "none" if enc.linear_degree is None else enc.linear_degree
            fit = opts.get("linear_fit", "projection")
            extra = ""
            if fit == "grid":
                extra = (f", {opts['region_stretch']} stretch, prior {opts['linear_prior']:g}"
                         f" (s {opts['linear_smoothness']:g}; start chosen on val)")
            row = {"method": f"SINR region={opts['region']}, linear path {lin} ({fit} fit"
                   f"{extra})", "latent": k,
                   "val": _score(enc, data, "val"), "test": _score(enc, data, "test"),
                   "fit_s": t, "note": f"hidden {opts['hidden']}, depth {opts['depth']}, "
                   f"F {opts['max_freq']} (D_max {enc.max_degree}), best epoch "
                   f"{h['best_epoch'] + 1}/{h['epochs_run']}", "opts": opts}
            cands.append(row)
        boxed = [r for r in cands if r["opts"]["region"] is not None]
        best = min(boxed, key=lambda r: r["val"])
        best["note"] += " **chosen on val**"
        choices[k] = best["opts"]
        rows += cands
    for r in rows:
        r.pop("opts", None)
    return {"rows": rows, "choices": choices, "std": data["std"], "starts": start_table,
            "sizes": {p: int(v.shape[0]) for p, v in data["x"].items()}}


def _coarse(data: dict[str, Any]) -> tuple[dict, dict, Tensor, Tensor, Tensor]:
    """Every other row and column of the box: fields, grid; all points, dropped mask, truth."""
    grid = data["grid"]
    lat = torch.tensor(grid["lat"], dtype=torch.float64)
    lon = torch.tensor(grid["lon"], dtype=torch.float64)
    sub = {p: v[:, :, ::2, ::2].contiguous() for p, v in data["x"].items()}
    cgrid = {"kind": "latlon", "lat": lat[::2].tolist(), "lon": lon[::2].tolist()}
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    pts = torch.stack([la.reshape(-1), lo.reshape(-1)], -1)
    dropped = torch.ones(lat.numel(), lon.numel(), dtype=torch.bool)
    dropped[::2, ::2] = False
    truth = data["x"]["val"][:, 0].double().reshape(data["x"]["val"].shape[0], -1)
    return sub, cgrid, pts, dropped.reshape(-1), truth


def _between_rmse(pred: Tensor, data: dict[str, Any]) -> float:
    """RMSE (K, cos-lat weighted) at the validation grid points the coarse grid dropped."""
    _, _, pts, dropped, truth = _coarse(data)
    w = torch.cos(torch.deg2rad(pts[dropped, 0]))
    w = w / w.mean()
    err = (pred[:, dropped] - truth[:, dropped]) ** 2 * w
    return float(err.mean().sqrt()) * data["std"]


def _coarse_pca(data: dict[str, Any], k: int) -> float:
    """PCA fitted on the coarse grid, its validation reconstructions blended bilinearly."""
    sub, cgrid, _, _, truth = _coarse(data)
    enc = PCA(1, tuple(sub["train"].shape[-2:]), k, cgrid)
    enc.fit(sub["train"])
    rec = enc.decode(enc.encode(sub["val"])).double()
    up = torch.nn.functional.interpolate(rec, size=tuple(data["x"]["val"].shape[-2:]),
                                         mode="bilinear", align_corners=True)
    return _between_rmse(up.reshape(truth.shape), data)


def _coarse_sinr(data: dict[str, Any], k: int, opts: dict[str, Any]) -> float:
    """The same SINR start fitted on the coarse grid, decoded (mesh-free) at the dropped points."""
    sub, cgrid, pts, _, _ = _coarse(data)
    region = {"lat": [min(cgrid["lat"]), max(cgrid["lat"])],
              "lon": [min(cgrid["lon"]), max(cgrid["lon"])]}
    enc = SINR.from_preset("cpu_linear", 1, tuple(sub["train"].shape[-2:]), k, cgrid, seed=0,
                           **dict(opts, region=region))
    enc.init_pca(sub["train"])
    with torch.no_grad():
        z = enc.encode(sub["val"])
        pred = enc.decode_at(z, pts, torch.zeros(pts.shape[0], dtype=torch.long)).double()
    return _between_rmse(pred, data)


def _start_grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid path's PCA starts: stretch x smoothness x prior (no prior: one smoothness)."""
    out = []
    for stretch in grid["region_stretch"]:
        for prior in grid["linear_prior"]:
            smooths = grid["linear_smoothness"]
            # without a prior the smoothness only shapes the values between the grid points
            for smooth in smooths if prior > 0 else smooths[len(smooths) // 2:][:1]:
                out.append({"region_stretch": stretch, "linear_smoothness": smooth,
                            "linear_prior": prior})
    return out


# ---------------------------------------------------------------- (c) latent EnKF
def latent_da_part(cfg: dict[str, Any], envar: bool = False) -> dict[str, Any]:
    """SINR + ODE vs AE + ODE latent EnKF (bench_sw_latent_da.py's data, ODE and cycling).

    With ``envar``, also part (d): latent 4DEnVar with the chosen SINR model
    against full-state 4DEnVar with the truth's own T42 model on its 64 x 128
    grid, on the same test trajectories and observations.
    """
    try:
        from benchmarks import bench_sw_latent_da as swda
    except ImportError:  # run as a script: benchmarks/ is on the path
        import bench_sw_latent_da as swda
    import xlatda

    t0 = time.perf_counter()
    data = swda.make_data(cfg)
    train = data["train"]
    scorer = swda.Scorer(train)
    interp = cfg.get("interpolation", "bilinear")
    val = swda.trajectory_case(data["val"], 0, cfg, scorer, seed=77, n_points=cfg["n_points"],
                               interpolation=interp)
    cands: dict[str, tuple[str, dict[str, Any]]] = {
        f"sinr {k}": ("sinr", dict(SINR_PRESETS["cpu"], **o)) for k, o in cfg["sinr_candidates"]
    }
    cands["autoencoder"] = ("autoencoder", cfg["autoencoder"]["options"])
    models, fit_s, zstd, alpha, val_rmse = {}, {}, {}, {}, {}
    for label, (name, opts) in cands.items():
        c = cfg[name]
        t1 = time.perf_counter()
        m = xlatda.fit(train[swda.VARS], encoder=name, latent_dim=cfg["latent_dim"],
                       epochs=c["epochs"], batch_size=c["batch_size"], lr=c.get("lr"),
                       validation=None, progress=False, seed=0, encoder_options=opts)
        t2 = time.perf_counter()
        models[label] = swda.fit_ode(m, train, cfg)
        fit_s[label] = {"encoder_s": round(t2 - t1), "ode_s": round(time.perf_counter() - t2)}
        zstd[label] = swda.code_std(models[label], train)
        # the initial spread, chosen on the validation trajectory
        sc = {a: swda.analysis_rmse(swda.latent_cycle(val, models[label], zstd[label], a,
                                                      cfg)[0], val, scorer)
              for a in cfg["alphas"]}
        alpha[label], val_rmse[label] = min(sc, key=sc.get), sc
    # the SINR variant with the lowest validation analysis RMSE is the one tested
    best = min((k for k in cands if k.startswith("sinr")), key=lambda k: min(val_rmse[k].values()))
    models = {"sinr": models[best], "autoencoder": models["autoencoder"]}
    zstd = {"sinr": zstd[best], "autoencoder": zstd["autoencoder"]}
    alpha = {"sinr": alpha[best], "autoencoder": alpha["autoencoder"]}
    per: dict[str, list[float]] = {}
    fine = swda.make_fine_data(cfg) if envar else None
    if fine is not None:  # the fine truth is the coarse truth's own model state
        coarse = swda.truncate_to(fine["test"][swda.VARS], data["test"])
        per["fine_truth_check"] = [float(max(
            abs(coarse[v] - data["test"][v]).max() / data["test"][v].std() for v in swda.VARS))]
    envar_val = (envar_choice(val, models["sinr"], zstd["sinr"], alpha["sinr"], cfg, scorer, swda)
                 if envar else None)
    for i in range(data["test"].sizes["trajectory"]):
        case = swda.trajectory_case(data["test"], i, cfg, scorer, seed=100 + i,
                                    n_points=cfg["n_points"], interpolation=interp)
        if fine is not None and i < cfg["envar"]["trajectories"]:
            per.update({k: [*per.get(k, []), v]
                        for k, v in envar_case(case, i, fine, models["sinr"], zstd["sinr"],
                                               alpha["sinr"], cfg, scorer, swda,
                                               envar_val["chosen"]).items()})
        for name, m in models.items():
            res, sec = swda.latent_cycle(case, m, zstd[name], alpha[name], cfg, seed=i)
            per.setdefault(f"enkf_{name}", []).append(swda.analysis_rmse(res, case, scorer))
            per.setdefault(f"enkf_{name}_s", []).append(sec)
            # the library's default ensemble size (d + 1: the ensemble spans the latent)
            res_d, sec_d = swda.latent_cycle(case, m, zstd[name], alpha[name],
                                             dict(cfg, members=None), seed=i)
            per.setdefault(f"enkfd_{name}", []).append(swda.analysis_rmse(res_d, case, scorer))
            per.setdefault(f"enkfd_{name}_s", []).append(sec_d)
            per.setdefault(f"members_{name}", []).append(res_d.analysis.sizes["member"])
            # N = 32 with the climatological prior blended in (xlatda.methods.hybrid)
            res_h, sec_h = swda.latent_cycle(case, m, zstd[name], alpha[name], cfg,
                                             method="hybrid", seed=i)
            per.setdefault(f"hybrid_{name}", []).append(swda.analysis_rmse(res_h, case, scorer))
            per.setdefault(f"hybrid_{name}_s", []).append(sec_h)
            per.setdefault(f"free_{name}", []).append(swda.free_run(case, m, scorer))
            # the observations alone, each time: MAP code under the latent prior, no dynamics
            z_obs = xlatda.encode_obs(case["obs"], m, prior=True)
            per.setdefault(f"map_{name}", []).append(
                scorer.rmse(xlatda.decode(z_obs, m), case["truth"]))
            z = xlatda.encode(case["truth"][swda.VARS], m)
            floor = scorer.rmse(xlatda.decode(z, m), case["truth"])
            per.setdefault(f"floor_{name}", []).append(floor)
    mean = {k: float(np.mean(v)) for k, v in per.items()}
    return {"mean": mean, "per": per, "alpha": alpha, "cfg": cfg, "val_rmse": val_rmse,
            "envar_val": envar_val,
            "fit_s": fit_s, "chosen": best,
            "n_obs": 2 * cfg["n_points"], "trajectories": data["test"].sizes["trajectory"],
            "members": ", ".join(str(n) for n in sorted(
                {int(v) for k, vs in per.items() if k.startswith("members_") for v in vs})),
            "wall_s": time.perf_counter() - t0}


def da_markdown(da: dict[str, Any]) -> list[str]:
    m = da["mean"]
    lines = [
        "## (c) Latent EnKF on shallow water (LAINR's setting, laptop scale)", "",
        f"Data, ODE and cycling of bench_sw_latent_da.py: 32 x 64 Galewsky jets, "
        f"{da['n_obs']} scattered observations (height and vorticity) per analysis, "
        f"sigma_o = 0.1 normalised, N = 32, inflation 1.05, latent 128, the same neural ODE "
        f"(width 256, depth 2) for both encoders; SINR = preset 'cpu' variant "
        f"'{da['chosen']}' chosen on the validation trajectory (validation analysis RMSE per "
        f"variant and initial spread alpha: {da['val_rmse']}); initial spread chosen "
        f"on the validation trajectory ({da['alpha']}); {da['trajectories']} held-out "
        f"trajectories. Encoding floor = RMSE of decode(encode(truth)); obs-only MAP = "
        f"RMSE of decode(encode_obs(obs, prior=True)) at each analysis time (the "
        f"observations of that time and the latent prior, no dynamics). Wall "
        f"{da['wall_s']:.0f} s; fits {da['fit_s']}.", "",
        f"Observations read the truth by {cfg_interp(da)} interpolation. The default-N "
        "column repeats the cycle with the library's default ensemble size for a latent "
        f"model ({da['members']} members: d + 1, the ensemble spans the latent space), "
        "the same initial spread. The hybrid column is method='hybrid' (xlatda.methods.hybrid: "
        "the ensemble covariance blended with the model's latent prior, default beta, chosen "
        "on the validation trajectory) at N = 32 and the same inflation.", "",
        "| encoder | EnKF RMSE (N = 32) | EnKF / free | hybrid (N = 32) | EnKF RMSE (default N) "
        "| free run | encoding floor | obs-only MAP | cycle (s), N = 32 / hybrid / default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("sinr", "autoencoder"):
        lines.append(f"| {name} + ODE | {m[f'enkf_{name}']:.4f} "
                     f"| {m[f'enkf_{name}'] / m[f'free_{name}']:.3f} | {m[f'hybrid_{name}']:.4f} "
                     f"| {m[f'enkfd_{name}']:.4f} "
                     f"| {m[f'free_{name}']:.4f} | {m[f'floor_{name}']:.4f} "
                     f"| {m[f'map_{name}']:.4f} | {m[f'enkf_{name}_s']:.1f} / "
                     f"{m[f'hybrid_{name}_s']:.1f} / {m[f'enkfd_{name}_s']:.1f} |")
    for tag, key in (("N = 32", "enkf"), ("hybrid, N = 32", "hybrid"),
                     ("default N", "enkfd")):
        s, a = m[f"{key}_sinr"], m[f"{key}_autoencoder"]
        lines += [f"- {tag}: SINR <= AE: {s <= a} ({s:.4f} vs {a:.4f}); SINR <= 0.5 x free "
                  f"run: {s <= 0.5 * m['free_sinr']} (ratio {s / m['free_sinr']:.3f})"]
    return [*lines, ""]


def cfg_interp(da: dict[str, Any]) -> str:
    return da["cfg"].get("interpolation", "bilinear")


def _envar_latent(case, model, zstd, alpha, cfg, members, options, seed):
    """Latent 4DEnVar cycle of (d): part c's settings, ``members``, extra kernel ``options``."""
    import xlatda

    e = cfg["envar"]
    t0 = time.perf_counter()
    res = xlatda.cycle(case["bg"][["height", "vorticity"]], case["obs"], model,
                       method="4denvar", members=members, init_std=alpha * zstd,
                       window=e["window"], seed=seed, progress=False,
                       inflation=cfg["inflation"], iterations=e["iterations"], **options)
    return res, time.perf_counter() - t0


def envar_choice(val, model, zstd, alpha, cfg, scorer, swda) -> dict[str, Any]:
    """(d)'s latent 4DEnVar configuration per ensemble size, chosen on the validation trajectory.

    Candidates ``cfg["envar"]["candidates"]``; N = 32 and the default (d + 1).
    Returns the validation RMSE and seconds of each, and the choice per size.
    """
    import warnings

    from xlatda.errors import SmallEnsembleWarning

    out: dict[str, Any] = {"rmse": {}, "s": {}, "chosen": {}}
    for size, members in (("32", cfg["members"]), ("default", None)):
        rm, sec = {}, {}
        for label, options in cfg["envar"]["candidates"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SmallEnsembleWarning)
                res, sec[label] = _envar_latent(val, model, zstd, alpha, cfg, members,
                                                options, seed=0)
            rm[label] = swda.analysis_rmse(res, val, scorer)
        best = min(rm, key=rm.get)
        out["rmse"][size], out["s"][size] = rm, sec
        out["chosen"][size] = (best, dict(cfg["envar"]["candidates"])[best])
    return out


def envar_case(case, i, fine, model, zstd, alpha, cfg, scorer, swda,
               chosen: dict[str, tuple[str, dict]] | None = None) -> dict[str, float]:
    """(d) on one test trajectory: latent (SINR + ODE) vs full-state T42 4DEnVar.

    Latent: the pure ensemble 4DEnVar at N = 32 and the default N (as in round 4), and
    the configurations ``chosen`` on the validation trajectory (:func:`envar_choice`).
    """
    from xlatda.dynamics.shallow_water import ShallowWater

    e = cfg["envar"]
    settings = dict(cfg, envar={"window": e["window"], "iterations": e["iterations"]})
    res, sec_l = swda.latent_cycle(case, model, zstd, alpha, settings, method="4denvar",
                                   window=e["window"], seed=i)
    res_d, sec_d = swda.latent_cycle(case, model, zstd, alpha, dict(settings, members=None),
                                     method="4denvar", window=e["window"], seed=i)
    extra: dict[str, float] = {}
    for size, members in (("32", cfg["members"]), ("default", None)):
        if chosen is None:
            break
        res_c, sec_c = _envar_latent(case, model, zstd, alpha, cfg, members,
                                     chosen[size][1], seed=i)
        extra[f"envar_chosen_{size}"] = swda.analysis_rmse(res_c, case, scorer)
        extra[f"envar_chosen_{size}_s"] = sec_c
    truth_f = fine["test"].isel(trajectory=i, drop=True)
    bg = truth_f.isel(time=slice(0, 1)).assign_coords(time=case["bg"].time.values)
    bg["time"].attrs = dict(truth_f.time.attrs)
    res_p, sec_p = swda.physical_cycle(case, fine["train"], e["physical_alpha"], settings,
                                       seed=i, model=ShallowWater(64, 128), background=bg)
    mean_p = swda.truncate_to(res_p.analysis.mean("member")[swda.VARS], case["truth"])
    return {"envar_analyses": float(np.unique(case["obs"].time.values).size),
            "envar_latent": swda.analysis_rmse(res, case, scorer), "envar_latent_s": sec_l,
            "envar_latent_default": swda.analysis_rmse(res_d, case, scorer),
            "envar_latent_default_s": sec_d,
            "envar_t42": scorer.rmse(mean_p, case["truth"]), "envar_t42_s": sec_p, **extra}


def envar_markdown(da: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    m, e = da["mean"], cfg["envar"]
    speed = m["envar_t42_s"] / m["envar_latent_s"]
    lines = [
        "## (d) Latent 4DEnVar vs full-state 4DEnVar at the truth's resolution", "",
        f"Same test trajectories and observations as (c) ({da['n_obs']} per analysis, "
        f"sigma_o = 0.1); window {e['window']}, {e['iterations']} Gauss-Newton iterations, "
        f"N = {cfg['members']}, inflation {cfg['inflation']} for both. Latent: the SINR + ODE "
        "model chosen in (c), initial spread as chosen there. Full state: the truth's own "
        "model, ShallowWater T42 on 64 x 128 (no model error), background = the 64 x 128 "
        "truth 12 h earlier, initial ensemble = background + "
        f"{e['physical_alpha']} x 32 centred climatological anomalies of 64 x 128 training "
        "states (alpha fixed, not tuned); its analysis mean is truncated to 32 x 64 the way "
        "the data set truncates the truth (largest difference between the truncated fine "
        f"truth and the coarse truth: {m['fine_truth_check']:.1e} of a channel std) and "
        f"scored like the latent analysis. {len(da['per']['envar_t42'])} test trajectory(ies); "
        f"times: wall seconds per trajectory ({m['envar_analyses']:.0f} analyses), one CPU "
        "thread (a shared 2-core machine: times are noisy, the ratio less so).", "",
        "| method | RMSE | seconds |", "|---|---|---|",
        f"| latent 4DEnVar, SINR + ODE | {m['envar_latent']:.4f} | {m['envar_latent_s']:.2f} |",
        f"| latent 4DEnVar, SINR + ODE, default N ({da['members']}) "
        f"| {m['envar_latent_default']:.4f} | {m['envar_latent_default_s']:.2f} |",
    ]
    ev = da.get("envar_val")
    if ev is not None and "envar_chosen_32" in m:
        for size, tag in (("32", f"N = {cfg['members']}"),
                          ("default", f"default N ({da['members']})")):
            label = ev["chosen"][size][0]
            lines.append(f"| latent 4DEnVar, SINR + ODE, {tag}, chosen on validation: {label} "
                         f"| {m[f'envar_chosen_{size}']:.4f} | {m[f'envar_chosen_{size}_s']:.2f} |")
    lines += [
        f"| full-state 4DEnVar, T42 64 x 128 | {m['envar_t42']:.4f} | {m['envar_t42_s']:.1f} |",
        "",
        f"- speed-up >= 20x: {speed >= 20} ({speed:.0f}x)",
        f"- latent RMSE no worse than full state: {m['envar_latent'] <= m['envar_t42']} "
        f"({m['envar_latent']:.4f} vs {m['envar_t42']:.4f}); at the default N: "
        f"{m['envar_latent_default'] <= m['envar_t42']} ({m['envar_latent_default']:.4f}, "
        f"{m['envar_t42_s'] / m['envar_latent_default_s']:.0f}x faster)",
    ]
    if ev is not None and "envar_chosen_32" in m:
        for size in ("32", "default"):
            r, t = m[f"envar_chosen_{size}"], m[f"envar_chosen_{size}_s"]
            lines.append(f"- chosen on validation, {'N = 32' if size == '32' else 'default N'} "
                         f"({ev['chosen'][size][0]}): no worse than full state: "
                         f"{r <= m['envar_t42']} ({r:.4f} vs {m['envar_t42']:.4f}), "
                         f"{m['envar_t42_s'] / t:.0f}x faster")
        names = list(ev["rmse"]["32"])
        lines += ["", "Validation trajectory (part c's, seed 77 observations; never a test one), "
                  "latent 4DEnVar analysis RMSE (seconds) per configuration: 'ensemble' = the "
                  "pure ensemble method (a model with Q: weak-constraint windows), 'strong' = "
                  "model_error='ignore', 'hybrid beta' = the static latent prior in the control "
                  "variable (xlatda.methods.envar4d, strong-constraint windows).", "",
                  "| N | " + " | ".join(names) + " | chosen |",
                  "|---|" + "---|" * (len(names) + 1)]
        for size in ("32", "default"):
            cells = [f"{ev['rmse'][size][k]:.4f} ({ev['s'][size][k]:.1f})" for k in names]
            lines.append(f"| {size} | " + " | ".join(cells) + f" | {ev['chosen'][size][0]} |")
    return [*lines, ""]


# ---------------------------------------------------------------- report
def write_markdown(sw: dict | None, era: dict | None, path: Path, mode: str, wall: float,
                   da: dict | None = None) -> str:
    lines = [
        "# SINR benchmark (bench_sinr.py)", "",
        f"Mode: {mode}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}. Whole run: {wall:.0f} s. "
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
    ]
    if sw is not None:
        lines += _sw_markdown(sw)
    lines += _era_markdown(era) if era is not None else []
    lines += da_markdown(da) if da is not None else []
    if da is not None and "envar_t42" in da["mean"]:
        lines += envar_markdown(da, da["cfg"])
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _sw_markdown(sw: dict) -> list[str]:
    lines = [
        f"## (a) Encode speed, shallow water 32 x 64, latent {sw['latent']}",
        "",
        f"SINR preset 'cpu_linear' ({SINR_PRESETS['cpu']['hidden']} hidden, depth "
        f"{SINR_PRESETS['cpu']['depth']}, F {SINR_PRESETS['cpu']['max_freq']}), "
        f"trained {sw['epochs']} epochs on {sw['train']} fields in {sw['fit_s']:.0f} s; "
        f"{sw['test']} held-out fields (other trajectories). RMSE in training-standardised "
        f"units, cos(lat) weighted. The affine map of the grid (computed once per set of "
        f"weights, then cached) took {sw['affine_s']:.2f} s.", "",
        "| encoder | samples | RMSE | encode (samples/s) |", "|---|---|---|---|",
    ]
    for r in sw["rows"]:
        per = "-" if r["per_s"] != r["per_s"] else f"{r['per_s']:.4g}"
        lines.append(f"| {r['method']} | {r['samples']} | {r['rmse']:.4f} | {per} |")
    solve, adam, same = sw["rows"]
    lines += ["", f"- target >= 100 samples/s: {solve['per_s'] >= 100} "
              f"({solve['per_s']:.0f} samples/s, {solve['per_s'] / adam['per_s']:.0f}x adam)",
              f"- no worse RMSE than adam (same samples): {same['rmse'] <= adam['rmse'] + 1e-9} "
              f"({same['rmse']:.4f} vs {adam['rmse']:.4f})", ""]
    return lines


def _era_markdown(era: dict) -> list[str]:
    sz = era["sizes"]
    lines = [
        "## (b) ERA5 t2m, UK box 33 x 49, held-out reconstruction", "",
        f"Train days 1-14 ({sz['train']} hourly fields), validation days 15-24 "
        f"({sz['val']}), held out days 25-31 ({sz['test']}). RMSE in K (cos(lat) weighted; "
        f"training std {era['std']:.2f} K). SINR preset 'cpu_linear' with the options listed. "
        "Linear path: degree of the spherical-harmonic path started at the training PCA "
        "('none' = LAINR's decoder alone); 'projection fit' = round 3's PCA of the fields' "
        "harmonic projection, 'grid fit' = the EOFs of the grid values (shrunk towards the "
        "path's Sobolev prior by the factor 'prior'), written in the harmonics as the prior's "
        "interpolant (`linear_fit='grid'`); its stretch, prior and smoothness s are chosen "
        "among the PCA starts listed below by their validation RMSE, then the network residual "
        "is trained from that start. The weights of the best validation epoch are kept (the "
        "PCA start counts as epoch 0); the boxed SINR (region='auto') is chosen "
        "on the validation days only; region=None (raw spherical coordinates) is shown for "
        "comparison, not chosen from. The AE stops early on the validation days.", "",
        "| method | latent | val RMSE (K) | held-out RMSE (K) | fit (s) | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in era["rows"]:
        lines.append(f"| {r['method']} | {r['latent']} | {r['val']:.3f} | {r['test']:.3f} "
                     f"| {r['fit_s']:.1f} | {r['note']} |")
    lines += ["", "Targets (held out, SINR chosen on val vs PCA at the same latent):"]
    for k in era["choices"]:
        pca = next(r for r in era["rows"] if r["method"] == "PCA" and r["latent"] == k)
        sinr = next(r for r in era["rows"] if r["latent"] == k and "chosen" in r["note"])
        lines.append(f"- latent {k}: SINR <= PCA: {sinr['test'] <= pca['test']} "
                     f"({sinr['test']:.3f} K vs {pca['test']:.3f} K)")
    lines += ["", "How the spherical basis handles the limited-area box: see the module "
              "docstring; region='auto' stretches the 8 x 12 degree box by a factor 15 "
              "onto the sphere before the harmonics are evaluated (conformally, or "
              "latitude and longitude separately onto [-60, 60] x [-90, 90] with "
              "region_stretch='box').", ""]
    for k, table in era.get("starts", {}).items():
        starts, ref = table["rows"], table["coarse_pca"]
        lines += [f"Grid-fit PCA starts at latent {k} (no training; validation days only). "
                  "'between': the same start fitted on every other row and column, decoded "
                  "at the dropped points (mesh-free), RMSE there; eligible if no worse than "
                  f"that PCA with bilinear blending ({ref:.4f} K). The eligible start of "
                  "lowest val RMSE is trained above.", "",
                  "| stretch | degree | s | prior | val RMSE (K) | between (K) | init (s) |",
                  "|---|---|---|---|---|---|---|"]
        ok = [r for r in starts if r["between"] <= ref] or starts
        best = min(r["val"] for r in ok)
        for r in starts:
            o = r["opts"]
            mark = " **chosen**" if r in ok and r["val"] == best else ""
            lines.append(f"| {o['region_stretch']} | {r['degree']} | {o['linear_smoothness']:g} "
                         f"| {o['linear_prior']:g} | {r['val']:.4f}{mark} | {r['between']:.4f} "
                         f"| {r['init_s']:.1f} |")
        lines.append("")
    return lines


def main(quick: bool = False, out: Path = OUT, data: Path = DATA,
         parts: tuple[str, ...] = ("a", "b", "c", "d")) -> str:
    """Run the chosen parts; write the markdown table to ``out``; return it."""
    settings = QUICK if quick else FULL
    era5 = Path(data) / ERA5_FILE
    if "b" in parts and not era5.exists():
        print(f"missing {era5}: part (b) skipped (pass --data pointing at the shared data)")
    t0 = time.perf_counter()
    sw = shallow_water_part(settings["sw"]) if "a" in parts else None
    era = era5_part(settings["era5"], era5) if "b" in parts and era5.exists() else None
    if "d" in parts and "c" not in parts:
        raise SystemExit("part d needs part c's models: pass --parts c d")
    da = (latent_da_part(QUICK_DA if quick else DA, envar="d" in parts)
          if "c" in parts else None)
    wall = time.perf_counter() - t0
    if da is not None:  # the raw figures, kept should the table fail to render
        Path(out).with_suffix(".json").write_text(
            json.dumps({k: da.get(k) for k in ("mean", "per", "alpha", "val_rmse", "fit_s",
                                               "chosen", "envar_val")}, indent=1, default=str))
    return write_markdown(sw, era, out, "quick" if quick else "full", wall, da)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--parts", nargs="*", default=["a", "b", "c", "d"],
                        help="which parts to run (default all: a b c d)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or (OUT.with_name("sinr_quick.md") if args.quick else OUT)
    print(main(args.quick, out, args.data, tuple(args.parts)))
