"""LEVDA-style 4DEnVar: estimate the Lorenz-96 forcing together with the state.

The truth runs with F = 8; the ensemble starts from F ~ N(7, 1). Windows of 5
observation times are smoothed jointly for the state and F, with no adjoint
code (Gauss-Newton with ensemble sensitivities through the model).

Run: ``python examples/parameter_estimation.py`` (XLATDA_QUICK=1: tiny).
"""

import os

import xlatda
from xlatda.dynamics import Lorenz96

QUICK = os.environ.get("XLATDA_QUICK") == "1"
cycles = 30 if QUICK else 200

truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=3)
obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=20, error_std=1.0, seed=4)
result = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="4denvar", window=5,
                      members=30, init_std=1.0, params={"forcing": (7.0, 1.0)},
                      inflation=1.02, progress=not QUICK)
forcing = result.parameters.theta.sel(param="forcing").isel(time=-1)
print(f"estimated forcing: {float(forcing.mean()):.2f} ± {float(forcing.std()):.2f} (truth 8)")
