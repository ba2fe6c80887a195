"""The ``xlatda`` command.

``xlatda demo [--out DIR]``
    the shallow-water twin experiment with the shipped latent model;
``xlatda run CONFIG.yaml``
    an experiment described by a configuration file (validated first);
``xlatda bench [--system lorenz96] [--cycles N]``
    every registered method on one system and one observation set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from xlatda._version import __version__
from xlatda.errors import ConfigError, XlatdaError

__all__ = ["load_config", "main"]

# -- configuration files -----------------------------------------------------
_SCHEMA: dict[str, dict[str, Any]] = {
    "system": {"name": (str,), "path": (str, type(None)), "options": (dict,)},
    "model": {"encoder": (str,), "latent_dim": (int,), "dynamics": (str, type(None)),
              "uncertainty": (str, type(None)), "epochs": (int,), "path": (str, type(None)),
              "options": (dict,)},
    "observations": {"n": (int,), "error_std": (float, int, dict), "seed": (int,),
                     "every": (int,)},
    "assimilation": {"method": (str,), "space": (str, type(None)), "members": (int,),
                     "init_std": (float, int), "window": (int,), "settings": (dict,),
                     "seed": (int,), "physical_model": (str, type(None))},
    "output": {"path": (str,), "overwrite": (bool,)},
}
_REQUIRED = {"system": ["name"], "assimilation": ["method"], "output": ["path"]}
_SYSTEMS = ("lorenz96", "lorenz63", "shallow_water", "file")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an experiment configuration (YAML).

    Raises
    ------
    ConfigError
        Unknown sections or keys, wrong types, missing required keys, an
        unknown system or method; the message names the key and the fix.
    """
    import yaml

    from xlatda.methods import method_names

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping of sections {sorted(_SCHEMA)}")
    for section, body in cfg.items():
        if section not in _SCHEMA:
            raise ConfigError(f"unknown section {section!r}; known sections: {sorted(_SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"section {section!r} must be a mapping, got {body!r}")
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(
                    f"unknown key {section}.{key}; known keys: {sorted(_SCHEMA[section])}"
                )
            types = _SCHEMA[section][key]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{section}.{key} must be {names}, got {value!r}")
    for section, keys in _REQUIRED.items():
        for key in keys:
            if key not in cfg.get(section, {}):
                raise ConfigError(f"missing {section}.{key} in {path}")
    if cfg["system"]["name"] not in _SYSTEMS:
        raise ConfigError(f"system.name must be one of {_SYSTEMS}, got {cfg['system']['name']!r}")
    if cfg["system"]["name"] == "file" and not cfg["system"].get("path"):
        raise ConfigError("system.name 'file' needs system.path (a netCDF or zarr dataset)")
    method = cfg["assimilation"]["method"]
    if method.lower() not in method_names():
        raise ConfigError(f"assimilation.method {method!r} is unknown; known: {method_names()}")
    return cfg


def _system(cfg: dict[str, Any]):
    import xarray as xr

    from xlatda import datasets

    name, opts = cfg["system"]["name"], dict(cfg["system"].get("options", {}))
    if name == "file":
        path = cfg["system"]["path"]
        return xr.open_zarr(path) if str(path).endswith(".zarr") else xr.open_dataset(path)
    return getattr(datasets, name)(**opts)


def run_config(path: str | Path, *, progress: bool = True) -> Path:
    """Run the experiment of a configuration file; returns the output path."""
    import xarray as xr

    import xlatda
    from xlatda.dynamics import physical_models

    cfg = load_config(path)
    out = Path(cfg["output"]["path"])
    if out.exists() and not cfg.get("output", {}).get("overwrite", False):
        raise ConfigError(f"output {str(out)!r} exists; set output.overwrite: true or change it")
    ds = _system(cfg)
    tname = xlatda.layout(ds).axes.time
    extra = [d for d in xlatda.layout(ds).sample_dims if d != tname]
    if extra:
        ds = ds.isel({d: 0 for d in extra})
    acfg = cfg["assimilation"]
    ocfg = cfg.get("observations", {})
    mcfg = cfg.get("model")
    n_time = ds.sizes[tname]
    split = n_time // 2 if mcfg else 0
    train, truth = ds.isel({tname: slice(0, split)}), ds.isel({tname: slice(split, None)})
    model: Any
    if mcfg:
        if mcfg.get("path"):
            model = xlatda.open_model(mcfg["path"])
        else:
            model = xlatda.fit(train, encoder=mcfg.get("encoder", "pca"),
                               latent_dim=mcfg.get("latent_dim", 32),
                               dynamics=mcfg.get("dynamics", "ode"),
                               uncertainty=mcfg.get("uncertainty", "diagonal"),
                               epochs=mcfg.get("epochs", 20), progress=progress,
                               dynamics_options=mcfg.get("options"))
    else:
        pm = acfg.get("physical_model") or cfg["system"]["name"]
        opts = {k: v for k, v in cfg["system"].get("options", {}).items()
                if k in ("n", "forcing", "dt")}
        model = physical_models.get(pm)(**opts)
    every = int(ocfg.get("every", 1))
    sampled = truth.isel({tname: slice(1, None, every)})
    obs = xlatda.obs.sample_points(sampled, n=int(ocfg.get("n", 20)),
                                   error_std=ocfg.get("error_std", 1.0),
                                   seed=int(ocfg.get("seed", 0)))
    res = xlatda.cycle(truth.isel({tname: 0}), obs, model, method=acfg["method"],
                       space=acfg.get("space"), members=int(acfg.get("members", 20)),
                       init_std=acfg.get("init_std", 1.0), window=int(acfg.get("window", 1)),
                       seed=int(acfg.get("seed", 0)), progress=progress,
                       **acfg.get("settings", {}))
    ana = res.analysis.mean("member")
    score = xlatda.metrics.rmse(ana, truth.sel({tname: ana[tname]})[list(ana.data_vars)],
                                dim=None)
    if out.exists():
        import shutil

        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tree = xr.DataTree.from_dict({"analysis": res.analysis, "background": res.background,
                                  "diagnostics": res.diagnostics,
                                  "truth": truth[list(ana.data_vars)]})
    tree.to_zarr(out)
    for v in score.data_vars:
        print(f"analysis RMSE {v}: {float(score[v]):.4f}")
    print(f"wrote {out}")
    return out


# -- bench ------------------------------------------------------------------
def bench(system: str = "lorenz96", cycles: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """Every registered physical-space method on Lorenz-96 with all sites observed."""
    import xarray as xr

    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    if system != "lorenz96":
        raise ConfigError("xlatda bench currently compares methods on system 'lorenz96'")
    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
    rng = np.random.default_rng(seed)
    k = np.tile(np.arange(40.0), cycles)
    t = np.repeat(truth.time.values[1:], 40)
    vals = truth.x.isel(time=slice(1, None)).values.ravel() + rng.normal(size=k.size)
    obs = xr.Dataset({"x": ("obs", vals, {"error_std": 1.0})},
                     coords={"k": ("obs", k), "time": ("obs", t)})
    runs = [("etkf", 24, {"inflation": 1.013}), ("denkf", 40, {"inflation": 1.01}),
            ("enkf", 40, {"inflation": 1.06}), ("ensrf", 40, {"inflation": 1.01}),
            ("letkf", 7, {"inflation": 1.04, "radius": 4}), ("3dvar", 1, {"b_std": 0.5}),
            ("4denvar", 20, {"inflation": 1.04, "window": 4})]
    rows = []
    burn = min(100, cycles // 3)
    for method, members, settings in runs:
        t0 = time.perf_counter()
        res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method, members=members,
                           init_std=1.0, seed=seed, progress=False, **settings)
        secs = time.perf_counter() - t0
        a = res.analysis.x.mean("member")
        err = (a - truth.x.sel(time=a.time)).isel(time=slice(burn, None))
        rows.append({"method": method, "members": members,
                     "rmse": float(np.sqrt((err**2).mean())),
                     "cycles_per_s": cycles / secs})
        print(f"{method:<8} N={members:<3} RMSE {rows[-1]['rmse']:.3f}  "
              f"{rows[-1]['cycles_per_s']:.0f} cycles/s", flush=True)
    return rows


# -- entry point ------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xlatda`` console script."""
    parser = argparse.ArgumentParser(prog="xlatda", description="Latent data assimilation on "
                                     "xarray: demo, experiments from a config, benchmarks.")
    parser.add_argument("--version", action="version", version=f"xlatda {__version__}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the demo's tensors are small, and "
                        "spinning threads slow down on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="shallow-water twin experiment with the shipped model")
    p.add_argument("--out", default="xlatda-demo", help="output folder (default xlatda-demo)")
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--obs", type=int, default=256, help="observation locations per hour")
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("run", help="run an experiment from a YAML configuration")
    p.add_argument("config")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("bench", help="compare every method on Lorenz-96")
    p.add_argument("--system", default="lorenz96")
    p.add_argument("--cycles", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    try:
        if args.command == "demo":
            from xlatda.demo import run_demo

            run_demo(args.out, hours=args.hours, n_obs=args.obs, members=args.members,
                     seed=args.seed, plot=not args.no_plot, progress=not args.quiet)
        elif args.command == "run":
            run_config(args.config, progress=not args.quiet)
        else:
            bench(args.system, args.cycles, args.seed)
    except XlatdaError as err:
        print(f"xlatda: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
