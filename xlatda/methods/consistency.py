r"""Innovation consistency statistics, a gross-error check and a divergence monitor.

All statistics use the scaled ensemble-space quantities of
:mod:`xlatda.methods.ensemble`: scaled (and inflated) observation anomalies
:math:`S = R^{-1/2}(h_j - \bar h)/\sqrt{N-1}` of shape :math:`N \times P`
(``(*batch, N, P)``), scaled innovations :math:`d = R^{-1/2}(y - \bar h)`,
so that :math:`R^{-1/2}(H P H^\top + R) R^{-1/2} = I_P + S^\top S`.

**Innovation chi-square** per analysis,

.. math::

    \chi^2 / p = d^\top (I_P + S^\top S)^{-1} d \,/\, p
               = \big(d^\top d - (S d)^\top (I_N + S S^\top)^{-1} (S d)\big) / p,

the Woodbury form, so only an :math:`N \times N` matrix is factorised
(batched Cholesky). For a consistent system its expectation is 1.

**Spread / innovation ratio**
:math:`\sqrt{\sum_i (\mathrm{diag}(HPH^\top)_i + r_i^2) / \sum_i (y_i - \bar h_i)^2}`
over the active observations: about 1 when the ensemble's expected innovation
variance matches the actual one, well below 1 for an under-dispersed
ensemble.

**Gross-error (background) check**: an observation is rejected when
:math:`|y_i - \bar h_i| > k \sqrt{\mathrm{diag}(HPH^\top)_i + r_i^2}`.

References
----------
Desroziers, G., Berre, L., Chapnik, B., Poli, P. (2005). Diagnosis of
observation, background and analysis-error statistics in observation space.
Q. J. R. Meteorol. Soc. 131.
Ménard, R., Chang, L.-P. (2000). Assimilation of stratospheric chemical
tracer observations using a Kalman filter. Part II: chi2-validated results
and analysis of variance and correlation dynamics. Mon. Wea. Rev. 128.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> S = torch.randn(400, 30, 5, generator=g, dtype=torch.float64) * 0.01  # tiny spread
>>> d = torch.randn(400, 5, generator=g, dtype=torch.float64)  # innovations ~ N(0, R)
>>> round(float(innovation_chi2(S, d).mean()), 1)
1.0
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import AnalysisError, ConfigError, FilterDivergenceWarning

__all__ = [
    "DEFAULT_GROSS_ERROR",
    "AnalysisLabel",
    "DivergenceMonitor",
    "gross_error_mask",
    "innovation_chi2",
    "innovation_quadratic_form",
    "monitor_entries",
    "monitor_state",
    "spread_ratio",
    "spread_ratio_parts",
    "spread_ratio_scaled",
]

#: Default threshold ``k`` of the gross-error check, in innovation standard deviations.
DEFAULT_GROSS_ERROR = 5.0


def _active_count(S: Tensor, d: Tensor, active: Tensor | None) -> Tensor:
    if active is None:
        active = torch.ones(d.shape, dtype=torch.bool, device=d.device)
    return active.to(d.dtype).sum(-1)


def innovation_chi2(S: Tensor, d: Tensor, active: Tensor | None = None) -> Tensor:
    """Normalised innovation chi-square ``d^T (I + S^T S)^-1 d / p`` per batch element.

    Parameters
    ----------
    S : Tensor
        Scaled observation anomalies ``(*batch, N, P)`` (zero columns for
        observations that are switched off).
    d : Tensor
        Scaled innovations ``(*batch, P)`` (zero where switched off).
    active : Tensor, optional
        ``(*batch, P)`` or ``(P,)`` bool, the observations that count in ``p``
        (default all).

    Returns
    -------
    Tensor
        ``(*batch,)``; ``nan`` where no observation is active.
    """
    if active is not None:
        active = active.expand(d.shape)
    p = _active_count(S, d, active)
    quad = innovation_quadratic_form(S, d)
    return torch.where(p > 0, quad / torch.where(p > 0, p, 1.0), torch.nan)


def innovation_quadratic_form(S: Tensor, d: Tensor) -> Tensor:
    """``d^T (I + S^T S)^-1 d`` per batch element (Woodbury, an ``N x N`` Cholesky).

    :func:`innovation_chi2` before the division by the number of observations
    (a caller that knows it, e.g. every observation on, divides by it itself).

    Examples
    --------
    >>> import torch
    >>> S = torch.tensor([[1.0], [-1.0]]); d = torch.tensor([3.0])
    >>> innovation_quadratic_form(S, d)   # 9 / (1 + 2)
    tensor(3.)
    """
    Sd = (S @ d.unsqueeze(-1)).squeeze(-1)  # (*b, N)
    C = S @ S.mT
    C.diagonal(dim1=-2, dim2=-1).add_(1.0)
    L, info = torch.linalg.cholesky_ex(C)
    if bool((info != 0).any()):
        raise AnalysisError(
            "the innovation chi-square needs I + S S^T to be positive definite; it is not "
            "(non-finite scaled observation anomalies?)"
        )
    u = torch.linalg.solve_triangular(L, Sd.unsqueeze(-1), upper=False).squeeze(-1)
    return d.square().sum(-1) - u.square().sum(-1)


def spread_ratio(S: Tensor, d: Tensor, r_std: Tensor, active: Tensor | None = None) -> Tensor:
    """``sqrt(sum(diag(HPH^T) + r^2) / sum((y - h_mean)^2))`` over the active observations.

    Parameters
    ----------
    S, d : Tensor
        As in :func:`innovation_chi2`.
    r_std : Tensor
        Observation-error standard deviations, broadcastable to ``(*batch, P)``.
    active : Tensor, optional
        Bool mask of the observations used (default: finite ``r_std``).

    Returns
    -------
    Tensor
        ``(*batch,)``, about 1 for a consistent ensemble; ``nan`` with no
        active observation.

    Examples
    --------
    >>> import torch
    >>> S = torch.tensor([[0.5], [-0.5]]) ; d = torch.tensor([1.5])
    >>> spread_ratio(S, d, torch.tensor([2.0]))   # sqrt((0.5 + 1) / 2.25)
    tensor(0.8165)
    """
    r2 = torch.as_tensor(r_std, dtype=d.dtype, device=d.device).square()
    if active is None:
        active = torch.isfinite(r2)
    r2 = torch.where(active, r2, 0.0).expand(d.shape)  # 0 where off: those add nothing
    return spread_ratio_scaled(S, d, r2)


def spread_ratio_scaled(S: Tensor, d: Tensor, r2: Tensor, colvar: Tensor | None = None
                        ) -> Tensor:
    """:func:`spread_ratio` from the error variances ``r2`` ``(*batch, P)``, 0 where
    an observation is off; ``colvar`` is ``diag(S^T S) + 1`` where the caller has
    it (the same numbers as computed here).

    Examples
    --------
    >>> import torch
    >>> S = torch.tensor([[0.5], [-0.5]]) ; d = torch.tensor([1.5])
    >>> spread_ratio_scaled(S, d, torch.tensor([4.0]))   # as spread_ratio(S, d, [2.0])
    tensor(0.8165)
    """
    expected, actual = spread_ratio_parts(S, d, r2, colvar)
    # no active observation, or no innovation: actual is 0 and the ratio undefined
    return torch.where(actual > 0, (expected / actual).sqrt(), torch.nan)


def spread_ratio_parts(S: Tensor, d: Tensor, r2: Tensor, colvar: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
    """The two sums of :func:`spread_ratio_scaled`, ``(expected, actual)``:
    ``sum(r2 (diag(S^T S) + 1))`` and ``sum(r2 d^2)`` (the ratio is
    ``sqrt(expected / actual)``).

    Examples
    --------
    >>> import torch
    >>> S = torch.tensor([[0.5], [-0.5]]) ; d = torch.tensor([1.5])
    >>> spread_ratio_parts(S, d, torch.tensor([4.0]))
    (tensor(6.), tensor(9.))
    """
    if colvar is None:
        colvar = S.square().sum(-2) + 1.0
    return torch.linalg.vecdot(r2, colvar), torch.linalg.vecdot(r2, d.square())


def gross_error_mask(S: Tensor, d: Tensor, k: float) -> Tensor:
    """Observations failing the background check ``|d_i| > k sqrt(diag(S^T S)_i + 1)``.

    Parameters
    ----------
    S, d : Tensor
        As in :func:`innovation_chi2` (scaled, so the test reads
        ``|y - h| > k sqrt(diag(HPH^T) + r^2)`` in physical units).
    k : float
        Threshold in innovation standard deviations, ``> 0``.

    Returns
    -------
    Tensor
        ``(*batch, P)`` bool, True where rejected.

    Examples
    --------
    >>> import torch
    >>> S = torch.zeros(3, 2); d = torch.tensor([0.5, 6.0])
    >>> gross_error_mask(S, d, 5.0)
    tensor([False,  True])
    """
    if not (isinstance(k, (int, float)) and k > 0):
        raise ConfigError(f"the gross-error threshold must be a positive number, got {k!r}")
    return d.abs() > k * (S.square().sum(-2) + 1.0).sqrt()


class DivergenceMonitor:
    """Warn when the innovation statistics stay outside a band for several analyses.

    Parameters
    ----------
    chi2_band : tuple of float
        Acceptable range of the normalised innovation chi-square.
    spread_ratio_band : tuple of float
        Acceptable range of the spread / innovation ratio.
    patience : int
        Number of consecutive analyses outside a band that triggers a
        :class:`~xlatda.errors.FilterDivergenceWarning` (once per excursion;
        the count restarts when the statistics come back into the band).

    Notes
    -----
    The monitor keeps no hidden state: :meth:`update` takes the previous
    ``state`` (a dict of tensors, ``None`` at the start) and returns the new
    one, so a driver stores it with the method state and resumes exactly (it
    only remembers the values of the scalar state it returned last, to read
    them without a host transfer when that state comes back).
    Statistics are per batch element; ``nan`` (no observation) leaves the
    count unchanged.

    Examples
    --------
    >>> import torch, warnings
    >>> mon = DivergenceMonitor(patience=2)
    >>> state = None
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     for _ in range(3):
    ...         state = mon.update({"chi2": torch.tensor(40.0)}, state, where="cycle 7")
    >>> [type(w.message).__name__ for w in caught]
    ['FilterDivergenceWarning']
    """

    def __init__(
        self,
        chi2_band: tuple[float, float] = (0.2, 5.0),
        spread_ratio_band: tuple[float, float] = (0.4, 2.5),
        patience: int = 5,
    ) -> None:
        for name, band in (("chi2_band", chi2_band), ("spread_ratio_band", spread_ratio_band)):
            if not (len(band) == 2 and 0 <= band[0] < band[1]):
                raise ConfigError(f"{name} must be (low, high) with 0 <= low < high, got {band!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ConfigError(f"patience must be a positive int, got {patience!r}")
        self.chi2_band = (float(chi2_band[0]), float(chi2_band[1]))
        self.spread_ratio_band = (float(spread_ratio_band[0]), float(spread_ratio_band[1]))
        self.patience = patience
        # The scalar state last returned (its tensors and their values), so that
        # passing it back costs no host reads; compared by identity with tensors
        # held here, never by id().
        self._last: tuple | None = None

    def __repr__(self) -> str:
        return (
            f"DivergenceMonitor(chi2_band={self.chi2_band}, "
            f"spread_ratio_band={self.spread_ratio_band}, patience={self.patience})"
        )

    def outside(self, diagnostics: Mapping[str, Tensor]) -> Tensor:
        """Bool tensor: statistics outside a band (``nan`` counts as inside)."""
        out = None
        for key, (lo, hi) in (("chi2", self.chi2_band), ("spread_ratio", self.spread_ratio_band)):
            if key not in diagnostics:
                continue
            v = torch.as_tensor(diagnostics[key])
            bad = (v < lo) | (v > hi)
            out = bad if out is None else out | bad
        if out is None:
            raise ConfigError(
                "the divergence monitor needs 'chi2' or 'spread_ratio' in the diagnostics, "
                f"got keys {sorted(diagnostics)}"
            )
        return out

    def update(
        self,
        diagnostics: Mapping[str, Tensor],
        state: Mapping[str, Tensor] | None = None,
        *,
        where: Any = None,
    ) -> dict[str, Tensor]:
        """Count this analysis; warn when a count reaches ``patience``.

        Parameters
        ----------
        diagnostics : mapping
            At least ``chi2`` or ``spread_ratio`` (tensors ``(*batch,)``, or
            Python floats for one analysis).
        state : mapping, optional
            The dict returned by the previous call (``None`` at the start).
        where : optional
            Label of this analysis (its time) used in the warning message.

        Returns
        -------
        dict of Tensor
            ``{"count": (*batch,) int64, "warned": (*batch,) bool}``.
        """
        fast = self._update_scalar(diagnostics, state, where)
        if fast is not None:
            return fast
        bad = self.outside(diagnostics)
        if state is None:
            count = torch.zeros(bad.shape, dtype=torch.int64)
            warned = torch.zeros(bad.shape, dtype=torch.bool)
        else:
            count, warned = state["count"], state["warned"]
        count = torch.where(bad, count + 1, torch.zeros_like(count))
        warned = warned & bad
        fire = (count >= self.patience) & ~warned
        if bool(fire.any()):
            self._warn({k: float(torch.as_tensor(diagnostics[k]).reshape(-1)[0])
                        for k in ("chi2", "spread_ratio") if k in diagnostics}, where, 3)
        return {"count": count, "warned": warned | fire}

    def _warn(self, stats: dict[str, float], where: Any, stacklevel: int) -> None:
        text = ", ".join(f"{k} {v:.3g}" for k, v in stats.items())
        at = f" (at {where})" if where is not None else ""
        warnings.warn(
            f"the filter looks divergent{at}: its innovation statistics ({text}) have "
            f"been outside chi2 {self.chi2_band} / spread ratio {self.spread_ratio_band} "
            f"for {self.patience} analyses in a row; the ensemble no longer describes its "
            "own error: use adaptive or more inflation, more members, or localisation",
            FilterDivergenceWarning,
            stacklevel=stacklevel,
        )

    def _update_scalar(self, diagnostics: Mapping[str, Tensor],
                       state: Mapping[str, Tensor] | None, where: Any) -> dict | None:
        """:meth:`update` for one analysis (scalar statistics) with one small host sync.

        The statistics are read in one transfer; while they stay in the band
        the state's tensors are passed on unchanged (no new tensors). None
        when the statistics are batched (the general path then runs).
        """
        keys = [k for k in ("chi2", "spread_ratio") if k in diagnostics]
        values = [diagnostics[k] for k in keys]
        if not keys:
            return None
        if state is not None and state["count"].dim() != 0:
            return None
        if all(type(v) is float for v in values):  # host numbers (ensemble._host_diagnostics)
            numbers = values
        elif not all(torch.is_tensor(v) and v.dim() == 0 for v in values):
            return None
        elif all(v.device.type == "cpu" for v in values):  # no transfer to batch
            numbers = [float(v) for v in values]
        else:
            numbers = torch.stack([v.detach().to("cpu", torch.float64) for v in values]).tolist()
        bands = {"chi2": self.chi2_band, "spread_ratio": self.spread_ratio_band}
        bad = any(v < bands[k][0] or v > bands[k][1] for k, v in zip(keys, numbers))
        if state is None:
            count, warned = 0, False
        else:
            last = self._last
            if last is not None and state["count"] is last[0] and state["warned"] is last[1]:
                count, warned = last[2], last[3]  # the state made here: its values known
            else:
                count, warned = int(state["count"]), bool(state["warned"])
            if not bad and count == 0 and not warned:
                self._last = (state["count"], state["warned"], 0, False)
                return {"count": state["count"], "warned": state["warned"]}
        count = count + 1 if bad else 0
        warned = warned and bad
        fire = count >= self.patience and not warned
        if fire:
            self._warn(dict(zip(keys, numbers)), where, 4)
        out = {"count": torch.tensor(count, dtype=torch.int64),
               "warned": torch.tensor(warned or fire)}
        self._last = (out["count"], out["warned"], count, warned or fire)
        return out


class AnalysisLabel:
    """``"analysis k, time t"`` of a window, formatted only if a warning needs it."""

    __slots__ = ("window",)

    def __init__(self, window: Any) -> None:
        self.window = window

    def __str__(self) -> str:
        return f"analysis {self.window.index}, time {self.window.labels[0]}"


def monitor_state(method_state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The :class:`DivergenceMonitor` state kept in a cycling method's state (None at first)."""
    if "monitor_count" not in method_state:
        return None
    return {"count": method_state["monitor_count"], "warned": method_state["monitor_warned"]}


def monitor_entries(monitor_out: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:meth:`DivergenceMonitor.update`'s result as entries of a method state."""
    return {"monitor_count": monitor_out["count"], "monitor_warned": monitor_out["warned"]}
