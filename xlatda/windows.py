"""Observation windows: the distinct observation times of a cycle, grouped.

Every distinct observation time is an analysis time; a method that analyses
windows (4DEnVar, 4D VAE-Var, score) takes ``window`` consecutive ones at
once. :func:`plan_windows` cuts an observation table into these windows;
each :class:`ObservationWindow` carries its observation tables (one per
time), the times as floats (model time units, or seconds for datetimes), the
original time labels and the seed of its random draws.

Examples
--------
>>> import numpy as np
>>> float_times(np.array(["1970-01-01T01", "1970-01-01T02"], dtype="datetime64[ns]"))
array([3600., 7200.])
>>> [g.tolist() for g in group_times(np.array([2.0, 1.0, 2.0, 3.0]))]
[[1], [0, 2], [3]]
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xlatda.obs.observation_table import ObservationTable

__all__ = ["ObservationWindow", "float_times", "group_times", "plan_windows", "window_seed"]


def float_times(values: Any) -> np.ndarray:
    """Times as floats: datetimes in seconds since 1970, numbers as they are.

    cftime dates (a model calendar: ``noleap``, ``360_day``, ...) count their
    seconds since 1970-01-01 in their own calendar, as
    :func:`xlatda.validation.time_values` does.
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64).astype(float) / 1e9
    if arr.dtype.kind == "O" and arr.size and hasattr(arr.ravel()[0], "calendar"):
        import cftime

        flat = arr.ravel()
        secs = cftime.date2num(list(flat), "seconds since 1970-01-01",
                               calendar=flat[0].calendar)
        return np.asarray(secs, dtype=float).reshape(arr.shape)
    return arr.astype(float)


def group_times(tvals: np.ndarray) -> list[np.ndarray]:
    """Indices of table entries per distinct observation time, in time order."""
    order = np.argsort(tvals, kind="stable")
    uniq, start = np.unique(tvals[order], return_index=True)
    bounds = [*start.tolist(), len(order)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(uniq))]


def window_seed(seed: int, index: int) -> int:
    """Seed of window ``index``'s draws: fixed by ``(seed, index)``, so a resumed
    run draws the same numbers as an uninterrupted one."""
    return int(seed) * 1_000_003 + int(index) + 1


@dataclass(frozen=True)
class ObservationWindow:
    """The observations one analysis uses.

    Attributes
    ----------
    index : int
        Position of the window in the cycle (0, 1, ...).
    tables : list of ObservationTable
        One table per observation time, in time order.
    times : list of float
        The observation times as floats (:func:`float_times`).
    labels : list
        The observation times as given (datetime64 or numbers).
    seed : int
        Seed of the window's random draws (:func:`window_seed`).
    cycling : bool
        Part of a cycle (False for a single :func:`xlatda.assimilate`
        analysis, where only the analysis is used: methods may skip work
        that only feeds the background diagnostics).
    """

    index: int
    tables: list[ObservationTable]
    times: list[float]
    labels: list[Any]
    seed: int
    cycling: bool = True

    def __len__(self) -> int:
        return len(self.tables)

    def generator(self, device: Any = None) -> torch.Generator:
        """A fresh generator seeded with :attr:`seed` (on ``device``)."""
        return torch.Generator(device=device or "cpu").manual_seed(self.seed)

    def digest(self) -> bytes:
        """SHA-1 of the window's observations (values, errors, places, channels, times)."""
        h = hashlib.sha1()
        for t in self.tables:
            for part in (t.values, t.error_std, t.channel, t.lat, t.lon, t.position, t.time):
                if part is None:
                    h.update(b"-")
                    continue
                arr = part.numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
                arr = np.ascontiguousarray(arr)
                h.update(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
        return h.digest()

    def stacked(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation values and error stds of all times, concatenated ``(P,)``."""
        y = torch.cat([t.values for t in self.tables]).to(dtype)
        r = torch.cat([t.error_std for t in self.tables]).to(dtype)
        return y, r


def plan_windows(table: ObservationTable, window: int, seed: int) -> list[ObservationWindow]:
    """Cut ``table`` into windows of ``window`` consecutive observation times.

    Parameters
    ----------
    table : ObservationTable
        Observations with times.
    window : int
        Observation times per window (the last window may hold fewer).
    seed : int
        The cycle's seed (see :func:`window_seed`).

    Returns
    -------
    list of ObservationWindow
    """
    tvals = float_times(table.time)
    groups = group_times(tvals)
    tables = _split_by_time(table, groups)
    out = []
    for k, i in enumerate(range(0, len(groups), window)):
        gs = range(i, min(i + window, len(groups)))
        out.append(ObservationWindow(
            index=k, tables=[tables[j] for j in gs],
            times=[float(tvals[groups[j][0]]) for j in gs],
            labels=[table.time[groups[j][0]] for j in gs], seed=window_seed(seed, k)))
    return out


def _split_by_time(table: ObservationTable, groups: list[np.ndarray]) -> list[ObservationTable]:
    """One table per group: the same tables as selecting every group, made from one
    reordering by time and views of it (one split per column, no copy per time)."""
    if not groups:
        return []
    ordered = table.select(np.concatenate(groups))
    sizes = [len(g) for g in groups]
    ends = np.cumsum(sizes).tolist()
    spans = list(zip([0, *ends[:-1]], ends))

    def split(a):
        if a is None:
            return [None] * len(groups)
        if isinstance(a, torch.Tensor):
            return a.split(sizes)
        return [a[i:j] for i, j in spans]

    columns = [split(getattr(ordered, f.name)) for f in dataclasses.fields(ObservationTable)]
    return [ObservationTable(*parts) for parts in zip(*columns)]
