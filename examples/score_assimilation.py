"""Score-based latent assimilation (SLAMS) of multimodal observations, shallow water.

A PCA latent space, a score-based prior over windows of 5 consecutive latent
states (``xlatda.fit_score``), then posterior samples given a coarse
satellite-like height field (4 x 4 block means) and scattered stations together,
through the decoder at the observation points (``H o D``).

Run: ``python examples/score_assimilation.py`` (set XLATDA_QUICK=1 for a tiny run).
"""

import os

import numpy as np
import torch

import xlatda

QUICK = os.environ.get("XLATDA_QUICK") == "1"
torch.set_num_threads(1)

# Galewsky-jet trajectories: the first ones train, the last one is the truth.
n_traj = 3 if QUICK else 8
ds = xlatda.datasets.shallow_water(nlat=16, nlon=32, hours=72 if QUICK else 240,
                                   output_every="1h", trajectories=n_traj, seed=0,
                                   progress=False)
train = ds.isel(trajectory=slice(0, n_traj - 1))
truth = ds.isel(trajectory=n_traj - 1)

model = xlatda.fit(train, encoder="pca", latent_dim=16 if QUICK else 32, progress=False)
model = xlatda.fit_score(train, model, window=5, epochs=80 if QUICK else 400, batch_size=64,
                         lr=2e-3, hidden=128 if QUICK else 256, depth=3, progress=not QUICK)
print(model)
print(f"score training: loss {model.history['score']['train_loss'][0]:.3f} -> "
      f"{model.history['score']['train_loss'][-1]:.3f} on {model.history['score']['windows']} "
      "windows")

# Observations at 4 consecutive hours: a coarse "satellite" height field plus 12 stations
# measuring height and vorticity, both noisy; one window of 4 hours per analysis.
times = truth.isel(time=slice(40, 44 if QUICK else 56))
h_std = float(train.height.std())
v_std = float(train.vorticity.std())
satellite = xlatda.obs.coarsen(times[["height"]], 4, 0.1 * h_std, seed=1)
stations = xlatda.obs.sample_points(times, n=12, error_std={"height": 0.1 * h_std,
                                                            "vorticity": 0.2 * v_std}, seed=2)
obs = xlatda.obs.concat([satellite, stations], kinds=["satellite", "station"])
print(f"{obs.sizes['obs']} observations at {len(np.unique(obs.time))} times "
      f"({satellite.sizes['obs']} satellite, {stations.sizes['obs']} station rows)")

result = xlatda.cycle(None, obs, model, method="score", window=4, members=16 if QUICK else 64,
                      steps=32 if QUICK else 128, gamma=1.0, seed=0, progress=False)
ref = truth.sel(time=result.analysis.time)


def rmse(a, var):
    return float(np.sqrt(((a[var] - ref[var]) ** 2).mean()))


mean = result.analysis.mean("member")
prior_mean = result.background.mean("member")  # unconditioned draws of the score prior
climatology = train.mean(("trajectory", "time"))
best = ref.lda.encode(model).lda.decode(model)  # PCA projection of the truth
print(f"{'RMSE':<28}{'height [m]':>12}{'vorticity [1/s]':>18}")
for name, fields in (("climatology", climatology), ("prior (no obs) mean", prior_mean),
                     ("score posterior mean", mean), ("PCA projection of truth", best)):
    print(f"{name:<28}{rmse(fields, 'height'):>12.2f}{rmse(fields, 'vorticity'):>18.2e}")
spread = result.analysis.std("member").mean()
print(f"posterior spread: height {float(spread.height):.2f} m, "
      f"vorticity {float(spread.vorticity):.2e} 1/s")
assert np.isfinite(rmse(mean, "height"))
