"""SINR: reusing the codes learned for the training snapshots (``reuse_codes``)."""

from __future__ import annotations

import torch

from xlatda.encoders.sinr import SINR
from xlatda.sphere import gaussian_grid, longitudes


def _fitted():
    lat, _ = gaussian_grid(8)
    grid = {"kind": "latlon", "lat": lat.tolist(), "lon": longitudes(16).tolist()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 8, 16, generator=gen)
    enc = SINR(2, (8, 16), 8, grid, hidden=8, depth=1, max_freq=2, reuse_codes=True)
    enc.fit(x, epochs=3, batch_size=3, progress=False)
    return enc, x


def test_training_snapshots_get_their_learned_codes():
    enc, x = _fitted()
    z = enc.encode(x, steps=5, progress=False)
    torch.testing.assert_close(z, enc._train_codes)
    # equal up to rounding (float64 round trip, shuffled order) still matches
    perm = torch.tensor([3, 0, 5])
    z2 = enc.encode(x[perm].double().float() * (1 + 1e-7), steps=5, progress=False)
    torch.testing.assert_close(z2, enc._train_codes[perm])


def test_new_fields_are_auto_decoded_and_mixed_batches_keep_order():
    enc, x = _fitted()
    new = x[:2] + 0.5
    mixed = torch.cat([x[:1], new[:1], x[1:2]])
    z = enc.encode(mixed, steps=20, progress=False)
    fresh = enc.encode(new[:1], steps=20, progress=False)
    torch.testing.assert_close(z[0], enc._train_codes[0])
    torch.testing.assert_close(z[2], enc._train_codes[1])
    torch.testing.assert_close(z[1], fresh[0])
    # off by default, and per call
    off = enc.encode(x[:1], steps=20, progress=False, reuse_codes=False)
    assert not torch.equal(off[0], enc._train_codes[0])


def test_default_is_off_and_config_round_trips():
    enc, x = _fitted()
    assert SINR(**enc.config).training_defaults["reuse_codes"] is True
    cfg = dict(enc.config, reuse_codes=False)
    rebuilt = SINR(**cfg)
    rebuilt.load_state_dict(enc.state_dict())
    # a reloaded model has no training codes: it auto-decodes
    z = rebuilt.encode(x[:1], steps=5, progress=False, reuse_codes=True)
    assert z.shape == (1, 8)
