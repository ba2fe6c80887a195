"""Where SINR's linear path loses to PCA on the ERA5 UK box (issue 17, target 3; diagnostics).

Data and splits of ``bench_sinr.py`` part b (train days 1-14, validation 15-24,
held out 25-31; RMSE in K, cos(lat) weighted). For each map of the box onto
the sphere and each degree ``T`` of the linear path:

- ``rank``: numerical rank (eigenvalues above 1e-8 of the largest) of the
  harmonics' weighted Gram matrix at the 1617 grid points: how many of the
  ``(T + 1)^2`` harmonics are independent on the patch;
- ``proj``: the RMSE of each field's own least-squares projection on the
  harmonics (round 3's fit, ``linear_fit="projection"``) and ``interp``: that
  of the prior's interpolant (``linear_fit="grid"``, no EOF truncation) on the
  training, validation and held-out fields: what the basis cannot hold;
- ``start``: the validation RMSE of the untrained SINR (its PCA start, latent
  32 and 64) with either fit and no prior.

The held-out figures of ``proj`` / ``interp`` describe the basis only (no
choice is made from them). Run ``python benchmarks/sinr_era5_diagnostics.py``
(about 5 minutes on one thread; the projection columns are left out above round 3's cap
``(T + 1)^2 <= 2 P``, where its ``M x M`` solve takes minutes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sinr as bench

from xlatda.encoders.sinr import SINR

CASES = [("conformal", 47), ("conformal", 55), ("conformal", 80), ("conformal", 112),
         ("box", 47), ("box", 64), ("box", 80), ("box", 86)]


def main() -> None:
    torch.set_num_threads(1)
    data = bench.era5_data(bench.DATA / bench.ERA5_FILE)
    shape, grid = tuple(data["x"]["train"].shape[-2:]), data["grid"]
    std = data["std"]
    x = {p: v.double().reshape(v.shape[0], -1) for p, v in data["x"].items()}
    print("| stretch | T | harmonics | rank | proj train / val / held out | "
          "interp train / val / held out | start val 32 proj / grid | "
          "start val 64 proj / grid | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stretch, degree in CASES:
        t0 = time.perf_counter()
        opts = {"region": "auto", "region_stretch": stretch, "linear_degree": degree,
                "hidden": 8, "depth": 1, "max_freq": 1}
        enc = SINR(1, shape, 32, grid, linear_fit="grid", **opts).double()
        feats, w = enc._grid_cache()
        phi = feats[:, enc._n_filter_features:]
        wn = w / w.sum()
        # numerical rank from the P x P kernel side (same non-zero spectrum, cheaper)
        ev = torch.linalg.eigvalsh((phi * wn.sqrt()[:, None]) @ (phi * wn.sqrt()[:, None]).t())
        rank = int((ev > 1e-8 * ev.max()).sum())
        # the projection's M x M solve: only within round 3's cap (T + 1)^2 <= 2 P
        capped = phi.shape[1] <= 2 * phi.shape[0]
        if capped:
            gram = (phi.t() * wn) @ phi
            gram = gram + 1e-10 * float(gram.diagonal().mean()) * torch.eye(gram.shape[0],
                                                                           dtype=gram.dtype)
        kern, _ = enc._prior_kernel(phi)
        chol = torch.linalg.cholesky(kern + torch.diag(1e-9 * float(kern.diagonal().mean())
                                                       * w.mean() / w))

        def err(pred, truth, w=w):
            return float((((pred - truth) ** 2) * w).mean().sqrt()) * std

        nan = float("nan")
        proj, interp = [], []
        for p in ("train", "val", "test"):
            if capped:
                coef = torch.linalg.solve(gram, ((x[p] * wn) @ phi).t()).t()
            proj.append(err(coef @ phi.t(), x[p]) if capped else nan)
            interp.append(err((kern @ torch.cholesky_solve(x[p].t(), chol)).t(), x[p]))
        starts = []
        for k in (32, 64):
            for fit in ("projection", "grid"):
                if fit == "projection" and not capped:
                    starts.append(nan)
                    continue
                e = SINR(1, shape, k, grid, linear_fit=fit, **opts)
                e.init_pca(data["x"]["train"], dtype="float64")
                starts.append(bench._score(e, data, "val"))
        print(f"| {stretch} | {degree} | {phi.shape[1]} | {rank} | "
              + " / ".join(f"{v:.4f}" for v in proj) + " | "
              + " / ".join(f"{v:.4f}" for v in interp) + " | "
              + f"{starts[0]:.4f} / {starts[1]:.4f} | {starts[2]:.4f} / {starts[3]:.4f} | "
              + f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
