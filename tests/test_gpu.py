"""device="cuda" through every path (runs only where CUDA exists; skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xlatda

pytestmark = pytest.mark.gpu


def test_end_to_end_on_cuda(tmp_path):
    ds = xlatda.datasets.lorenz96(n=16, steps=300, seed=0)
    for encoder in ("pca", "autoencoder"):
        model = xlatda.fit(ds, encoder=encoder, latent_dim=8, dynamics="ode",
                           uncertainty="diagonal", epochs=2, device="cuda", progress=False,
                           dynamics_options={"width": 32, "depth": 1})
        assert model.device.type == "cuda"
        z = xlatda.encode(ds, model)
        back = xlatda.decode(z, model)
        assert np.isfinite(back.x.values).all()
        fc = z.isel(time=[0, 5]).lda.evolve(model, steps=3, members=4, noise=True)
        assert np.isfinite(fc.z.values).all()
        obs = xlatda.obs.sample_points(ds.isel(time=slice(1, 6)), n=8, error_std=1.0, seed=1)
        res = xlatda.cycle(ds.isel(time=0), obs, model, method="etkf", members=8,
                           init_std=0.5, progress=False)
        assert res.analysis.sizes["time"] == 5
        model.save(tmp_path / f"{encoder}.zarr")
        again = xlatda.open_model(tmp_path / f"{encoder}.zarr", device="cuda")
        np.testing.assert_allclose(xlatda.encode(ds.isel(time=[0]), again).z.values,
                                   z.z.isel(time=[0]).values, atol=1e-5)


def test_physical_filters_on_cuda():
    from xlatda.assimilate import ETKF

    gen = torch.Generator(device="cuda").manual_seed(0)
    ens = torch.randn(20, 40, device="cuda", dtype=torch.float64, generator=gen)
    hx = ens[:, ::2]
    y = torch.zeros(20, device="cuda", dtype=torch.float64)
    out = ETKF(inflation=1.02).analyse(ens, hx, y, torch.ones(20, device="cuda",
                                                                dtype=torch.float64))
    assert out.device.type == "cuda" and torch.isfinite(out).all()
