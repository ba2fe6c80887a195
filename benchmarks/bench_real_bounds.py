"""Why latent cycling only ties optimal interpolation on the real station case.

A diagnosis for issue #14, on the **validation** week only (hours 336-504 of
the ERA5 / WFDE5 files; the test periods of ``bench_real_stations.py`` are
never read). With a PCA latent space the decoder is affine, so every question
below has a closed-form answer in numpy, free of ensemble sampling error:

1. *Forecast skill*: RMSE at the verification points of 1-, 3- and 6-hour
   forecasts of the fitted linear dynamics started from the **true** codes,
   against persistence and climatology, and the representation floor (the
   truth projected on the latent space).
2. *Exact latent Kalman filter* with the fitted model and its ``Q``
   (``ΣAʲQAʲᵀ`` over the 3 h between analyses), stations every 3 h from
   the latent prior, against OI with the training covariance on the same
   stations: the best any latent ensemble filter with this model can do.
3. The same filter with ``Q`` replaced by (a) ``c·Q``, (b) a hybrid
   ``(1-β)P_f + βB``, (c) the covariance of 3-step residuals on a held-out
   tail of the training period (dynamics refitted without it), and (d) the
   covariance of 3-step residuals **on the validation week itself**: an
   in-sample oracle no user can have, reported only as the bound it is.
   And with the library's adaptive additive inflation shaped like the
   covariance of the codes' 3-hour change in training
   (:mod:`xlatda.methods.additive`), the same estimate as in the cycles;
   and with the regime mean of :mod:`xlatda.methods.regime` on top (an
   exact Kalman filter of ``[z; m]``).
4. Non-stationarity: the total 3-step residual variance of the model on
   its training period and on the validation week, and the code variance and
   mean shift between the two.

Run::

    python benchmarks/bench_real_bounds.py --data ../shared/data [--regime-sweep]

writes ``benchmarks/out/real_bounds.md``.
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

import bench_real_stations as S  # noqa: E402

from xlatda.dynamics.linear import fit_linear_dynamics  # noqa: E402
from xlatda.methods.additive import ADDITIVE_MAX, ADDITIVE_WEIGHT  # noqa: E402
from xlatda.methods.regime import REGIME_TIMESCALE, REGIME_VARIANCE  # noqa: E402

EVERY = S.EVERY


class Affine:
    """The PCA model as numpy: codes of the whole file, decoder offset and basis."""

    def __init__(self, f: S.Field, model) -> None:
        ds = f.ds
        latn = next(n for n in ("latitude", "lat") if n in ds.coords)
        lonn = next(n for n in ("longitude", "lon") if n in ds.coords)
        x = np.asarray(ds[f.var].transpose("time", latn, lonn).values, float)
        k = model.latent_dim
        with torch.no_grad():
            xt = torch.as_tensor(np.nan_to_num(x), dtype=model.dtype)[:, None]
            self.Z = model.encode_tensor(xt).double().numpy()
            c = model.decode_tensor(torch.zeros(1, k, dtype=model.dtype))[0, 0].double().numpy()
            g = model.decode_tensor(torch.eye(k, dtype=model.dtype))[:, 0].double().numpy() - c
        ila, ilo = np.argsort(ds[latn].values), np.argsort(ds[lonn].values)
        self.c = np.nan_to_num(c[ila][:, ilo])
        self.G = np.nan_to_num(g[:, ila][:, :, ilo])
        self.f, self.k = f, k
        self.clock = ds.time.values.astype("datetime64[s]").astype(np.int64).astype(float)
        self.prior_mean = model.prior.mean.detach().double().numpy()
        self.prior_cov = model.prior.covariance().dense().detach().double().numpy()

    def operator(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(H (P, k), h (P,))`` with ``values = h + H z`` at the points."""
        return S.at_points(self.f, self.G, pts).T, S.at_points(self.f, self.c[None], pts)[0]


def forecaster(dyn, clock: np.ndarray):
    def fc(z: np.ndarray, t: int, lead: float) -> np.ndarray:
        with torch.no_grad():
            out = dyn.evolve(torch.as_tensor(z)[None], torch.tensor([0.0, float(lead)]),
                             start=torch.tensor([clock[t]], dtype=torch.float64))
        return out[0, -1].numpy()
    return fc


def accumulated_q(A: np.ndarray, Q: np.ndarray, steps: int) -> np.ndarray:
    acc, term = np.zeros_like(Q), Q
    for _ in range(steps):
        acc, term = acc + term, A @ term @ A.T
    return acc


def residual_cov(aff: Affine, fc, idx: np.ndarray, lead: int = EVERY) -> np.ndarray:
    res = np.array([aff.Z[t + lead] - fc(aff.Z[t], t, lead) for t in idx])
    return res.T @ res / len(res)


