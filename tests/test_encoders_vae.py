"""Tests of the VAE: KL and reparameterisation, loss, training, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.encoders.autoencoder import ConvEncoderNet, MLPEncoderNet
from xlatda.encoders.base import encoders
from xlatda.encoders.vae import VAE, kl_divergence, reparameterize
from xlatda.errors import ConfigError, NotFittedError

SMALL = {"channels": [4, 8], "hidden": [16]}


def _latlon(nlat, nlon):
    lat = (np.arange(nlat) + 0.5) * 180.0 / nlat - 90.0
    lon = np.arange(nlon) * 360.0 / nlon
    return {"kind": "latlon", "lat": lat.tolist(), "lon": lon.tolist()}


def _fields(n, c, nlat, nlon, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = _latlon(nlat, nlon)
    la, lo = np.meshgrid(np.deg2rad(grid["lat"]), np.deg2rad(grid["lon"]), indexing="ij")
    basis = torch.tensor(
        np.stack([np.cos(la), np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)]),
        dtype=torch.float32,
    )
    coef = torch.randn(n, c, 4, generator=g)
    return torch.einsum("bck,kij->bcij", coef, basis), grid


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_divergence(mu, logvar), ref)
    assert torch.all(kl_divergence(mu, logvar) >= 0)


def test_reparameterisation_statistics_and_gradients():
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64).expand(40000, 2).clone()
    logvar = torch.tensor([0.0, math.log(0.25)], dtype=torch.float64).expand(40000, 2).clone()
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.02)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 0.5], dtype=torch.float64), atol=0.02)
    z.sum().backward()
    assert torch.all(mu.grad == 1)
    # d z / d logvar = eps * std / 2, whose mean over eps is zero
    assert abs(float(logvar.grad.mean())) < 0.02
    z2 = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    assert torch.equal(z, z2)


def test_loss_matches_hand_computation():
    x, grid = _fields(4, 2, 4, 8)
    vae = VAE(2, (4, 8), 3, grid=grid, beta=0.5, **SMALL)
    gen = torch.Generator().manual_seed(3)
    loss = vae._loss((x, None), gen)
    gen.manual_seed(3)
    mu, logvar = vae._distribution(x)
    w = reparameterize(mu, logvar, gen)
    mean = vae._decode(w)
    var = vae.decoder_variance.reshape(1, 2, 1, 1)
    area = torch.as_tensor(np.cos(np.deg2rad(grid["lat"])), dtype=torch.float32)
    area = (area / area.mean())[:, None]
    nll = 0.5 * (area * ((x - mean) ** 2 / var + var.log() + math.log(2 * math.pi))).sum((1, 2, 3))
    ref = (nll + 0.5 * kl_divergence(mu, logvar)).mean() / (2 * 4 * 8)
    assert torch.allclose(loss, ref, rtol=1e-5)


def test_decoder_variance_learned_or_fixed():
    learned = VAE(2, (4, 8), 3, **SMALL)
    assert isinstance(learned.decoder_log_var, torch.nn.Parameter)
    assert learned.decoder_variance.shape == (2,)
    scalar = VAE(2, (4, 8), 3, decoder_var="scalar", **SMALL)
    assert scalar.decoder_variance.shape == (1,)
    fixed = VAE(2, (4, 8), 3, decoder_std=0.3, **SMALL)
    assert "decoder_log_var" not in dict(fixed.named_parameters())
    assert torch.allclose(fixed.decoder_variance, torch.full((2,), 0.09))
    assert "decoder_log_var" in fixed.state_dict()


def test_training_loss_falls_and_encode_is_the_mean():
    x, grid = _fields(48, 2, 8, 16)
    vae = VAE(2, (8, 16), 4, grid=grid, **SMALL)
    hist = vae.fit(x, epochs=10, batch_size=8, lr=5e-3, progress=False, patience=None)
    assert hist["train_loss"][-1] < hist["train_loss"][0] - 0.2
    mu, _ = vae.encode_distribution(x)
    assert torch.equal(vae.encode(x), mu)
    assert torch.equal(vae.encode(x), vae.encode(x))  # deterministic
    # the decoder variance is learned (it starts at one)
    assert not torch.allclose(vae.decoder_variance, torch.ones(2), atol=1e-3)


def test_same_seed_same_weights():
    x, grid = _fields(16, 1, 4, 8)
    runs = []
    for seed in (0, 0, 1):
        vae = VAE(1, (4, 8), 2, grid=grid, **SMALL)
        vae.fit(x, epochs=2, batch_size=4, seed=seed, progress=False)
        runs.append([p.detach().clone() for p in vae.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_config_rebuild_state_dict_bit_exact():
    x, grid = _fields(16, 2, 4, 8)
    vae = VAE(2, (4, 8), 3, grid=grid, beta=2.0, decoder_std=0.5, **SMALL)
    vae.fit(x, epochs=1, batch_size=8, progress=False)
    cfg = json.loads(json.dumps(vae.config))
    assert cfg["beta"] == 2.0 and cfg["decoder_std"] == 0.5
    other = encoders.get("vae")(**cfg)
    other.load_state_dict(vae.state_dict())
    other.eval()
    assert torch.equal(other.encode(x), vae.encode(x))
    w = torch.randn(3, 3)
    assert torch.equal(other.decode(w), vae.decode(w))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(other.sample(5, generator=g1), vae.sample(5, generator=g2))


@settings(max_examples=8, deadline=None)
@given(c=st.integers(1, 2), nlat=st.integers(2, 6), nlon=st.integers(3, 9), k=st.integers(1, 4))
def test_shapes_and_shared_building_blocks(c, nlat, nlon, k):
    vae = VAE(c, (nlat, nlon), k, **SMALL)
    vae._mark_fitted()
    assert isinstance(vae.encoder_net, ConvEncoderNet)
    assert vae.encoder_net.head.out_features == 2 * k
    x = torch.randn(3, c, nlat, nlon)
    assert vae.encode(x).shape == (3, k)
    assert vae.decode(torch.zeros(2, k)).shape == (2, c, nlat, nlon)
    mlp = VAE(c, (nlat * nlon,), k, hidden=[8])
    assert isinstance(mlp.encoder_net, MLPEncoderNet)


def test_encode_from_is_a_map_estimate():
    x, grid = _fields(32, 1, 8, 16)
    vae = VAE(1, (8, 16), 3, grid=grid, **SMALL)
    vae.fit(x, epochs=3, batch_size=8, progress=False)
    g = torch.Generator().manual_seed(0)
    pts = torch.stack(
        [torch.rand(50, generator=g) * 140 - 70, torch.rand(50, generator=g) * 360], 1
    )
    ch = torch.zeros(50, dtype=torch.long)
    with torch.no_grad():
        vals = vae.decode_at(vae.encode(x[:2]), pts, ch)
    w = vae.encode_from(vals, pts, ch, steps=200, lr=0.05, progress=False)

    def cost(z):
        with torch.no_grad():
            r = vae.decode_at(z, pts, ch) - vals
            wts = torch.cos(torch.deg2rad(pts[:, 0]))
            wts = wts / wts.mean() / vae.decoder_variance
            return 0.5 * (wts * r**2).sum(-1) + 0.5 * (z**2).sum(-1)

    assert torch.all(cost(w) <= cost(torch.zeros_like(w)))
    assert torch.all(cost(w) <= cost(vae.encode(x[:2])) + 1e-4)


def test_errors():
    with pytest.raises(ConfigError, match="decoder_var"):
        VAE(1, (4, 8), 2, decoder_var="pixel")
    with pytest.raises(ConfigError, match="decoder_std"):
        VAE(1, (4, 8), 2, decoder_std=0.0)
    with pytest.raises(ConfigError, match="beta"):
        VAE(1, (4, 8), 2, beta=-1.0)
    with pytest.raises(NotFittedError):
        VAE(1, (4, 8), 2, **SMALL).decode(torch.zeros(1, 2))
