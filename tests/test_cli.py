"""The xlatda command: demo, run CONFIG.yaml, bench; the configuration schema."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import shared_file
from xlatda.cli import bench, load_config, main, run_config
from xlatda.config import SCHEMA
from xlatda.errors import ConfigError, ObservationError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
ERA5 = "era5_t2m_2019-03_uk.nc"


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
version: 1
system: {name: lorenz96, options: {n: 12, steps: 60, seed: 1}}
observations: {n: 6, error_std: 1.0, seed: 2}
assimilate: {method: etkf, members: 10, init_std: 1.0, initial: truth,
             settings: {inflation: 1.02}}
output: {path: OUT, figure: false}
"""


def test_run_config_end_to_end(tmp_path):
    out = tmp_path / "res.zarr"
    cfg = write(tmp_path, GOOD.replace("OUT", str(out)))
    assert main(["run", str(cfg), "--quiet"]) == 0
    tree = xr.open_datatree(out, engine="zarr")
    assert set(tree.children) >= {"analysis", "background", "diagnostics", "truth", "scores",
                                  "observations"}
    assert tree.attrs["config"] == cfg.read_text()
    assert tree.attrs["xlatda_version"] and tree.attrs["date_created"]
    assert tree["analysis"].sizes["member"] == 10
    scores = tree["scores"].to_dataset()
    assert list(scores.run.values) == ["analysis", "background"]
    assert scores.x_rmse.attrs["units"] and scores.x_rmse.attrs["long_name"]
    # A second run refuses to overwrite.
    assert main(["run", str(cfg), "--quiet"]) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\nsystem: {name: lorenz96}\nassimilate: {method: kalman}\n"
         "output: {path: x}\n", "assimilate.method: unknown 'kalman'"),
        ("version: 1\nsystem: {name: mars}\nassimilate: {method: etkf}\noutput: {path: x}\n",
         "system.name: unknown 'mars'"),
        ("version: 1\nsystem: {name: lorenz96}\nassimilate: {method: etkf, members: ten}\n"
         "output: {path: x}\n", "assimilate.members: must be int"),
        ("version: 1\nsystem: {name: lorenz96}\nassimilate: {method: etkf, memebrs: 10}\n"
         "output: {path: x}\n", r"assimilate.memebrs: unknown key \(did you mean 'members'\?\)"),
        ("version: 1\nsystem: {name: lorenz96}\noutput: {path: x}\n",
         "assimilate: missing section"),
        ("version: 1\nsytem: {name: lorenz96}\n", r"unknown section \(did you mean 'system'\?\)"),
        ("version: 1\nsystem: [1, 2]\n", "system: must be a mapping"),
        ("system: {name: lorenz96}\nassimilate: {method: etkf}\noutput: {path: x}\n",
         "version: missing"),
        ("version: 1\nsystem: {name: file, path: d.nc}\nmodel: {}\n"
         "train: {start: 2019-03-10, end: 2019-03-01}\n"
         "assimilate: {method: etkf}\noutput: {path: x}\n", "train.end: .* is before"),
        ("version: 1\nsystem: {name: file, path: d.nc}\nmodel: {}\n"
         "train: {start: 2019-03-01, end: 2019-03-20}\n"
         "assimilate: {method: etkf, start: 2019-03-15, end: 2019-03-25}\n"
         "output: {path: x}\n", "overlaps the train period"),
        ("version: 1\nsystem: {name: file, path: d.nc}\nassimilate: {method: etkf}\n"
         "output: {path: x}\n", "model: missing"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), check_files=False)


def test_every_problem_is_reported_at_once(tmp_path):
    text = """
    version: 1
    system: {name: lorenz96, optoins: {}}
    observations: {n: twenty, source: fiel}
    assimilate: {method: etfk, members: 0}
    output: {path: x.nc, overwrite: yes please}
    """
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    msg = str(info.value)
    assert msg.startswith("6 problems in ")
    for line in ["system.optoins: unknown key (did you mean 'options'?)",
                 "observations.n: must be int, got 'twenty'",
                 "observations.source: unknown 'fiel' (did you mean 'file'?)",
                 "assimilate.method: unknown 'etfk' (did you mean 'etkf'?)",
                 "assimilate.members: must be at least 1, got 0",
                 "output.overwrite: must be bool, got 'yes please'"]:
        assert line in msg, line