def validation_case(f: S.Field, n: int, seed: int):
    """Stations, verification points, times, noisy station values and truth (validation)."""
    rng = np.random.default_rng(12345 + seed)
    st, ver = S.draw_points(f, n, rng), S.draw_points(f, S.N_VERIFY, rng)
    times = np.arange(S.VAL[0] + EVERY, S.VAL[1], EVERY)
    df = S.station_table(f, st, times, rng)
    y = df[f.var].to_numpy().reshape(len(times), n)
    return st, ver, times, y, S.at_points(f, f.values[times], ver)


def kalman(aff: Affine, fc, A: np.ndarray, Q3: np.ndarray, case, hybrid: float = 0.0,
           tendency: np.ndarray | None = None, weight: float = ADDITIVE_WEIGHT):
    """Exact latent KF; with ``tendency`` (T over the 3 h lead) also the library's
    adaptive additive inflation ``λ T`` (xlatda.methods.additive, same estimate)."""
    st, ver, times, y, _ = case
    Hs, hs = aff.operator(st)
    Hv, hv = aff.operator(ver)
    A3 = np.linalg.matrix_power(A, EVERY)
    z, P = aff.prior_mean.copy(), aff.prior_cov.copy()
    out, prev, lam = [], S.VAL[0], 0.0
    for i, t in enumerate(times):
        if i:
            z, P = fc(z, prev, EVERY), A3 @ P @ A3.T + Q3
            if tendency is not None:
                d = y[i] - hs - Hs @ z
                excess = d @ d - np.trace(Hs @ P @ Hs.T) - len(st) * S.SIGMA_O**2
                lam_o = excess / np.trace(Hs @ tendency @ Hs.T)
                lam = float(np.clip((1 - weight) * lam + weight * lam_o, 0.0, ADDITIVE_MAX))
                P = P + lam * tendency
        if hybrid:
            P = (1 - hybrid) * P + hybrid * aff.prior_cov
        Sm = Hs @ P @ Hs.T + S.SIGMA_O**2 * np.eye(len(st))
        K = np.linalg.solve(Sm, Hs @ P).T
        z, P = z + K @ (y[i] - hs - Hs @ z), P - K @ Hs @ P
        out.append(hv + Hv @ z)
        prev = t
    return np.asarray(out)


def kalman_regime(aff: Affine, fc, A: np.ndarray, Q3: np.ndarray, case, tendency: np.ndarray,
                  variance: float = REGIME_VARIANCE, days: float = REGIME_TIMESCALE / 86400.0,
                  weight: float = ADDITIVE_WEIGHT):
    """Exact KF on ``[z; m]`` (xlatda.methods.regime): forecasts ``F(z - m) + m``,
    ``m`` an OU process with stationary covariance ``variance * B`` and decorrelation
    time ``days``; with the adaptive additive tendency inflation as in :func:`kalman`."""
    st, ver, times, y, _ = case
    Hs, hs = aff.operator(st)
    Hv, hv = aff.operator(ver)
    k = A.shape[0]
    A3 = np.linalg.matrix_power(A, EVERY)
    rho = float(np.exp(-EVERY / (24.0 * days)))
    cm = variance * aff.prior_cov
    M = np.block([[A3, np.eye(k) - A3], [np.zeros((k, k)), rho * np.eye(k)]])
    x = np.concatenate([aff.prior_mean, np.zeros(k)])
    P = np.block([[aff.prior_cov, np.zeros((k, k))], [np.zeros((k, k)), cm]])
    Hx = np.concatenate([Hs, np.zeros_like(Hs)], 1)
    out, prev, lam = [], S.VAL[0], 0.0
    for i, t in enumerate(times):
        if i:
            x = np.concatenate([fc(x[:k] - x[k:], prev, EVERY) + x[k:], rho * x[k:]])
            P = M @ P @ M.T
            P[:k, :k] += Q3
            P[k:, k:] += (1 - rho**2) * cm
            d = y[i] - hs - Hs @ x[:k]
            excess = d @ d - np.trace(Hs @ P[:k, :k] @ Hs.T) - len(st) * S.SIGMA_O**2
            lam_o = excess / np.trace(Hs @ tendency @ Hs.T)
            lam = float(np.clip((1 - weight) * lam + weight * lam_o, 0.0, ADDITIVE_MAX))
            P[:k, :k] += lam * tendency
        Sm = Hx @ P @ Hx.T + S.SIGMA_O**2 * np.eye(len(st))
        K = np.linalg.solve(Sm, Hx @ P).T
        x, P = x + K @ (y[i] - hs - Hx @ x), P - K @ Hx @ P
        out.append(hv + Hv @ x[:k])
        prev = t
    return np.asarray(out)


