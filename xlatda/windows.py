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

import copy
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xlatda.obs.observation_table import OPERATOR_COLUMNS, ObservationTable

__all__ = ["ObservationWindow", "WindowPlan", "float_times", "group_times", "plan_windows",
           "window_seed"]


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


def plan_windows(table: ObservationTable, window: int, seed: int) -> WindowPlan:
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
    WindowPlan
        A sequence of :class:`ObservationWindow` (made when asked for).
    """
    return WindowPlan(table, window, seed)


class WindowPlan(Sequence):
    """The windows of a cycle, a sequence of :class:`ObservationWindow` made on demand.

    The table is reordered by time once; each window (and its tables: views
    of the reordered columns) is made when indexed or iterated and not kept,
    so a long cycle holds no Python objects per window (a loop over a few
    thousand kept windows made the garbage collector's full passes, ~0.3 s
    each in a process with xarray loaded, come every few calls). Slicing
    gives a plan of the selected windows; :meth:`columns` gives a column of
    all its entries at once.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from xlatda.obs.observation_table import ObservationTable
    >>> tab = ObservationTable(values=torch.arange(4.0), error_std=torch.ones(4),
    ...                        channel=torch.zeros(4, dtype=torch.long),
    ...                        variable=np.array(["x"] * 4), lat=None, lon=None,
    ...                        position=np.zeros(4), time=np.array([2.0, 1.0, 2.0, 3.0]),
    ...                        obs_index=np.arange(4), kind=None)
    >>> plan = plan_windows(tab, 1, seed=0)
    >>> len(plan), [w.times for w in plan], plan[1].tables[0].values.tolist()
    (3, [[1.0], [2.0], [3.0]], [0.0, 2.0])
    >>> [w.index for w in plan[1:]]
    [1, 2]
    """

    def __init__(self, table: ObservationTable, window: int, seed: int) -> None:
        tvals = float_times(table.time)
        groups = group_times(tvals)
        self.window, self.seed = int(window), int(seed)
        self._ordered = table.select(np.concatenate(groups)) if groups else table
        sizes = np.array([len(g) for g in groups], dtype=np.int64)
        ends = np.cumsum(sizes)
        self._starts, self._ends = ends - sizes, ends
        first = np.array([g[0] for g in groups], dtype=np.int64)
        self._tvals = tvals[first] if len(first) else np.empty(0)
        self._labels = np.asarray(table.time)[first] if len(first) else np.empty(0)
        self._fields = [f.name for f in dataclasses.fields(ObservationTable)]
        self._range = range(-(-len(groups) // self.window))

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i):
        if isinstance(i, slice):
            new = copy.copy(self)
            new._range = self._range[i]
            return new
        k = self._range[i]
        w = self.window
        gs = range(k * w, min(k * w + w, len(self._starts)))
        return ObservationWindow(index=k, tables=[self.table(j) for j in gs],
                                 times=[float(self._tvals[j]) for j in gs],
                                 labels=[self._labels[j] for j in gs],
                                 seed=window_seed(self.seed, k))

    def table(self, j: int) -> ObservationTable:
        """The observations of the plan's ``j``-th observation time (counting from the
        first time of the whole table)."""
        i, e = int(self._starts[j]), int(self._ends[j])
        o = self._ordered
        return ObservationTable(*[None if (a := getattr(o, f)) is None else a[i:e]
                                  for f in self._fields])

    def _times(self) -> range:
        """The observation times (indices) of the plan's windows."""
        w = self.window
        r = self._range
        if not len(r):
            return range(0)
        return range(r[0] * w, min((r[-1] + 1) * w, len(self._starts)))

    def sizes(self) -> np.ndarray:
        """Observations per observation time of the plan's windows, in order."""
        t = self._times()
        return (self._ends - self._starts)[t.start:t.stop]

    def labels(self) -> np.ndarray:
        """The observation times as given, one per observation time of the plan."""
        t = self._times()
        return self._labels[t.start:t.stop]

    def columns(self, name: str) -> Any:
        """Column ``name`` of the plan's entries, in time order (a view; None for a
        column the table does not have)."""
        col = getattr(self._ordered, name)
        t = self._times()
        if col is None or not len(t):
            return None if col is None else col[:0]
        i, e = int(self._starts[t.start]), int(self._ends[t.stop - 1])
        return col[i:e]

    def same_places(self) -> bool:
        """Whether every observation time of the plan has the same number of entries
        and, entry by entry, the same bytes in every column an observation operator
        depends on (those :func:`xlatda.spaces.table_key` reads): then one operator
        key serves all its tables."""
        sizes = self.sizes()
        if not len(sizes) or bool((sizes != sizes[0]).any()):
            return False
        n = len(sizes)
        for name in OPERATOR_COLUMNS:
            col = self.columns(name)
            if col is None:
                continue
            a = col.numpy() if isinstance(col, torch.Tensor) else np.asarray(col)
            if a.dtype.kind not in "biuf":
                return False
            b = np.ascontiguousarray(a).reshape(n, -1).view(np.uint8)
            if not bool((b == b[:1]).all()):
                return False
        return True

