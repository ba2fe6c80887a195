"""``xlatda bench``: every method on one built-in system and one observation set.

Each system has one fixed experiment, printed as a header before the table:

- ``lorenz96``: 40 sites, F = 8, every site observed at every cycle
  (Δt = 0.05) with error std 1; physical-space filters, LETKF, 3DVar, 4DEnVar.
- ``lorenz63``: x, y, z observed every 5 model steps (Δt = 0.05) with error
  std 2; physical-space filters, 3DVar, 4DEnVar.
- ``shallow_water``: the shipped latent demo model (:mod:`xlatda.demo`);
  256 random locations per hour observe height and vorticity with error 0.1
  of each variable's std; latent-space filters, 3DVar, 4DEnVar.

The score is the RMSE of the analysis ensemble mean against the truth,
over every state variable and site (normalised by each variable's std and
cos-latitude weighted for shallow water), averaged over the cycles after a
spin-up (the first third, at most 100 cycles). The settings (members,
inflation) are fixed per method and printed; they are not tuned on these
runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["BENCH_SYSTEMS", "bench"]

BENCH_SYSTEMS = ("lorenz63", "lorenz96", "shallow_water")
_DEFAULT_CYCLES = {"lorenz63": 300, "lorenz96": 300, "shallow_water": 24}


def _full_obs(truth, names, positions, error_std, rng):
    """Every variable (or site) observed at every time after the first."""
    import xarray as xr

    times = truth.time.values[1:]
    data: dict = {}
    if positions is not None:
        coords = {"time": ("obs", np.repeat(times, len(positions)))}
        k = np.tile(np.asarray(positions, float), times.size)
        vals = truth.x.isel(time=slice(1, None)).values.ravel()
        data["x"] = ("obs", vals + error_std * rng.normal(size=vals.size),
                     {"error_std": error_std})
        coords["k"] = ("obs", k)
        return xr.Dataset(data, coords=coords)
    # Lorenz-63: one row per time observing x, y and z
    coords = {"time": ("obs", times)}
    for v in names:
        vals = truth[v].isel(time=slice(1, None)).values
        data[v] = ("obs", vals + error_std * rng.normal(size=vals.size), {"error_std": error_std})
    return xr.Dataset(data, coords=coords)


def _header(system: str, cycles: int, burn: int) -> str:
    score = (f"score: RMSE of the analysis ensemble mean against the truth over all state "
             f"variables and sites, mean over cycles {burn + 1}-{cycles} (after spin-up)")
    what = {
        "lorenz96": (f"Lorenz-96 (40 sites, F = 8), {cycles} cycles of Δt = 0.05; "
                     "observations: every site at every cycle, error std 1.0; "
                     "physical-space methods with the true model"),
        "lorenz63": (f"Lorenz-63 (σ = 10, ρ = 28, β = 8/3), {cycles} cycles of Δt = 0.05 "
                     "(5 model steps); observations: x, y and z at every cycle, error std 2.0; "
                     "physical-space methods with the true model"),
        "shallow_water": (f"shallow water on the sphere (Galewsky jet, 32 x 64), {cycles} hourly "
                          "cycles; observations: 256 random locations per hour, height and "
                          "vorticity, error 0.1 std; latent-space methods with the shipped "
                          "demo model (PCA + neural ODE); RMSE normalised by each variable's "
                          "std, cos-latitude weighted"),
    }[system]
    return f"xlatda bench: {what}\n{score}"


def bench(system: str = "lorenz96", cycles: int | None = None, seed: int = 0,
          echo: Any = print) -> list[dict[str, Any]]:
    """Run every method on one built-in system; print a header and one line per method.

    Parameters
    ----------
    system : {"lorenz63", "lorenz96", "shallow_water"}
    cycles : int, optional
        Analysis cycles (default 300 for the Lorenz systems, 24 for shallow
        water).
    seed : int
        Seed of the truth, observations and ensembles.
    echo : callable
        Where the lines go (``None``: silence).

    Returns
    -------
    list of dict
        One row per method: ``method``, ``members``, ``settings``, ``rmse``,
        ``cycles_per_s``.

    Raises
    ------
    ConfigError
        An unknown system or fewer than 3 cycles.
    """
    import xarray as xr

    import xlatda
    from xlatda.errors import ConfigError

    say = echo or (lambda *a, **k: None)
    if system not in BENCH_SYSTEMS:
        import difflib

        close = difflib.get_close_matches(system, BENCH_SYSTEMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown system {system!r}{hint}; xlatda bench runs "
                          f"{', '.join(BENCH_SYSTEMS)}")
    cycles = int(cycles if cycles is not None else _DEFAULT_CYCLES[system])
    if cycles < 3:
        raise ConfigError(f"cycles must be at least 3, got {cycles}")
    burn = min(100, cycles // 3)
    rng = np.random.default_rng(seed)
    score: Any
    if system == "lorenz96":
        from xlatda.dynamics.physical import Lorenz96

        truth = xlatda.datasets.lorenz96(n=40, steps=cycles, seed=seed)
        obs = _full_obs(truth, ["x"], np.arange(40), 1.0, rng)
        model, background = Lorenz96(), truth.isel(time=0)
        runs = [("etkf", 24, {"inflation": 1.013}), ("denkf", 40, {"inflation": 1.01}),
                ("enkf", 40, {"inflation": 1.06}), ("ensrf", 40, {"inflation": 1.01}),
                ("letkf", 7, {"inflation": 1.04, "radius": 4}), ("3dvar", 1, {"b_std": 0.5}),
                ("4denvar", 20, {"inflation": 1.04, "window": 4})]
        init_std = 1.0

        def score(ens):
            return (ens.x.mean("member") - truth.x.sel(time=ens.time)) ** 2
    elif system == "lorenz63":
        from xlatda.dynamics.physical import Lorenz63

        l63 = xlatda.datasets.lorenz63(steps=5 * cycles, every=5, seed=seed)
        # x, y, z as one variable along a component dim "k" (the state layout needs one)
        truth = xr.Dataset(
            {"x": (("time", "k"), np.stack([l63[v].values for v in "xyz"], -1),
                   {"long_name": "Lorenz-63 state (x, y, z)"})},
            coords={"time": l63.time, "k": ("k", np.arange(3))}, attrs=l63.attrs)
        obs = _full_obs(truth, ["x"], np.arange(3), 2.0, rng)
        model, background = Lorenz63(), truth.isel(time=0)
        runs = [("etkf", 10, {"inflation": 1.02}), ("denkf", 10, {"inflation": 1.02}),
                ("enkf", 20, {"inflation": 1.04}), ("ensrf", 10, {"inflation": 1.02}),
                ("3dvar", 1, {"b_std": 2.0}), ("4denvar", 10, {"inflation": 1.02, "window": 2})]
        init_std = 2.0

        def score(ens):
            ref = truth.x.sel(time=ens.time.values, method="nearest")
            return (ens.x.mean("member") - ref.assign_coords(time=ens.time.values)) ** 2
    else:
        from xlatda.datasets import shallow_water
        from xlatda.demo import demo_model_path, normalised_rmse

        model = xlatda.open_model(demo_model_path())
        nlat, nlon = model.layout.spatial_shape
        spinup = float(model.history.get("settings", {}).get("spinup_hours", 72))
        both = shallow_water(nlat=nlat, nlon=nlon, hours=cycles, trajectories=2,
                             seed=10_000 + seed, spinup_hours=spinup, progress=False)
        truth = both.isel(trajectory=0, drop=True)
        background = both.isel(trajectory=1, drop=True).isel(time=0)
        background = background.assign_coords(time=truth.time[0])
        std = {v: 0.1 * float(model.normalizer.std[i])
               for i, v in enumerate(model.layout.variables)}
        obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=256, error_std=std,
                                       seed=seed)
        runs = [("etkf", 32, {"inflation": 1.05}), ("denkf", 32, {"inflation": 1.05}),
                ("enkf", 32, {"inflation": 1.05}), ("ensrf", 32, {"inflation": 1.05}),
                ("3dvar", 1, {"b_std": 1.0}), ("4denvar", 32, {"inflation": 1.05, "window": 3})]
        init_std = 0.5

        def score(ens):
            m = ens.mean("member")
            return normalised_rmse(m, truth.sel(time=m.time), model) ** 2
    say(_header(system, cycles, burn))
    say(f"{'method':<9}{'members':>8}  {'settings':<30}{'RMSE':>8}{'cycles/s':>10}")
    rows = []
    for method, members, settings in runs:
        t0 = time.perf_counter()
        res = xlatda.cycle(background, obs, model, method=method, members=members,
                           init_std=init_std, seed=seed, progress=False, **settings)
        secs = time.perf_counter() - t0
        err2 = score(res.analysis).isel(time=slice(burn, None))
        err2 = err2.mean([d for d in err2.dims if d != "time"]) if err2.ndim > 1 else err2
        rmse = float(np.sqrt(xr.DataArray(err2).mean()))
        rows.append({"method": method, "members": members, "settings": settings,
                     "rmse": rmse, "cycles_per_s": cycles / secs})
        text = ", ".join(f"{k}={v}" for k, v in settings.items())
        say(f"{method:<9}{members:>8}  {text:<30}{rmse:>8.3f}{cycles / secs:>10.0f}")
    return rows
