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

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ObservationError, XlatdaError
from xlatda.layout import StateLayout

__all__ = ["AnalysisError", "CycleRecorder", "CycleResult", "check_finite", "obs_moments_stacked",
           "obs_statistics", "obs_statistics_stacked"]

_F64 = torch.float64
OBS_DIAGNOSTICS = ("n_obs", "innovation_rms", "residual_rms", "background_spread_obs",
                   "obs_error_rms")
_OBS_COLUMNS = (0, 1, 3, 2)  # where obs_statistics puts OBS_DIAGNOSTICS[1:]


class AnalysisError(XlatdaError, ArithmeticError):
    """A forecast or analysis of a cycle is not finite, or cannot be computed.

    The message names the analysis (its index and time) and what to try.
    """


def check_finite(s: torch.Tensor, what: str, index: int, label: Any) -> None:
    """Raise :class:`AnalysisError` if ``s`` holds NaN or inf.

    One reduction: a finite sum means every value is finite; only a sum that
    is not (a non-finite value, or an overflow of huge finite ones) is looked
    at element by element.
    """
    if not math.isfinite(float(s.sum())) and not bool(torch.isfinite(s).all()):
        bad = int((~torch.isfinite(s)).sum())
        raise AnalysisError(
            f"the {what} of analysis {index} (time {label}) has {bad} non-finite values of "
            f"{s.numel()}: the cycle diverged or the model blew up. Try more members, "
            "inflation or localisation, smaller observation errors' influence (larger "
            "error_std), or check the model and the observations"
        )


def obs_statistics(hb_all: torch.Tensor, ha: torch.Tensor, table: Any) -> torch.Tensor:
    """``(4,)`` float64: RMS innovation, RMS residual, RMS error std, RMS background spread.

    ``hb_all`` is the background ensemble in observation space ``(N, P)``,
    ``ha`` the analysis mean there ``(P,)``, ``table`` the observations. The
    innovation is taken from the background mean, the residual from ``ha``,
    the spread is the RMS over observations of the ensemble standard
    deviation (0 for a single state).

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> hb = torch.tensor([[0.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    >>> obs = SimpleNamespace(values=torch.tensor([2.0, 3.0], dtype=torch.float64),
    ...                       error_std=torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> obs_statistics(hb, torch.tensor([2.0, 3.0], dtype=torch.float64), obs).tolist()
    [0.7071067811865476, 0.0, 1.0, 1.4142135623730951]
    """
    hb_all = hb_all.to(_F64)
    y = table.values.to(_F64)
    hb = hb_all.mean(0)
    squares = torch.stack([y - hb, y - ha.to(_F64), table.error_std.to(_F64)]).square_()
    if hb_all.shape[0] > 1:
        spread = hb_all.var(0)
    else:
        spread = torch.zeros_like(hb)
    return torch.cat([squares, spread[None]]).mean(-1).sqrt()


def _f64(t: torch.Tensor) -> torch.Tensor:
    """``t.to(float64)``, without the call where it is float64 already (one per row
    and column in the batched statistics: the calls add up)."""
    return t if t.dtype == _F64 else t.to(_F64)


