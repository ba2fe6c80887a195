"""xlatda demo: the result file and the table."""

from __future__ import annotations

import pytest
import xarray as xr

from xlatda.demo import run_demo


def test_demo_small(tmp_path):
    result = run_demo(tmp_path / "demo", hours=6, n_obs=128, plot=True,
                      progress=False, methods=("etkf", "3dvar"), echo=None)
    text = result.table()
    assert "free" in text and "latent etkf" in text
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    scores = result.scores
    # Assimilating beats the free run from a wrong background.
    assert float(scores.rmse.sel(run="latent etkf")) < float(scores.rmse.sel(run="free"))
    ds = xr.open_dataset(tmp_path / "demo" / "results.nc")
    assert list(ds.run.values) == ["free", "latent etkf", "latent 3dvar"]
    assert ds.height.dims == ("run", "time", "lat", "lon")
    assert "height_spread" in ds and "height_truth" in ds
    assert not [v for v in ds.data_vars if "latent" in str(v)]
    for v in ("rmse", "spread", "seconds", "rmse_time"):
        assert ds[v].attrs["units"] and ds[v].attrs["long_name"], v
    assert "standard_name" not in ds.height.attrs  # a fluid depth, not geopotential_height
    for key in ("Conventions", "history", "date_created", "xlatda_version", "source"):
        assert ds.attrs[key], key


@pytest.mark.slow
def test_demo_full_size(tmp_path):
    """The README's `xlatda demo` at its default size."""
    result = run_demo(tmp_path / "demo", progress=False, echo=None)
    rmse = result.scores.rmse
    for m in result.scores.run.values:
        if m != "free":
            assert float(rmse.sel(run=m)) < float(rmse.sel(run="free")), m


def test_the_shipped_model_has_a_latent_prior_so_cycle_defaults_run():
    # "a latent prior in every model": the shipped model predated priors, so cycle's
    # defaults (climatological initial ensemble, 3DVar's B) were refused on it
    import numpy as np

    import xlatda
    from xlatda.datasets import shallow_water
    from xlatda.demo import demo_model_path

    model = xlatda.open_model(demo_model_path())
    assert model.prior is not None and model.prior.n_samples == 12 * 121
    truth = shallow_water(nlat=32, nlon=64, hours=3, seed=5, spinup_hours=72, progress=False)
    truth = truth.isel(trajectory=0, drop=True)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=64,
                                   error_std={"height": 5.0, "vorticity": 2e-6}, seed=1)
    res = xlatda.cycle(truth.isel(time=0), obs, model, method="etkf", members=16, seed=0,
                       progress=False)
    assert np.isfinite(res.analysis.height.values).all()
    var = xlatda.cycle(truth.isel(time=0), obs, model, method="3dvar", progress=False)
    assert np.isfinite(var.analysis.height.values).all()
