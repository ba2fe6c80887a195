r"""Benchmark: explicit H∘D guidance vs latent conditioning of ``method="score"`` (issue 18).

The same shallow-water cases, the same multimodal latent model and the same
score prior, assimilated two ways through the public path
(:func:`xlatda.cycle`, ``method="score"``):

* ``explicit``: the observations through ``H o D`` (the decoder at the
  observation points) in the guidance, the default;
* ``latent`` (SLAMS' fusion): each observation time's image
  (:func:`xlatda.obs.rasterize` binning) coded by the multimodal encoder with
  the state channels zero, and the linear-Gaussian latent likelihood fitted on
  held-out pairs (:func:`xlatda.fit_latent_obs`).

Data: Galewsky-jet trajectories (:func:`xlatda.datasets.shallow_water`, 32 x
64, hourly, 72 h spin-up, height and vorticity): training (seed 0),
calibration pairs for the latent likelihood (seed 3), validation (seed 1: the
guidance ``gamma`` of each conditioning and design is chosen there, by CRPS)
and test (seed 2) trajectories. Observation designs: ``r x r`` block means
(``xlatda.obs.coarsen``, r = 4, 8, 16, footprint observations whose operator
averages the block) and stations on
every 4th grid point (``xlatda.obs.sparsify``, g = 4), errors 0.1 training
std per variable, every hour of each window of 5 states. The autoencoder is
trained once (on a PCA base, ``pca_base=True``) with ``aux=`` images of a
design drawn at random per training state (all four designs) and
``state_dropout=0.5``; the latent likelihood is fitted per design. Scores
over the test windows, in units of the training std, over height and
vorticity: RMSE of the ensemble mean, spread/skill (spread / RMSE x
sqrt((N+1)/N)), fair CRPS.

Run ``python benchmarks/bench_score_fusion.py [--full]``; the table goes to
``benchmarks/out/score_fusion.md``.

References
----------
Qu, Nathaniel, Li, Gentine (2024), SLAMS, CVPR workshops.
Rozet and Louppe (2023), Score-based data assimilation, NeurIPS.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import xlatda

OUT = Path(__file__).resolve().parent / "out"
VARS = ("height", "vorticity")

CONFIGS: dict[str, dict[str, Any]] = {
    "quick": {"train_traj": 8, "calib_traj": 3, "val_traj": 2, "test_traj": 2, "hours": 48,
              "latent": 32, "ae_channels": (8, 16, 16), "ae_epochs": 40, "score_epochs": 300,
              "members": 8, "steps": 32,
              "window": 5, "val_starts": (8, 18, 28, 38), "test_starts": (8, 18, 28, 38),
              "gammas": (1e-2, 1e-1, 1.0, 10.0), "designs": ("r4", "r8", "r16", "stations")},
    "full": {"train_traj": 16, "calib_traj": 6, "val_traj": 2, "test_traj": 4, "hours": 72,
             "latent": 48, "ae_channels": (16, 32, 32), "ae_epochs": 80, "score_epochs": 400,
             "members": 16, "steps": 64,
             "window": 5, "val_starts": (8, 28, 48), "test_starts": (8, 28, 48),
             "gammas": (1e-2, 1e-1, 1.0, 10.0), "designs": ("r4", "r8", "r16", "stations")},
}


def _log(msg: str) -> None:
    print(f"[score_fusion {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _data(n: int, hours: int, seed: int) -> xr.Dataset:
    return xlatda.datasets.shallow_water(nlat=32, nlon=64, hours=hours, trajectories=n,
                                         seed=seed, spinup_hours=72, variables=VARS,
                                         progress=False)


def _observe(truth: xr.Dataset, design: str, err: dict[str, float], seed: int) -> xr.Dataset:
    """One trajectory's observations (truth with a time axis, no trajectory dim)."""
    if design == "stations":
        return xlatda.obs.sparsify(truth, 4, err, seed=seed)
    return xlatda.obs.coarsen(truth, int(design[1:]), err, seed=seed)


def _trajs(ds: xr.Dataset) -> list[xr.Dataset]:
    return [ds.isel(trajectory=i, drop=True) for i in range(ds.sizes["trajectory"])]