def test_dry_run_checks_files_and_runs_nothing(tmp_path, capsys):
    cfg = write(tmp_path, """
    version: 1
    system: {name: file, path: nowhere.nc}
    train: {start: 2019-03-01, end: 2019-03-02}
    model: {latent_dim: 4}
    observations: {source: file, path: stations.csv}
    assimilate: {method: etkf, start: 2019-03-03, end: 2019-03-04}
    output: {path: out.nc}
    """)
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "system.path: file 'nowhere.nc' not found" in err and "--data-dir" in err
    assert "observations.path: file 'stations.csv' not found" in err
    good = write(tmp_path, GOOD.replace("OUT", str(tmp_path / "r.nc")), "good.yaml")
    assert main(["run", str(good), "--dry-run"]) == 0
    assert "valid" in capsys.readouterr().out
    assert not (tmp_path / "r.nc").exists()


def test_shipped_configs_are_valid():
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert {p.name for p in configs} >= {"lorenz96_twin.yaml", "era5_t2m_uk.yaml"}
    for path in configs:
        cfg = load_config(path, check_files=False)
        assert cfg["version"] == 1
        assert "#" in cfg["_text"], f"{path.name} has no comments explaining it"


def test_data_dir_and_relative_paths(tmp_path):
    """Relative data paths: --data-dir first, then next to the config."""
    data = shared_file(ERA5).parent
    cfg = load_config(CONFIGS / "era5_t2m_uk.yaml", data_dir=data)
    assert Path(cfg["system"]["path"]) == data / ERA5
    assert Path(cfg["observations"]["path"]) == CONFIGS / "uk_stations_t2m.csv"
    assert str(cfg["train"]["start"]) == "2019-03-01T00:00:00"
    assert not (CONFIGS / ERA5).exists()  # the package ships no data: --data-dir is needed
    with pytest.raises(ConfigError, match="pass --data-dir DIR"):
        load_config(CONFIGS / "era5_t2m_uk.yaml")