def regime_sweep(data: Path, datasets: list[str], latent: int, seeds: int) -> list[str]:
    """The validation sweep that chose :mod:`xlatda.methods.regime`'s defaults:
    RMSE / OI of the exact augmented KF over variance x decorrelation time, at
    10 / 30 / 100 / 300 stations of both files, against the KF without it."""
    grid = [(v, t) for v in (0.125, 0.25, 0.5, 1.0, 2.0) for t in (1.0, 2.0, 4.0, 8.0)]
    dens = (10, 30, 100, 300)
    ratios: dict[str, list[float]] = {}
    rms = lambda errs: float(np.sqrt(np.mean(np.square(errs))))  # noqa: E731
    for key in datasets:
        f = S.load(data, key)
        model, _ = S.fit_model(f, "pca", latent, None)
        aff = Affine(f, model)
        dyn = model.dynamics.double()
        fc = forecaster(dyn, aff.clock)
        A = dyn.A.detach().double().numpy()
        Q3 = accumulated_q(A, model.model_error.covariance().detach().double().numpy(), EVERY)
        tend = model.model_error.tendency_covariance(EVERY).detach().double().numpy()
        base = S.Baselines(f)
        for n in dens:
            cases = [validation_case(f, n, s) for s in range(seeds)]
            oi = rms([base.oi(st, y, v) - tr for st, v, _, y, tr in cases])
            r = rms([kalman(aff, fc, A, Q3, c, tendency=tend) - c[4] for c in cases])
            ratios.setdefault("without (additive only)", []).append(r / oi)
            for v, t in grid:
                r = rms([kalman_regime(aff, fc, A, Q3, c, tend, v, t) - c[4] for c in cases])
                ratios.setdefault(f"variance {v:g} B, {t:g} days", []).append(r / oi)
    cols = [f"{k} {n}" for k in datasets for n in dens]
    lines = ["\n## Regime mean: validation sweep (`--regime-sweep`)\n",
             "RMSE / OI of the exact KF of `[z; m]` with adaptive additive inflation; "
             "columns: file and stations.\n",
             "| regime | " + " | ".join(cols) + " | mean log | worst |",
             "|---|" + "---|" * (len(cols) + 2)]
    for name, v in ratios.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v)
                     + f" | {np.mean(np.log(v)):+.4f} | {max(v):.3f} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=HERE / "out" / "real_bounds.md")
    p.add_argument("--datasets", default="era5,wfde5")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--stations", type=int, default=30)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--regime-sweep", action="store_true",
                   help="also the sweep that chose the regime mean's defaults")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    lines = ["# Latent cycling against OI: bounds on the validation week "
             "(`benchmarks/bench_real_bounds.py`)\n",
             f"PCA-{a.latent} + `dynamics='linear'` (library defaults), {a.stations} stations, "
             f"sigma_o = {S.SIGMA_O} K, every {EVERY} h over hours {S.VAL}, {a.seeds} station "
             f"draws, {S.N_VERIFY} verification points. Exact (numpy) latent Kalman filter; "
             "RMSE in K at the verification points.\n"]
    for key in a.datasets.split(","):
        f = S.load(a.data, key)
        model, _ = S.fit_model(f, "pca", a.latent, None)
        aff = Affine(f, model)
        dyn = model.dynamics.double()
        fc = forecaster(dyn, aff.clock)
        A = dyn.A.detach().double().numpy()
        Q1 = model.model_error.covariance().detach().double().numpy()
        base = S.Baselines(f)
        cases = [validation_case(f, a.stations, s) for s in range(a.seeds)]
        rms = lambda errs: float(np.sqrt(np.mean(np.square(errs))))  # noqa: E731

        # 1. forecast skill from the true codes
        _, ver, times, _, truth = cases[0]
        Hv, hv = aff.operator(ver)
        lines.append(f"\n## {key}\n")
        floor = rms(hv + aff.Z[times] @ Hv.T - truth)
        clim = rms(base.climatology(ver, len(times)) - truth)
        lines.append(f"Representation floor {floor:.3f} K; climatology {clim:.3f} K.\n")
        lines.append("| lead (h) | linear dynamics from the true codes | persistence |\n"
                     "|---|---|---|")
        for lead in (1, 3, 6):
            e = [hv + fc(aff.Z[t - lead], t - lead, lead) @ Hv.T - truth[i]
                 for i, t in enumerate(times)]
            pers = [hv + aff.Z[t - lead] @ Hv.T - truth[i] for i, t in enumerate(times)]
            lines.append(f"| {lead} | {rms(e):.3f} | {rms(pers):.3f} |")

        # 2.-3. exact latent KF variants against OI
        oi = rms([base.oi(st, y, v) - tr for st, v, _, y, tr in cases])
        Q3 = accumulated_q(A, Q1, EVERY)
        tr_idx = np.arange(*S.TRAIN)
        cut = S.TRAIN[0] + int(0.8 * (S.TRAIN[1] - S.TRAIN[0]))
        zz = torch.as_tensor(aff.Z[S.TRAIN[0]:cut])[None]
        cl = torch.as_tensor(aff.clock[S.TRAIN[0]:cut])[None]
        dyn_head, _ = fit_linear_dynamics(zz, cl, periods=dyn.periods, dt_unit=dyn.dt_unit,
                                          time_units=dyn.time_units, dtype=torch.float64)
        q_tail = residual_cov(aff, forecaster(dyn_head, aff.clock),
                              np.arange(cut, S.TRAIN[1] - EVERY))
        q_train = residual_cov(aff, fc, tr_idx[:-EVERY])
        q_val = residual_cov(aff, fc, np.arange(S.VAL[0], S.VAL[1] - EVERY))
        tend = model.model_error.tendency_covariance(EVERY).detach().double().numpy()
        variants = [("fitted Q", Q3, 0.0), ("0.5 x Q", 0.5 * Q3, 0.0),
                    ("2 x Q", 2 * Q3, 0.0), ("hybrid beta 0.2", Q3, 0.2),
                    ("hybrid beta 0.5", Q3, 0.5),
                    ("Q from 3-step residuals, held-out last 20 % of training", q_tail, 0.0),
                    ("ORACLE: Q from 3-step residuals on the validation week", q_val, 0.0)]
        lines.append(f"\nOI (training covariance): {oi:.3f} K.\n")
        lines.append("| latent KF variant | RMSE (K) | vs OI |\n|---|---|---|")
        for name, q, beta in variants:
            r = rms([kalman(aff, fc, A, q, c, beta) - c[4] for c in cases])
            lines.append(f"| {name} | {r:.3f} | {r / oi:.3f} |")
        for w in (0.05, ADDITIVE_WEIGHT, 0.2):
            r = rms([kalman(aff, fc, A, Q3, c, tendency=tend, weight=w) - c[4] for c in cases])
            name = "fitted Q + adaptive additive tendency inflation, weight " + (
                f"{w} (library default)" if w == ADDITIVE_WEIGHT else f"{w}")
            lines.append(f"| {name} | {r:.3f} | {r / oi:.3f} |")
        r = rms([kalman(aff, fc, A, Q3 + 2 * tend, c) - c[4] for c in cases])
        lines.append(f"| fitted Q + 2 x tendency covariance (fixed) | {r:.3f} | {r / oi:.3f} |")
        for var, days in ((0.25, 2.0), (REGIME_VARIANCE, REGIME_TIMESCALE / 86400.0),
                          (1.0, 2.0), (REGIME_VARIANCE, 4.0)):
            r = rms([kalman_regime(aff, fc, A, Q3, c, tend, var, days) - c[4] for c in cases])
            lib = " (library default)" if (var, days) == (
                REGIME_VARIANCE, REGIME_TIMESCALE / 86400.0) else ""
            lines.append(f"| fitted Q + adaptive additive + regime mean, variance {var} B, "
                         f"{days:g} days{lib} | {r:.3f} | {r / oi:.3f} |")

        # 4. non-stationarity
        z_tr, z_va = aff.Z[S.TRAIN[0]:S.TRAIN[1]], aff.Z[S.VAL[0]:S.VAL[1]]
        lines.append(
            f"\nTotal 3-step residual variance of the model: training {np.trace(q_train):.1f}, "
            f"validation {np.trace(q_val):.1f} (latent units; accumulated fitted Q "
            f"{np.trace(Q3):.1f}). Code variance training {z_tr.var(0).sum():.1f}, validation "
            f"{z_va.var(0).sum():.1f}; squared shift of the mean code "
            f"{((z_va.mean(0) - z_tr.mean(0)) ** 2).sum():.1f}; 3-h tendency variance "
            f"training {(z_tr[EVERY:] - z_tr[:-EVERY]).var(0).sum():.1f}, validation "
            f"{(z_va[EVERY:] - z_va[:-EVERY]).var(0).sum():.1f}.")
        print("\n".join(lines[-20:]), flush=True)
    if a.regime_sweep:
        lines += regime_sweep(a.data, a.datasets.split(","), a.latent, a.seeds)
    lines.append(f"\nWall {time.perf_counter() - t_all:.0f} s; "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