def _mixed_aux(train: xr.Dataset, designs, err, seed: int) -> xr.Dataset:
    """Training images: per training state, the image of one design drawn at random."""
    rng = np.random.default_rng(seed)
    out = []
    for i, tr in enumerate(_trajs(train)):
        imgs = [xlatda.obs.rasterize(_observe(tr, d, err, seed + 97 * i + j), tr)
                for j, d in enumerate(designs)]
        pick = rng.integers(0, len(designs), tr.sizes["time"])
        sel = xr.DataArray(pick, dims=["time"], coords={"time": tr.time})
        stacked = xr.concat(imgs, dim="design")
        out.append(stacked.isel(design=sel).drop_vars("design", errors="ignore"))
    return xr.concat(out, dim="trajectory").assign_coords(trajectory=train.trajectory)


def _stats(ana: xr.Dataset, truth: xr.Dataset, std: dict[str, float]) -> dict[str, torch.Tensor]:
    """Ensemble ``(N, V)`` and truth ``(V,)`` values in training-std units."""
    ens = torch.cat([torch.as_tensor(ana[v].transpose("member", ...).values, dtype=torch.float64)
                     .flatten(1) / std[v] for v in VARS], 1)
    tru = torch.cat([torch.as_tensor(truth[v].values, dtype=torch.float64).flatten() / std[v]
                     for v in VARS])
    return {"ens": ens, "truth": tru}


