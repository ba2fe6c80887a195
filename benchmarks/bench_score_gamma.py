r"""Validation sweep of the guidance ``gamma`` of explicit H∘D conditioning (issue 18).

The setup of :mod:`bench_score_fusion` (quick: same data, same multimodal
autoencoder, same score prior, same observation designs with block-mean
footprints), but only the **validation** trajectory (seed 1) is used: the
explicit conditioning of ``method="score"`` is run at ``gamma`` in
{1e-2, 1e-1, 1, 10} for the coarsened designs r = 4, 8, 16, and RMSE,
spread/skill and fair CRPS are tabulated. ``gamma`` scales the variance
:math:`\gamma (\sigma_t/\mu_t)^2 g_p^2` that the Gaussian guidance adds to
the observation error (the :math:`\Gamma` of Rozet and Louppe's SDA, here
diagonal and expressed in observation units through the operator gains
:math:`g_p`). No test trajectory is touched.

Run ``python benchmarks/bench_score_gamma.py``; the table goes to
``benchmarks/out/score_gamma.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_score_fusion import CONFIGS, OUT, VARS, _data, _run, _trajs, fit_models

GAMMAS = (1e-2, 1e-1, 1.0, 10.0)
DESIGNS = ("r4", "r8", "r16")


def main(seed: int = 0) -> list[dict]:
    cfg = dict(CONFIGS["quick"])
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    train = _data(cfg["train_traj"], cfg["hours"], 0)
    val = _trajs(_data(cfg["val_traj"], cfg["hours"], 1))
    std = {v: float(train[v].std()) for v in VARS}
    cfg["std"] = std
    err = {v: 0.1 * std[v] for v in VARS}
    model, _, _ = fit_models(train, cfg, err, seed)
    rows = []
    for d in DESIGNS:
        for g in GAMMAS:
            sc, secs = _run(model, None, val, cfg["val_starts"], d, "explicit", g, err, cfg,
                            seed + 7)
            rows.append({"design": d, "gamma": g, **sc, "s": secs})
            print(f"{d} gamma {g:g}: rmse {sc['rmse']:.3f} ssr {sc['ssr']:.2f} "
                  f"crps {sc['crps']:.4f} prior {sc['prior_rmse']:.3f} ({secs:.1f} s/window)",
                  flush=True)
    lines = ["# gamma sweep of explicit H∘D conditioning (validation trajectory only)", "",
             f"quick setup of bench_score_fusion; torch {torch.__version__}, 1 thread, "
             f"total {time.perf_counter() - t_all:.0f} s", "",
             "| design | gamma | RMSE | prior draws RMSE | SSR | CRPS | s/window |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['design']} | {r['gamma']:g} | {r['rmse']:.3f} | "
                     f"{r['prior_rmse']:.3f} | {r['ssr']:.2f} | {r['crps']:.4f} | {r['s']:.1f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "score_gamma.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
