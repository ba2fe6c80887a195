"""VAE-Var: a learned background-error prior against 3DVar with a static B.

Lorenz-96 (40 sites, forcing 8) is the truth; the forecast model is
imperfect (forcing 7). A variational autoencoder is trained on normalised
background errors (:func:`xlatda.methods.background_errors`: forecasts
started from the truth), and ``method="vaevar"`` searches the analysis as
``x = x_b + D(w) * std`` (Xiao et al., ICLR 2025). The baselines are 3DVar
with static covariances estimated from the same error samples: diagonal, and
dense with shrinkage.

Forecasts started from the truth are only wrong through the model error, so
over one cycle (2 steps) their errors are far smaller than those of a cycled
background, which also carries the analysis error. As a simple stand-in the
errors are taken at a longer lead (16 steps), where their size matches that of
cycled 3DVar backgrounds in this set-up. Their mean (the drift of the
imperfect model at that lead) is not the bias of a 2-step forecast, so no
``offset`` is used.

``centre=True`` makes ``w = 0`` the background itself (the increment is
``D(w) - D(0)``). On this small set-up VAE-Var does not beat the diagonal
3DVar (quick run: 1.45 against 1.10); ``benchmarks/bench_sw_generative.py``
shows it ahead on shallow water, where it was trained on cycled background
errors and its weight ``lam`` chosen on validation trajectories.

Run: ``python examples/vaevar.py`` (set XLATDA_QUICK=1 for a tiny run).
"""

import os

import numpy as np
import torch

import xlatda
from xlatda.dynamics import Lorenz96
from xlatda.encoders import VAE
from xlatda.methods import background_errors, covariance_from_differences

QUICK = os.environ.get("XLATDA_QUICK") == "1"
n, every, lead = 40, 2, 16  # observations every 2 model steps (0.1 time units)
n_train = 2000 if QUICK else 20000  # error samples for the VAE and for static B
cycles = 60 if QUICK else 500

# %%
# Background errors of the imperfect model, from a separate truth run
# -------------------------------------------------------------------
model = Lorenz96(n=n, forcing=7.0)
train = xlatda.datasets.lorenz96(n=n, steps=n_train, seed=1)
truth_train = torch.as_tensor(train.x.values)
e, mean, std = background_errors(truth_train, model, lead=lead)
print(f"{e.shape[0]} background errors of {lead}-step forecasts; "
      f"error std {float(std.mean()):.3f}, bias {float(mean.mean()):+.3f}")

# %%
# A VAE of normalised errors, and static covariances of the same samples
# ----------------------------------------------------------------------
# A latent as large as the state and a fixed, small decoder noise keep D(w)
# expressive (a learned decoder variance lets this VAE collapse to D(w) ~ 0).
vae = VAE(1, (n,), latent_dim=n, hidden=[256, 256], decoder_std=0.1, seed=0)
vae.fit(e[:, None].float(), epochs=30 if QUICK else 100, batch_size=64, lr=3e-3,
        progress=False, seed=0)
raw = e * std + mean  # errors in state units
b_diag = covariance_from_differences(raw, "diagonal")
b_dense = covariance_from_differences(raw, "dense", shrinkage=0.05)

# %%
# Cycle each method on the same observations
# ------------------------------------------
truth = xlatda.datasets.lorenz96(n=n, steps=cycles * every, seed=2, every=every)
obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=20, error_std=1.0, seed=3)
rng = np.random.default_rng(4)
background = truth.isel(time=0).copy()
background["x"] = background.x + rng.normal(0.0, 1.0, n)

runs = {
    "3dvar, diagonal B": {"method": "3dvar", "b": b_diag},
    "3dvar, dense B": {"method": "3dvar", "b": b_dense},
    "vaevar": {"method": "vaevar", "decoder": vae, "std": std, "centre": True},
}
spin = cycles // 5  # leave out the first cycles
print(f"\nRMSE over cycles {spin}..{cycles} (20 of {n} sites observed, obs error 1.0)")
print(f"{'method':<20} {'analysis':>9} {'background':>11}")
rmses = {}
for name, settings in runs.items():
    res = xlatda.cycle(background, obs, model, progress=False, **settings)
    verify = truth.sel(time=res.analysis.time).isel(time=slice(spin, None))

    def score(states, verify=verify):
        err = states.mean("member").isel(time=slice(spin, None)) - verify
        return float(np.sqrt((err.x ** 2).mean()))

    rmses[name] = score(res.analysis)
    print(f"{name:<20} {rmses[name]:9.3f} {score(res.background):11.3f}")

assert all(np.isfinite(v) for v in rmses.values())
