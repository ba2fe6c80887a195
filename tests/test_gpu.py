"""device="cuda" through every path (runs only where CUDA exists; skipped elsewhere).

One test per path: training (each encoder, dynamics + Q), encode/decode
(eager, lazy, at points, from scattered observations), dynamics (evolve with
noise, forecast), every assimilation method (latent-space cycles for the
filters, 3DVar and 4DEnVar; kernels on CUDA tensors for LETKF, VAE-Var and
score-based DA), the lazy batch and the out-of-core paths.

``XLATDA_GPU_TEST_DEVICE=cpu`` runs the same code on the CPU (used to check
these tests where no GPU is lent; the ``gpu`` marker still skips them under
pytest without CUDA).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("XLATDA_GPU_TEST_DEVICE", "cuda")


def _on_device(model) -> bool:
    mods = [m for m in (model.encoder, model.dynamics, model.model_error) if m is not None]
    return all(t.device.type == torch.device(DEVICE).type
               for m in mods for t in (*m.parameters(), *m.buffers()))


@pytest.fixture(scope="module")
def l96():
    return xlatda.datasets.lorenz96(n=16, steps=300, seed=0)


@pytest.fixture(scope="module")
def model(l96):
    return xlatda.fit(l96, encoder="autoencoder", latent_dim=8, dynamics="ode",
                      uncertainty="diagonal", epochs=2, device=DEVICE, progress=False,
                      dynamics_options={"width": 32, "depth": 1})


@pytest.mark.parametrize("encoder", ["pca", "autoencoder", "vae"])
def test_training_on_device(l96, encoder):
    m = xlatda.fit(l96, encoder=encoder, latent_dim=8, dynamics="ode", uncertainty="diagonal",
                   epochs=2, device=DEVICE, progress=False,
                   dynamics_options={"width": 16, "depth": 1})
    assert _on_device(m)
    assert np.isfinite(xlatda.encode(l96.isel(time=slice(0, 4)), m).z.values).all()


def test_sinr_training_encode_points_on_device():
    ds = xlatda.datasets.shallow_water(nlat=16, nlon=32, hours=12, seed=0, progress=False)
    m = xlatda.fit(ds, encoder="sinr", latent_dim=4, epochs=2, device=DEVICE, progress=False)
    assert _on_device(m)
    obs = xlatda.obs.sample_points(ds.isel(trajectory=0, time=[3]), n=40, error_std={"height": 5.0,
                                   "vorticity": 1e-6}, seed=0)
    z = obs.lda.encode(m)  # zero-shot encoding of scattered points (auto-decoding)
    assert np.isfinite(z.z.values).all()
    at = z.lda.decode(m, at=obs)
    assert np.isfinite(at.height.values).all()


def test_encode_decode_eager_and_lazy_on_device(l96, model):
    z = xlatda.encode(l96, model)
    back = xlatda.decode(z, model)
    lazy = xlatda.decode(xlatda.encode(l96.chunk(time=64), model), model)
    assert lazy.x.chunks is not None
    np.testing.assert_allclose(lazy.x.values, back.x.values, atol=1e-4)
    # The same model on the CPU gives the same latents (up to float32 kernels).
    cpu = xlatda.encode(l96, model, device="cpu")
    model.to(device=DEVICE)
    np.testing.assert_allclose(cpu.z.values, z.z.values, atol=1e-3)


def test_dynamics_on_device(l96, model):
    z = xlatda.encode(l96.isel(time=[0, 5]), model)
    fc = z.lda.evolve(model, steps=3, members=4, noise=True, seed=1)
    again = z.chunk(time=1).lda.evolve(model, steps=3, members=4, noise=True, seed=1)
    np.testing.assert_allclose(fc.z.values, again.z.values, atol=1e-5)
    fields = l96.isel(time=[0]).lda.forecast(model, steps=2)
    assert np.isfinite(fields.x.values).all()


@pytest.mark.parametrize("method,kw", [
    ("etkf", {"inflation": 1.05}), ("enkf", {}), ("denkf", {}), ("ensrf", {}),
    ("3dvar", {"b_std": 0.5}), ("4denvar", {"window": 2}),
])
def test_latent_cycles_on_device(l96, model, method, kw):
    obs = xlatda.obs.sample_points(l96.isel(time=slice(1, 5)), n=8, error_std=1.0, seed=1)
    res = xlatda.cycle(l96.isel(time=0), obs, model, method=method, members=8, init_std=0.5,
                       progress=False, **kw)
    assert res.analysis.sizes["time"] == 4
    assert np.isfinite(res.analysis.x.values).all()


def test_jacobian_initial_ensemble_on_device(l96, model):
    obs = xlatda.obs.sample_points(l96.isel(time=slice(1, 3)), n=8, error_std=1.0, seed=1)
    res = xlatda.cycle(l96.isel(time=0), obs, model, method="etkf", members=8, init_std=0.3,
                       init="jacobian", progress=False)
    assert np.isfinite(res.analysis.x.values).all()


def test_letkf_kernel_on_device():
    from xlatda.methods import LETKF
    from xlatda.methods.localization import IndexDistance

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    ens = torch.randn(20, 40, device=DEVICE, dtype=torch.float64, generator=gen)
    pos = torch.arange(0, 40, 2, dtype=torch.float64)
    loc = IndexDistance(40, pos, periodic=True, channels=1)
    out = LETKF(radius=4.0).analyse(ens, ens[:, ::2], torch.zeros(20, device=DEVICE,
                                    dtype=torch.float64), torch.ones(20, device=DEVICE,
                                    dtype=torch.float64), generator=gen, locations=loc)
    assert out.device.type == torch.device(DEVICE).type and torch.isfinite(out).all()


def test_vaevar_kernel_on_device():
    from xlatda.methods.vaevar import VAEVar

    g = torch.Generator().manual_seed(0)
    n, k = 12, 4
    dec = torch.nn.Linear(k, n, dtype=torch.float64).to(DEVICE)
    xb = torch.randn(1, n, generator=g, dtype=torch.float64).to(DEVICE)
    y = torch.randn(1, 5, generator=g, dtype=torch.float64).to(DEVICE)

    def h(x):
        return x[..., :5]

    out = VAEVar(decoder=dec, std=torch.ones(n, dtype=torch.float64, device=DEVICE),
                 latent_dim=k).analyse(xb, y, 0.5, h)
    assert out.mean.device.type == torch.device(DEVICE).type
    assert torch.isfinite(out.mean).all()


def test_score_da_on_device():
    from xlatda.methods.diffusion import CosineSchedule, GaussianEps
    from xlatda.methods.score import ScoreDA

    net = GaussianEps(torch.zeros(1, 2, device=DEVICE), torch.eye(2, device=DEVICE))
    da = ScoreDA(net=net, schedule=CosineSchedule(), steps=8, event_shape=(1, 2))
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    out = da.analyse(4, lambda x: x[..., 0, :1], torch.tensor([0.5], device=DEVICE), 0.1,
                     generator=gen, device=DEVICE)
    assert out.device.type == torch.device(DEVICE).type and torch.isfinite(out).all()


def test_batch_and_streaming_on_device(l96, model, tmp_path):
    from xlatda.batch import assimilate_cases, stack_obs
    from xlatda.streaming import encode_to_zarr

    idx = [10, 20, 30]
    cases = l96.isel(time=idx).swap_dims(time="case")
    obs = stack_obs([xlatda.obs.sample_points(l96.isel(time=[t]), n=6, error_std=1.0, seed=t)
                     for t in idx])
    ana = assimilate_cases(cases.chunk(case=1), obs.chunk(case=1), model, members=6,
                           init_std=0.5)
    assert np.isfinite(ana.x.values).all()
    out = encode_to_zarr(l96, model, tmp_path / "z.zarr", chunk=100, device=DEVICE,
                         progress=False, client=False)
    np.testing.assert_allclose(out.z.values, xlatda.encode(l96, model).z.values, atol=1e-5)


def test_model_store_round_trip_on_device(l96, model, tmp_path):
    model.save(tmp_path / "m.zarr")
    again = xlatda.open_model(tmp_path / "m.zarr", device=DEVICE)
    assert _on_device(again)
    xr.testing.assert_allclose(xlatda.encode(l96.isel(time=[0]), again),
                               xlatda.encode(l96.isel(time=[0]), model))


def test_physical_filters_on_device():
    from xlatda.methods import ETKF

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    ens = torch.randn(20, 40, device=DEVICE, dtype=torch.float64, generator=gen)
    hx = ens[:, ::2]
    y = torch.zeros(20, device=DEVICE, dtype=torch.float64)
    out = ETKF(inflation=1.02).analyse(ens, hx, y, torch.ones(20, device=DEVICE,
                                                                dtype=torch.float64))
    assert out.device.type == torch.device(DEVICE).type and torch.isfinite(out).all()
