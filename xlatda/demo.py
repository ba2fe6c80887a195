"""The demo: a shallow-water twin experiment with the shipped latent model.

What it does (all generated here, no download):

1. opens the small pretrained latent model shipped in ``xlatda/data``
   (PCA + neural ODE + learned Q + a score prior over 5-hour windows of
   latent states, trained by ``scripts/make_demo_model.py``);
2. makes a truth: a new Galewsky-jet shallow-water trajectory (a seed the
   model never saw), hourly on the model's 32 x 64 grid;
3. samples scattered noisy observations of height and vorticity every hour
   (error std 0.1 of each variable's standard deviation, as in LAINR);
4. starts from a wrong background (another trajectory's state) and runs the
   free forecast and each latent method with :func:`xlatda.cycle`'s defaults
   (initial ensemble from the model's latent prior, adaptive inflation, the
   sampler settings of :data:`xlatda.methods.score.SAMPLER_DEFAULTS`): EnKF,
   ETKF, 4DEnVar (3-hour windows), 3DVar, and score-based sampling (SLAMS,
   5-hour windows, no forecast). The one setting given is 3DVar's ``b_std=1``
   (a background error of one normalised unit through the decoder Jacobian):
   its default ``B``, the latent climatology, is too wide for a background
   one hour old (RMSE 0.079 against 0.063 over truth seeds 0-2);
5. prints a table of RMSE (normalised, cos-lat weighted) and spread, writes
   ``results.nc`` and ``demo.png`` to the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xlatda.cycle import cycle
from xlatda.datasets import shallow_water
from xlatda.errors import ModelStoreError
from xlatda.forecast import forecast
from xlatda.io import open_model
from xlatda.model import LatentModel
from xlatda.obs import sample_points

__all__ = ["DemoResult", "demo_model_path", "normalised_rmse", "normalised_spread", "run_demo"]


_SCORE_TEXT = ("RMSE of the ensemble mean against the truth over height and vorticity, each in "
               "units of its standard deviation (the model's normaliser), cos-latitude "
               "weighted; spread = ensemble standard deviation in the same units")


def demo_model_path() -> Path:
    """Path of the shipped demo model store."""
    path = Path(str(resources.files("xlatda") / "data" / "demo_sw.zarr"))
    if not path.exists():
        raise ModelStoreError(
            f"the demo model is missing at {path}; rebuild it with "
            "`python scripts/make_demo_model.py` from the repository root"
        )
    return path


@dataclass(frozen=True)
class DemoResult:
    """Scores per run (a Dataset over ``run``: free forecast and each method) and files."""

    scores: xr.Dataset
    out: Path
    figure: Path | None

    def table(self) -> str:
        """The scores as a plain-text table."""
        lines = [f"{'run':<22}{'RMSE':>8}{'spread':>9}{'members':>9}{'time [s]':>10}"]
        for m in self.scores.run.values:
            s = self.scores.sel(run=m)
            spread = "-" if not np.isfinite(s.spread) else f"{float(s.spread):.3f}"
            n = int(s.members) if "members" in s and int(s.members) > 1 else "-"
            lines.append(f"{m!s:<22}{float(s.rmse):>8.3f}{spread:>9}{n!s:>9}"
                         f"{float(s.seconds):>10.1f}")
        return "\n".join(lines)


def normalised_rmse(fields: xr.Dataset, truth: xr.Dataset, model: LatentModel) -> xr.DataArray:
    """cos-lat weighted RMSE over space and variables, in units of each variable's std.

    The std of each variable is the model's normaliser's; the result keeps
    every dim but the spatial ones (e.g. ``time``).
    """
    lat = model.layout.axes.lat
    w = np.cos(np.deg2rad(truth[lat]))
    total = 0
    for i, v in enumerate(model.layout.variables):
        std = float(model.normalizer.std[i])
        err2 = ((fields[v] - truth[v]) / std) ** 2
        total = total + err2.weighted(w).mean(model.layout.spatial_dims)
    return np.sqrt(total / len(model.layout.variables))


def normalised_spread(ens: xr.Dataset, model: LatentModel) -> xr.DataArray:
    """Ensemble spread (std over ``member``) in the units of :func:`normalised_rmse`."""
    lat = model.layout.axes.lat
    w = np.cos(np.deg2rad(ens[lat]))
    total = 0
    for i, v in enumerate(model.layout.variables):
        std = float(model.normalizer.std[i])
        var = (ens[v] / std).var("member", ddof=1)
        total = total + var.weighted(w).mean(model.layout.spatial_dims)
    return np.sqrt(total / len(model.layout.variables))


def run_demo(
    out: str | Path = "xlatda-demo",
    *,
    hours: int = 24,
    n_obs: int = 256,
    members: int | None = None,
    seed: int = 1,
    methods: tuple[str, ...] = ("enkf", "etkf", "4denvar", "3dvar", "score"),
    plot: bool = True,
    progress: bool | None = None,
    model: LatentModel | None = None,
    echo: Any = print,
) -> DemoResult:
    """Run the twin experiment; see the module docstring.

    Parameters
    ----------
    out : path
        Output folder (created); ``results.nc`` and ``demo.png`` go there.
    hours : int
        Length of the experiment (one analysis per hour).
    n_obs : int
        Scattered observation locations per hour (each observes height and
        vorticity).
    members : int, optional
        Ensemble size; default :func:`xlatda.cycle`'s, an ensemble that spans the
        control vector (97 for the shipped model: its 48 latent values and the 48
        of the regime shift that ``regime="auto"`` carries; fewer members leave
        directions uncorrected: ``SmallEnsembleWarning``).
    seed : int
        Seed of the truth, observations and ensembles.
    methods : tuple of str
        Latent-space methods to run besides the free forecast ("score" runs
        when the model has a score prior, :func:`xlatda.fit_score`).
    plot : bool
        Write the figure (needs matplotlib).
    progress : bool, optional
        Progress bars (default: the ``progress`` option, ``"auto"``: in a
        terminal or a Jupyter kernel, not when output goes to a file).
    model : LatentModel, optional
        Another model instead of the shipped one.
    echo : callable
        Where progress lines go (``print``; ``None`` for silence).
    """
    say = echo or (lambda *a, **k: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or open_model(demo_model_path())
    members = None if members is None else int(members)
    L = model.layout
    nlat, nlon = L.spatial_shape
    settings = model.history.get("settings", {})
    spinup = float(settings.get("spinup_hours", 72))
    say(f"model: {model}")
    t0 = time.perf_counter()
    both = shallow_water(nlat=nlat, nlon=nlon, hours=hours, trajectories=2,
                         seed=10_000 + seed, spinup_hours=spinup, progress=False)
    truth = both.isel(trajectory=0, drop=True)
    # The background is another trajectory's state: a climatological first guess.
    background = both.isel(trajectory=1, drop=True).isel(time=0)
    background = background.assign_coords(time=truth.time[0])
    say(f"truth: {dict(truth.sizes)} in {time.perf_counter() - t0:.1f} s")
    std = {v: 0.1 * float(model.normalizer.std[i]) for i, v in enumerate(L.variables)}
    obs = sample_points(truth.isel(time=slice(1, None)), n=n_obs, error_std=std, seed=seed)
    say(f"observations: {n_obs} random locations per hour ({n_obs / (nlat * nlon):.1%} of grid "
        f"points), each of {', '.join(L.variables)}; {obs.sizes['obs']} in all")

    records: dict[str, dict[str, Any]] = {}
    means: dict[str, xr.Dataset] = {}
    spreads: dict[str, xr.Dataset] = {}
    t = time.perf_counter()
    free = forecast(background.expand_dims(time=[truth.time.values[0]]), model, steps=hours)
    free = free.isel(time=0, drop=True).swap_dims(lead="valid_time").drop_vars("lead")
    free = free.rename(valid_time="time").isel(time=slice(1, None))
    free = free.assign_coords(time=truth.time.values[1:])
    means["free"] = free[list(L.variables)]
    records["free"] = {"seconds": time.perf_counter() - t, "spread": np.nan}
    for method in methods:
        if method == "score" and getattr(model, "score", None) is None:
            say("score: skipped (the model has no score prior; see xlatda.fit_score)")
            continue
        t = time.perf_counter()
        # the library's defaults (module docstring): only the 4D windows and 3DVar's B
        kwargs: dict[str, Any] = {"3dvar": {"b_std": 1.0}, "4denvar": {"window": 3}}.get(
            method, {})
        if method == "score":  # SLAMS: windows of 5 hours sampled from the prior given obs
            kwargs = {"window": model.score.window}
        res = cycle(background, obs, model, method=method, members=members, seed=seed,
                    progress=progress, **kwargs)
        label = f"latent {method}"
        means[label] = res.analysis.mean("member")[list(L.variables)]
        if res.analysis.sizes["member"] > 1:
            spreads[label] = res.analysis.std("member", ddof=1)[list(L.variables)]
        spread = (normalised_spread(res.analysis, model).mean().item()
                  if res.analysis.sizes["member"] > 1 else np.nan)
        records[label] = {"seconds": time.perf_counter() - t, "spread": spread,
                          "members": int(res.analysis.sizes["member"])}
        say(f"{label}: done in {records[label]['seconds']:.1f} s")

    names = list(means)
    rmse_t = xr.concat([normalised_rmse(means[m], truth.sel(time=means[m].time), model)
                        for m in names], dim=xr.DataArray(names, dims="run", name="run"))
    unit = {"units": "1"}
    scores = xr.Dataset(
        {"rmse": rmse_t.mean("time").assign_attrs(unit | {
            "long_name": "normalised RMSE of the ensemble mean, mean over time",
            "description": _SCORE_TEXT}),
         "spread": ("run", [records[m]["spread"] for m in names], unit | {
             "long_name": "normalised ensemble spread, mean over time",
             "description": "ensemble standard deviation in units of each variable's "
                            "standard deviation, cos-latitude weighted; NaN without an "
                            "ensemble"}),
         "seconds": ("run", [records[m]["seconds"] for m in names], {
             "units": "s", "long_name": "wall-clock time of the run"}),
         "members": ("run", [records[m].get("members", 1) for m in names], {
             "units": "1", "long_name": "ensemble members (posterior samples for score)"}),
         "rmse_time": rmse_t.assign_attrs(unit | {
             "long_name": "normalised RMSE of the ensemble mean at each analysis time",
             "description": _SCORE_TEXT})},
        attrs={"description": _SCORE_TEXT, "n_obs_per_hour": n_obs, "seed": seed},
    )
    scores["run"].attrs = {"long_name": "free forecast or assimilation method"}
    results = _results(truth.isel(time=slice(1, None)), means, spreads, scores, model,
                       {"n_obs_per_hour": n_obs, "seed": seed, "hours": hours,
                        **({} if members is None else {"members": members})})
    results.to_netcdf(out / "results.nc")
    fig_path = None
    if plot:
        fig_path = _figure(truth, means, scores, obs, out / "demo.png")
    result = DemoResult(scores=scores, out=out, figure=fig_path)
    say("")
    say(result.table())
    say(f"\nwrote {out / 'results.nc'}" + (f" and {fig_path}" if fig_path else ""))
    return result


def _results(truth: xr.Dataset, means: dict[str, xr.Dataset], spreads: dict[str, xr.Dataset],
             scores: xr.Dataset, model: LatentModel, settings: dict[str, Any]) -> xr.Dataset:
    """The demo's result file: every run along ``run``, mean and spread, truth, scores."""
    import datetime as _dt

    from xlatda._version import __version__

    names = list(means)
    out = xr.Dataset(coords={"run": ("run", names, scores["run"].attrs)})
    for v in model.layout.variables:
        attrs = {k: truth[v].attrs[k] for k in ("units", "standard_name") if k in truth[v].attrs}
        what = truth[v].attrs.get("long_name", v)
        stack = xr.concat([means[m][v].sel(time=truth.time) for m in names], dim="run")
        out[v] = stack.assign_coords(run=names).astype("float32").drop_attrs().assign_attrs(
            attrs | {"long_name": f"{what}: ensemble mean of each run (the free forecast is "
                                  "a single run)"})
        spread = [spreads[m][v].sel(time=truth.time) if m in spreads
                  else xr.full_like(means[m][v].sel(time=truth.time), np.nan) for m in names]
        out[f"{v}_spread"] = xr.concat(spread, dim="run").assign_coords(run=names).astype(
            "float32").drop_attrs().assign_attrs({"units": attrs.get("units", ""),
                                     "long_name": f"{what}: ensemble spread of each run",
                                     "cell_methods": "member: standard_deviation"})
        out[f"{v}_truth"] = truth[v].astype("float32").drop_attrs().assign_attrs(
            attrs | {"long_name": f"{what}: truth"})
    out = out.merge(scores)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    out.attrs = {
        "Conventions": "CF-1.10",
        "title": "xlatda demo: shallow-water twin experiment with a latent model",
        "source": f"xlatda {__version__} (xlatda demo)",
        "history": f"{now} xlatda demo (xlatda {__version__})",
        "date_created": now,
        "xlatda_version": __version__,
        "model": str(model),
        "description": _SCORE_TEXT,
    } | {k: v for k, v in settings.items()}
    return out


def _figure(truth, means, scores, obs, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional dependency
        return None
    from xlatda.plot import analysis_maps, score_series

    variables = [v for v in truth.data_vars if v in next(iter(means.values())).data_vars]
    best = min((m for m in scores.run.values if m != "free"),
               key=lambda m: float(scores.rmse.sel(run=m)), default="free")
    tlast = truth.time.values[-1]
    fig = plt.figure(figsize=(16, 3.6 * len(variables) + 4.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6 * len(variables), 4.0])
    analysis_maps(truth.sel(time=[tlast]), means["free"].sel(time=[tlast]),
                  means[best].sel(time=[tlast]), obs, variables=variables, time=tlast,
                  fig=top, names={"background": "free forecast", "analysis": best})
    ax = bottom.subplots()
    score_series(scores.rmse_time, ax=ax, ylabel="RMSE (normalised)", highlight=best)
    ax.set_title("analysis RMSE of height and vorticity (normalised, cos-latitude weighted; "
                 "legend: RMS over time)", fontsize="medium")
    fig.suptitle("Shallow-water twin experiment with a latent model")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
