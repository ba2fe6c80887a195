"""Quickstart: fit a latent model, encode, forecast, assimilate (Lorenz-96).

Run: ``python examples/quickstart.py`` (set XLATDA_QUICK=1 for a tiny run).
"""

import os

import numpy as np

import xlatda

QUICK = os.environ.get("XLATDA_QUICK") == "1"
steps = 400 if QUICK else 3000

truth = xlatda.datasets.lorenz96(n=40, steps=steps, seed=0)
train, test = truth.isel(time=slice(0, steps // 2)), truth.isel(time=slice(steps // 2, None))

# PCA latent space (20 of 40 dimensions) with a neural ODE and a learned Q.
model = xlatda.fit(train, encoder="pca", latent_dim=20, dynamics="ode", uncertainty="diagonal",
                   epochs=3 if QUICK else 40, progress=not QUICK,
                   dynamics_options={"width": 64 if QUICK else 256})
print(model)

z = test.lda.encode(model)
fc = z.isel(time=[0]).lda.evolve(model, steps=10)
print("latent forecast:", dict(fc.sizes))

# Every other site observed with error 1, every step, for 50 steps.
obs = xlatda.obs.sample_points(test.isel(time=slice(1, 51)), n=20, error_std=1.0, seed=1)
result = xlatda.cycle(test.isel(time=0), obs, model, method="etkf", init_std=0.5,
                      inflation=1.05, progress=not QUICK)
rmse = xlatda.metrics.rmse(result.analysis.mean("member"),
                           test.sel(time=result.analysis.time), dim=None)
print(f"latent ETKF analysis RMSE: {float(rmse.x):.3f} (climatological std ~3.6)")
assert np.isfinite(float(rmse.x))
