"""A station only on a model's masked cells is refused before any analysis (audit2).

Real data: WFDE5 air temperature over the UK, sea points NaN (skipped without
/work/shared/data).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ObservationError

DATA = Path("/work/shared/data/wfde5_air_temperature_2017-01_uk.nc")
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="needs the shared WFDE5 file")


@pytest.fixture(scope="module")
def land_model():
    ds = xr.open_dataset(DATA).isel(time=slice(0, 312)).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xlatda.fit(ds.isel(time=slice(0, 300)), encoder="pca", latent_dim=8,
                           dynamics="linear", progress=False)
    return model, ds.isel(time=slice(300, 312))


def _stations(test, at_sea_time: int) -> xr.Dataset:
    rows = []
    for i, t in enumerate(test.time.values[1:]):
        rows.append(dict(time=t, station="London", lat=51.5, lon=-0.12, Tair=275.0, error=1.0))
        if i == at_sea_time:  # 10W 55N: open Atlantic, every nearby cell is sea
            rows.append(dict(time=t, station="MidAtlantic", lat=55.0, lon=-10.0, Tair=280.0,
                             error=1.0))
    return xlatda.obs.from_dataframe(pd.DataFrame(rows))


def test_a_station_on_masked_cells_is_refused_before_the_first_analysis(land_model, tmp_path):
    """Before: refused at the 6th analysis' operator build, with 5 analyses already
    written to the store and a message naming an index, not the station."""
    model, test = land_model
    assert model.missing is not None and model.missing.any()
    obs = _stations(test, at_sea_time=5)
    store = tmp_path / "c.zarr"
    with pytest.raises(ObservationError, match=r"MidAtlantic.*55.*-10") as err:
        xlatda.cycle(test.isel(time=0), obs, model, method="etkf", progress=False, store=store)
    assert "drop" in str(err.value)
    assert not store.exists(), "analyses were written before the refusal"
    assert list(tmp_path.iterdir()) == []
    # the same stations without it cycle
    ok = obs.where(obs.station != "MidAtlantic", drop=True)
    res = xlatda.cycle(test.isel(time=0), ok, model, method="etkf", progress=False)
    assert np.isfinite(res.analysis.Tair.mean("member").sel(lat=51.25, lon=-0.25)).all()


def test_assimilate_refuses_it_too(land_model):
    model, test = land_model
    obs = _stations(test, at_sea_time=0)
    obs = obs.where(obs.time == obs.time[0], drop=True)
    with pytest.raises(ObservationError, match="MidAtlantic"):
        xlatda.assimilate(test.isel(time=1), obs, model, method="etkf")
