"""What a cycle records: fields, parameters and diagnostics, kept as tensors.

:class:`CycleRecorder` collects, per analysis time, the background and
analysis fields, the estimated parameters, the observation-space
diagnostics and the method's own diagnostics, all as tensors; they become
xarray once, at the end (or per store write, :meth:`CycleRecorder.datasets`).
Nothing on the per-analysis path converts to numpy or xarray.

Diagnostics per analysis time:

``n_obs``
    number of observations;
``innovation_rms``
    RMS of the innovations :math:`y - \\overline{H(x_b)}`;
``residual_rms``
    RMS of the residuals :math:`y - \\overline{H(x_a)}`;
``background_spread_obs``
    RMS over observations of the background ensemble spread in observation
    space;
``obs_error_rms``
    RMS of the observation-error standard deviations;

plus every diagnostic the method returned (e.g. ``iterations``,
``converged``, ``chi2``, ``inflation``).

Examples
--------
>>> CycleResult.__dataclass_fields__.keys()
dict_keys(['analysis', 'background', 'diagnostics', 'parameters'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ObservationError, XlatdaError
from xlatda.layout import StateLayout

__all__ = ["AnalysisError", "CycleRecorder", "CycleResult", "check_finite"]

_F64 = torch.float64
OBS_DIAGNOSTICS = ("n_obs", "innovation_rms", "residual_rms", "background_spread_obs",
                   "obs_error_rms")


class AnalysisError(XlatdaError, ArithmeticError):
    """A forecast or analysis of a cycle is not finite, or cannot be computed.

    The message names the analysis (its index and time) and what to try.
    """


def check_finite(s: torch.Tensor, what: str, index: int, label: Any) -> None:
    """Raise :class:`AnalysisError` if ``s`` holds NaN or inf."""
    if not bool(torch.isfinite(s).all()):
        bad = int((~torch.isfinite(s)).sum())
        raise AnalysisError(
            f"the {what} of analysis {index} (time {label}) has {bad} non-finite values of "
            f"{s.numel()}: the cycle diverged or the model blew up. Try more members, "
            "inflation or localisation, smaller observation errors' influence (larger "
            "error_std), or check the model and the observations"
        )


@dataclass(frozen=True)
class CycleResult:
    """What :func:`xlatda.cycle` returns.

    Attributes
    ----------
    analysis : Dataset
        Analysis ensemble on the state layout, dims ``(time, member, ...)``.
    background : Dataset
        Background (forecast) ensemble at the same times.
    diagnostics : Dataset
        Per analysis time: number of observations, RMS of innovations
        (observation minus background mean) and of residuals (observation
        minus analysis mean), background spread in observation space,
        observation-error RMS, and the method's own diagnostics.
    parameters : Dataset or None
        Estimated parameters ``theta(time, member, parameter)``.
    """

    analysis: xr.Dataset
    background: xr.Dataset
    diagnostics: xr.Dataset
    parameters: xr.Dataset | None = None

    def __repr__(self) -> str:
        n = self.analysis.sizes.get("time", 0)
        m = self.analysis.sizes.get("member", 1)
        extra = ("" if self.parameters is None
                 else f", parameters={list(self.parameters.param.values)}")
        names = list(self.analysis.data_vars)
        return f"CycleResult(analyses={n}, members={m}, variables={names}{extra})"


class CycleRecorder:
    """Records of a cycle, as tensors (see the module docstring).

    Parameters
    ----------
    layout : StateLayout
        Layout of the fields.
    time_name : str
        Name of the time dimension.
    param_names : list of str
        Names of the estimated parameters.
    """

    def __init__(self, layout: StateLayout, time_name: str, param_names: list[str]) -> None:
        self.layout = layout
        self.tname = time_name
        self.pnames = list(param_names)
        self.rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, space: Any, result: Any, window: Any) -> None:
        """Record a window's analyses (a :class:`~xlatda.methods.protocol.WindowAnalysis`)."""
        observed = result.observed or [None] * len(result.steps)
        k = len(result.steps)
        extra = {}
        for name, value in result.diagnostics.items():
            v = torch.as_tensor(value).detach().to("cpu", _F64)
            extra[name] = v.reshape(-1) if v.numel() == k else v.reshape(-1)[:1].expand(k)
        np_ = len(self.pnames)
        with torch.no_grad():
            for i, ((ens_b, ens_a), sub, label) in enumerate(
                    zip(result.steps, window.tables, window.labels)):
                hb_all = observed[i] if observed[i] is not None else space.observe(ens_b, sub)
                hb = hb_all.mean(0)
                ha = space.observe(ens_a, sub).mean(0)
                y = sub.values.to(_F64)
                spread = hb_all.var(0) if ens_b.shape[0] > 1 else torch.zeros_like(hb)
                row = {
                    "time": label,
                    "background": space.to_fields(ens_b),
                    "analysis": space.to_fields(ens_a),
                    "obs": torch.stack([
                        torch.tensor(float(len(sub)), dtype=_F64),
                        ((y - hb) ** 2).mean().sqrt(),
                        ((y - ha) ** 2).mean().sqrt(),
                        spread.mean().sqrt(),
                        (sub.error_std.to(_F64) ** 2).mean().sqrt(),
                    ]),
                    "extra": {n: v[i] for n, v in extra.items()},
                }
                if np_:
                    row["theta"] = ens_a[..., -np_:].detach().to("cpu", _F64)
                    row["theta_background"] = ens_b[..., -np_:].detach().to("cpu", _F64)
                self.rows.append(row)

    def datasets(self, start: int = 0) -> dict[str, xr.Dataset]:
        """The records from ``start`` on as Datasets: analysis, background,
        diagnostics and (with parameters) parameters."""
        rows = self.rows[start:]
        if not rows:
            raise ObservationError(
                "no analysis was made: no observation times after the background")
        L, tname = self.layout, self.tname
        times = np.array([r["time"] for r in rows])
        out = {}
        for part in ("analysis", "background"):
            ds = L.to_dataset(torch.stack([r[part] for r in rows]),
                              sample_coords={tname: times})
            out[part] = ds.assign_coords(member=np.arange(ds.sizes["member"]))
        obs = torch.stack([r["obs"] for r in rows]).numpy()
        data = {name: (tname, obs[:, j]) for j, name in enumerate(OBS_DIAGNOSTICS)}
        data["n_obs"] = (tname, obs[:, 0].astype(np.int64))
        names = sorted({n for r in rows for n in r["extra"]})
        for n in names:
            data[n] = (tname, np.array([float(r["extra"].get(n, np.nan)) for r in rows]))
        out["diagnostics"] = xr.Dataset(data, coords={tname: times})
        if self.pnames:
            theta = torch.stack([r["theta"] for r in rows]).numpy()
            theta_b = torch.stack([r["theta_background"] for r in rows]).numpy()
            out["parameters"] = xr.Dataset(
                {"theta": ((tname, "member", "param"), theta),
                 "theta_background": ((tname, "member", "param"), theta_b)},
                coords={tname: times, "member": np.arange(theta.shape[1]),
                        "param": self.pnames},
            )
        return out

    def result(self) -> CycleResult:
        """All records as a :class:`CycleResult`."""
        parts = self.datasets()
        return CycleResult(parts["analysis"], parts["background"], parts["diagnostics"],
                           parts.get("parameters"))
