"""Rebuild ``uk_stations_t2m.csv``: 2 m temperature "station" observations over the UK.

The values are ERA5 2 m temperature (``era5_t2m_2019-03_uk.nc``, Contains
modified Copernicus Climate Change Service information) interpolated
bilinearly to 24 town locations every 3 hours from 2019-03-22 to
2019-03-31, plus Gaussian noise of std 0.8 K (the ``error`` column): a
stand-in for a table of station measurements, in the format ``xlatda run``
reads (columns time, station, lat, lon, t2m, error).

Run from the repository root::

    python examples/configs/make_uk_stations.py /path/to/era5_t2m_2019-03_uk.nc
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

TOWNS = {  # approximate town-centre coordinates (degrees north, east)
    "Aberdeen": (57.15, -2.09), "Inverness": (57.48, -4.22), "Glasgow": (55.86, -4.25),
    "Edinburgh": (55.95, -3.19), "Dundee": (56.46, -2.97), "Fort William": (56.82, -5.11),
    "Belfast": (54.60, -5.93), "Derry": (55.00, -7.32), "Newcastle": (54.98, -1.61),
    "Carlisle": (54.89, -2.93), "Leeds": (53.80, -1.55), "Manchester": (53.48, -2.24),
    "Liverpool": (53.41, -2.98), "Hull": (53.74, -0.33), "Nottingham": (52.95, -1.15),
    "Birmingham": (52.49, -1.89), "Norwich": (52.63, 1.30), "Aberystwyth": (52.41, -4.08),
    "Cardiff": (51.48, -3.18), "Bristol": (51.45, -2.59), "London": (51.51, -0.13),
    "Southampton": (50.90, -1.40), "Plymouth": (50.38, -4.14), "Dublin": (53.35, -6.26),
}
ERROR_STD = 0.8


def main(era5: str, out: Path) -> None:
    ds = xr.open_dataset(era5)
    t2m = ds.t2m.sel(time=slice("2019-03-22", "2019-03-31T23:00")).isel(
        time=slice(None, None, 3))
    names = list(TOWNS)
    lat = xr.DataArray([TOWNS[n][0] for n in names], dims="station")
    lon = xr.DataArray([TOWNS[n][1] for n in names], dims="station")
    values = t2m.interp(latitude=lat, longitude=lon).transpose("time", "station").values
    rng = np.random.default_rng(2019)
    noisy = values + ERROR_STD * rng.normal(size=values.shape)
    rows = pd.DataFrame({
        "time": np.repeat(pd.to_datetime(t2m.time.values).strftime("%Y-%m-%dT%H:%M"),
                          len(names)),
        "station": np.tile(names, t2m.sizes["time"]),
        "lat": np.tile(lat.values, t2m.sizes["time"]),
        "lon": np.tile(lon.values, t2m.sizes["time"]),
        "t2m": np.round(noisy.ravel(), 2),
        "error": ERROR_STD,
    })
    rows.to_csv(out, index=False)
    print(f"wrote {out}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).with_name("uk_stations_t2m.csv"))
