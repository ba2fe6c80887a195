"""Real-data benchmark: latent assimilation of synthetic stations on reanalysis t2m.

Protocol (issue #14, item 6)
----------------------------
Data: ERA5 2 m temperature, hourly, March 2019, UK 0.25 deg (33 x 49), and
WFDE5 air temperature, hourly, January 2017, UK 0.5 deg, land only (sea NaN).

* **train** on days 1-14 (336 hourly fields): the latent models
  (``xlatda.fit(..., dynamics="linear", uncertainty="diagonal")``, everything
  else default; ``--compare-dynamics ode`` adds the neural ODE at the chosen
  size) and the baselines' statistics (climatology, OI covariance);
* **validation** days 15-21: the only place a setting is chosen (the latent
  size of the main table, by the cycled ETKF error, defaults, at 30
  stations over the whole validation week);
* **test** days 22-31: periods of ``--hours`` hours (default 48) starting on
  day 22 and day 27, observations every 3 hours.

Stations are synthetic, at random off-grid points (fixed for a run, a new draw
per seed; on WFDE5 only where the four surrounding grid cells are land), with
values interpolated bilinearly from the held-out field plus N(0, 1 K^2) noise,
read through ``xlatda.obs.from_dataframe`` as a station table would be.
Verification is at 300 *other* random off-grid points (never the stations), at
every analysis time, against the bilinear interpolation of the held-out truth.

Baselines, computed in the same run on the same stations and points:
climatology (training-period mean), linear interpolation of the stations
(``scipy.interpolate.griddata``, nearest-neighbour fill outside the hull) and
optimal interpolation with the training sample covariance (on the grid).

Encoders: PCA, the plain convolutional autoencoder and ``autoencoder+pca``
(``encoder_options={"pca_base": True}``: the autoencoder built on the
training PCA, see :class:`xlatda.encoders.autoencoder.ConvAutoencoder`).

Latent runs use the calls a user would write, with defaults:
``xlatda.encode_obs(obs, model)`` (static, Bayesian under the latent prior),
``xlatda.cycle(background, obs, model, method=m)`` for m in etkf, 4denvar,
3dvar with the climatology as background. If a default call is refused (the
old defaults need ``init_std`` / ``b_std``), the error is recorded and the
run is repeated with the one thing a user can pass without tuning a number:
an initial ensemble drawn from ``model.prior`` (and ``b=model.prior.covariance()``
for 3DVar); those rows are marked ``prior-init``.

Run::

    python benchmarks/bench_real_stations.py --data ../shared/data

writes ``benchmarks/out/real_stations.md``. ``--quick`` runs one period, one
seed and fewer densities (a smoke test, minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.interpolate import RegularGridInterpolator, griddata

import xlatda

HERE = Path(__file__).resolve().parent
SIGMA_O = 1.0
EVERY = 3  # hours between observation times
TRAIN, VAL = (0, 336), (336, 504)
TEST_STARTS = (504, 624)  # day 22 and day 27, 00 UTC
N_VERIFY = 300

FILES = {
    "era5": ("era5_t2m_2019-03_uk.nc", "t2m"),
    "wfde5": ("wfde5_air_temperature_2017-01_uk.nc", "Tair"),
}


# ---------------------------------------------------------------------------
# data, points, truth
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Field:
    name: str
    var: str
    ds: xr.Dataset  # (time, lat, lon), the file's own coordinate names and order
    lat: np.ndarray  # ascending
    lon: np.ndarray
    values: np.ndarray  # (time, lat asc, lon asc)
    land: np.ndarray  # (lat asc, lon asc) valid cells


def load(data: Path, key: str) -> Field:
    fname, var = FILES[key]
    path = data / fname
    if not path.exists():
        sys.exit(f"missing {path}; pass --data pointing at the shared data folder")
    ds = xr.open_dataset(path)[[var]].load()
    latn = next(n for n in ("latitude", "lat") if n in ds.coords)
    lonn = next(n for n in ("longitude", "lon") if n in ds.coords)
    srt = ds.sortby([latn, lonn])
    vals = np.asarray(srt[var].transpose("time", latn, lonn).values, float)
    land = np.isfinite(vals).all(0)
    return Field(key, var, ds, srt[latn].values.astype(float), srt[lonn].values.astype(float),
                 vals, land)


def draw_points(f: Field, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2)`` random (lat, lon) off-grid points whose 4 surrounding cells are valid."""
    ok = f.land[:-1, :-1] & f.land[1:, :-1] & f.land[:-1, 1:] & f.land[1:, 1:]
    out = []
    while len(out) < n:
        lat = rng.uniform(f.lat[0], f.lat[-1], 4 * n)
        lon = rng.uniform(f.lon[0], f.lon[-1], 4 * n)
        i = np.clip(np.searchsorted(f.lat, lat) - 1, 0, len(f.lat) - 2)
        j = np.clip(np.searchsorted(f.lon, lon) - 1, 0, len(f.lon) - 2)
        good = ok[i, j]
        out.extend(zip(lat[good], lon[good]))
    return np.asarray(out[:n])


