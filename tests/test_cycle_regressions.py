"""Regression tests of bugs found in review of the cycling core (issue 13).

Each test failed on the code before its fix.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import torch
import xarray as xr

import xlatda
from xlatda.dynamics.physical import Lorenz96


def random_point_obs(truth, p=4, std=0.5, seed=0):
    """``p`` distinct random grid points per time (integer positions), time-major."""
    rng = np.random.default_rng(seed)
    n = truth.sizes["k"]
    ks, ts, vs = [], [], []
    for i in range(1, truth.sizes["time"]):
        k = rng.choice(n, p, replace=False)
        ks.append(k.astype(float))
        ts.append(np.repeat(truth.time.values[i], p))
        vs.append(truth.x.values[i, k] + std * rng.normal(size=p))
    return xr.Dataset({"x": ("obs", np.concatenate(vs), {"error_std": std})},
                      coords={"k": ("obs", np.concatenate(ks)),
                              "time": ("obs", np.concatenate(ts))})


def digest(res) -> str:
    h = hashlib.sha1()
    for ds in (res.analysis, res.background):
        for v in sorted(ds.data_vars):
            h.update(np.ascontiguousarray(ds[v].values).tobytes())
    return h.hexdigest()


def test_physical_cycle_uses_each_times_observation_places():
    """The operator was cached by id(table); recycled ids reused another time's places."""
    truth = xlatda.datasets.lorenz96(n=40, steps=15, seed=1)
    obs = random_point_obs(truth)
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method="etkf", members=20,
                       init_std=1.0, seed=0, progress=False, inflation=1.05)
    bm = res.background.x.mean("member").values
    recomputed = []
    for i, t in enumerate(res.analysis.time.values):
        sel = obs.time.values == t
        k = obs.k.values[sel].astype(int)
        recomputed.append(np.sqrt(((obs.x.values[sel] - bm[i, k]) ** 2).mean()))
    np.testing.assert_allclose(res.diagnostics.innovation_rms.values, recomputed, rtol=1e-10)


SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np, torch, xarray as xr, xlatda
    from xlatda.dynamics.physical import Lorenz96
    sys.path.insert(0, {tests!r})
    from test_cycle_regressions import random_point_obs, digest, RUNS
    truth = xlatda.datasets.lorenz96(n=40, steps=12, seed=1)
    obs = random_point_obs(truth, p=10)
    for method, kw in RUNS:
        res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=10,
                           init_std=1.0, seed=0, progress=False, **kw)
        print(method, digest(res))
""")

RUNS = [("etkf", {"inflation": 1.05, "rotate": True}),
        ("letkf", {"inflation": 1.05, "radius": 4.0, "rotate": True}),
        ("enkf", {"inflation": 1.05})]


def test_same_seed_is_bit_identical_in_one_process_and_across_processes():
    truth = xlatda.datasets.lorenz96(n=40, steps=12, seed=1)
    obs = random_point_obs(truth, p=10)
    here = {}
    for method, kw in RUNS:
        a, b = (xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=10,
                             init_std=1.0, seed=0, progress=False, **kw) for _ in range(2))
        assert digest(a) == digest(b), method
        here[method] = digest(a)
    import os

    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)],
                         capture_output=True, text=True, timeout=300, check=True)
    there = dict(line.split() for line in out.stdout.strip().splitlines())
    assert there == here


def test_latent_4denvar_autodiff_equals_gauss_newton_on_a_linear_case():
    """Identity latent dynamics and a full-rank PCA: the window cost is quadratic.

    Before the fix the latent forecast ran without gradients, so autodiff
    L-BFGS saw only the first observation time of each window.
    """
    truth = xlatda.datasets.lorenz96(n=8, steps=60, seed=0)
    model = xlatda.fit(truth, encoder="pca", latent_dim=8, dynamics="ode", epochs=1,
                       progress=False, dtype="float64",
                       dynamics_options={"width": 8, "depth": 1, "val_fraction": 0})
    for p in model.dynamics.parameters():
        p.data.zero_()  # dz/dt = 0
    obs = random_point_obs(truth.isel(time=slice(0, 7)), p=3, std=0.3, seed=2)
    kw = dict(method="4denvar", window=3, members=20, init_std=0.5, seed=0, noise=False,
              progress=False)
    gn = xlatda.cycle(truth.isel(time=0), obs, model, mode="gauss-newton", **kw)
    ad = xlatda.cycle(truth.isel(time=0), obs, model, mode="autodiff", iterations=200,
                      tol=1e-10, **kw)
    np.testing.assert_allclose(ad.analysis.x.values, gn.analysis.x.values, atol=1e-5)


class _ForwardOnly(torch.autograd.Function):
    """A decoder op with a forward-mode derivative only (no backward)."""

    @staticmethod
    def forward(x, a):
        return x @ a.T

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.a = inputs[1]

    @staticmethod
    def jvp(ctx, dx, da):
        return dx @ ctx.a.T

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - must not be called
        raise RuntimeError("reverse mode used to build the decoder Jacobian")


def test_jacobian_initial_ensemble_is_built_in_forward_mode():
    truth = xlatda.datasets.lorenz96(n=10, steps=100, seed=4)
    model = xlatda.fit(truth, encoder="pca", latent_dim=4, dynamics="ode", epochs=1,
                       progress=False, dtype="float64",
                       dynamics_options={"width": 8, "depth": 1, "val_fraction": 0})
    enc = model.encoder
    a = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    enc.decode = lambda z: _ForwardOnly.apply(z, a).reshape(z.shape[0], 1, 10)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, 3)), n=3, error_std=1.0, seed=0)
    res = xlatda.cycle(truth.isel(time=0), obs, model, method="etkf", members=8,
                       init_std=0.3, init="jacobian", noise=False, progress=False)
    assert res.analysis.sizes["member"] == 8
