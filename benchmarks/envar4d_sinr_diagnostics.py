"""Why latent 4DEnVar (SINR + ODE) trails full-state 4DEnVar: diagnostics on validation only.

The data, SINR model (part c's chosen variant, ``cpu linear path``), ODE and
observations of ``bench_sinr.py`` part c/d, on part c's *validation*
trajectory (seed 500, observations seed 77); no test trajectory is touched.
Prints, per analysis time and on average (training-standardised units,
cos(lat) weighted, height and vorticity):

- the decoder's floor, ``decode(encode(truth))`` (a perfect latent analysis);
- the obs-only MAP, ``decode(encode_obs(obs, prior=True))`` (no dynamics);
- the ODE's 6-hour forecast from the truth's own code (its model error), and
  the ratio of its squared residual to the fitted ``Q`` in the first and
  second half of the trajectory;
- latent 4DEnVar at N = 32 and the default N (d + 1) for: weak- (the
  default with Q) and strong-constraint windows, 3 and 10 Gauss-Newton
  iterations, windows of 1 / 2 / 4 times, inflation 1.0 / 1.05 / 1.1 / 1.2,
  RTPS 0.5, no model noise, and the hybrid control variable ``beta`` 0.1 /
  0.3 / 0.5 / 1.

Run ``python benchmarks/envar4d_sinr_diagnostics.py --model /tmp/sinr_d``:
fits the model (about 6 minutes on one thread) and saves it there, or loads
it if it exists; the cycles take about 1-4 s each.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

try:
    from benchmarks import bench_sinr as bs
    from benchmarks import bench_sw_latent_da as swda
except ImportError:  # run as a script: benchmarks/ is on the path
    import bench_sinr as bs
    import bench_sw_latent_da as swda
import xlatda
from xlatda.encoders.sinr import SINR_PRESETS


def fit_or_load(path: Path, cfg: dict, train: xr.Dataset):
    """Part c's ``sinr cpu linear path`` + ODE (its fit, seed 0), saved at ``path``."""
    if path.exists():
        return xlatda.open_model(path)
    opts = dict(SINR_PRESETS["cpu"], **dict(cfg["sinr_candidates"])["cpu linear path"])
    c = cfg["sinr"]
    m = xlatda.fit(train[swda.VARS], encoder="sinr", latent_dim=cfg["latent_dim"],
                   epochs=c["epochs"], batch_size=c["batch_size"], lr=c.get("lr"),
                   validation=None, progress=False, seed=0, encoder_options=opts)
    m = swda.fit_ode(m, train, cfg)
    m.save(path, overwrite=True)
    return m


def main(model_path: Path) -> None:
    cfg = bs.DA
    data = swda.make_data(cfg)
    scorer = swda.Scorer(data["train"])
    val = swda.trajectory_case(data["val"], 0, cfg, scorer, seed=77, n_points=cfg["n_points"],
                               interpolation=cfg["interpolation"])
    model = fit_or_load(model_path, cfg, data["train"])
    zstd = swda.code_std(model, data["train"])
    alpha = 0.3  # part c's choice for SINR on this trajectory
    truth = val["truth"]
    times = np.unique(val["obs"].time.values)

    def line(tag, series):
        print(f"{tag:34s} {np.mean(series):.4f}  per time {np.round(series, 3).tolist()}")

    z = xlatda.encode(truth[swda.VARS], model)
    line("floor decode(encode(truth))", scorer.rmse_series(xlatda.decode(z, model).sel(
        time=times), truth))
    z_obs = xlatda.encode_obs(val["obs"], model, prior=True)
    line("obs-only MAP", scorer.rmse_series(xlatda.decode(z_obs, model), truth))
    zt = torch.as_tensor(z.z.transpose("time", "latent").values)
    dyn = model.require_dynamics()
    with torch.no_grad():
        z1 = dyn.evolve(zt[:-1].to(model.dtype),
                        torch.tensor([0.0, 1.0], dtype=model.dtype))[..., -1, :].double()
    fc = xr.Dataset({"z": (("time", "latent"), z1.numpy())}, coords={"time": truth.time[1:]})
    line("ODE 6 h from the truth code", scorer.rmse_series(
        xlatda.decode(fc, model).sel(time=times), truth))
    q = model.model_error.covariance().detach().diagonal().double()
    res2 = (z1 - zt[1:]).pow(2)
    half = res2.shape[0] // 2
    print(f"residual^2 / Q, first / second half: {float((res2[:half].mean(0) / q).mean()):.2f}"
          f" / {float((res2[half:].mean(0) / q).mean()):.2f}")

    runs = [("weak (default with Q)", {}), ("strong", {"model_error": "ignore"}),
            ("strong, 10 iterations", {"model_error": "ignore", "iterations": 10}),
            ("no model noise", {"noise": False}), ("window 1", {"window": 1}),
            ("window 4", {"window": 4}), ("inflation 1.0", {"inflation": 1.0}),
            ("inflation 1.1", {"inflation": 1.1}), ("inflation 1.2", {"inflation": 1.2}),
            ("RTPS 0.5", {"rtps": 0.5}),
            *[(f"hybrid beta {b}", {"beta": b}) for b in (0.1, 0.3, 0.5, 1.0)]]
    for members in (cfg["members"], None):
        print(f"-- latent 4DEnVar, N = {members or 'd + 1'}")
        for tag, opts in runs:
            kw = {"inflation": cfg["inflation"], "iterations": cfg["envar"]["iterations"],
                  "window": cfg["envar"]["window"], **opts}
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = xlatda.cycle(val["bg"][swda.VARS], val["obs"], model, method="4denvar",
                                   members=members, init_std=alpha * zstd, seed=0,
                                   progress=False, **kw)
            sec = time.perf_counter() - t0
            iters = np.asarray(res.diagnostics["iterations"]).ravel()
            conv = np.asarray(res.diagnostics["converged"]).ravel()
            line(f"{tag} ({sec:.1f} s, it {iters.mean():.1f}, conv {conv.mean():.2f})",
                 scorer.rmse_series(res.analysis.mean("member"), truth))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/envar4d_sinr_model"),
                        help="where the fitted model is saved (loaded if it exists)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    main(args.model)
