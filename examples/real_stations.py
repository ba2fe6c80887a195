"""Your own data: a reanalysis netCDF file and a CSV of stations, end to end.

The script version of the guide page "Your own data" (``docs/own_data.md``):
ERA5 2 m temperature over the UK (March 2019; Contains modified Copernicus
Climate Change Service information) and 24 station series every 3 hours
(``examples/configs/uk_stations_t2m.csv``).

1. train a latent model (PCA + neural ODE + model error) on the first three
   weeks and report its training and forecast checks;
2. read the station table, keep some stations back for verification;
3. cycle an ensemble filter through the last week (``xlatda.cycle`` with
   its defaults), and again as a reanalysis that also uses the next two
   analysis times' stations (``lag=2``: a fixed-lag ensemble smoother);
4. score the analysis on the ERA5 grid (never trained on) and at the
   held-out stations, next to the climatology, an hourly climatology, a
   linear interpolation of the stations and optimal interpolation
   (``xlatda.baselines``);
5. write ``scores.csv``, ``analysis.nc`` (mean and spread), the figures
   ``maps.png`` and ``rmse.png``, and the model ``model.zarr`` to ``--out``.

Run::

    python examples/real_stations.py --data /path/to/era5_t2m_2019-03_uk.nc --out out/

``--data`` may also be the folder that holds the file. With your own file,
give ``--variable``, the periods (``--train-end``, ``--start``, ``--end``)
and a station table with columns time, lat, lon, one named like the
variable and an error column (``--stations``). ``XLATDA_QUICK=1`` runs a
quick version (ten epochs, three days).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import xlatda
from xlatda.experiment import training_summary

HERE = Path(__file__).resolve().parent
QUICK = os.environ.get("XLATDA_QUICK") == "1"
FILE = "era5_t2m_2019-03_uk.nc"
HELD_OUT = "Birmingham,Edinburgh,Leeds,Cardiff,Norwich,Derry"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("XLATDA_ERA5", FILE)),
                   help=f"the netCDF file, or a folder holding {FILE} (default: $XLATDA_ERA5 "
                        "or ./" + FILE + ")")
    p.add_argument("--stations", type=Path, default=HERE / "configs" / "uk_stations_t2m.csv",
                   help="CSV: time, lat, lon, <variable>, error (and station)")
    p.add_argument("--out", type=Path, default=Path("real_stations_out"),
                   help="folder for the results (created)")
    p.add_argument("--variable", default="t2m")
    p.add_argument("--train-start", default="2019-03-01")
    p.add_argument("--train-end", default="2019-03-21T23:00")
    p.add_argument("--start", default="2019-03-22", help="first time assimilated")
    p.add_argument("--end", default="2019-03-24T23:00" if QUICK else "2019-03-31T23:00",
                   help="last time assimilated")
    p.add_argument("--held-out", default=HELD_OUT,
                   help="comma-separated stations kept back for verification ('' for none)")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--dynamics", default="linear", choices=["linear", "ode"],
                   help="latent dynamics: 'linear' (forced by the time of day) or 'ode'")
    p.add_argument("--epochs", type=int, default=10 if QUICK else 50,
                   help="training epochs of the neural parts (the ODE)")
    p.add_argument("--method", default="etkf")
    p.add_argument("--members", type=int, default=None,
                   help="ensemble size (default: xlatda.cycle's)")
    p.add_argument("--lag", type=int, default=2,
                   help="also a reanalysis smoothed with the next LAG analysis times "
                        "(xlatda.cycle(..., lag=LAG)); 0: the filter only")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def open_states(a: argparse.Namespace) -> tuple[xr.Dataset, xr.Dataset]:
    path = a.data / FILE if a.data.is_dir() else a.data
    if not path.exists():
        sys.exit(f"no data file {path}: pass --data /path/to/{FILE} (or its folder)")
    ds = xr.open_dataset(path)
    if a.variable not in ds.data_vars:
        sys.exit(f"{path} has no variable {a.variable!r}; it has {list(ds.data_vars)}")
    states = ds[[a.variable]]
    tname = xlatda.layout(states).axes.time
    train = states.sel({tname: slice(a.train_start, a.train_end)}).load()
    test = states.sel({tname: slice(a.start, a.end)}).load()
    print(f"{path.name}: train {train.sizes[tname]} states ({a.train_start} .. {a.train_end}), "
          f"assimilate {test.sizes[tname]} states ({a.start} .. {a.end})")
    return train, test


def check_model(model, test: xr.Dataset, space: list[str]) -> None:
    """Training report, reconstruction error and 3/6-hour forecasts against persistence."""
    print(training_summary(model))
    v = next(iter(test.data_vars))
    recon = xlatda.decode(xlatda.encode(test, model), model)
    print(f"reconstruction RMSE on the held-out period: "
          f"{float(xlatda.metrics.rmse(recon, test)[v]):.2f} {test[v].attrs.get('units', '')}")
    tname = xlatda.layout(test).axes.time
    starts = test.isel({tname: slice(0, test.sizes[tname] - 6, 12)})
    fc = xlatda.decode(xlatda.evolve(xlatda.encode(starts, model), model, steps=6), model)
    verifying = test[v].sel({tname: fc.valid_time})
    dims = [tname, *space]
    model_rmse = xlatda.metrics.rmse(fc[v], verifying, dim=dims)
    pers_rmse = xlatda.metrics.rmse(starts[v], verifying, dim=dims)
    for lead in (3, 6):
        print(f"forecast RMSE at {lead} h: model {float(model_rmse.isel(lead=lead)):.2f}, "
              f"persistence {float(pers_rmse.isel(lead=lead)):.2f}")


def read_stations(a: argparse.Namespace, time_range) -> tuple[xr.Dataset, xr.Dataset | None]:
    table = pd.read_csv(a.stations)
    times = pd.to_datetime(table["time"])
    table = table[(times > time_range[0]) & (times <= time_range[1])]
    names = [s for s in a.held_out.split(",") if s]
    held = table["station"].isin(names) if names and "station" in table else np.zeros(
        len(table), bool)
    err = "error" if "error" in table else None
    station = "station" if "station" in table else None
    obs = xlatda.obs.from_dataframe(table[~held], error_std=err, station=station)
    verify = (xlatda.obs.from_dataframe(table[held], error_std=err, station=station)
              if held.any() else None)
    print(f"{a.stations.name}: {obs.sizes['obs']} observations assimilated"
          + (f", {verify.sizes['obs']} held out ({', '.join(names)})" if verify else ""))
    return obs, verify


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse(argv)
    train, test = open_states(a)
    L = xlatda.layout(train)
    tname, space = L.axes.time, list(L.spatial_dims)
    v = a.variable

    # 1. the model (one call: change it here)
    model = xlatda.fit(train, encoder="pca", latent_dim=a.latent_dim, dynamics=a.dynamics,
                       uncertainty="diagonal", epochs=a.epochs, seed=a.seed, progress=not QUICK)
    print(model)
    check_model(model, test, space)

    # 2. observations after the background time, within the assimilation period
    t_bg = train[tname].values[-1]
    obs, verify = read_stations(a, (t_bg, test[tname].values[-1]))

    # 3. cycle from the training mean (what is known without the stations)
    background = train.mean(tname).expand_dims({tname: [t_bg]})
    result = xlatda.cycle(background, obs, model, method=a.method, members=a.members,
                          seed=a.seed, progress=not QUICK)
    analysis = result.analysis.mean("member")
    smoothed = None
    if a.lag:  # a reanalysis: each analysis also sees the next `lag` times' stations
        smoothed = xlatda.cycle(background, obs, model, method=a.method, members=a.members,
                                seed=a.seed, progress=not QUICK, lag=a.lag)
    truth = test.sel({tname: analysis[tname]})

    # 4. scores against data never used, next to the baselines
    candidates = {
        "analysis": analysis,
        "background": result.background.mean("member"),
        **({} if smoothed is None else
           {f"reanalysis (lag {a.lag})": smoothed.analysis.mean("member")}),
        "climatology": xlatda.baselines.climatology(train, analysis[tname]),
        "hourly climatology": xlatda.baselines.climatology(train, analysis[tname], by="hour"),
        "interpolation": xlatda.baselines.interpolate_stations(obs, test),
        "optimal interpolation": xlatda.baselines.optimal_interpolation(obs, train),
    }
    units = test[v].attrs.get("units", "")
    series = xr.concat([xlatda.metrics.rmse(f[v], truth[v], dim=space)
                        for f in candidates.values()], dim="run")
    series = series.assign_coords(run=list(candidates)).assign_attrs(units=units)
    scores = pd.DataFrame({f"grid RMSE [{units}]": np.sqrt((series**2).mean(tname)).to_series()})
    if verify is not None:
        scores[f"held-out stations RMSE [{units}]"] = [
            float(xlatda.metrics.rmse(xlatda.obs.observe(f, verify)[v], verify[v]))
            for f in candidates.values()]
    spreads = [float(xlatda.metrics.spread(result.analysis[v]))] + [np.nan] * (
        len(candidates) - 1)
    if smoothed is not None:
        spreads[2] = float(xlatda.metrics.spread(smoothed.analysis[v]))
    scores["spread"] = spreads
    print(scores.round(3).to_string())

    # 5. results
    a.out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(a.out / "scores.csv")
    out = xr.Dataset({v: analysis[v], f"{v}_spread": result.analysis[v].std("member", ddof=1)})
    out[f"{v}_spread"].attrs = {"units": units, "long_name": f"analysis ensemble spread of {v}"}
    out["rmse"] = series.assign_attrs(long_name=f"RMSE of {v} against the held-out grid")
    out.attrs = {"title": f"xlatda {a.method} analysis of {v} from {a.stations.name}",
                 "source": f"xlatda {xlatda.__version__} (examples/real_stations.py)",
                 "training_report": training_summary(model)}
    out.to_netcdf(a.out / "analysis.nc")
    model.save(a.out / "model.zarr", overwrite=True)

    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    middle = analysis[tname].values[analysis.sizes[tname] // 2]
    fig = xlatda.plot.analysis_maps(truth, result.background, result.analysis, obs, time=middle)
    fig.savefig(a.out / "maps.png", dpi=110)
    fig, ax = plt.subplots(figsize=(9, 3.5), layout="constrained")
    xlatda.plot.score_series(series, ax=ax, highlight="analysis")
    fig.savefig(a.out / "rmse.png", dpi=110)
    plt.close("all")
    print(f"wrote scores.csv, analysis.nc, model.zarr, maps.png, rmse.png to {a.out}")
    return scores


if __name__ == "__main__":
    main()