def test_schema_is_documented():
    """docs/cli.md names every section and key of the schema."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    for section, fields in SCHEMA.items():
        assert f"`{section}`" in doc, section
        for key in fields:
            assert f"`{section}.{key}`" in doc, f"{section}.{key} is not documented"


def _small_era5_config(tmp_path, obs_lines, method="etkf"):
    data = shared_file(ERA5).parent
    return write(tmp_path, f"""
    version: 1
    system: {{name: file, path: {ERA5}, variables: [t2m]}}
    train: {{start: 2019-03-01, end: 2019-03-10T23:00}}
    model: {{latent_dim: 8, epochs: 3}}
    {obs_lines}
    assimilate: {{method: {method}, start: 2019-03-22, end: 2019-03-23T23:00, members: 12,
                 settings: {{inflation: 1.05}}}}
    output: {{path: {tmp_path / 'out.nc'}, ensemble: false}}
    """), data


def test_run_real_data_with_station_csv(tmp_path):
    """The ERA5 file, a CSV of stations, two periods: analysis beats the baselines."""
    cfg, data = _small_era5_config(
        tmp_path, f"observations: {{source: file, path: {CONFIGS / 'uk_stations_t2m.csv'}}}")
    out = run_config(cfg, data_dir=data, progress=False, echo=None)
    tree = xr.open_datatree(out)
    scores = tree["scores"].to_dataset()
    assert list(scores.run.values) == ["analysis", "background", "climatology",
                                       "interpolation"]
    rmse = scores.t2m_rmse_mean
    assert rmse.attrs["units"] == "K" and "root-mean-square" in rmse.attrs["long_name"]
    assert float(rmse.sel(run="analysis")) < float(rmse.sel(run="climatology"))
    assert float(rmse.sel(run="analysis")) < float(rmse.sel(run="interpolation"))
    ana = tree["analysis"].to_dataset()
    assert set(ana.data_vars) == {"t2m", "t2m_spread"} and "member" not in ana.dims
    assert ana.t2m.attrs["units"] == "K" and ana.t2m.attrs["standard_name"] == "air_temperature"
    assert ana.t2m_spread.attrs["cell_methods"] == "member: standard_deviation"
    assert str(ana.time.values[0])[:13] == "2019-03-22T00"  # first obs on the period's start
    assert "train" in tree.attrs["config"] and tree.attrs["title"].endswith(ERA5)
    assert (tmp_path / "out.png").stat().st_size > 20_000
    assert tree["observations"].sizes["obs"] == 24 * 16  # 24 stations, 3-hourly, 2 days


def test_run_real_data_synthetic_obs_and_csv_errors(tmp_path):
    cfg, data = _small_era5_config(
        tmp_path, "observations: {source: synthetic, n: 10, every: 3, error_std: 0.5}")
    out = run_config(cfg, data_dir=data, progress=False, echo=None)
    assert xr.open_datatree(out)["observations"].sizes["obs"] == 10 * 16
    bad = tmp_path / "bad.csv"
    bad.write_text("time,lat,lon,t2m,error\nyesterday,52,0,280,1\n")
    cfg, data = _small_era5_config(tmp_path, f"observations: {{source: file, path: {bad}}}")
    with pytest.raises(ConfigError, match=r"row 2 .*'yesterday'"):
        run_config(cfg, data_dir=data, dry_run=True)
    bad.write_text("time,lat,lon,temperature\n2019-03-22,52,0,280\n")
    with pytest.raises(ConfigError, match="value column named like a state variable"):
        run_config(cfg, data_dir=data, dry_run=True)


def test_read_observations_station_dataset(tmp_path):
    from xlatda.experiment import read_observations

    state = xr.Dataset({"t2m": (("lat", "lon"), np.zeros((2, 2)), {"units": "K"})},
                       coords={"lat": ("lat", [50.0, 51.0], {"standard_name": "latitude"}),
                               "lon": ("lon", [0.0, 1.0], {"standard_name": "longitude"})})
    times = np.array(["2019-03-22T00", "2019-03-22T03"], dtype="datetime64[ns]")
    stations = xr.Dataset({"t2m": (("station", "time"), [[280.0, 281.0], [279.0, np.nan]])},
                          coords={"lat": ("station", [50.2, 50.8]),
                                  "lon": ("station", [0.1, 0.9]), "time": times})
    stations.to_netcdf(tmp_path / "st.nc")
    obs = read_observations(tmp_path / "st.nc", state, error_std=0.7)
    assert obs.sizes["obs"] == 3 and obs.t2m.attrs["error_std"] == 0.7
    with pytest.raises(ObservationError, match="error std"):
        read_observations(tmp_path / "st.nc", state)


def test_bench_small(capsys):
    rows = bench(cycles=40)
    assert {r["method"] for r in rows} >= {"etkf", "enkf", "letkf", "3dvar", "4denvar"}
    assert all(np.isfinite(r["rmse"]) for r in rows)
    out = capsys.readouterr().out
    assert "cycles/s" in out
    head = out.splitlines()[0]
    assert "Lorenz-96" in head and "observations: every site" in head
    assert "RMSE of the analysis ensemble mean" in out.splitlines()[1]


@pytest.mark.parametrize("system", ["lorenz63", "shallow_water"])
def test_bench_other_systems(system, capsys):
    rows = bench(system, cycles=6 if system == "shallow_water" else 30)
    assert len(rows) >= 5 and all(np.isfinite(r["rmse"]) for r in rows)
    head = capsys.readouterr().out.splitlines()[0]
    assert ("Lorenz-63" if system == "lorenz63" else "shallow water") in head


def test_bench_unknown_system():
    with pytest.raises(ConfigError, match="did you mean 'shallow_water'"):
        bench("shallow-water")


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "xlatda" in capsys.readouterr().out


def test_cli_module_imports_nothing_heavy():
    """cli.py itself imports no torch/xarray at module level (the commands do)."""
    text = (ROOT / "xlatda" / "cli.py").read_text()
    top = [line for line in text.splitlines() if re.match(r"(import|from) ", line)]
    assert not [line for line in top if re.search(r"torch|xarray|numpy|matplotlib", line)]
    help_text = subprocess.run([sys.executable, "-m", "xlatda.cli", "run", "--help"],
                               capture_output=True, text=True, check=True, cwd=ROOT).stdout
    help_text = " ".join(help_text.split())
    assert "--dry-run" in help_text and "--data-dir" in help_text
    assert "p (re-anchoring probability" in help_text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["era5_t2m_uk.yaml", "lorenz96_twin.yaml"])
def test_shipped_config_full_run(name, tmp_path):
    """Each shipped configuration, full size, as docs/cli.md runs it."""
    data = shared_file(ERA5).parent
    out = tmp_path / "result.nc"
    run_config(CONFIGS / name, data_dir=data, out=out, progress=False, echo=None)
    scores = xr.open_datatree(out)["scores"].to_dataset()
    var = next(str(v)[:-10] for v in scores.data_vars if str(v).endswith("_rmse_mean"))
    rmse = scores[f"{var}_rmse_mean"]
    assert float(rmse.sel(run="analysis")) < float(rmse.sel(run="background"))
    if name == "era5_t2m_uk.yaml":
        assert float(rmse.sel(run="analysis")) < float(rmse.sel(run="interpolation"))


def test_run_without_quiet_draws_no_bars_when_output_goes_to_a_file(tmp_path):
    # the command's default is the progress option ("auto"): bars only in a terminal, so
    # a log file or CI output gets the progress lines but no tqdm redraws
    cfg = write(tmp_path, GOOD.replace("OUT", str(tmp_path / "res.nc")))
    out = subprocess.run([sys.executable, "-m", "xlatda.cli", "run", str(cfg)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "it/s" not in out.stderr and "%|" not in out.stderr


def test_run_refuses_a_sea_station_before_fitting(tmp_path, monkeypatch):
    """A station whose cells are all sea in a land-only file: refused before the model is
    fitted (it used to be refused by xlatda.cycle, after the fit), nothing written."""
    import xlatda

    rng = np.random.default_rng(0)
    times = np.arange("2020-01-01T00", "2020-01-05T00", dtype="datetime64[h]")
    lat, lon = np.arange(50.0, 54.0, 0.5), np.arange(-4.0, 2.0, 0.5)
    vals = 280 + rng.standard_normal((len(times), len(lat), len(lon)))
    vals[:, :, :4] = np.nan  # "sea": the western columns, at every time
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), vals, {"units": "K"})},
                    coords={"time": times, "lat": lat, "lon": lon})
    ds.to_netcdf(tmp_path / "land.nc")
    (tmp_path / "st.csv").write_text("time,station,lat,lon,tas,error\n"
                                     "2020-01-03T06,Inland,52.2,0.7,280,1\n"
                                     "2020-01-03T09,Offshore,51.2,-3.7,280,1\n")
    cfg = write(tmp_path, f"""
    version: 1
    system: {{name: file, path: land.nc, variables: [tas]}}
    train: {{start: 2020-01-01, end: 2020-01-02T23:00}}
    model: {{latent_dim: 3, epochs: 2}}
    observations: {{source: file, path: {tmp_path / 'st.csv'}}}
    assimilate: {{method: etkf, start: 2020-01-03, end: 2020-01-04T23:00, members: 6}}
    output: {{path: {tmp_path / 'out.nc'}}}
    """)

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the stations were checked")

    monkeypatch.setattr(xlatda, "fit", no_fit)
    with pytest.raises(ObservationError, match=r"Offshore.*51\.2.*-3\.7.*tas"):
        run_config(cfg, data_dir=tmp_path, progress=False, echo=None)
    assert not (tmp_path / "out.nc").exists()
