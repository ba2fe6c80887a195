r"""Where the spread of explicit H∘D score analyses goes (issue 18): representation error.

The setup of :mod:`bench_score_fusion` (quick: same data, autoencoder, score
prior, designs, seeds). No sampling: for the validation (seed 1) and test
(seed 2) trajectories, at the benchmark's windows, it measures what the latent
space cannot represent, in training-std units:

* *floor*: RMSE of ``D(E(x))`` against the truth ``x`` (every grid value);
* *obs_rep*: RMSE of ``H D(E(x))`` against ``H x`` per design (block means or
  stations, no observation noise), the error the explicit likelihood meets
  at the observations whatever latent it picks near ``E(x)``, against the
  observation error it assumes (0.1);
* *model*: what the representation-error model that
  :func:`xlatda.fit_representation_error` fits on the held-out calibration
  trajectories (seed 3, as the fusion benchmark's ``explicit_rep`` rows)
  predicts for the same quantities: the root of the mean diagonal of
  :math:`\Sigma_{\rm rep}` (floor) and of :math:`A \Sigma_{\rm rep} A^\top`
  per design (block means average the correlated error);
* *off_modes*: RMSE of the part of ``x - D(E(x))`` outside the span of the
  error model's 32 modes (the directions a factor on :math:`\Sigma_{\rm rep}`
  can grow only through its diagonal); for the model, the root of the mean
  diagonal part :math:`d`;
* *ratio*: obs_rep / 0.1. Where it is well above 1 the likelihood
  :math:`\mathcal N(y \mid H D(z), 0.1^2 I)` is over-confident about ``z``
  (many observations that ``D`` cannot all fit), and the decoded ensemble
  cannot hold the floor's part of the error: spread/skill below 1 follows even
  from an exact sampler.

Run ``python benchmarks/bench_score_calibration.py``; the table goes to
``benchmarks/out/score_calibration.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_fusion import CONFIGS, OUT, VARS, _data, _observe, _trajs, fit_models

import xlatda
from xlatda.layout import CHANNEL_DIM
from xlatda.obs.operator import build_operator


def main(seed: int = 0, out: str = "score_calibration.md",
         test_starts: tuple[int, ...] | None = None) -> list[dict]:
    cfg = dict(CONFIGS["quick"])
    if test_starts:
        cfg["test_starts"] = tuple(test_starts)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    train = _data(cfg["train_traj"], cfg["hours"], 0)
    sets = {"validation": (_trajs(_data(cfg["val_traj"], cfg["hours"], 1)), cfg["val_starts"]),
            "test": (_trajs(_data(cfg["test_traj"], cfg["hours"], 2)), cfg["test_starts"])}
    std = {v: float(train[v].std()) for v in VARS}
    err = {v: 0.1 * std[v] for v in VARS}
    noise_free = {v: 1e-12 * std[v] for v in VARS}
    model, _, _ = fit_models(train, cfg, err, seed)
    model = xlatda.fit_representation_error(model, _data(cfg["calib_traj"], cfg["hours"], 3),
                                            modes=32)
    rep = xlatda.generative.representation_model(model)
    L = model.layout
    n_s = int(np.prod(L.spatial_shape))
    scale = torch.tensor([std[v] for v in L.channel_variable],
                         dtype=torch.float64).repeat_interleave(n_s)
    diag = (rep.modes**2).sum(0) + rep.var
    pred = {"floor": float((diag / scale**2).mean().sqrt()),
            "off_modes": float((rep.var / scale**2).mean().sqrt())}
    basis = torch.linalg.qr(rep.modes.T)[0]  # (n, k) orthonormal span of the modes
    one = sets["test"][0][0].isel(time=[0])
    for d in cfg["designs"]:
        table = xlatda.obs.to_tensors(_observe(one, d, noise_free, 0), L)
        A = build_operator(L, table, dtype=torch.float64).matrix
        var = rep.obs_covariance([A], [0.0]).diagonal()
        sd = torch.tensor([std[v] for v in table.variable], dtype=torch.float64)
        pred[d] = float((var / sd**2).mean().sqrt())
    w = cfg["window"]
    rows = [{"set": "model (calibration)", "windows": "", **pred}]
    print(rows[0], flush=True)
    for name, (trajs, starts) in sets.items():
        sq = {"floor": [], "off_modes": [], **{d: [] for d in cfg["designs"]}}
        for tr in trajs:
            for s in starts:
                truth = tr.isel(time=slice(s, s + w))
                back = xlatda.decode(xlatda.encode(truth, model), model)
                back = back[list(VARS)].transpose(*truth[VARS[0]].dims)
                sq["floor"] += [(((back[v] - truth[v]) / std[v]).values ** 2).ravel()
                                for v in VARS]
                # the residual in the model's layout (physical units), off the modes' span
                dims = ("time", CHANNEL_DIM, *L.spatial_dims)
                st_t = L.stack(truth[list(L.variables)]).transpose(*dims)
                st_b = L.stack(back[list(L.variables)]).transpose(*dims)
                e = torch.as_tensor(np.asarray(st_t.values, float) - np.asarray(st_b.values,
                                                                                 float))
                e = torch.nan_to_num(e.reshape(e.shape[0], -1))
                off = e - (e @ basis) @ basis.T
                sq["off_modes"].append(((off / scale) ** 2).numpy().ravel())
                for d in cfg["designs"]:
                    a = _observe(truth, d, noise_free, 0)
                    b = _observe(back, d, noise_free, 0)
                    for v in VARS:
                        diff = (np.asarray(b[v].values, float) - np.asarray(a[v].values, float))
                        diff = diff[np.isfinite(diff)] / std[v]
                        sq[d].append(diff**2)
        row = {"set": name, "windows": len(trajs) * len(starts),
               "floor": float(np.sqrt(np.concatenate(sq["floor"]).mean())),
               "off_modes": float(np.sqrt(np.concatenate(sq["off_modes"]).mean()))}
        for d in cfg["designs"]:
            row[d] = float(np.sqrt(np.concatenate(sq[d]).mean()))
        rows.append(row)
        print(row, flush=True)
    lines = ["# Representation error of the score benchmark's latent space (issue 18)", "",
             f"quick setup of bench_score_fusion; torch {torch.__version__}, 1 thread, total "
             f"{time.perf_counter() - t_all:.0f} s; written "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "`python benchmarks/bench_score_calibration.py`", "",
             "RMSE in training-std units: *floor* of D(E(x)) against x on the grid; per "
             "design, of H D(E(x)) against H x (noise-free observations; the likelihood "
             "assumes an error of 0.1). *model (calibration)*: the same predicted by the "
             "representation-error model fitted on the calibration trajectories "
             "(`xlatda.fit_representation_error`, 32 modes; the root of the mean diagonal of "
             "Σ_rep and of A Σ_rep Aᵀ). *off_modes*: RMSE of the part of x - D(E(x)) outside "
             "the span of the error model's 32 modes (model: root mean of its diagonal part).",
             "",
             "| set | windows | floor | off_modes | "
             + " | ".join(f"{d} (x 0.1)" for d in cfg["designs"])
             + " |", "|---|---|---|---|" + "---|" * len(cfg["designs"])]
    for r in rows:
        lines.append(f"| {r['set']} | {r['windows']} | {r['floor']:.3f} | {r['off_modes']:.3f} | "
                     + " | ".join(f"{r[d]:.3f} ({r[d] / 0.1:.1f})" for d in cfg["designs"])
                     + " |")
    OUT.mkdir(exist_ok=True)
    (OUT / out).write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="score_calibration.md")
    ap.add_argument("--test-starts", default="", help="comma-separated (default: quick's)")
    args = ap.parse_args()
    main(out=args.out,
         test_starts=tuple(int(v) for v in args.test_starts.split(",") if v) or None)