def at_points(f: Field, fields: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear values ``(T, P)`` of gridded ``fields (T, lat asc, lon asc)`` at ``pts``."""
    fields = np.nan_to_num(fields, nan=0.0)  # sea cells never enter: points are all-land
    out = np.empty((fields.shape[0], len(pts)))
    for k, fk in enumerate(fields):
        out[k] = RegularGridInterpolator((f.lat, f.lon), fk)(pts)
    return out


def grid_of(f: Field, ds: xr.Dataset, var: str) -> np.ndarray:
    """A result Dataset's field as ``(..., lat asc, lon asc)`` numpy."""
    latn = next(n for n in ("latitude", "lat") if n in ds.coords)
    lonn = next(n for n in ("longitude", "lon") if n in ds.coords)
    da = ds[var].sortby([latn, lonn])
    return np.asarray(da.transpose(..., latn, lonn).values, float)


def station_table(f: Field, stations: np.ndarray, times: np.ndarray,
                  rng: np.random.Generator) -> pd.DataFrame:
    truth = at_points(f, f.values[times], stations)
    noisy = truth + SIGMA_O * rng.standard_normal(truth.shape)
    tvals = f.ds.time.values[times]
    return pd.DataFrame({
        "time": np.repeat(pd.to_datetime(tvals).strftime("%Y-%m-%dT%H:%M"), len(stations)),
        "lat": np.tile(stations[:, 0], len(times)), "lon": np.tile(stations[:, 1], len(times)),
        f.var: noisy.reshape(-1),
    })


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
class Baselines:
    def __init__(self, f: Field) -> None:
        train = f.values[TRAIN[0]:TRAIN[1]]
        self.f = f
        self.mean = np.nanmean(train, 0)
        cells = f.land.reshape(-1)
        self.cells = cells
        anom = (train.reshape(train.shape[0], -1) - self.mean.reshape(-1))[:, cells]
        self.anom = anom / np.sqrt(anom.shape[0] - 1)  # B = anom.T @ anom

    def _interp_matrix(self, pts: np.ndarray) -> np.ndarray:
        """Bilinear weights ``(P, n_valid)`` on the valid cells."""
        f = self.f
        nlat, nlon = len(f.lat), len(f.lon)
        eye = np.eye(nlat * nlon)[:, self.cells]
        out = np.empty((len(pts), eye.shape[1]))
        for c in range(eye.shape[1]):
            out[:, c] = RegularGridInterpolator((f.lat, f.lon),
                                                eye[:, c].reshape(nlat, nlon))(pts)
        return out

    def climatology(self, verify: np.ndarray, n_times: int) -> np.ndarray:
        return np.repeat(at_points(self.f, self.mean[None], verify), n_times, 0)

    @staticmethod
    def linear(stations, y: np.ndarray, verify) -> np.ndarray:
        out = np.empty((y.shape[0], len(verify)))
        for k, yk in enumerate(y):
            v = griddata(stations[:, ::-1], yk, verify[:, ::-1], method="linear")
            near = griddata(stations[:, ::-1], yk, verify[:, ::-1], method="nearest")
            out[k] = np.where(np.isfinite(v), v, near)
        return out

    def oi(self, stations, y: np.ndarray, verify) -> np.ndarray:
        H = self._interp_matrix(stations)
        V = self._interp_matrix(verify)
        m = self.mean.reshape(-1)[self.cells]
        HA = H @ self.anom.T  # (P, N)
        VA = V @ self.anom.T
        S = HA @ HA.T + SIGMA_O**2 * np.eye(len(stations))
        d = y - H @ m
        w = np.linalg.solve(S, d.T)  # (P, T)
        return (V @ m)[None] + (VA @ (HA.T @ w)).T


# ---------------------------------------------------------------------------
# latent runs
# ---------------------------------------------------------------------------
def fit_model(f: Field, encoder: str, latent: int, cache: Path | None, seed: int = 0,
              dynamics: str = "linear"):
    path = None if cache is None else cache / f"{f.name}_{encoder}_{latent}_{dynamics}.zarr"
    if path is not None and path.exists():
        return xlatda.open_model(path), 0.0
    train = f.ds.isel(time=slice(*TRAIN))
    t0 = time.perf_counter()
    name, _, base = encoder.partition("+")  # "autoencoder+pca": built on the training PCA
    options = {"pca_base": True} if base == "pca" else None
    model = xlatda.fit(train, encoder=name, latent_dim=latent, dynamics=dynamics,
                       uncertainty="diagonal", progress=False, seed=seed,
                       encoder_options=options)
    secs = time.perf_counter() - t0
    if path is not None:
        model.save(path, overwrite=True)
    return model, secs


def background_of(f: Field, t_index: int) -> xr.Dataset:
    """The climatology as a one-time background (what a user starts from)."""
    clim = f.ds.isel(time=slice(*TRAIN)).mean("time")
    return clim.expand_dims(time=[f.ds.time.values[t_index]])


def prior_ensemble(model, f: Field, t_index: int, members: int = 20, seed: int = 0):
    """An initial ensemble decoded from draws of the model's latent prior."""
    z = model.prior.sample(members, generator=torch.Generator().manual_seed(seed))
    zda = xr.DataArray(z.detach().cpu().numpy()[None], dims=["time", "member", "latent"],
                       coords={"time": [f.ds.time.values[t_index]]})
    bg = xlatda.decode(zda, model)
    return bg.fillna(0.0) if model.missing is not None else bg


def score_cycle(f: Field, res, verify: np.ndarray):
    ana = grid_of(f, res.analysis, f.var)  # (T, member, lat, lon)
    T, M = ana.shape[:2]
    pts = at_points(f, ana.reshape(T * M, *ana.shape[2:]), verify).reshape(T, M, -1)
    spread = pts.std(1, ddof=1) if M > 1 else np.full((T, pts.shape[-1]), np.nan)
    return pts.mean(1), spread


def run_latent(f: Field, model, method: str, obs: xr.Dataset, t_start: int, verify, seed: int,
               lag: int = 0):
    """Returns (label suffix, mean (T,P), spread (T,P) or None, warnings, note); ``lag``:
    the fixed-lag smoother of ``xlatda.cycle`` (0: the filter)."""
    caught: list[str] = []
    extra = {"lag": lag} if lag else {}
    bg = background_of(f, t_start)
    note = ""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            res = xlatda.cycle(bg, obs, model, method=method, seed=seed, progress=False,
                               **extra)
            tag = "defaults" + (f", lag {lag}" if lag else "")
        except xlatda.XlatdaError as err:
            note = f"defaults refused: {str(err)[:90]}"
            if method == "3dvar":  # single background, B from the prior
                res = xlatda.cycle(bg, obs, model, method=method, seed=seed, progress=False,
                                   b=model.prior.covariance())
            else:
                res = xlatda.cycle(prior_ensemble(model, f, t_start, seed=seed), obs, model,
                                   method=method, seed=seed, progress=False)
            tag = "prior-init"
        caught = sorted({type(w.message).__name__ for w in rec
                         if issubclass(w.category, xlatda.XlatdaError)})
    mean, spread = score_cycle(f, res, verify)
    return tag, mean, spread, caught, note


def encode_obs_run(f: Field, model, obs: xr.Dataset):
    z = xlatda.encode_obs(obs, model)
    fields = grid_of(f, xlatda.decode(z, model), f.var)
    return fields


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------
def representation_rmse(f: Field, model) -> float:
    """The decoder's held-out reconstruction RMSE (K): from the fit's history, or on the
    validation period for models fitted before it was recorded."""
    rec = model.history.get("representation_error")
    if rec:
        return float(rec["rmse"][0])
    val = f.ds.isel(time=slice(*VAL))
    out = xlatda.decode(xlatda.encode(val, model), model)
    return float(np.sqrt(np.nanmean((out[f.var].values - val[f.var].values) ** 2)))


def label_of(tag: tuple) -> str:
    return f"{tag[0]}-{tag[1]}" + (f" ({tag[2]} dynamics)" if len(tag) > 2 else "")


def rmse(a, b) -> float:
    return float(np.sqrt(np.nanmean((a - b) ** 2)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=HERE / "out" / "real_stations.md")
    p.add_argument("--cache", type=Path, default=None, help="folder to keep fitted models")
    p.add_argument("--datasets", default="era5,wfde5")
    p.add_argument("--densities", default="10,30,100,300")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--hours", type=int, default=48)
    p.add_argument("--sizes", default="16,32,64,128", help="latent sizes (divergence check)")
    p.add_argument("--encoders", default="pca,autoencoder,autoencoder+pca",
                   help="'autoencoder+pca': encoder_options={'pca_base': True}")
    p.add_argument("--methods", default="etkf,4denvar,3dvar")
    p.add_argument("--dynamics", default="linear", help="latent dynamics of every model")
    p.add_argument("--compare-dynamics", default="ode",
                   help="other dynamics fitted at the chosen size for comparison ('' for none)")
    p.add_argument("--lags", default="1,2,4",
                   help="smoother lags to choose from on validation ('' for the filter only)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    densities = [int(x) for x in a.densities.split(",")]
    starts, seeds = list(TEST_STARTS), list(range(a.seeds))
    sizes = [int(x) for x in a.sizes.split(",")]
    if a.quick:
        densities, starts, seeds, sizes = [10, 30], starts[:1], [0], [32]
    if a.cache is not None:
        a.cache.mkdir(parents=True, exist_ok=True)
    lines = ["# Real-data station benchmark (`benchmarks/bench_real_stations.py`)\n",
             f"Command: `python benchmarks/bench_real_stations.py {' '.join(argv or sys.argv[1:])}`"
             f"  \nxlatda {xlatda.__version__}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n",
             f"Train hours {TRAIN}, validation {VAL}, test periods starting at hours {starts} "
             f"({a.hours} h each, observations every {EVERY} h, sigma_o = {SIGMA_O} K), "
             f"seeds {seeds}, {N_VERIFY} verification points (not stations). RMSE in K at the "
             "verification points over all analysis times; spread/RMSE from the analysis "
             "ensemble at the same points; predictive spread adds the decoder's held-out "
             "reconstruction error (model.history['representation_error']) in quadrature, "
             "the part of the truth no latent state can represent.\n"]
    summary = []
    for key in a.datasets.split(","):
        f = load(a.data, key)
        base = Baselines(f)
        models, fit_secs = {}, {}
        for k in sizes:
            models[("pca", k)], fit_secs[("pca", k)] = fit_model(f, "pca", k, a.cache,
                                                                 dynamics=a.dynamics)
            print(f"[{key}] fitted pca-{k} in {fit_secs[('pca', k)]:.0f} s", flush=True)
        # validation: choose the latent size (PCA, cycled ETKF with defaults, 30 stations,
        # the whole validation week); the test periods are never looked at for it
        rng = np.random.default_rng(12345)
        st, ver = draw_points(f, 30, rng), draw_points(f, N_VERIFY, rng)
        vtimes = np.arange(VAL[0] + EVERY, VAL[1], EVERY)
        vdf = station_table(f, st, vtimes, rng)
        vobs = xlatda.obs.from_dataframe(vdf, error_std=SIGMA_O)
        vtruth = at_points(f, f.values[vtimes], ver)
        val_rmse = {k: rmse(run_latent(f, models[("pca", k)], "etkf", vobs, VAL[0], ver, 0)[1],
                            vtruth) for k in sizes}
        chosen = min(val_rmse, key=val_rmse.get)
        # the smoother's lag, on the same validation case (ETKF at the chosen size)
        lags = [int(x) for x in a.lags.split(",")] if a.lags else []
        val_lag = {lag: rmse(run_latent(f, models[("pca", chosen)], "etkf", vobs, VAL[0], ver, 0,
                                        lag=lag)[1], vtruth) for lag in lags}
        lag = min(val_lag, key=val_lag.get) if val_lag else 0
        lines.append(f"\n## {key}: `{f.var}` {f.values.shape}, valid cells {int(f.land.sum())}\n")
        scores = ", ".join(f"{k}: {v:.3f} K" for k, v in val_rmse.items())
        lines.append(f"Validation (hours {VAL}, 30 stations, PCA + {a.dynamics} dynamics, "
                     f"cycled ETKF with defaults): {scores} -> latent size {chosen}\n")
        if val_lag:
            lines.append("Smoother lag on the same validation case (`xlatda.cycle(..., lag=L)`, "
                         "ETKF, the chosen size): " + ", ".join(
                             f"{k}: {v:.3f} K" for k, v in val_lag.items()) + f" -> lag {lag} "
                         f"(filter {val_rmse[chosen]:.3f} K)\n")
        for enc in a.encoders.split(","):
            if enc != "pca":
                models[(enc, chosen)], fit_secs[(enc, chosen)] = fit_model(
                    f, enc, chosen, a.cache, dynamics=a.dynamics)
                print(f"[{key}] fitted {enc}-{chosen} in {fit_secs[(enc, chosen)]:.0f} s",
                      flush=True)
        for other in a.compare_dynamics.split(",") if a.compare_dynamics else []:
            tag = ("pca", chosen, other)
            models[tag], fit_secs[tag] = fit_model(f, "pca", chosen, a.cache, dynamics=other)
            print(f"[{key}] fitted pca-{chosen} ({other} dynamics) in {fit_secs[tag]:.0f} s",
                  flush=True)
        representation = {tag: representation_rmse(f, m) for tag, m in models.items()}
        for tag, m in models.items():
            dh = m.history.get("dynamics", {})
            score = dh.get("best_val_loss", (dh.get("val_mse") or {}).get(repr(dh.get("ridge"))))
            what = (f"held-out 1-{dh['select_horizon']} step roll-out MSE (ridge {dh['ridge']:g})"
                    if "select_horizon" in dh else "held-out one-step/val loss")
            lines.append(f"- fit {label_of(tag)}: {fit_secs[tag]:.0f} s; dynamics "
                         f"{dh.get('kind', 'ode')}, {what} "
                         f"{float('nan') if score is None else score:.4g}; Q "
                         f"{json.dumps(m.history.get('model_error'))}; prior shrinkage "
                         f"{m.prior.shrinkage:.3g}")
        rows = defaultdict(lambda: defaultdict(list))  # (density, run) -> metric lists
        notes, warns = {}, defaultdict(set)
        for start in starts:
            times = np.arange(start + EVERY, start + a.hours + 1, EVERY)
            for seed in seeds:
                rng = np.random.default_rng(1000 * seed + start)
                verify = draw_points(f, N_VERIFY, rng)
                truth = at_points(f, f.values[times], verify)
                for n in densities:
                    stations = draw_points(f, n, rng)
                    df = station_table(f, stations, times, rng)
                    obs = xlatda.obs.from_dataframe(df, error_std=SIGMA_O)
                    y = df[f.var].to_numpy().reshape(len(times), n)

                    def put(run, est, spread=None, rep=0.0, _n=n, _rows=rows, _truth=truth):
                        _rows[(_n, run)]["rmse"].append(rmse(est, _truth))
                        if spread is not None and np.isfinite(spread).all():
                            var = float((spread**2).mean())
                            _rows[(_n, run)]["spread"].append(np.sqrt(var))
                            _rows[(_n, run)]["predictive"].append(np.sqrt(var + rep**2))

                    put("climatology", base.climatology(verify, len(times)))
                    put("linear interpolation", base.linear(stations, y, verify))
                    put("OI (training covariance)", base.oi(stations, y, verify))
                    for tag, m in models.items():
                        enc, k = tag[0], tag[1]
                        main = k == chosen and len(tag) == 2
                        if len(tag) == 2 and (main or n == 30):
                            est = at_points(f, encode_obs_run(f, m, obs), verify)
                            put(f"{label_of(tag)} encode_obs", est)
                        runs = [(meth, 0) for meth in a.methods.split(",")]
                        if main and lag:
                            runs += [(meth, lag) for meth in a.methods.split(",")
                                     if meth in ("etkf", "4denvar")]
                        for meth, lg in runs:
                            if not (main or (n == 30 and meth == "etkf")):
                                continue
                            t0 = time.perf_counter()
                            try:
                                how, mean, spread, caught, note = run_latent(
                                    f, m, meth, obs, start, verify, seed, lag=lg)
                            except Exception as err:  # record, keep going
                                traceback.print_exc()
                                label = f"{label_of(tag)} {meth}" + (f" lag {lg}" if lg else "")
                                notes[label] = f"FAILED: {type(err).__name__}: {str(err)[:120]}"
                                continue
                            label = f"{label_of(tag)} {meth} ({how})"
                            put(label, mean, spread, representation[tag])
                            warns[label].update(caught)
                            if note:
                                notes[label] = note
                            r = rmse(mean, truth)
                            sp = float(np.sqrt(np.nanmean(spread**2)))
                            print(f"[{key}] start {start} seed {seed} n={n} {label}: RMSE "
                                  f"{r:.3f} K spread {sp:.3f} ratio {sp / r:.2f} "
                                  f"({time.perf_counter() - t0:.1f} s) {caught}", flush=True)
        lines.append("\n| stations | run | RMSE (K) | vs linear interp | vs OI | spread/RMSE | "
                     "predictive spread/RMSE | runs | warnings |\n"
                     "|---|---|---|---|---|---|---|---|---|")
        for n in densities:
            ref_lin = np.mean(rows[(n, "linear interpolation")]["rmse"])
            ref_oi = np.mean(rows[(n, "OI (training covariance)")]["rmse"])
            for (nn, run), mets in rows.items():
                if nn != n:
                    continue
                r = float(np.mean(mets["rmse"]))
                ratio = (np.mean(mets["spread"]) / r) if mets["spread"] else float("nan")
                pred = (np.mean(mets["predictive"]) / r) if mets["predictive"] else float("nan")
                ptxt = "" if np.isnan(pred) else f"{pred:.2f}"
                lines.append(f"| {n} | {run} | {r:.3f} ± {np.std(mets['rmse']):.3f} | "
                             f"{r / ref_lin:.2f} | {r / ref_oi:.2f} | "
                             f"{'' if np.isnan(ratio) else f'{ratio:.2f}'} | {ptxt} | "
                             f"{len(mets['rmse'])} | "
                             f"{', '.join(sorted(warns.get(run, ()))) or ''} |")
                summary.append((key, n, run, r, r / ref_lin, r / ref_oi, ratio))
        if notes:
            lines.append("\nNotes:\n")
            lines += [f"- {k}: {v}" for k, v in notes.items()]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
