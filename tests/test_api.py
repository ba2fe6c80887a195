"""fit / encode / decode / model store on xarray objects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, ModelStoreError, UnknownNameError


@pytest.fixture(scope="module")
def l96():
    return xlatda.datasets.lorenz96(n=16, steps=300, seed=0)


@pytest.fixture(scope="module")
def grid_ds():
    rng = np.random.default_rng(0)
    lat = -90 + (np.arange(8) + 0.5) * 22.5
    lon = np.arange(16) * 22.5
    base = np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :]
    amp = rng.normal(size=(60, 1, 1))
    h = 5000 + 100 * amp * base + rng.normal(scale=1.0, size=(60, 8, 16))
    return xr.Dataset(
        {"h": (("time", "lat", "lon"), h, {"units": "m", "standard_name": "geopotential_height"})},
        coords={"time": ("time",
                         np.datetime64("2000-01-01") + np.arange(60) * np.timedelta64(1, "h"),
                         {"standard_name": "time"}),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})},
        attrs={"title": "test grid"},
    )


@pytest.fixture(scope="module")
def pca(l96):
    return xlatda.fit(l96, encoder="pca", latent_dim=16, progress=False)


def test_full_rank_pca_round_trip_identical_structure(l96, pca):
    z = l96.lda.encode(pca)
    assert z.z.dims == ("time", "latent")
    assert z.attrs["xlatda_model_id"] == pca.model_id
    back = z.lda.decode(pca)
    xr.testing.assert_allclose(back, l96, atol=1e-3)
    # Structure, coordinates and attributes are those of the training data.
    assert back.x.attrs == l96.x.attrs and back.attrs == l96.attrs
    assert back.x.dims == l96.x.dims
    for name, coord in l96.coords.items():
        assert back[name].attrs == coord.attrs


def test_encode_lazy_and_equal_to_eager(l96, pca, raise_if_dask_computes):
    eager = xlatda.encode(l96, pca)
    lazy_in = l96.chunk(time=64)
    with raise_if_dask_computes():
        lazy = xlatda.encode(lazy_in, pca)
        fields = xlatda.decode(lazy, pca)
    assert lazy.z.chunks is not None and fields.x.chunks is not None
    np.testing.assert_allclose(lazy.z.values, eager.z.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fields.x.values, xlatda.decode(eager, pca).x.values, atol=1e-4)


def test_decode_at_points_equals_interpolation(grid_ds):
    model = xlatda.fit(grid_ds, encoder="pca", latent_dim=10, progress=False)
    z = grid_ds.isel(time=slice(0, 3)).lda.encode(model)
    on_grid = z.lda.decode(model)
    obs = xlatda.obs.sample_points(grid_ds.isel(time=0), n=25, error_std=1.0, seed=0)
    at = z.lda.decode(model, at=obs)
    assert at.h.dims == ("time", "obs")
    ref = xlatda.obs.observe(on_grid.isel(time=0), obs)
    np.testing.assert_allclose(at.h.isel(time=0).values, ref.h.values, rtol=1e-5)


def test_encode_obs_pca_recovers_code(grid_ds):
    model = xlatda.fit(grid_ds, encoder="pca", latent_dim=4, progress=False)
    state = xlatda.decode(xlatda.encode(grid_ds.isel(time=[5]), model), model)
    obs = xlatda.obs.sample_points(state, n=100, error_std=1.0, seed=1, noise=False)
    z_obs = xlatda.encode_obs(obs, model, prior=False)  # least squares (prior=True: the BLUE)
    z_full = state.lda.encode(model)
    np.testing.assert_allclose(z_obs.z.values, z_full.z.values, atol=0.05)


@pytest.mark.parametrize("encoder", ["pca", "autoencoder", "vae"])
def test_store_round_trip_bit_exact(tmp_path, l96, encoder):
    model = xlatda.fit(l96, encoder=encoder, latent_dim=8, epochs=2, progress=False)
    path = tmp_path / "m.zarr"
    model.save(path)
    again = xlatda.open_model(path)
    for a, b in zip(model.encoder.state_dict().values(), again.encoder.state_dict().values()):
        assert torch.equal(a, b)
    z1 = xlatda.encode(l96.isel(time=slice(0, 5)), model)
    z2 = xlatda.encode(l96.isel(time=slice(0, 5)), again)
    np.testing.assert_array_equal(z1.z.values, z2.z.values)
    xr.testing.assert_identical(xlatda.decode(z1, model), xlatda.decode(z2, again))
    assert again.layout == model.layout and again.model_id == model.model_id


def test_store_holds_only_json_and_arrays(tmp_path, pca):
    path = tmp_path / "m.zarr"
    pca.save(path)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["attributes"]["xlatda"]["format"] == "xlatda-model/1"
    files = [p for p in path.rglob("*") if p.is_file()]
    assert all(p.name == "zarr.json" or "/c/" in str(p) or p.parent.name == "c" or
               p.name.isdigit() or "c" in p.parts for p in files)
    assert not any(p.suffix in (".pkl", ".pt", ".pth") for p in files)


def test_store_refuses_overwrite_and_keeps_target(tmp_path, pca, l96):
    path = tmp_path / "m.zarr"
    pca.save(path)
    before = sorted(p.read_bytes() for p in path.rglob("*") if p.is_file())
    other = xlatda.fit(l96, encoder="pca", latent_dim=4, progress=False)
    with pytest.raises(ModelStoreError, match="overwrite=True"):
        other.save(path)
    after = sorted(p.read_bytes() for p in path.rglob("*") if p.is_file())
    assert before == after
    other.save(path, overwrite=True)
    assert xlatda.open_model(path).latent_dim == 4


def test_interrupted_save_leaves_target_untouched(tmp_path, pca, monkeypatch):
    import xlatda.model_store as io  # the store engine (was xlatda.io)

    path = tmp_path / "m.zarr"
    pca.save(path)
    before = sorted(p.read_bytes() for p in path.rglob("*") if p.is_file())

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(io, "_versions", boom)
    with pytest.raises(KeyboardInterrupt):
        pca.save(path, overwrite=True)
    after = sorted(p.read_bytes() for p in path.rglob("*") if p.is_file())
    assert before == after
    # No temporary folders are left behind either.
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]
    new = tmp_path / "new.zarr"
    with pytest.raises(KeyboardInterrupt):
        pca.save(new)
    assert not new.exists() and [p.name for p in tmp_path.iterdir()] == ["m.zarr"]


def test_open_refuses_non_model(tmp_path):
    with pytest.raises(ModelStoreError, match="no model store"):
        xlatda.open_model(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ModelStoreError, match="not an xlatda model store"):
        xlatda.open_model(tmp_path / "g.zarr")


def test_fit_refuses_bad_settings_before_work(l96):
    with pytest.raises(UnknownNameError, match=r"known: .*pca"):
        xlatda.fit(l96, encoder="wavelets")
    with pytest.raises(ConfigError, match="latent_dim"):
        xlatda.fit(l96, encoder="pca", latent_dim=0)
    with pytest.raises(ConfigError, match="dynamics='ode'"):
        xlatda.fit(l96, encoder="pca", uncertainty="diagonal")


def test_decode_refuses_foreign_latents(l96, pca):
    other = xlatda.fit(l96, encoder="pca", latent_dim=16, progress=False)
    z = xlatda.encode(l96.isel(time=slice(0, 2)), pca)
    with pytest.raises(ConfigError, match="decode with the model that encoded them"):
        xlatda.decode(z, other)


def test_sinr_through_xarray(tmp_path, grid_ds):
    model = xlatda.fit(grid_ds, encoder="sinr", latent_dim=8, epochs=3, batch_size=16,
                       progress=False, validation=None,
                       encoder_options={"hidden": 16, "depth": 2, "max_freq": 3})
    sub = grid_ds.isel(time=slice(0, 2))
    z = sub.lda.encode(model)
    assert z.z.dims == ("time", "latent")
    back = z.lda.decode(model)
    assert back.h.dims == sub.h.dims and back.h.attrs == sub.h.attrs
    # Mesh-free: decode anywhere, and encode scattered observations (zero-shot).
    obs = xlatda.obs.sample_points(sub, n=40, error_std=1.0, seed=0, noise=False)
    at = z.lda.decode(model, at=obs.isel(obs=slice(0, 40)))
    assert at.h.dims == ("time", "obs") and np.isfinite(at.h.values).all()
    z_obs = obs.lda.encode(model)
    assert z_obs.z.dims == ("time", "latent")
    model.save(tmp_path / "sinr.zarr")
    again = xlatda.open_model(tmp_path / "sinr.zarr")
    xr.testing.assert_identical(xlatda.decode(z, model), xlatda.decode(z, again))
