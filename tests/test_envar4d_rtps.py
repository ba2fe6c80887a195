"""RTPS of the 4DEnVar state entries (kernel and weak-constraint windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.methods.envar4d import EnVar4D


def _problem():
    g = torch.Generator().manual_seed(0)
    ens = torch.randn(30, 3, generator=g, dtype=torch.float64)  # 2 states + 1 parameter
    times = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def forecast_obs(s):  # linear: observe x0 + t θ and x1 at two times
        return torch.cat([s[..., :1] + times * s[..., 2:], s[..., 1:2] * times], -1)

    y = forecast_obs(torch.tensor([[0.5, -0.3, 0.8]], dtype=torch.float64))[0]
    return ens, y, forecast_obs


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_kernel_rtps_relaxes_the_state_spread_only(alpha):
    ens, y, fo = _problem()
    exact = EnVar4D().analyse(ens, y, 0.1, fo, n_params=1)
    relaxed = EnVar4D(rtps=alpha).analyse(ens, y, 0.1, fo, n_params=1)
    torch.testing.assert_close(relaxed.mean, exact.mean)
    torch.testing.assert_close(relaxed.ensemble.mean(-2), exact.ensemble.mean(-2))
    sf, sa = ens.std(-2), exact.ensemble.std(-2)
    want = (1 - alpha) * sa[:2] + alpha * sf[:2]
    torch.testing.assert_close(relaxed.ensemble.std(-2)[:2], want)
    torch.testing.assert_close(relaxed.ensemble[..., 2], exact.ensemble[..., 2])  # θ exact


def test_rtps_out_of_range_refused():
    with pytest.raises(xlatda.XlatdaError, match="rtps must be a number in"):
        EnVar4D(rtps=1.5)


def test_latent_cycle_default_and_weak_windows():
    """Latent cycles default to rtps 0.2 for 4DEnVar; in weak-constraint windows
    (a model with Q, windows of 2 observation times) it widens the analysis spread."""
    from xlatda.methods.inflation import cycle_defaults

    assert cycle_defaults("4denvar", space="latent")["rtps"] == 0.2
    assert "rtps" not in cycle_defaults("4denvar")
    truth = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
    model = xlatda.fit(truth, encoder="pca", latent_dim=6, dynamics="linear",
                       uncertainty="diagonal", progress=False)
    rng = np.random.default_rng(0)
    t = truth.time.values[10:30:2]
    vals = truth.x.sel(time=t).values[:, ::2] + rng.normal(0, 0.3, (len(t), 4))
    obs = xr.Dataset({"x": ("obs", vals.reshape(-1), {"error_std": 0.3})},
                     coords={"k": ("obs", np.tile(np.arange(0.0, 8, 2), len(t))),
                             "time": ("obs", np.repeat(t, 4))})
    bg = truth.isel(time=[9])
    runs = {a: xlatda.cycle(bg, obs, model, method="4denvar", window=2, rtps=a, seed=0,
                            progress=False) for a in (0.0, 1.0)}
    s0 = float(runs[0.0].analysis.x.std("member").mean())
    s1 = float(runs[1.0].analysis.x.std("member").mean())
    assert s1 > 1.2 * s0