def _obs_moments(hb_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over members ``(P,)`` of predictions ``(N, P)``, float64, as
    :func:`obs_statistics` takes them (variance 0 for a single state)."""
    hb_all = hb_all.to(_F64)
    hb = hb_all.mean(0)
    return hb, (hb_all.var(0) if hb_all.shape[0] > 1 else torch.zeros_like(hb))


def _obs_moments_rows(predictions: list[torch.Tensor]
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`_obs_moments` of many analyses' predictions ``(N, P)`` at once.

    Predictions of one shape are stacked and reduced over members together:
    the same numbers as :func:`_obs_moments` row by row (the mean and variance
    over the members axis of a stack round as those of each slice; a test
    checks it), except for single observations (``P = 1``) and transposed
    predictions, which torch reduces along another path than a stack: those
    rows are reduced one by one.
    """
    out: list[Any] = [None] * len(predictions)
    groups: dict[tuple, list[int]] = {}
    for j, hb_all in enumerate(predictions):
        groups.setdefault((hb_all.shape, hb_all.dtype, hb_all.device,
                           hb_all.is_contiguous()), []).append(j)
    for (shape, _, _, contiguous), idx in groups.items():
        if len(idx) == 1 or shape[-1] == 1 or not contiguous:
            for j in idx:
                out[j] = _obs_moments(predictions[j])
            continue
        mean, var = obs_moments_stacked(torch.stack([predictions[j] for j in idx]))
        for k, j in enumerate(idx):
            out[j] = (mean[k], var[k])
    return out


def obs_moments_stacked(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over members ``(G, P)`` of a contiguous stack ``(G, N, P)``
    of predictions (:func:`_obs_moments_rows` of a group; the cycle's fused loop
    hands its preallocated stack here directly)."""
    stack = _f64(stack)
    mean = stack.mean(1)
    return mean, (stack.var(1) if stack.shape[1] > 1 else torch.zeros_like(mean))


def _obs_statistics_rows(entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]]
                         ) -> np.ndarray:
    """:func:`obs_statistics` of many analyses at once, ``(len(entries), 4)`` float64.

    ``entries`` holds ``(hb, spread, ha, table)`` per analysis: the background
    mean and variance in observation space (:func:`_obs_moments`), the
    analysis mean there and the observations. Analyses with the same number of
    observations are stacked and reduced together: the same reductions along
    the same axis, so the same numbers as :func:`obs_statistics` row by row, in
    a handful of tensor operations instead of a dozen per analysis.
    """
    out = np.empty((len(entries), 4))
    groups: dict[int, list[int]] = {}
    for j, e in enumerate(entries):
        groups.setdefault(e[0].shape[-1], []).append(j)
    for idx in groups.values():
        hb, spread, ha, y, err = (torch.stack(part) for part in zip(*(
            (e[0], e[1], _f64(e[2]), _f64(e[3].values), _f64(e[3].error_std))
            for e in (entries[j] for j in idx))))
        out[idx] = obs_statistics_stacked(hb, spread, ha, y, err)
    return out


def obs_statistics_stacked(hb: torch.Tensor, spread: torch.Tensor, ha: torch.Tensor,
                            y: torch.Tensor, err: torch.Tensor) -> np.ndarray:
    """:func:`_obs_statistics_rows` of one group from its stacked float64 columns, each
    ``(G, P)``: background mean and variance, analysis mean, observations, error
    stds (the cycle's fused loop hands its stacks here directly)."""
    squares = torch.stack([y - hb, y - ha, err], 1).square_()
    stats = torch.cat([squares, spread[:, None]], 1).mean(-1).sqrt()
    return stats.detach().to("cpu").numpy()


def _diagnostic_column(entries: list[Any]) -> np.ndarray:
    """One float64 column from ``(value, step, steps)`` entries (None: NaN).

    ``value`` is a method diagnostic of a window with ``steps`` analyses: a
    scalar (a tensor or a Python number, repeated over them) or one value per
    analysis (``step`` picks).
    """
    if all(e is not None and e[2] == 1 for e in entries):
        if all(type(e[0]) in (float, int) for e in entries):
            # host numbers (the built-in filters' diagnostics on the CPU): as they are
            return np.array([e[0] for e in entries], dtype=np.float64)
        # the usual case, one scalar tensor per one-time window: one stack (it
        # promotes mixed dtypes exactly; other shapes, devices or types fail it)
        try:
            column = torch.stack([e[0] for e in entries])
        except (TypeError, RuntimeError):
            column = None
        if column is not None and column.dim() == 1:
            return column.detach().to("cpu", _F64).numpy()
    out = np.full(len(entries), np.nan)
    for j, e in enumerate(entries):
        if e is None:
            continue
        value, i, k = e
        v = torch.as_tensor(value).detach().to("cpu", _F64).reshape(-1)
        out[j] = float(v[i] if v.numel() == k else v[0])
    return out


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
        #: Absolute index of ``rows[0]`` (rows already written and dropped, :meth:`drop`).
        self.offset = 0
        #: The state space of the recorded rows (set by :meth:`add`).
        self.space: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, space: Any, result: Any, window: Any) -> None:
        """Record a window's analyses (a :class:`~xlatda.methods.protocol.WindowAnalysis`).

        The background ensemble is observed only where the method did not
        return its predictions (``result.observed``). Nothing else is computed
        here: the background predictions ``(N, P)`` and the analysis control
        vectors are kept, and :meth:`datasets` observes the analysis means
        (:meth:`~xlatda.spaces.StateSpace.observe_means`: all analyses with the
        same observation places in one application where the operator is
        linear) and reduces the observation-space statistics of all its rows
        together, in a few batched operations.
        """
        observed = result.observed or [None] * len(result.steps)
        k = len(result.steps)
        np_ = len(self.pnames)
        self.space = space
        keyed = getattr(space, "_key", None)
        grad = contextlib.nullcontext if torch.is_inference_mode_enabled() else torch.no_grad
        with grad():
            for i, ((ens_b, ens_a), sub, label) in enumerate(
                    zip(result.steps, window.tables, window.labels)):
                hb_all = observed[i] if observed[i] is not None else space.observe(ens_b, sub)
                row = {
                    "time": label,
                    "background": space.to_fields(ens_b),
                    "analysis": space.to_fields(ens_a),
                    "n_obs": len(sub),
                    # observation space, finished for all rows at once in datasets():
                    # background predictions, analysis controls, table, operator key
                    "obs": (hb_all, ens_a, sub, None if keyed is None else keyed(sub)),
                    "extra": {n: (v, i, k) for n, v in result.diagnostics.items()},
                }
                if space.n_regime:  # xlatda.methods.regime: RMS of the mean shift
                    m = ens_a[..., space.n_state:space.n_state + space.n_regime].mean(0)
                    row["extra"]["regime_shift"] = (m.to(_F64).pow(2).mean().sqrt(), 0, 1)
                if np_:
                    row["theta"] = ens_a[..., -np_:].detach().to("cpu", _F64)
                    row["theta_background"] = ens_b[..., -np_:].detach().to("cpu", _F64)
                self.rows.append(row)

    def revise(self, index: int, control: torch.Tensor) -> None:
        """Replace the analysis of row ``index`` (absolute: counting dropped rows)
        by the control vectors ``control`` (a smoother's revision,
        :mod:`xlatda.methods.smoother`); the row's observation-space diagnostics
        stay the filter's."""
        row = self.rows[index - self.offset]
        grad = contextlib.nullcontext if torch.is_inference_mode_enabled() else torch.no_grad
        with grad():
            row["analysis"] = self.space.to_fields(control)
            if self.pnames:
                row["theta"] = control[..., -len(self.pnames):].detach().to("cpu", _F64)

    def _obs_rows(self, entries: list[tuple]) -> np.ndarray:
        """Observation-space statistics ``(len(entries), 4)`` of recorded analyses
        (:func:`_obs_statistics_rows`) from their ``(hx, analysis controls, table,
        operator key)`` entries."""
        hx, ens_a, tables, keys = zip(*entries)
        with torch.no_grad():
            means = self.space.observe_means(list(ens_a), list(tables), list(keys))
            moments = _obs_moments_rows(list(hx))
            return _obs_statistics_rows([(*mo, ha, t)
                                         for mo, ha, t in zip(moments, means, tables)])

    def drop(self, count: int) -> None:
        """Forget the first ``count`` rows (written to a store)."""
        del self.rows[:count]
        self.offset += count

    def datasets(self, start: int = 0, stop: int | None = None) -> dict[str, xr.Dataset]:
        """The records ``rows[start:stop]`` as Datasets: analysis, background,
        diagnostics and (with parameters) parameters."""
        rows = self.rows[start:stop]
        if not rows:
            raise ObservationError(
                "no analysis was made: no observation times after the background")
        names = sorted({n for r in rows for n in r["extra"]})
        return self.columns_to_datasets(
            [r["time"] for r in rows], [r["analysis"] for r in rows],
            [r["background"] for r in rows], [r["obs"] for r in rows],
            [r["n_obs"] for r in rows],
            {n: [r["extra"].get(n) for r in rows] for n in names},
            [r["theta"] for r in rows] if self.pnames else None,
            [r["theta_background"] for r in rows] if self.pnames else None)

    def columns_to_datasets(self, times: list[Any], analysis: list[torch.Tensor] | torch.Tensor,
                            background: list[torch.Tensor] | torch.Tensor,
                            obs: list[tuple] | np.ndarray,
                            n_obs: list[int], extra: dict[str, list[Any]],
                            theta: list[torch.Tensor] | None = None,
                            theta_background: list[torch.Tensor] | None = None
                            ) -> dict[str, xr.Dataset]:
        """The Datasets of :meth:`datasets` from per-analysis columns.

        ``analysis`` and ``background`` hold the fields ``(N, C, *S)`` (or their
        stack ``(T, N, C, *S)``), ``obs`` the ``(hx, analysis controls, table,
        operator key)`` entries (or the statistics already made, ``(T, 4)``
        as :func:`_obs_statistics_rows` makes them), ``extra``
        the method diagnostics as ``(value, step, steps)`` entries (None where
        an analysis lacks one) or as float64 columns already made; the cycle's fused loop
        (:func:`xlatda.cycle._drive_fused`) hands its columns here directly,
        without rows.
        """
        L, tname = self.layout, self.tname
        times = np.array(times)
        out = {}
        for part, fields in (("analysis", analysis), ("background", background)):
            fields = fields if isinstance(fields, torch.Tensor) else torch.stack(fields)
            ds = L.to_dataset(fields, sample_coords={tname: times})
            out[part] = ds.assign_coords(member=np.arange(ds.sizes["member"]))
        stats = obs if isinstance(obs, np.ndarray) else self._obs_rows(obs)
        data = {"n_obs": (tname, np.array(n_obs, dtype=np.int64))}
        for j, name in zip(_OBS_COLUMNS, OBS_DIAGNOSTICS[1:]):
            data[name] = (tname, stats[:, j])
        for n in sorted(extra):
            col = extra[n]
            data[n] = (tname, col if isinstance(col, np.ndarray) else _diagnostic_column(col))
        out["diagnostics"] = xr.Dataset(data, coords={tname: times})
        if self.pnames:
            theta = torch.stack(theta).numpy()
            theta_b = torch.stack(theta_background).numpy()
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