def _scores(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    ens = torch.cat([p["ens"] for p in parts], 1)
    tru = torch.cat([p["truth"] for p in parts])
    n = ens.shape[0]
    mean = ens.mean(0)
    rmse = float((mean - tru).square().mean().sqrt())
    spread = float(ens.var(0).mean().sqrt())
    srt = ens.sort(0).values
    k = torch.arange(n, dtype=torch.float64)[:, None]
    pair = 2.0 * ((2.0 * k - n + 1.0) * srt).sum(0) / (n * (n - 1))
    crps = float(((ens - tru).abs().mean(0) - 0.5 * pair).mean())  # fair CRPS (Ferro 2014)
    return {"rmse": rmse, "spread": spread, "ssr": spread / rmse * math.sqrt((n + 1) / n),
            "crps": crps}


def _calibration(parts: list[dict[str, torch.Tensor]], boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Spread/skill with a bootstrap interval over windows, its representable part, and
    the rank histogram.

    *ssr_lo/ssr_hi*: 5-95 % of the SSR over ``boot`` resamplings of the windows (with
    replacement; the elements of a window are strongly dependent, so the window is the
    unit). *ssr_rep*: spread over the RMSE of the mean against ``D(E(truth))``, the
    truth's own code decoded (the part of the error an ensemble of decoded latents can
    represent). *rep_floor*: RMSE of ``D(E(truth))``. *outer*: fraction of the truth's
    ranks among the members in the two outer bins (``2/(N+1)`` if calibrated); *ranks*:
    the histogram, as fractions.
    """
    n = parts[0]["ens"].shape[0]
    sse = torch.stack([(p["ens"].mean(0) - p["truth"]).square().sum() for p in parts])
    svar = torch.stack([p["ens"].var(0).sum() for p in parts])
    cnt = torch.tensor([float(p["truth"].numel()) for p in parts], dtype=torch.float64)
    fac = math.sqrt((n + 1) / n)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(parts), (boot, len(parts)), generator=g)
    ssr_b = (svar[idx].sum(1) / sse[idx].sum(1)).sqrt() * fac
    lo, hi = torch.quantile(ssr_b, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    out: dict[str, Any] = {"ssr_lo": lo, "ssr_hi": hi, "windows": len(parts)}
    if all("proj" in p for p in parts):
        sse_p = sum(float((p["ens"].mean(0) - p["proj"]).square().sum()) for p in parts)
        rep = sum(float((p["proj"] - p["truth"]).square().sum()) for p in parts)
        out["ssr_rep"] = math.sqrt(float(svar.sum()) / sse_p) * fac
        out["rep_floor"] = math.sqrt(rep / float(cnt.sum()))
    ranks = torch.cat([(p["ens"] < p["truth"]).sum(0) for p in parts])
    hist = torch.bincount(ranks, minlength=n + 1).to(torch.float64) / ranks.numel()
    out["outer"] = float(hist[0] + hist[-1])
    out["ranks"] = [round(float(h), 3) for h in hist]
    return out


#: Settings of each conditioning beyond ``gamma``: "tweedie" is explicit H∘D with the
#: Tweedie-covariance guidance (conjugate gradients) on the log-SNR time grid.
COND_SETTINGS: dict[str, dict[str, Any]] = {
    "explicit": {"conditioning": "explicit"},
    "latent": {"conditioning": "latent"},
    "tweedie": {"conditioning": "explicit", "cg_iters": 8, "grid": "logsnr"},
    "explicit_rep": {"conditioning": "explicit", "representation_error": True},
    "tweedie_rep": {"conditioning": "explicit", "cg_iters": 8, "grid": "logsnr",
                    "representation_error": True},
    # the factor on Σ_rep estimated per window from the members' residuals to the
    # window's own observations (one update, a second analysis with it)
    "explicit_rep_ad": {"conditioning": "explicit", "representation_error": True,
                        "representation_scale": "adaptive"},
    # the two-part model (modes + smooth isotropic part), both factors estimated per
    # window jointly; "f": with a floor of 1 on the modes' factor
    "explicit_rep_2p": {"conditioning": "explicit", "representation_error": True,
                        "representation_scale": "two_part"},
    "explicit_rep_2pf": {"conditioning": "explicit", "representation_error": True,
                         "representation_scale": "two_part", "representation_floor": 1.0},
}
#: Conditionings whose analyses are also scored as predictive samples D(z) + ε
#: (``xlatda.predictive_samples``, conditioned on the observations), and the variants:
#: the error model as fitted ("pred"), scaled per window by the misfit to the window's
#: own observations ("pred_ad", ``scale="adaptive"``), and, for analyses made with
#: ``representation_scale="adaptive"``, the factor the analysis itself estimated and used
#: in its likelihood ("pred_an", from ``CycleResult.diagnostics.representation_scale``).
PREDICTIVE = ("explicit", "explicit_rep", "tweedie", "tweedie_rep", "explicit_rep_ad",
              "explicit_rep_2p", "explicit_rep_2pf")
#: "pred_2p": the two-part model, both factors estimated per window on all the members'
#: residuals (``scale="two_part"``); for two-part analyses "pred_an" is the pair of factors
#: the analysis estimated.
PRED_VARIANTS: dict[str, dict[str, Any]] = {"pred": {}, "pred_ad": {"scale": "adaptive"},
                                            "pred_an": {"scale": "analysis"},
                                            "pred_2p": {"scale": "two_part"}}


def spread_starts(n: int, starts: tuple[int, ...]) -> list[tuple[int, ...]]:
    """One window's first hour per trajectory for ``n`` trajectories, ``starts`` in turn."""
    return [(starts[i % len(starts)],) for i in range(int(n))]


def window_list(trajs: list, starts) -> list[tuple[int, Any, int]]:
    """The windows ``(trajectory index, trajectory, first hour)`` in the order they are
    run: every start on every trajectory for a tuple of starts, each trajectory's own
    starts for a list of tuples (:func:`spread_starts`)."""
    if isinstance(starts, list):
        if len(starts) != len(trajs):
            raise ValueError(f"{len(starts)} lists of starts for {len(trajs)} trajectories")
        return [(i, tr, s) for i, tr in enumerate(trajs) for s in starts[i]]
    return [(i, tr, s) for i, tr in enumerate(trajs) for s in starts]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"4-11"`` or ``"4,5,9"`` as a tuple of ints."""
    if "-" in text:
        a, b = (int(v) for v in text.split("-"))
        return tuple(range(a, b + 1))
    return tuple(int(v) for v in text.split(","))


def _run(model, lo, trajs, starts, design, cond, gamma, err, cfg, seed,
         calib: bool = False, corrections: int = 1) -> tuple[dict, float]:
    """Scores of the decoded analyses (and, for :data:`PREDICTIVE`, ``out["pred"]`` of
    the predictive samples of the same analyses)."""
    parts, priors, secs, scales, scales2 = [], [], 0.0, [], []
    preds: dict[str, list] = {k: [] for k in PRED_VARIANTS}
    w = cfg["window"]
    for i, tr, s in window_list(trajs, starts):
        truth = tr.isel(time=slice(s, s + w))
        obs = _observe(truth, design, err, seed + 1000 * i + s)
        kw = dict(COND_SETTINGS[cond]) | ({"latent_obs": lo} if cond == "latent" else {})
        t0 = time.perf_counter()
        res = xlatda.cycle(None, obs, model, method="score", members=cfg["members"],
                           window=w, steps=cfg["steps"], gamma=gamma, seed=seed + s,
                           corrections=corrections,
                           progress=False, **kw)
        secs += time.perf_counter() - t0
        if "representation_scale" in res.diagnostics:
            scales.append(float(res.diagnostics.representation_scale.mean()))
        if "representation_scale_smooth" in res.diagnostics:
            scales2.append(float(res.diagnostics.representation_scale_smooth.mean()))
        part = _stats(res.analysis, truth, cfg["std"])
        if cond in PREDICTIVE:
            for k, kw_p in PRED_VARIANTS.items():
                if kw_p.get("scale") == "analysis":
                    if "representation_scale" not in res.diagnostics:
                        continue
                    kw_p = {"scale": float(res.diagnostics.representation_scale.mean())}
                    if "representation_scale_smooth" in res.diagnostics:
                        kw_p = {"scale": (kw_p["scale"], float(
                            res.diagnostics.representation_scale_smooth.mean()))}
                pred = xlatda.predictive_samples(res.analysis, obs, model, seed=seed + s,
                                                 **kw_p)
                preds[k].append(_stats(pred, truth, cfg["std"]))
        if calib:  # the truth's own code, decoded: what the latent space can represent
            back = xlatda.decode(xlatda.encode(truth, model), model)
            back = back[list(VARS)].transpose(*truth[VARS[0]].dims)
            part["proj"] = _stats(back.expand_dims(member=[0]), truth, cfg["std"])["ens"][0]
        parts.append(part)
        priors.append(_stats(res.background, truth, cfg["std"]))
    out = _scores(parts)
    out["prior_rmse"] = _scores(priors)["rmse"]  # unconditioned draws of the same prior
    if scales:  # the factor on Σ_rep each window's analysis estimated
        out["rep_scale"] = float(np.mean(scales))
        out["rep_scales"] = [round(v, 2) for v in scales]
    if scales2:  # the two-part model's factor on its smooth part
        out["rep_scale2"] = float(np.mean(scales2))
        out["rep_scales2"] = [round(v, 2) for v in scales2]
    if calib:
        out |= _calibration(parts)
    if cond in PREDICTIVE:
        out["pred"] = {k: _scores(v) | (_calibration(v) if calib else {})
                       for k, v in preds.items() if v}
    return out, secs / len(parts)


def fit_models(train, cfg: dict[str, Any], err: dict[str, float],
               seed: int) -> tuple[Any, float, float]:
    """The multimodal autoencoder (PCA base, aux images of every design) and its
    score prior, with the seconds each took."""
    t0 = time.perf_counter()
    aux = _mixed_aux(train, cfg["designs"], err, seed + 11)
    model = xlatda.fit(train, encoder="autoencoder", latent_dim=cfg["latent"],
                       epochs=cfg["ae_epochs"], aux=aux, aux_dropout=0.0, seed=seed,
                       encoder_options={"channels": list(cfg["ae_channels"]),
                                        "pca_base": True, "state_dropout": 0.5},
                       progress=False)
    t_ae = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = xlatda.fit_score(train, model, window=cfg["window"], epochs=cfg["score_epochs"],
                             hidden=256, depth=3, seed=seed, progress=False)
    return model, t_ae, time.perf_counter() - t0


def main(quick: bool = True, threads: int | None = 1, seed: int = 0,
         conds: tuple[str, ...] = ("explicit", "latent", "tweedie", "explicit_rep",
                                   "tweedie_rep"),
         test_starts: tuple[int, ...] | None = None, select: dict[str, str] | None = None,
         out: str | None = None, designs: tuple[str, ...] | None = None,
         gamma_from: str | None = None, rep_pool: tuple[int, ...] | None = None,
         val_spread: int | None = None,
         test_spread: int | None = None) -> list[dict[str, Any]]:
    """Run the benchmark. ``test_starts``: the test windows' first hours (default the
    mode's); ``select``: ``{conditioning: variant}``, choose one gamma per design for that
    conditioning by the validation CRPS of that predictive variant (``"pred"``,
    ``"pred_ad"``) and score every output of the row at it (one test run per row; the
    conditionings not named: each output at its own gamma); ``out``: the table's file
    name; ``designs``: a subset of the mode's designs; ``gamma_from``: a conditioning whose
    gamma (chosen on validation, per design) the other conditionings use, validated and
    tested at that gamma only. The validation windows start at the test windows' hours
    (on the validation trajectories, seed 1). ``rep_pool``: seeds whose trajectories (two
    each, of the training kind) are the held-out states of the representation-error
    model, instead of the calibration trajectories (seed 3; the latent likelihoods keep
    those); ``val_spread``: validation on that many trajectories of seed 1, one window
    each, the test windows' first hours in turn (instead of every start on
    ``val_traj`` trajectories): the same number of windows over more trajectories
    (score6: the off-manifold distance is a property of the trajectory, mostly of where
    its bump lies against the training bumps); ``test_spread``: also test on that many
    trajectories of seed 2, one window each (rows with ``set="test_spread"``; the test
    set of ``test_traj`` trajectories is run as before)."""
    cfg = dict(CONFIGS["quick" if quick else "full"])
    if test_starts:
        cfg["test_starts"] = tuple(int(v) for v in test_starts)
    cfg["val_starts"] = cfg["test_starts"]  # validation drawn as the test windows are
    # the designs run (the model is trained on images of all the mode's designs either way)
    cfg["run_designs"] = tuple(designs) if designs else cfg["designs"]
    cfg["gamma_from"] = gamma_from
    select = dict(select or {})
    cfg["select"] = select
    if threads:
        torch.set_num_threads(int(threads))
    t_all = time.perf_counter()
    train = _data(cfg["train_traj"], cfg["hours"], 0)
    calib = _trajs(_data(cfg["calib_traj"], cfg["hours"], 3))
    if val_spread:
        cfg["val_traj"] = int(val_spread)
        cfg["val_starts"] = spread_starts(cfg["val_traj"], cfg["test_starts"])
    cfg["rep_pool"] = tuple(rep_pool) if rep_pool else None
    val = _trajs(_data(cfg["val_traj"], cfg["hours"], 1))
    test = _trajs(_data(cfg["test_traj"], cfg["hours"], 2))
    std = {v: float(train[v].std()) for v in VARS}
    cfg["std"] = std
    err = {v: 0.1 * std[v] for v in VARS}
    _log(f"data {time.perf_counter() - t_all:.0f} s")

    model, t_ae, t_score = fit_models(train, cfg, err, seed)
    _log(f"autoencoder {t_ae:.0f} s, score prior {t_score:.0f} s")
    # the decoder's representation-error model, on the held-out calibration trajectories
    if cfg["rep_pool"]:
        held = xr.concat([_data(2, cfg["hours"], s) for s in cfg["rep_pool"]], dim="trajectory")
        held = held.assign_coords(trajectory=np.arange(held.sizes["trajectory"]))
    else:
        held = _data(cfg["calib_traj"], cfg["hours"], 3)
    model = xlatda.fit_representation_error(model, held, modes=cfg.get("rep_modes", 32))
    rep = model.history["representation_error"]
    _log(f"representation error: rmse {rep['rmse']}, phi {rep['time_correlation']:.3f}, "
         f"modes explain {rep['explained']:.2f}; smooth part: var {rep.get('smooth_var')}, "
         f"length {rep.get('smooth_length')}, phi {rep.get('smooth_phi')}, fit rms "
         f"{rep.get('smooth_fit_rms')}")
    # representation floor: test states through E then D (no observations)
    rec = []
    for tr in test:
        z = xlatda.encode(tr, model)
        back = xlatda.decode(z, model)
        rec.append(float(np.sqrt(np.mean([((back[v] - tr[v]) / std[v]).values ** 2
                                           for v in VARS]))))
    floor = float(np.sqrt(np.mean(np.square(rec))))

    t0 = time.perf_counter()
    los = {}
    for d in cfg["designs"]:
        obs = [_observe(tr, d, err, seed + 500 + i) for i, tr in enumerate(calib)]
        los[d] = xlatda.fit_latent_obs(model, calib, obs)
    t_lo = time.perf_counter() - t0
    _log(f"latent likelihoods {t_lo:.0f} s")

    val_rows, rows = [], []

    def report() -> None:
        res = {"cfg": cfg, "val": val_rows, "test": rows, "floor": floor, "t_ae": t_ae,
               "rep": {k: rep.get(k) for k in ("rmse", "time_correlation", "explained",
                                               "n_samples", "smooth_var", "smooth_length",
                                               "smooth_phi", "smooth_fit_rms")},
               "t_score": t_score, "t_lo": t_lo, "total": time.perf_counter() - t_all,
               "threads": torch.get_num_threads(), "quick": quick,
               "n_pairs": {d: lo.n_pairs for d, lo in los.items()}}
        write_report(res, out)

    test_sets = [("test", test, cfg["test_starts"])]
    if test_spread:  # a second test set: more trajectories, one window each
        cfg["test_spread"] = int(test_spread)
        test_sets.append(("test_spread", _trajs(_data(int(test_spread), cfg["hours"], 2)),
                          spread_starts(test_spread, cfg["test_starts"])))
    if gamma_from and gamma_from in conds:  # its gamma first: the others use it
        conds = (gamma_from, *[c for c in conds if c != gamma_from])
    for d in cfg["run_designs"]:
        chosen: dict[str, tuple] = {}
        for cond in conds:
            best = None
            # the Tweedie guidance has no gamma to choose (it only sets the CG
            # preconditioner: gamma 1, the variance sigma_t^2/mu_t^2 of x0 | x_t at low
            # noise); validation chooses its Langevin corrections (0 or 1) instead
            cands = ([(g, 1) for g in cfg["gammas"]] if not cond.startswith("tweedie")
                     else [(1.0, 0), (1.0, 1)])
            if gamma_from and cond != gamma_from and gamma_from in chosen:
                cands = [chosen[gamma_from]]
            best_pred: dict[str, tuple] = {}
            sc_val: dict[tuple, dict] = {}
            for g, c in cands:
                sc, _ = _run(model, los[d], val, cfg["val_starts"], d, cond, g, err, cfg,
                             seed + 7, corrections=c)
                sc_val[(g, c)] = sc
                val_rows.append({"design": d, "conditioning": cond, "gamma": g,
                                 "corrections": c,
                                 "val_rmse": sc["rmse"], "val_ssr": sc["ssr"],
                                 "val_crps": sc["crps"], "rep_scale": sc.get("rep_scale"),
                                 "rep_scale2": sc.get("rep_scale2")})
                for k, p in sc.get("pred", {}).items():
                    val_rows.append({"design": d, "conditioning": f"{cond}+{k}", "gamma": g,
                                     "corrections": c, "val_rmse": p["rmse"],
                                     "val_ssr": p["ssr"], "val_crps": p["crps"]})
                    if k not in best_pred or p["crps"] < best_pred[k][1]:
                        best_pred[k] = (g, p["crps"], c)
                crit = (sc["pred"][select[cond]]["crps"] if cond in select and "pred" in sc
                        else sc["crps"])
                if best is None or crit < best[1]:
                    best = (g, crit, c)
            chosen[cond] = (best[0], best[2])
            for tname, tset, tstarts in test_sets:
                sc, secs = _run(model, los[d], tset, tstarts, d, cond, best[0], err,
                                cfg, seed + 9, calib=True, corrections=best[2])
                pred_sc = sc.pop("pred", None)
                n_obs = int(_observe(test[0].isel(time=[0]), d, err, 0)[list(VARS)].to_array()
                            .notnull().sum())
                rows.append({"design": d, "set": tname, "obs_per_time": n_obs,
                             "conditioning": cond,
                             "gamma": best[0], "corrections": best[2], **sc,
                             "seconds_per_window": secs,
                             "explained": los[d].explained if cond == "latent" else None,
                             "val_rep_scale": next((v.get("rep_scale") for v in [sc_val.get(
                                 (best[0], best[2]), {})]), None),
                             "shrinkage": los[d].shrinkage if cond == "latent" else None})
                _log(f"{tname} {d} {cond}: gamma {best[0]} rmse {sc['rmse']:.3f} ssr "
                     f"{sc['ssr']:.2f} "
                     f"[{sc['ssr_lo']:.2f}, {sc['ssr_hi']:.2f}] ssr_rep {sc['ssr_rep']:.2f} "
                     f"outer {sc['outer']:.2f} crps {sc['crps']:.4f} ({secs:.1f} s/window)")
                # the predictive outputs, each at its own gamma (chosen on validation); a test
                # run is reused where the gamma is the same
                runs = {(best[0], best[2]): {**sc, "pred": pred_sc}}
                if cond in select:  # every output at the one gamma chosen
                    best_pred = {k: (best[0], None, best[2]) for k in best_pred}
                for k, (g, _, c) in best_pred.items():
                    if (g, c) not in runs:
                        runs[(g, c)] = _run(model, los[d], tset, tstarts, d, cond, g,
                                            err, cfg, seed + 9, calib=True, corrections=c)[0]
                    scp = runs[(g, c)]
                    p = scp["pred"][k]
                    rows.append({"design": d, "set": tname, "obs_per_time": None,
                                 "conditioning": f"{cond}+{k}",
                                 "gamma": g, "corrections": c, **p,
                                 "prior_rmse": scp["prior_rmse"]})
                    _log(f"{tname} {d} {cond}+{k}: gamma {g} rmse {p['rmse']:.3f} ssr "
                         f"{p['ssr']:.2f} [{p['ssr_lo']:.2f}, {p['ssr_hi']:.2f}] outer "
                         f"{p['outer']:.2f} crps {p['crps']:.4f}")
                # the table so far, after every row (a long run that is stopped keeps
                # what it finished)
            report()
    return rows


def _f(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(_f(r.get(k)) for k in keys) + " |" for r in rows]
    return out


def write_report(res: dict[str, Any], out: str | None = None) -> Path:
    cfg = res["cfg"]
    rows = res["test"]

    def ratio(cond, designs):
        v = [r["rmse"] for r in rows if r["conditioning"] == cond and r["design"] in designs
             and r.get("set", "test") == "test"]
        return max(v) / min(v) if v else float("nan")

    coarse = ("r4", "r8", "r16")
    # the second test set's rows are told apart by a column (only where there is one)
    set_col = ["set"] if cfg.get("test_spread") else []
    lines = [
        "# Score-based assimilation: explicit H∘D guidance vs latent conditioning (issue 18)",
        "",
        f"Mode **{'quick' if res['quick'] else 'full'}**; torch {torch.__version__}, "
        f"{platform.machine()}, {res['threads']} torch thread(s); total {res['total']:.0f} s "
        f"(autoencoder {res['t_ae']:.0f} s, score prior {res['t_score']:.0f} s, latent "
        f"likelihoods {res['t_lo']:.0f} s). Written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python benchmarks/bench_score_fusion.py`.",
        "",
        f"Shallow water 32 x 64, hourly; {cfg['train_traj']} training (seed 0), "
        f"{cfg['calib_traj']} calibration (seed 3, pairs per design {res['n_pairs']}), "
        f"{cfg['val_traj']} validation (seed 1) and {cfg['test_traj']} test (seed 2) "
        f"trajectories of {cfg['hours']} h after 72 h spin-up. Autoencoder (conv on a PCA "
        "base, latent "
        f"{cfg['latent']}, channels {list(cfg['ae_channels'])}, {cfg['ae_epochs']} epochs, "
        "aux images of a random design per state, "
        f"state_dropout 0.5); ScoreMLP over windows of {cfg['window']} ({cfg['score_epochs']} "
        f"epochs). Sampler: {cfg['steps']} steps, 1 correction, {cfg['members']} members, "
        f"guide_clip default; test windows start at hours {list(cfg['test_starts'])} of each "
        "test trajectory, all 5 hours observed; errors 0.1 training std. "
        f"Representation floor (test states through E then D): {res['floor']:.4f}."
        + (f" Representation-error model fitted on the trajectories of seeds "
           f"{list(cfg['rep_pool'])} (two each) instead of the calibration ones."
           if cfg.get("rep_pool") else "")
        + (f" Validation: {cfg['val_traj']} trajectories of seed 1, one window each (first "
           f"hours {[s[0] for s in cfg['val_starts']]})."
           if isinstance(cfg["val_starts"], list) else ""),
        "",
        "Validation (gamma chosen per design and conditioning by CRPS):",
        "",
        *_table(res["val"], ["design", "conditioning", "gamma", "corrections", "val_rmse",
                             "val_ssr",
                             "val_crps", "rep_scale", "rep_scale2"]),
        "",
        "Test:",
        "",
        *_table(rows, ["design", *set_col, "obs_per_time", "conditioning", "gamma",
                       "corrections", "rmse",
                       "prior_rmse",
                       "spread",
                       "ssr", "crps", "seconds_per_window", "explained", "shrinkage",
                       "val_rep_scale", "rep_scale", "rep_scales", "rep_scale2",
                       "rep_scales2"]),
        "",
        "Calibration on the test windows (`_calibration`): SSR with a 5-95 % bootstrap "
        "interval over the windows, SSR against the decoded code of the truth (*ssr_rep*), "
        "the representation floor, and the rank histogram (outer two bins; "
        f"{2 / (cfg['members'] + 1):.3f} if calibrated):",
        "",
        *_table(rows, ["design", *set_col, "conditioning", "windows", "ssr", "ssr_lo", "ssr_hi",
                       "ssr_rep", "rep_floor", "outer", "ranks"]),
        "",
        "*tweedie*: explicit H∘D with the Tweedie-covariance guidance (`cg_iters=8`, "
        "`grid='logsnr'`, gamma 1 as the preconditioner; no gamma is chosen, the Langevin "
        "corrections (0 or 1) are chosen on validation by CRPS).",
        "",
        "*explicit_rep*: explicit H∘D with `representation_error=True`: the likelihood's "
        "error is R + A Σ_rep Aᵀ, Σ_rep the decoder's error model fitted by "
        "`xlatda.fit_representation_error` on the calibration trajectories (seed 3; "
        f"per-channel rmse {[round(v, 4) for v in res['rep']['rmse']]}, lag-one time "
        f"correlation {res['rep']['time_correlation']:.3f}, {res['rep']['n_samples']} states, "
        f"32 modes holding {res['rep']['explained']:.2f} of the second moment). "
        "*+pred*: the same analyses as predictive samples D(z) + ε "
        "(`xlatda.predictive_samples`, ε given the observations), gamma chosen on validation "
        "by the predictive CRPS (a second test run where it differs from the decoded row's); "
        "*+pred_ad*: the same with `scale='adaptive'` (Σ_rep scaled per window by the "
        "maximum-likelihood factor of the members' residuals to the window's own "
        "observations). *+pred_an* (adaptive analyses only): with the factor the analysis "
        "estimated and used in its likelihood.",
        "",
        "**RMSE worst/best over r = 4, 8, 16: "
        + ", ".join(f"{c} {ratio(c, coarse):.3f}"
                    for c in dict.fromkeys(r["conditioning"] for r in rows))
        + "** (flat across coarsening: close to 1).",
        "",
        "*explicit_rep_ad*: the same with `representation_scale='adaptive'`: per window, "
        "an analysis with the fitted Σ_rep, the maximum-likelihood factor s² of its members' "
        "residuals to the window's observations under R + s² A Σ_rep Aᵀ, off the range of "
        "the Jacobian of H∘D at the members' mean "
        "(`xlatda.methods.score.representation_scale`, no truth used), and the analysis "
        "again with s² Σ_rep (*rep_scale*: the mean factor over the windows, *rep_scales* "
        "per window; *val_rep_scale* on the validation windows at the chosen gamma). "
        + ("Gamma selection: one gamma per design by the validation CRPS of "
           + ", ".join(f"*{c}+{v}* for {c}" for c, v in cfg["select"].items())
           + " (every output of the row at it). " if cfg.get("select") else ""),
        "",
        "*prior_rmse*: RMSE of the mean of the unconditioned prior draws of the same call "
        "(`CycleResult.background`): an analysis near it has taken little from the "
        "observations. *explained*: fraction of the variance of the image codes that the fitted"
        " latent likelihood's M z + b explains on the calibration pairs. The explicit operator "
        "averages the decoded field over each block (the footprint of `xlatda.obs.coarsen`: "
        "the decoder read at the block's cells), so H∘D is the block mean the observations "
        "measure; the latent likelihood learns the block-mean design from its pairs.",
    ]
    OUT.mkdir(exist_ok=True)
    path = OUT / (out or ("score_fusion.md" if res["quick"] else "score_fusion_full.md"))
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conds", default="explicit,latent,tweedie,explicit_rep,tweedie_rep",
                    help="comma-separated conditionings (keys of COND_SETTINGS)")
    ap.add_argument("--test-starts", default="",
                    help="comma-separated first hours of the test windows (default: the mode's)")
    ap.add_argument("--select", default="",
                    help="cond:variant,... one gamma per row by that predictive variant's "
                         "validation CRPS (e.g. explicit_rep:pred,explicit_rep_ad:pred_ad)")
    ap.add_argument("--out", default=None, help="table file name under benchmarks/out")
    ap.add_argument("--designs", default="", help="comma-separated subset of the designs")
    ap.add_argument("--gamma-from", default="",
                    help="conditioning whose validation-chosen gamma the others use")
    ap.add_argument("--rep-pool", default="",
                    help="seeds (a-b or comma-separated) of the representation-error model's "
                         "held-out trajectories, two each (default: the calibration ones)")
    ap.add_argument("--val-spread", type=int, default=0,
                    help="validation on this many seed-1 trajectories, one window each")
    ap.add_argument("--test-spread", type=int, default=0,
                    help="also test on this many seed-2 trajectories, one window each")
    args = ap.parse_args()
    starts = tuple(int(v) for v in args.test_starts.split(",") if v)
    main(quick=not args.full, threads=args.threads, conds=tuple(args.conds.split(",")),
         test_starts=starts or None,
         select=dict(v.split(":") for v in args.select.split(",") if v), out=args.out,
         designs=tuple(v for v in args.designs.split(",") if v) or None,
         gamma_from=args.gamma_from or None,
         rep_pool=parse_seeds(args.rep_pool) if args.rep_pool else None,
         val_spread=args.val_spread or None, test_spread=args.test_spread or None)
