r"""Fixed-lag ensemble Rauch-Tung-Striebel smoother over a cycle's analyses.

A filter's analysis at time :math:`t_j` uses the observations up to
:math:`t_j`; a reanalysis wants the later ones too. The ensemble RTS
smoother (Raanes 2016) revises each analysis ensemble backwards from the
newest one,

.. math::

    x^s_{j,i} = x^a_{j,i} + J_j \bigl(x^s_{j+1,i} - x^b_{j+1,i}\bigr), \qquad
    J_j = X^a_j {X^f_{j+1}}^\top \bigl(X^b_{j+1} {X^b_{j+1}}^\top\bigr)^{+},

member by member, with the ensemble form of the RTS gain
:math:`J_j = P^a_j M^\top (P^b_{j+1})^{-1}`: the cross-covariance from the
analysis anomalies at :math:`t_j` and the anomalies of their forecast before
model error was added, :math:`P^b_{j+1}` from the background ensemble the
next analysis started from (with the model error the cycle added). For a linear model and an
ensemble that spans the control space it is the exact RTS smoother of the
filter's Gaussian (with fewer members, the regression within the ensemble's
span, as every ensemble smoother). With ``lag = L`` each analysis is revised
with the observations of the next ``L`` analysis times (a fixed-lag smoother:
the last ``L`` analyses of a cycle use what is there).

The regression uses the background ensemble as the method received it
(after the model noise and any adaptive additive inflation the cycle added);
a multiplicative inflation a kernel applies inside its analysis is not seen
by it. Only the control vectors are revised; the cycle's diagnostics stay
those of the filter (its innovations are what the consistency checks need).

References
----------
Raanes, P. N. (2016). On the ensemble Rauch-Tung-Striebel smoother and its
equivalence to the ensemble Kalman smoother. Q. J. R. Meteorol. Soc. 142,
1259-1264.

Examples
--------
A two-variable linear model observed in its first variable: the smoothed
estimate of the earlier time takes the later observation through the
ensemble's correlation.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> xa0 = torch.randn(200, 2, generator=g, dtype=torch.float64)
>>> xb1 = xa0 @ torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64).T
>>> xa1 = xb1 + torch.tensor([0.3, 0.0], dtype=torch.float64)   # an analysis increment
>>> xs0 = rts_step(xa0, xb1, xb1, xa1)
>>> bool(torch.allclose(xs0 - xa0, torch.linalg.solve(
...     torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64),
...     torch.tensor([0.3, 0.0], dtype=torch.float64)).expand(200, 2)))
True
"""

from __future__ import annotations

import operator
from collections import deque
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = ["FixedLagSmoother", "check_lag", "rts_step"]

#: Singular values of the background anomalies below this fraction of the
#: largest are dropped from the regression (directions the ensemble does not
#: span, or spans only by round-off).
RCOND = 1e-10


def check_lag(lag: Any) -> int:
    """``lag`` as a non-negative int, or a :class:`ConfigError` that says what is allowed."""
    try:
        if isinstance(lag, bool):
            raise TypeError
        lag = operator.index(lag)
    except TypeError:
        raise ConfigError(
            f"lag must be a non-negative integer (analysis times), got {lag!r}") from None
    if lag < 0:
        raise ConfigError(f"lag must be a non-negative integer (analysis times), got {lag}")
    return lag


def rts_step(ens_a: Tensor, forecast_next: Tensor, ens_b_next: Tensor,
             smoothed_next: Tensor, *, inflation: float = 1.0,
             rcond: float = RCOND) -> Tensor:
    r"""One backward step of the ensemble RTS smoother.

    Parameters
    ----------
    ens_a : Tensor
        ``(N, n)`` analysis ensemble at :math:`t_j`.
    forecast_next : Tensor
        ``(N, n)`` its forecast to :math:`t_{j+1}`, member by member, before
        any model error was added: its anomalies give the cross-covariance
        :math:`P^a_j M^\top` (a square-root model-error update recombines the
        members, so the background's anomalies would not).
    ens_b_next : Tensor
        ``(N, n)`` background ensemble the analysis at :math:`t_{j+1}` used
        (with the model error): its anomalies give :math:`P^b_{j+1}`.
    smoothed_next : Tensor
        ``(N, n)`` smoothed (or, for the newest time, analysis) ensemble at
        :math:`t_{j+1}`.
    inflation : float
        The multiplicative inflation the analysis at :math:`t_{j+1}` applied to
        the background anomalies: its prior covariance was
        :math:`\lambda^2 P^b`, so the gain is divided by :math:`\lambda^2`.
    rcond : float
        Relative cut-off of the background anomalies' singular values.

    Returns
    -------
    Tensor
        ``(N, n)`` smoothed ensemble at :math:`t_j`, in ``ens_a``'s dtype.
    """
    shapes = {tuple(t.shape) for t in (ens_a, forecast_next, ens_b_next, smoothed_next)}
    if len(shapes) != 1 or ens_a.dim() != 2:
        raise ConfigError(
            "the smoother needs (N, n) ensembles of one shape at consecutive analyses, got "
            f"{sorted(shapes)}")
    return _revise(ens_a, smoothed_next, _link(ens_a, forecast_next, ens_b_next,
                                               inflation, rcond))


