"""SINR's latent coordinates: ``latent_basis="pca"`` (principal components in the field metric).

The decoder is affine in the code, so any invertible affine change of the
code's coordinates leaves the represented fields unchanged; the ``"pca"``
basis is the one in which the training latents are uncorrelated and a unit
of latent distance is a unit of cos-lat weighted RMS field distance.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.encoders.sinr import SINR, SINR_PRESETS
from xlatda.errors import ConfigError, XlatdaError
from xlatda.sphere import gaussian_grid, longitudes

OPTS = {"hidden": 16, "depth": 2, "max_freq": 3, "fit_codes": "solve", "seed": 0}


def _grid(nlat: int = 10, nlon: int = 20) -> dict:
    lat, _ = gaussian_grid(nlat)
    return {"kind": "latlon", "lat": lat.tolist(), "lon": longitudes(nlon).tolist()}


def _fields(n: int = 30, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 10, 20, generator=gen, dtype=torch.float64).cumsum(-1).cumsum(-2)
    return (x / x.std()).float()


@pytest.fixture(scope="module")
def pair():
    """The same training run in both bases (training is in the raw codes either way)."""
    x = _fields()
    out = {}
    for basis in ("codes", "pca"):
        enc = SINR(2, (10, 20), 12, _grid(), latent_basis=basis, **OPTS)
        enc.fit(x, epochs=6, batch_size=10, lr_weights=2e-2, progress=False)
        out[basis] = enc
    return out, x


def _weighted_ms(enc: SINR, field: torch.Tensor) -> torch.Tensor:
    """Cos-lat weighted mean square per sample and channel, ``(B, C)``."""
    lat = torch.tensor(enc.grid["lat"], dtype=torch.float64)
    w = torch.cos(torch.deg2rad(lat))[:, None].expand(10, 20)
    return (field.double() ** 2 * w).sum((-2, -1)) / w.sum()


def test_same_fields_in_both_bases(pair):
    encs, x = pair
    rec = {b: e.decode(e.encode(x)) for b, e in encs.items()}
    torch.testing.assert_close(rec["pca"], rec["codes"], atol=2e-5, rtol=1e-4)
    # and the two latents are one invertible affine map apart
    zc, zp = encs["codes"].encode(x), encs["pca"].encode(x)
    assert not torch.allclose(zc, zp)


def test_training_latents_are_uncorrelated_principal_components(pair):
    encs, x = pair
    enc = encs["pca"]
    z = enc.train_codes.double()
    torch.testing.assert_close(z, enc.encode(x).double(), atol=1e-4, rtol=1e-4)
    for c in range(2):
        zc = z[:, c * 6 : (c + 1) * 6]
        cov = torch.cov(zc.T)
        off = cov - torch.diag(cov.diagonal())
        assert float(off.abs().max()) < 1e-4 * float(cov.diagonal().max())
        var = cov.diagonal()
        assert bool((var[:-1] >= var[1:] * (1 - 1e-4)).all())  # descending
    torch.testing.assert_close(enc.code_mean.double(), torch.zeros(12, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.code_scale.double(), z.std(0), atol=1e-5, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_latent_distance_is_weighted_rms_field_distance(pair, seed):
    """||z1_c - z2_c||^2 = cos-lat weighted mean square of the decoded difference (exact)."""
    enc = pair[0]["pca"]
    gen = torch.Generator().manual_seed(seed)
    z1, z2 = (torch.randn(3, 12, generator=gen) * 0.3 for _ in range(2))
    diff = enc.decode(z1.double()) - enc.decode(z2.double())
    lhs = ((z1 - z2).double().reshape(3, 2, 6) ** 2).sum(-1)
    torch.testing.assert_close(_weighted_ms(enc, diff), lhs, atol=1e-5, rtol=1e-3)


def test_network_and_affine_decoders_agree_in_the_pca_basis(pair):
    enc = pair[0]["pca"]
    z = enc.train_codes[:4]
    pts = torch.tensor([[10.0, 20.0], [-33.0, 140.0], [71.0, 300.0]])
    ch = torch.tensor([0, 1, 1])
    fast = enc.decode_at(z, pts, ch)
    enc.affine_decode = False
    try:
        slow, grid_slow = enc.decode_at(z, pts, ch), enc.decode(z)
    finally:
        enc.affine_decode = True
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.decode(z), grid_slow, atol=1e-5, rtol=1e-4)


def test_adam_auto_decoding_works_in_the_pca_basis(pair):
    encs, x = pair
    enc = encs["pca"]
    za = enc.encode(x[:3], method="adam", steps=300, lr=5e-2)
    err_adam = float(((enc.decode(za) - x[:3]) ** 2).mean())
    err_solve = float(((enc.decode(enc.encode(x[:3])) - x[:3]) ** 2).mean())
    assert err_solve <= err_adam + 1e-6
    assert err_adam <= 1.05 * err_solve


def test_state_dict_round_trip_and_old_state_dicts(pair):
    encs, x = pair
    enc = encs["pca"]
    rebuilt = SINR(**enc.config)
    rebuilt.load_state_dict(enc.state_dict())
    torch.testing.assert_close(rebuilt.encode(x[:5]), enc.encode(x[:5]))
    assert rebuilt.config["latent_basis"] == "pca"
    # a state dict saved before latent bases existed loads as the raw codes
    old = {k: v for k, v in encs["codes"].state_dict().items() if not k.startswith("basis_")}
    legacy = SINR(**encs["codes"].config)
    legacy.load_state_dict(old)
    torch.testing.assert_close(legacy.decode(encs["codes"].train_codes[:3]),
                               encs["codes"].decode(encs["codes"].train_codes[:3]))


def test_refit_starts_from_the_raw_codes(pair):
    """A second fit trains in raw codes again (the basis is rebuilt at the end)."""
    x = _fields(seed=3)
    enc = SINR(2, (10, 20), 12, _grid(), latent_basis="pca", **OPTS)
    ref = SINR(2, (10, 20), 12, _grid(), latent_basis="pca", **OPTS)
    for e in (enc, ref):
        e.fit(x, epochs=2, batch_size=10, progress=False)
    enc.fit(x, epochs=2, batch_size=10, progress=False)
    ref.fit(x, epochs=2, batch_size=10, progress=False)
    torch.testing.assert_close(enc.decode(enc.encode(x)), ref.decode(ref.encode(x)))


def test_bad_latent_basis_is_refused_before_work():
    with pytest.raises(ConfigError, match="latent_basis must be one of") as err:
        SINR(2, (10, 20), 12, _grid(), latent_basis="whiten", **OPTS)
    assert isinstance(err.value, XlatdaError) and isinstance(err.value, ValueError)
    assert "'whiten'" in str(err.value)


def test_cpu_preset_uses_the_pca_basis():
    assert SINR_PRESETS["cpu"]["latent_basis"] == "pca"
    assert SINR_PRESETS["paper"].get("latent_basis", "codes") == "codes"


def test_independent_spread_per_coordinate_is_the_climatological_field_variance(pair):
    """Why the basis matters for latent ensembles (benchmarks/bench_sinr.py part c).

    Perturbing each latent coordinate independently with the training spread
    (``init_std = zstd``) gives, in the pca basis, exactly the weighted field
    variance of the training decodes; in raw codes it ignores their
    correlations.
    """
    enc = pair[0]["pca"]
    z = enc.train_codes.double()
    rec = enc.decode(z)
    field_var = _weighted_ms(enc, rec - rec.mean(0)).sum(0) / (z.shape[0] - 1)  # (C,)
    # E ||J dz_c||_w^2 for dz ~ N(0, diag(s^2)) = sum_k s_k^2 ||J e_k||_w^2 = sum_k s_k^2
    eye = torch.eye(12, dtype=torch.float64)
    base = enc.decode(torch.zeros(1, 12, dtype=torch.float64))
    # (K C, C): the field norm of a unit step along each coordinate (1 in its own channel)
    per_coord = torch.stack([_weighted_ms(enc, enc.decode(eye[k : k + 1]) - base)[0]
                             for k in range(12)])
    s2 = z.var(0)
    expected = (per_coord * s2[:, None]).sum(0)
    torch.testing.assert_close(expected, field_var, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(per_coord.sum(0), torch.full((2,), 6.0, dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)
