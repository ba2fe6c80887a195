"""fit records the decoder's held-out reconstruction error in physical units."""

from __future__ import annotations

import numpy as np
import xarray as xr

import xlatda


def _field(seed=0, n=60):
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(40, 50, 6), np.linspace(0, 10, 7)
    modes = rng.standard_normal((3, 6, 7))
    vals = 280 + np.einsum("tk,kij->tij", rng.standard_normal((n, 3)) * 2.0, modes)
    vals = vals + 0.5 * rng.standard_normal(vals.shape)  # what 3 modes cannot hold
    return xr.Dataset({"t": (("time", "lat", "lon"), vals, {"units": "K"})},
                      coords={"time": np.arange(n), "lat": lat, "lon": lon})


def test_representation_error_is_the_held_out_reconstruction_rmse_in_kelvin():
    ds = _field()
    model = xlatda.fit(ds, encoder="pca", latent_dim=3, progress=False, validation=0.25)
    rec = model.history["representation_error"]
    assert rec["channels"] == ["t"] and rec["n_samples"] == 15
    # the unrepresentable part is white noise of 0.5 K (a little less is explained by 3 EOFs)
    assert 0.4 < rec["rmse"][0] < 0.55
    # and it is what decoding the encoded states misses, in the state's units
    full = xlatda.decode(xlatda.encode(ds, model), model)
    overall = float(np.sqrt(((full.t - ds.t) ** 2).mean()))
    assert abs(overall - rec["rmse"][0]) < 0.08
    # a richer latent space misses less
    big = xlatda.fit(ds, encoder="pca", latent_dim=20, progress=False, validation=0.25)
    assert big.history["representation_error"]["rmse"][0] < rec["rmse"][0]


def test_no_validation_no_record():
    model = xlatda.fit(_field(), encoder="pca", latent_dim=3, progress=False, validation=None)
    assert "representation_error" not in model.history
