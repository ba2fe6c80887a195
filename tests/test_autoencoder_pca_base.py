"""The autoencoder built on its training PCA (``pca_base=True``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.encoders.autoencoder import ConvAutoencoder
from xlatda.encoders.training import area_weights

GRID = {"kind": "latlon", "lat": [-45.0, -15.0, 15.0, 45.0],
        "lon": [float(x) for x in range(0, 360, 45)]}


def _fields(n: int, seed: int) -> torch.Tensor:
    """Fields on a curved one-parameter manifold: ``a p1 + a^2 p2`` (not linear in ``a``)."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.tensor(GRID["lat"])[:, None].deg2rad()
    lon = torch.tensor(GRID["lon"])[None, :].deg2rad()
    p1, p2 = torch.cos(lat) * torch.sin(lon), torch.sin(2 * lat) * torch.cos(2 * lon)
    a = 2 * torch.rand(n, generator=g) - 1
    x = a[:, None, None] * p1 + 1.5 * (a**2 - 1 / 3)[:, None, None] * p2
    return (x + 0.01 * torch.randn(n, 4, 8, generator=g))[:, None].to(torch.float32)


def test_untrained_is_the_area_weighted_pca():
    x = _fields(60, 0)
    ae = ConvAutoencoder(1, (4, 8), 2, GRID, pca_base=True, channels=(4,))
    ae.fit(x, epochs=0, progress=False)
    w = area_weights(GRID, (4, 8), dtype=torch.float64).sqrt()
    xd = x.double()
    anom = ((xd - xd.mean(0)) * w).flatten(1)
    vh = torch.linalg.svd(anom, full_matrices=False).Vh[:2]
    want = xd.mean(0) + ((anom @ vh.T @ vh).view_as(xd) / w)
    got = ae.decode(ae.encode(x)).double()
    assert torch.allclose(got, want, atol=1e-4)
    assert ae.config["pca_base"] is True


def test_training_beats_pca_on_a_curved_manifold():
    x, x_val, x_test = _fields(400, 1), _fields(80, 2), _fields(200, 3)
    ae = ConvAutoencoder(1, (4, 8), 1, GRID, pca_base=True, channels=(8,), seed=0)
    ae.fit(x, epochs=0, progress=False)
    with torch.no_grad():
        pca_rmse = float((ae.decode(ae.encode(x_test)) - x_test).pow(2).mean().sqrt())
    ae = ConvAutoencoder(1, (4, 8), 1, GRID, pca_base=True, channels=(8,), seed=0)
    ae.fit(x, x_val, epochs=150, lr=3e-3, progress=False, seed=0)
    with torch.no_grad():
        rmse = float((ae.decode(ae.encode(x_test)) - x_test).pow(2).mean().sqrt())
    # the quadratic part (~0.35 RMS) is beyond one linear component; the correction learns it
    assert rmse < 0.6 * pca_rmse, (rmse, pca_rmse)


def test_bad_latent_size_refused():
    with pytest.raises(xlatda.XlatdaError, match="pca_base needs latent_dim"):
        ConvAutoencoder(1, (4, 8), 33, GRID, pca_base=True)


@pytest.mark.parametrize("chunked", [False, True])
def test_fit_save_open_round_trip(tmp_path, chunked):
    x = _fields(50, 4)[:, 0].numpy()
    ds = xr.Dataset({"t": (("time", "lat", "lon"), 280.0 + x)},
                    coords={"time": np.arange(50), "lat": GRID["lat"], "lon": GRID["lon"]})
    model = xlatda.fit(ds, encoder="autoencoder", latent_dim=2, epochs=3, progress=False,
                       encoder_options={"pca_base": True, "channels": [4]})
    model.save(tmp_path / "m.zarr")
    back = xlatda.open_model(tmp_path / "m.zarr")
    data = ds.chunk({"time": 20}) if chunked else ds
    z1, z2 = xlatda.encode(data, model), xlatda.encode(data, back)
    np.testing.assert_array_equal(z1["z"].values, z2["z"].values)
    assert back.encoder.pca_base
