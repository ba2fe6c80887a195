"""Bit-identity check of ``xlatda.cycle`` across code changes (issue 16).

Runs the five Lorenz-96 filters of ``bench_vs_dapper.py`` (ETKF, DEnKF,
EnKF, LETKF, 3DVar, their settings) through ``xlatda.cycle`` for two seeds
and ``--cycles`` cycles (default 150), with every site observed and with
every second site observed, and saves every number the call returns
(analyses, backgrounds and all diagnostics) to an ``.npz`` file; plus, for
seed 0 with every site observed, the ensemble filters smoothed with
``lag=2``, and DEnKF, EnKF and LETKF through a zarr ``store`` (without and
with ``lag=2``; the result read back from the store). Run it with two
versions of the library and compare::

    PYTHONPATH=/tmp/ref python benchmarks/cycle_fingerprint.py --out /tmp/before.npz
    python benchmarks/cycle_fingerprint.py --out /tmp/after.npz
    python benchmarks/cycle_fingerprint.py --compare /tmp/before.npz /tmp/after.npz

``--compare`` prints one line per array and exits with status 1 unless every
array is bit-identical (same shape, same bytes; NaN where NaN).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

#: label, method, members, settings (as in bench_vs_dapper.RUNS)
RUNS = [
    ("ETKF", "etkf", 24, {"inflation": 1.013}),
    ("DEnKF", "denkf", 40, {"inflation": 1.01}),
    ("EnKF", "enkf", 40, {"inflation": 1.06}),
    ("LETKF", "letkf", 7, {"inflation": 1.04, "radius": 4}),
    ("3DVar", "3dvar", 1, {"b_std": 0.5}),
]


def _data(cycles: int, seed: int, every: int):
    import xarray as xr

    import xlatda

    truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
    rng = np.random.default_rng(seed)
    sites = np.arange(0, 40, every)
    xx = truth.x.values.astype(float)
    yy = xx[1:, sites] + rng.normal(size=(cycles, sites.size))
    obs = xr.Dataset({"x": ("obs", yy.ravel(), {"error_std": 1.0})},
                     coords={"k": ("obs", np.tile(sites.astype(float), cycles)),
                             "time": ("obs", np.repeat(truth.time.values[1:], sites.size))})
    return truth, obs


def _arrays(out: dict[str, np.ndarray], tag: str, res) -> None:
    out[f"{tag}/analysis"] = res.analysis.x.values
    out[f"{tag}/background"] = res.background.x.values
    for name, var in res.diagnostics.data_vars.items():
        out[f"{tag}/diag/{name}"] = var.values


def fingerprint(cycles: int = 150, seeds: tuple[int, ...] = (0, 1)) -> dict[str, np.ndarray]:
    """Every array ``xlatda.cycle`` returns for each run, seed and observation set
    (and the smoothed and stored runs of the module docstring)."""
    import tempfile
    from pathlib import Path

    import xlatda
    from xlatda.dynamics.physical import Lorenz96

    out = {}
    for seed in seeds:
        for every in (1, 2):
            truth, obs = _data(cycles, seed, every)
            for label, method, members, settings in RUNS:
                res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method,
                                   members=members, init_std=1.0, seed=seed, progress=False,
                                   **settings)
                _arrays(out, f"{label}/seed{seed}/every{every}", res)
    truth, obs = _data(cycles, 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, members, settings in RUNS[:4]:
            for lag, store in ((2, False), (0, True), (2, True)):
                if store and label == "ETKF":
                    continue
                path = Path(tmp) / f"{label}-{lag}.zarr" if store else None
                res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(), method=method,
                                   members=members, init_std=1.0, seed=0, progress=False,
                                   lag=lag, store=path, **settings)
                _arrays(out, f"{label}/seed0/lag{lag}{'/store' if store else ''}", res)
    return out


def compare(a: str, b: str) -> int:
    """Print the comparison of two fingerprint files; 0 if all arrays are bit-identical."""
    fa, fb = np.load(a), np.load(b)
    bad = 0
    for key in sorted(set(fa.files) | set(fb.files)):
        if key not in fa.files or key not in fb.files:
            print(f"MISSING {key} ({'before' if key not in fa.files else 'after'})")
            bad += 1
            continue
        x, y = fa[key], fb[key]
        same = x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()
        if not same:
            diff = (float(np.nanmax(np.abs(x.astype(float) - y.astype(float))))
                    if x.shape == y.shape else float("nan"))
            print(f"DIFFERS {key}: max |diff| {diff:.3g}")
            bad += 1
    print(f"{len(set(fa.files) | set(fb.files))} arrays, {bad} not bit-identical")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the fingerprint of the importable xlatda here")
    p.add_argument("--cycles", type=int, default=150)
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = p.parse_args(argv)
    if a.compare:
        return compare(*a.compare)
    if not a.out:
        p.error("give --out FILE or --compare BEFORE AFTER")
    import xlatda

    arrays = fingerprint(a.cycles)
    np.savez(a.out, **arrays)
    print(f"{len(arrays)} arrays from {xlatda.__file__} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
