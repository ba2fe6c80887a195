"""Multimodal encoder input at the xarray level (SLAMS): rasterize, fit(aux=), encode(aux=)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, LayoutError, ObservationError


@pytest.fixture(scope="module")
def sw():
    return xlatda.datasets.shallow_water(nlat=8, nlon=16, hours=12, trajectories=1, seed=0,
                                         progress=False).isel(trajectory=0)


@pytest.fixture(scope="module")
def images(sw):
    obs = xlatda.obs.sample_points(sw, n=20, error_std={"height": 1.0, "vorticity": 1e-6},
                                   seed=1)
    return obs, xlatda.obs.rasterize(obs, sw)


@pytest.fixture(scope="module")
def model(sw, images):
    return xlatda.fit(sw, encoder="autoencoder", latent_dim=8, epochs=2, aux=images[1],
                      progress=False, encoder_options={"channels": [4, 8]})


def test_rasterize_puts_each_value_in_its_nearest_cell(sw, images):
    obs, img = images
    assert img.height.dims == ("time", "lat", "lon")
    assert img.height.attrs.get("units") == sw.height.attrs.get("units")
    sums: dict = {}
    for i in range(obs.sizes["obs"]):  # reference: a plain loop over observations
        o = obs.isel(obs=i)
        ilat = int(np.abs(sw.lat.values - float(o.lat)).argmin())
        ilon = int(np.abs((sw.lon.values - float(o.lon) + 180) % 360 - 180).argmin())
        key = (int(np.flatnonzero(sw.time.values == o.time.values)[0]), ilat, ilon)
        sums.setdefault(key, []).append(float(o.height))
    expected = np.full(img.height.shape, np.nan)
    for key, vals in sums.items():
        expected[key] = np.mean(vals)
    np.testing.assert_allclose(img.height.values, expected, rtol=1e-6)


def test_rasterize_averages_values_in_one_cell():
    truth = xlatda.datasets.lorenz96(n=6, steps=1, seed=0)
    obs = xr.Dataset({"x": ("obs", [1.0, 3.0, 5.0], {"error_std": 1.0})},
                     coords={"k": ("obs", [2.0, 2.2, 4.0]),
                             "time": ("obs", np.repeat(truth.time.values[:1], 3))})
    img = xlatda.obs.rasterize(obs, truth)
    assert img.x.sizes["time"] == truth.sizes["time"]
    np.testing.assert_allclose(img.x.isel(time=0).values,
                               [np.nan, np.nan, 2.0, np.nan, 5.0, np.nan])
    assert bool(img.x.isel(time=1).isnull().all())


def test_rasterize_refuses_times_outside_the_grid(sw, images):
    obs, _ = images
    with pytest.raises(ObservationError, match="not times"):
        xlatda.obs.rasterize(obs, sw.isel(time=[0]))


def test_fit_and_encode_with_aux(sw, images, model, tmp_path):
    _, img = images
    spec = model.encoder.aux_spec
    assert spec["variables"] == ["height", "vorticity"]
    assert model.encoder.aux_channels == 4  # values + observed masks
    z = sw.lda.encode(model, aux=img)
    z_none = sw.lda.encode(model)
    assert z.z.dims == ("time", "latent")
    assert float(abs(z.z - z_none.z).max()) > 0  # the images reach the encoder
    lazy = sw.chunk(time=4).lda.encode(model, aux=img)
    assert lazy.z.chunks is not None
    np.testing.assert_allclose(lazy.z.values, z.z.values, rtol=1e-5, atol=1e-6)
    lazy_aux = sw.chunk(time=4).lda.encode(model, aux=img.chunk(time=3))
    np.testing.assert_allclose(lazy_aux.z.values, z.z.values, rtol=1e-5, atol=1e-6)
    # the decoder returns the state only
    back = z.lda.decode(model)
    assert set(back.data_vars) == {"height", "vorticity"}
    model.save(tmp_path / "m.zarr")
    again = xlatda.open_model(tmp_path / "m.zarr")
    assert again.encoder.aux_spec == spec
    np.testing.assert_array_equal(sw.lda.encode(again, aux=img).z.values, z.z.values)


def test_aux_refusals(sw, images, model):
    _, img = images
    with pytest.raises(ConfigError, match="takes no auxiliary"):
        xlatda.fit(sw, encoder="pca", latent_dim=4, aux=img, progress=False)
    pca = xlatda.fit(sw, encoder="pca", latent_dim=4, progress=False)
    with pytest.raises(ConfigError, match="without auxiliary"):
        sw.lda.encode(pca, aux=img)
    with pytest.raises(LayoutError, match="state grid"):
        sw.lda.encode(model, aux=img.isel(lon=slice(0, 8)))
    with pytest.raises(LayoutError, match="sample dims"):
        sw.lda.encode(model, aux=img.isel(time=[0, 1]))
    with pytest.raises(ConfigError, match="aux_dropout"):
        xlatda.fit(sw, encoder="autoencoder", latent_dim=4, epochs=1, aux=img, aux_dropout=1.0,
                   progress=False)
