"""Latent observation operators next to a model's fixed mask (WFDE5: sea NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from tests.conftest import shared_file
from xlatda.errors import ObservationError


@pytest.fixture(scope="module")
def wfde5_model():
    ds = xr.open_dataset(shared_file("wfde5_air_temperature_2017-01_uk.nc"))[["Tair"]]
    ds = ds.isel(time=slice(0, 120)).load()
    model = xlatda.fit(ds, encoder="pca", latent_dim=6, progress=False, seed=0)
    return ds, model


def _bilinear_over_land(field: np.ndarray, lat: np.ndarray, lon: np.ndarray, p: tuple):
    """Bilinear weights at ``p`` over the finite corners only, renormalised."""
    i = np.searchsorted(lat, p[0]) - 1
    j = np.searchsorted(lon, p[1]) - 1
    fy = (p[0] - lat[i]) / (lat[i + 1] - lat[i])
    fx = (p[1] - lon[j]) / (lon[j + 1] - lon[j])
    corners = [((i, j), (1 - fy) * (1 - fx)), ((i + 1, j), fy * (1 - fx)),
               ((i, j + 1), (1 - fy) * fx), ((i + 1, j + 1), fy * fx)]
    num = den = 0.0
    for (a, b), w in corners:
        if np.isfinite(field[a, b]):
            num, den = num + w * field[a, b], den + w
    return num / den, sum(w for (a, b), w in corners if not np.isfinite(field[a, b]))


def test_coastal_point_reads_the_land_corners_only(wfde5_model):
    ds, model = wfde5_model
    z = ds.isel(time=[5]).lda.encode(model)
    field = z.lda.decode(model).Tair.isel(time=0)
    lat_asc = field.sortby("lat")
    f = np.asarray(lat_asc.transpose("lat", "lon").values)
    lat, lon = lat_asc.lat.values, lat_asc.lon.values
    # a cell with 1-3 sea corners
    found = None
    for a in range(len(lat) - 1):
        for b in range(len(lon) - 1):
            n_sea = int(np.isnan(f[a:a + 2, b:b + 2]).sum())
            if 1 <= n_sea <= 3:
                found = (a, b)
                break
        if found:
            break
    a, b = found
    p = (lat[a] + 0.3 * (lat[a + 1] - lat[a]), lon[b] + 0.6 * (lon[b + 1] - lon[b]))
    want, sea_weight = _bilinear_over_land(f, lat, lon, p)
    assert sea_weight > 0
    zt = torch.as_tensor(z.z.values)
    got = model.decode_points(zt, model.points_tensor([p[0]], [p[1]]), torch.tensor([0]))
    np.testing.assert_allclose(float(got[0, 0]), want, rtol=1e-5)
    # inland points are the plain bilinear value, as before
    inland = next((x, y) for x in range(len(lat) - 1) for y in range(len(lon) - 1)
                  if np.isfinite(f[x:x + 2, y:y + 2]).all())
    q = (lat[inland[0]] + 0.5 * (lat[inland[0] + 1] - lat[inland[0]]),
         lon[inland[1]] + 0.25 * (lon[inland[1] + 1] - lon[inland[1]]))
    want_q, w_sea = _bilinear_over_land(f, lat, lon, q)
    assert w_sea == 0
    got_q = model.decode_points(zt, model.points_tensor([q[0]], [q[1]]), torch.tensor([0]))
    np.testing.assert_allclose(float(got_q[0, 0]), want_q, rtol=1e-5)


def test_a_point_at_sea_is_refused(wfde5_model):
    ds, model = wfde5_model
    land = np.isfinite(ds.Tair.isel(time=0).sortby("lat").transpose("lat", "lon").values)
    lat = np.sort(ds.lat.values)
    lon = ds.lon.values
    a, b = next((x, y) for x in range(len(lat) - 1) for y in range(len(lon) - 1)
                if not land[x:x + 2, y:y + 2].any())
    p = (lat[a] + 0.5 * (lat[a + 1] - lat[a]), lon[b] + 0.5 * (lon[b + 1] - lon[b]))
    z = torch.zeros(1, model.latent_dim)
    with pytest.raises(ObservationError, match="no data"):
        model.decode_points(z, model.points_tensor([p[0]], [p[1]]), torch.tensor([0]))


def test_mask_survives_save_and_open(wfde5_model, tmp_path):
    _, model = wfde5_model
    model.save(tmp_path / "m.zarr")
    again = xlatda.open_model(tmp_path / "m.zarr")
    pts = model.points_tensor([54.2], [-3.2])
    z = torch.zeros(1, model.latent_dim)
    ch = torch.tensor([0])
    np.testing.assert_array_equal(model.decode_points(z, pts, ch).numpy(),
                                  again.decode_points(z, pts, ch).numpy())
    assert again.encoder._operators._valid_key == model.encoder._operators._valid_key != ""
