"""The xlatda command: demo, run CONFIG.yaml, bench."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import xarray as xr

from xlatda.cli import bench, load_config, main
from xlatda.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
system: {name: lorenz96, options: {n: 12, steps: 60, seed: 1}}
observations: {n: 6, error_std: 1.0, seed: 2}
assimilation: {method: etkf, members: 10, init_std: 1.0, settings: {inflation: 1.02}}
output: {path: OUT}
"""


def test_run_config_end_to_end(tmp_path):
    out = tmp_path / "res.zarr"
    cfg = write(tmp_path, GOOD.replace("OUT", str(out)))
    assert main(["run", str(cfg), "--quiet"]) == 0
    tree = xr.open_datatree(out, engine="zarr")
    assert set(tree.children) >= {"analysis", "background", "diagnostics", "truth"}
    # A second run refuses to overwrite.
    assert main(["run", str(cfg), "--quiet"]) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("system: {name: lorenz96}\nassimilation: {method: kalman}\noutput: {path: x}\n",
         "known"),
        ("system: {name: mars}\nassimilation: {method: etkf}\noutput: {path: x}\n",
         "system.name must be one of"),
        ("system: {name: lorenz96}\nassimilation: {method: etkf, members: ten}\n"
         "output: {path: x}\n", "members must be int"),
        ("system: {name: lorenz96}\nassimilation: {method: etkf, memebrs: 10}\n"
         "output: {path: x}\n", "unknown key assimilation.memebrs"),
        ("system: {name: lorenz96}\noutput: {path: x}\n", "missing assimilation.method"),
        ("sytem: {name: lorenz96}\n", "unknown section"),
        ("system: [1, 2]\n", "must be a mapping"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_bench_small(capsys):
    rows = bench(cycles=40)
    assert {r["method"] for r in rows} >= {"etkf", "enkf", "letkf", "3dvar", "4denvar"}
    assert all(np.isfinite(r["rmse"]) for r in rows)
    assert "cycles/s" in capsys.readouterr().out


def test_demo_small(tmp_path, capsys):
    from xlatda.demo import run_demo

    result = run_demo(tmp_path / "demo", hours=6, n_obs=128, members=16, plot=True,
                      progress=False, methods=("etkf", "3dvar"))
    text = result.table()
    assert "free" in text and "latent etkf" in text
    assert (tmp_path / "demo" / "results.nc").exists()
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    scores = result.scores
    # Assimilating beats the free run from a wrong background.
    assert float(scores.rmse.sel(run="latent etkf")) < float(scores.rmse.sel(run="free"))


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "xlatda" in capsys.readouterr().out