def _link(ens_a: Tensor, forecast_next: Tensor, ens_b_next: Tensor, inflation: float,
          rcond: float = RCOND) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What :func:`rts_step` needs of one link, whatever the smoothed ensemble:
    ``(analysis, background, left, right)`` (float64) with the revision
    ``analysis + ((smoothed - background) @ left) @ right``.

    ``X^b = U S V^T``: ``(P^b)^+ = (N - 1) V S^-2 V^T`` and ``P^a M^T = X^aT X^f /
    (N - 1)``, so ``J^T = V S^-2 V^T X^fT X^a``, kept as ``left = V S^-2 / λ^2``
    ``(n, r)`` and ``right = (X^f V)^T X^a`` ``(r, n)``: no ``(n, n)`` matrix.
    """
    f64 = torch.float64
    a, f, b = (t.to(f64) for t in (ens_a, forecast_next, ens_b_next))
    xa = a - a.mean(0, keepdim=True)
    xf = f - f.mean(0, keepdim=True)
    xb = b - b.mean(0, keepdim=True)
    _, sv, vh = torch.linalg.svd(xb, full_matrices=False)
    keep = sv > rcond * sv[0] if sv.numel() and sv[0] > 0 else torch.zeros_like(sv, dtype=bool)
    sv, vh = sv[keep], vh[keep]
    left = vh.T / (sv**2 * float(inflation) ** 2)
    right = (xf @ vh.T).T @ xa
    return a, b, left, right


def _revise(ens_a: Tensor, smoothed_next: Tensor, link: tuple) -> Tensor:
    a, b, left, right = link
    return (a + ((smoothed_next.to(torch.float64) - b) @ left) @ right).to(ens_a.dtype)


class FixedLagSmoother:
    """The last ``lag + 1`` analyses of a cycle, revised as each new one comes.

    Feed every analysis in time order with :meth:`push`; it returns the
    entries whose smoothing is final (``lag`` analyses later), each as
    ``(key, smoothed ensemble)``. :meth:`flush` returns the rest at the end.

    Parameters
    ----------
    lag : int
        Number of later analyses each analysis is smoothed with (>= 1).

    Examples
    --------
    >>> import torch
    >>> sm = FixedLagSmoother(lag=1)
    >>> x = torch.zeros(3, 2, dtype=torch.float64)
    >>> sm.push("t0", x, x, x + torch.tensor([[1.0, 0], [0, 1.0], [-1.0, -1.0]]))
    []
    >>> [k for k, _ in sm.push("t1", x, x, x)] + [k for k, _ in sm.flush()]
    ['t0', 't1']
    """

    def __init__(self, lag: int) -> None:
        lag = check_lag(lag)
        if lag < 1:
            raise ConfigError("FixedLagSmoother needs lag >= 1 (lag 0 is the filter itself)")
        self.lag = lag
        # (key, analysis, link to the next analysis or None, latest smoothed) each
        self._chain: deque[list[Any]] = deque()

    def push(self, key: Any, forecast: Tensor, background: Tensor, analysis: Tensor,
             inflation: float = 1.0) -> list[tuple[Any, Tensor]]:
        """Add the analysis at the next time and revise the retained ones.

        Parameters
        ----------
        key : object
            Returned with the smoothed ensemble (e.g. the row of a recorder).
        forecast, background, analysis : Tensor
            ``(N, n)`` forecast of the previous analysis before model error,
            the background ensemble this analysis started from (with it) and
            the analysis ensemble (see :func:`rts_step`).
        inflation : float
            Multiplicative inflation this analysis applied to the background
            anomalies (see :func:`rts_step`).

        Returns
        -------
        list of (key, Tensor)
            The analysis that has now been smoothed with ``lag`` later ones
            (at most one entry).
        """
        chain = self._chain
        if chain:  # the link from the previous analysis to this one, computed once
            prev = chain[-1]
            if not (prev[1].shape == forecast.shape == background.shape == analysis.shape):
                raise ConfigError(
                    "the smoother needs ensembles of one shape at consecutive analyses, got "
                    f"{tuple(prev[1].shape)} then {tuple(analysis.shape)}")
            prev[2] = _link(prev[1], forecast, background, float(inflation))
        chain.append([key, analysis, None, analysis])
        for j in range(len(chain) - 2, -1, -1):
            chain[j][3] = _revise(chain[j][1], chain[j + 1][3], chain[j][2])
        if len(chain) > self.lag:
            done = chain.popleft()
            return [(done[0], done[3])]
        return []

    def oldest(self) -> Any:
        """Key of the oldest analysis still revised (``None`` when none is)."""
        return self._chain[0][0] if self._chain else None

    def flush(self) -> list[tuple[Any, Tensor]]:
        """The retained analyses with their latest smoothing (fewer later times)."""
        out = [(e[0], e[3]) for e in self._chain]
        self._chain.clear()
        return out
