"""Train the small shallow-water latent model shipped with xlatda for the demo.

Run from the repository root (about a few minutes on 2 CPU cores)::

    python scripts/make_demo_model.py            # writes xlatda/data/demo_sw.zarr
    python scripts/make_demo_model.py --check    # also prints forecast skill
    python scripts/make_demo_model.py --score-only   # (re)fit only the score prior
    python scripts/make_demo_model.py --prior-only   # (re)fit only the latent prior

The data are generated here (no download): Galewsky-jet shallow water on a
32 x 64 Gaussian grid, hourly, several trajectories with random jet speed and
bump. The model is PCA (cos-lat weighted EOFs) + a neural ODE in latent space
+ a diagonal model-error covariance + the latent prior of the training codes
(what :func:`xlatda.fit` stores; the climatological initial ensemble and
3DVar's default B) + a score prior over windows of 5 hourly latent states
(SLAMS; :func:`xlatda.fit_score`). Everything is seeded: rerunning gives
the same model up to floating-point summation order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import xlatda

OUT = Path(__file__).resolve().parents[1] / "xlatda" / "data" / "demo_sw.zarr"

SETTINGS = {
    "nlat": 32,
    "nlon": 64,
    "trajectories": 12,
    "hours": 120,
    "spinup_hours": 72,
    "seed": 0,
    "latent_dim": 48,
    "epochs": 60,
    "width": 256,
    "depth": 3,
    "window": 8,
    "score_window": 5,
    "score_epochs": 300,
}


def training_data(settings: dict):
    return xlatda.datasets.shallow_water(
        nlat=settings["nlat"], nlon=settings["nlon"], hours=settings["hours"],
        trajectories=settings["trajectories"], seed=settings["seed"],
        spinup_hours=settings["spinup_hours"], progress=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="print held-out forecast skill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score-only", action="store_true",
                        help="keep the stored PCA, ODE and Q; (re)fit only the score prior")
    parser.add_argument("--prior-only", action="store_true",
                        help="keep everything stored; (re)fit only the latent prior of the "
                             "training codes (the shipped model predated priors)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = SETTINGS
    t0 = time.perf_counter()
    ds = training_data(s)
    print(f"data {dict(ds.sizes)} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    if args.prior_only:
        model = xlatda.open_model(args.out)
        model.prior = latent_prior(model, ds)
        print(f"latent prior in {time.perf_counter() - t0:.1f} s")
        model.save(args.out, overwrite=True)
        print(f"wrote {args.out}")
        return
    if args.score_only:
        model = xlatda.open_model(args.out)
    else:
        model = xlatda.fit(
            ds, encoder="pca", latent_dim=s["latent_dim"], dynamics="ode",
            uncertainty="diagonal", epochs=s["epochs"], seed=s["seed"], progress=False,
            validation=None,
            dynamics_options={"width": s["width"], "depth": s["depth"], "window": s["window"]},
        )
        print(f"fit {model} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    model = xlatda.fit_score(ds, model, window=s["score_window"], epochs=s["score_epochs"],
                             seed=s["seed"], progress=False)
    print(f"score prior in {time.perf_counter() - t0:.1f} s")
    model.history["settings"] = dict(s)
    model.save(args.out, overwrite=True)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    if args.check:
        check(model, s)


def latent_prior(model, ds):
    """The Gaussian prior of the training codes, as :func:`xlatda.fit` fits it."""
    from xlatda.prior import LatentPrior

    z = ds.lda.encode(model)
    codes = torch.as_tensor(np.asarray(z.z.values, np.float64).reshape(-1, model.latent_dim))
    return LatentPrior.fit(codes).to(device=model.device, dtype=model.dtype)


def check(model, s) -> dict:
    """24-hour forecast RMSE (normalised, cos-lat weighted) vs persistence on new trajectories."""
    test = xlatda.datasets.shallow_water(
        nlat=s["nlat"], nlon=s["nlon"], hours=48, trajectories=4, seed=s["seed"] + 1000,
        spinup_hours=s["spinup_hours"], progress=False,
    )
    std = {v: float(model.normalizer.std[i]) for i, v in enumerate(model.layout.variables)}
    init = test.isel(time=slice(0, 24, 6))
    fc = xlatda.forecast(init, model, steps=24).isel(lead=-1)
    out = {}
    for v in model.layout.variables:
        truth = test[v].isel(time=slice(24, 48, 6)).values
        err = (fc[v].values - truth) / std[v]
        pers = (init[v].values - truth) / std[v]
        w = np.cos(np.deg2rad(test.lat.values))[:, None]
        rm = float(np.sqrt((err**2 * w).mean() / w.mean()))
        rp = float(np.sqrt((pers**2 * w).mean() / w.mean()))
        out[v] = {"forecast_rmse": rm, "persistence_rmse": rp, "ratio": rm / rp}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
