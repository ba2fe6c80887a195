"""Tests of the convolutional (and MLP fallback) autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.encoders.autoencoder import (
    ConvAutoencoder,
    ConvDecoderNet,
    ConvEncoderNet,
    PeriodicConv2d,
)
from xlatda.encoders.base import encoders
from xlatda.encoders.training import seeded
from xlatda.errors import ConfigError, NotFittedError, ShapeError

SMALL = {"channels": [4, 8], "hidden": [16]}


def _latlon(nlat, nlon):
    lat = (np.arange(nlat) + 0.5) * 180.0 / nlat - 90.0
    lon = np.arange(nlon) * 360.0 / nlon
    return {"kind": "latlon", "lat": lat.tolist(), "lon": lon.tolist()}


def _smooth_fields(n, c, nlat, nlon, seed=0):
    """Random combinations of a few large-scale patterns (learnable by a small AE)."""
    g = torch.Generator().manual_seed(seed)
    grid = _latlon(nlat, nlon)
    la, lo = np.meshgrid(np.deg2rad(grid["lat"]), np.deg2rad(grid["lon"]), indexing="ij")
    basis = np.stack(
        [
            np.cos(la),
            np.cos(la) * np.cos(lo),
            np.cos(la) * np.sin(lo),
            np.sin(la),
            np.cos(la) ** 2 * np.cos(2 * lo),
        ]
    )
    basis = torch.tensor(basis, dtype=torch.float32)
    coef = torch.randn(n, c, basis.shape[0], generator=g)
    return torch.einsum("bck,kij->bcij", coef, basis), grid


def _ready(model):
    model._mark_fitted()
    return model.eval()


@settings(max_examples=12, deadline=None)
@given(
    c=st.integers(1, 3),
    nlat=st.integers(2, 9),
    nlon=st.integers(3, 12),
    k=st.integers(1, 6),
    depth=st.integers(1, 3),
    batch=st.integers(1, 3),
    lat_padding=st.sampled_from(["zeros", "replicate"]),
)
def test_conv_shapes(c, nlat, nlon, k, depth, batch, lat_padding):
    ae = _ready(ConvAutoencoder(c, (nlat, nlon), k, channels=[4] * depth, lat_padding=lat_padding))
    x = torch.randn(batch, c, nlat, nlon)
    z = ae.encode(x)
    assert z.shape == (batch, k)
    assert ae.decode(z).shape == (batch, c, nlat, nlon)
    assert ae.architecture == "conv"


@settings(max_examples=8, deadline=None)
@given(c=st.integers(1, 3), s=st.integers(1, 20), k=st.integers(1, 5))
def test_mlp_fallback_shapes(c, s, k):
    ae = _ready(ConvAutoencoder(c, (s,), k, grid={"kind": "generic", "n": s}, hidden=[8]))
    assert ae.architecture == "mlp"
    x = torch.randn(2, c, s)
    assert ae.decode(ae.encode(x)).shape == (2, c, s)


def test_periodic_conv_is_roll_equivariant_and_wraps():
    conv = PeriodicConv2d(2, 3, 3)
    x = torch.randn(2, 2, 5, 8)
    for shift in (1, 3, 8):
        assert torch.allclose(conv(x.roll(shift, -1)), conv(x).roll(shift, -1), atol=1e-6)
    # the western edge sees the eastern edge, and not with lon padding off
    bump = torch.zeros(1, 2, 5, 8)
    bump[..., 2, 0] = 1.0
    base = conv(torch.zeros_like(bump))
    assert (conv(bump) - base)[..., 2, -1].abs().sum() > 0
    flat = PeriodicConv2d(2, 3, 3, periodic_lon=False)
    flat.load_state_dict(conv.state_dict())
    assert torch.all((flat(bump) - flat(torch.zeros_like(bump)))[..., 2, -1] == 0)


@pytest.mark.parametrize("lat_padding", ["zeros", "replicate"])
def test_lat_padding(lat_padding):
    conv = PeriodicConv2d(1, 1, 3, lat_padding=lat_padding)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 0, 0, 1] = 1.0  # output(i) = input(i - 1): looks north... of row 0
        conv.conv.bias.zero_()
    x = torch.arange(1.0, 5.0)[None, None, :, None].expand(1, 1, 4, 3)
    out = conv(x)[0, 0, :, 0]
    first = 0.0 if lat_padding == "zeros" else 1.0
    assert out.tolist() == [first, 1.0, 2.0, 3.0]


def test_feature_extractor_commutes_with_coarse_rolls():
    depth = 2
    enc = ConvEncoderNet(2, (8, 16), [4, 6], 3)
    dec = ConvDecoderNet(3, 2, (8, 16), [4, 6])
    x = torch.randn(2, 2, 8, 16)
    stride = 2**depth
    feats = enc.features(x)
    assert feats.shape == (2, 6, 2, 4)
    assert torch.allclose(enc.features(x.roll(stride, -1)), feats.roll(1, -1), atol=1e-5)
    h = torch.randn(2, 6, 2, 4)
    assert torch.allclose(dec.body(h.roll(1, -1)), dec.body(h).roll(stride, -1), atol=1e-5)
    # the linear bottleneck is global: the full autoencoder is not equivariant
    ae = _ready(ConvAutoencoder(2, (8, 16), 3, **SMALL))
    rolled = ae.decode(ae.encode(x.roll(stride, -1)))
    assert not torch.allclose(rolled, ae.decode(ae.encode(x)).roll(stride, -1), atol=1e-3)


def test_training_loss_falls():
    x, grid = _smooth_fields(48, 2, 8, 16)
    ae = ConvAutoencoder(2, (8, 16), 5, grid=grid, **SMALL)
    hist = ae.fit(x, epochs=8, batch_size=8, lr=3e-3, progress=False, patience=None)
    assert hist["epochs"] == 8 and len(hist["val_loss"]) == 8
    assert hist["train_loss"][-1] < 0.7 * hist["train_loss"][0]
    assert min(hist["val_loss"]) < hist["val_loss"][0]
    assert ae.fitted
    assert torch.allclose(ae.z_mean, ae.encode(x).mean(0), atol=1e-5)


def test_same_seed_same_weights_and_rng_untouched():
    x, grid = _smooth_fields(16, 1, 4, 8)
    torch.manual_seed(99)
    state = torch.random.get_rng_state()
    weights = []
    for init in (0, 0, 1):
        ae = ConvAutoencoder(1, (4, 8), 2, grid=grid, seed=init, **SMALL)
        ae.fit(x, epochs=2, batch_size=4, seed=5, progress=False)
        weights.append([p.detach().clone() for p in ae.parameters()])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2]))


def test_config_rebuild_state_dict_bit_exact():
    x, grid = _smooth_fields(16, 2, 4, 8)
    ae = ConvAutoencoder(2, (4, 8), 3, grid=grid, aux_channels=1, **SMALL)
    aux = torch.randn(16, 1, 4, 8)
    ae.fit(x, aux_train=aux, epochs=1, batch_size=8, progress=False)
    cfg = json.loads(json.dumps(ae.config))
    other = encoders.get("autoencoder")(**cfg)
    assert other.config == ae.config
    other.load_state_dict(ae.state_dict())
    other.eval()
    assert torch.equal(other.encode(x, aux), ae.encode(x, aux))
    z = ae.encode(x, aux)
    assert torch.equal(other.decode(z), ae.decode(z))


def test_aux_channels_feed_the_encoder_only():
    x, grid = _smooth_fields(8, 2, 4, 8)
    ae = _ready(ConvAutoencoder(2, (4, 8), 3, grid=grid, aux_channels=2, **SMALL))
    aux = torch.randn(8, 2, 4, 8)
    assert not torch.allclose(ae.encode(x, aux), ae.encode(x))
    assert torch.equal(ae.encode(x), ae.encode(x, torch.zeros_like(aux)))
    assert ae.decode(ae.encode(x, aux)).shape == x.shape
    with pytest.raises(ShapeError):
        ae.encode(x, aux[:, :1])
    plain = _ready(ConvAutoencoder(2, (4, 8), 3, grid=grid, **SMALL))
    with pytest.raises(ConfigError, match="aux_channels"):
        plain.encode(x, aux)
    with pytest.raises(ShapeError, match="aux_train"):
        ae.fit(x, aux_train=aux[:4], epochs=1, progress=False)


def test_decode_at_and_encode_from():
    x, grid = _smooth_fields(32, 2, 8, 16)
    ae = ConvAutoencoder(2, (8, 16), 4, grid=grid, **SMALL)
    ae.fit(x, epochs=3, batch_size=8, progress=False)
    # at grid points decode_at is decode
    la, lo = np.meshgrid(grid["lat"], grid["lon"], indexing="ij")
    pts = torch.tensor(np.stack([la.ravel(), lo.ravel()], 1), dtype=torch.float32).repeat(2, 1)
    ch = torch.arange(2).repeat_interleave(la.size)
    z = ae.encode(x[:3])
    assert torch.allclose(ae.decode_at(z, pts, ch), ae.decode(z).reshape(3, -1), atol=1e-6)
    # differentiable in z
    zz = z.detach().clone().requires_grad_(True)
    ae.decode_at(zz, pts[:5], ch[:5]).sum().backward()
    assert zz.grad is not None and zz.grad.abs().sum() > 0
    # auto-decoding from scattered points fits the values at least as well as the start
    g = torch.Generator().manual_seed(0)
    sp = torch.stack([torch.rand(60, generator=g) * 140 - 70, torch.rand(60, generator=g) * 360], 1)
    sc = torch.randint(0, 2, (60,), generator=g)
    with torch.no_grad():
        vals = ae.decode_at(z, sp, sc)
    z_hat = ae.encode_from(vals, sp, sc, steps=150, lr=0.05, progress=False)
    assert z_hat.shape == (3, 4)
    with torch.inference_mode():  # as the xarray bridge calls it
        z_inf = ae.encode_from(vals, sp, sc, steps=150, lr=0.05, progress=False)
    assert torch.allclose(z_inf, z_hat)
    with torch.no_grad():
        start = ((ae.decode_at(ae.z_mean.expand(3, -1), sp, sc) - vals) ** 2).mean()
        fit = ((ae.decode_at(z_hat, sp, sc) - vals) ** 2).mean()
    assert fit < 0.05 * start


def test_points_grid_uses_mlp_and_nearest_operator():
    g = torch.Generator().manual_seed(0)
    lat = (torch.rand(12, generator=g) * 160 - 80).tolist()
    lon = (torch.rand(12, generator=g) * 360).tolist()
    ae = ConvAutoencoder(1, (12,), 2, grid={"kind": "points", "lat": lat, "lon": lon}, hidden=[8])
    x = torch.randn(10, 1, 12, generator=g)
    ae.fit(x, epochs=1, batch_size=5, progress=False)
    assert ae.architecture == "mlp"
    pts = torch.tensor([lat, lon]).T
    z = ae.encode(x)
    assert torch.allclose(
        ae.decode_at(z, pts, torch.zeros(12, dtype=torch.long)), ae.decode(z)[:, 0], atol=1e-6
    )


def test_float64_training_and_device_option():
    x, grid = _smooth_fields(8, 1, 4, 8)
    ae = ConvAutoencoder(1, (4, 8), 2, grid=grid, **SMALL)
    ae.fit(x.double(), epochs=1, batch_size=4, dtype="float64", device="cpu", progress=False)
    assert next(ae.parameters()).dtype == torch.float64
    assert ae.encode(x).dtype == torch.float64


def test_periodic_lon_detection():
    assert ConvAutoencoder(1, (4, 8), 2, grid=_latlon(4, 8), **SMALL).periodic_lon
    regional = {
        "kind": "latlon",
        "lat": [0.0, 1.0, 2.0, 3.0],
        "lon": [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0],
    }
    assert not ConvAutoencoder(1, (4, 8), 2, grid=regional, **SMALL).periodic_lon


def test_errors():
    ae = ConvAutoencoder(1, (4, 8), 2, **SMALL)
    with pytest.raises(NotFittedError):
        ae.encode(torch.zeros(1, 1, 4, 8))
    with pytest.raises(ShapeError):
        ae.fit(torch.zeros(4, 2, 4, 8))
    with pytest.raises(ConfigError, match="architecture"):
        ConvAutoencoder(1, (4, 8), 2, architecture="unet")
    with pytest.raises(ConfigError, match="2-D"):
        ConvAutoencoder(1, (8,), 2, architecture="conv")
    with pytest.raises(ConfigError, match="activation"):
        ConvAutoencoder(1, (4, 8), 2, activation="swish2")
    with pytest.raises(ConfigError, match="odd"):
        ConvAutoencoder(1, (4, 8), 2, kernel_size=4)
    with pytest.raises(ConfigError, match="grid"):
        _ready(ae).decode_at(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1).long())


def test_construction_is_deterministic():
    with seeded(0):
        a = ConvAutoencoder(1, (4, 8), 2, **SMALL)
    b = ConvAutoencoder(1, (4, 8), 2, **SMALL)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
