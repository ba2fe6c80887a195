r"""An uncertain regime mean: the latent state's climatology, estimated as the cycle runs.

A latent model fitted on a few weeks forecasts every anomaly back toward the
mean of *those* weeks (its bias and forcing). A later week sits in another
weather regime: on the real station benchmark of issue #14 the squared shift
of the mean code between the training fortnight and the validation week is
0.42 (ERA5) and 0.33 (WFDE5) of the training code variance. The damped
linear dynamics then pull every forecast toward the wrong mean, and the
stations cannot correct the directions they do not see.

Here the mean is part of the control vector (state augmentation for model
bias, Dee & da Silva 1998; Dee 2005): each member carries a shift
:math:`m` of the latent mean, the forecast evolves the anomaly about the
shifted mean,

.. math::

    z^f = \mathcal M(z - m) + m, \qquad
    m^f = \rho\, m + \eta, \quad \eta \sim \mathcal N\big(0, (1 - \rho^2)\, C_m\big),
    \quad \rho = e^{-\Delta t / \tau},

(for linear dynamics :math:`z^f = A z + f + (I - A) m`: the shift enters as
a forcing), and the analysis updates :math:`m` through its ensemble
correlation with the observed state, as any parameter. :math:`m` is an
Ornstein-Uhlenbeck process with stationary covariance
:math:`C_m = \alpha B` (:math:`B` the model's latent prior, the training
codes' covariance) and decorrelation time :math:`\tau`: bounded (it never
leaves the climatological range), forgotten after a few days, and started at
:math:`m = 0` with spread :math:`C_m`.

:math:`\alpha = 0.5` and :math:`\tau = 2` days (:data:`REGIME_VARIANCE`,
:data:`REGIME_TIMESCALE`) were chosen on the validation weeks of
``benchmarks/bench_real_stations.py`` (days 15-21; never the test periods)
with the exact augmented Kalman filter of ``benchmarks/bench_real_bounds.py``
(PCA-64, linear dynamics, adaptive additive inflation on), over
α ∈ {1/8, 1/4, 1/2, 1, 2} and τ ∈ {1, 2, 4, 8} days at 10 / 30 / 100 / 300
stations (``python benchmarks/bench_real_bounds.py --regime-sweep``, table in
``benchmarks/out/real_bounds.md``). RMSE / OI went from 1.000 / 0.969 /
0.956 / 0.925 (WFDE5) and 0.976 / 1.016 / 0.983 / 0.994 (ERA5) to 0.970 /
0.923 / 0.877 / 0.896 and 0.953 / 0.996 / 0.975 / 0.991: lower at every
density of both files. Its mean log ratio (-0.0547) is within 0.001 of the
sweep's best (α = 1, τ = 4 days: -0.0553), with a smaller worst case
(0.996 against 0.998, ERA5 at 30 stations). The public-path ETKF on the same
week agrees: per station draw at 30 stations, WFDE5 0.918 / 1.027 ->
0.915 / 0.930 x OI and ERA5 1.035 / 0.990 -> 1.016 / 0.986, lower at every
density and draw, 4DEnVar alike.

The regime is on by default for latent cycles of models with a clock (time
in seconds, e.g. reanalysis data; setting ``regime="auto"``) and a latent
prior; models in model time (the synthetic twins) get it only when asked,
with their own time scale: ``regime={"variance": 0.5, "timescale": 20.0}``
(``timescale`` in the cycle's time units). ``regime=None`` turns it off.
Each analysis records the RMS of the ensemble-mean shift (latent units) as
``result.diagnostics.regime_shift``. The ensemble then spans ``[z; m]``: the
default ensemble size grows to ``2 d + n_params + 1``.

References
----------
Dee, D. P. and da Silva, A. M. (1998). Data assimilation in the presence of
forecast bias. Q. J. R. Meteorol. Soc. 124, 269-295.
Dee, D. P. (2005). Bias and data assimilation. Q. J. R. Meteorol. Soc. 131,
3323-3343.

Examples
--------
>>> check_regime("auto")
'auto'
>>> check_regime({"variance": 0.25, "timescale": 86400.0})
{'variance': 0.25, 'timescale': 86400.0}
>>> check_regime(None) is None
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = ["REGIME_TIMESCALE", "REGIME_VARIANCE", "check_regime", "initial_regime",
           "regime_decay", "resolve_regime"]

#: Stationary variance of the regime shift as a fraction α of the latent prior's.
REGIME_VARIANCE = 0.5
#: Decorrelation time of the regime shift, in seconds (2 days), for models with a clock.
REGIME_TIMESCALE = 2 * 86400.0

_F64 = torch.float64


def check_regime(value: Any) -> Any:
    """``None``, ``"auto"`` or ``{"variance": α > 0, "timescale": τ > 0}``; else ConfigError."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, dict) and set(value) <= {"variance", "timescale"}:
        out = {"variance": float(value.get("variance", REGIME_VARIANCE))}
        if "timescale" in value:
            out["timescale"] = float(value["timescale"])
        bad = [k for k, v in out.items() if not (math.isfinite(v) and v > 0)]
        if not bad:
            return out
    raise ConfigError(
        f"regime must be 'auto', None or a dict {{'variance': α > 0, 'timescale': τ > 0}} "
        f"(τ in the cycle's time units), got {value!r}"
    )


def resolve_regime(value: Any, space: Any) -> tuple[Tensor, float] | None:
    """``(C_m, τ)`` for a state space, or ``None`` when the regime is off.

    ``"auto"`` is on for a latent space whose model has a latent prior and a
    clock in seconds; an explicit dict needs a latent prior, and a
    ``timescale`` unless the model's clock is in seconds.

    Raises
    ------
    ConfigError
        For a bad value, or an explicit regime the space cannot carry.
    """
    value = check_regime(value)
    if value is None:
        return None
    model = getattr(space, "model", None)
    prior = getattr(model, "prior", None) if space.kind == "latent" else None
    clocked = (getattr(model, "time_step", None) or {}).get("units") == "s"
    if value == "auto":
        if prior is None or not clocked:
            return None
        value = {"variance": REGIME_VARIANCE}
    if prior is None:
        raise ConfigError(
            "regime needs a latent model with a latent prior (xlatda.fit stores one); it does "
            "not apply in physical space. Use regime=None"
        )
    tau = value.get("timescale", REGIME_TIMESCALE if clocked else None)
    if tau is None:
        raise ConfigError(
            "this model's time is not in seconds: give the regime's decorrelation time in the "
            "cycle's time units, e.g. regime={'variance': 0.5, 'timescale': 20.0}"
        )
    cov = prior.covariance().dense().detach().to("cpu", _F64)
    return value["variance"] * cov, float(tau)


def regime_decay(t0: float, t1: float, timescale: float) -> float:
    """``ρ = exp(-|t1 - t0| / τ)``: what is left of a regime shift after the lead.

    Examples
    --------
    >>> round(regime_decay(0.0, 2 * 86400.0, 2 * 86400.0), 6)
    0.367879
    """
    return math.exp(-abs(float(t1) - float(t0)) / float(timescale))


def initial_regime(cov: Tensor, members: int, generator: torch.Generator) -> Tensor:
    """``(members, d)`` draws of ``N(0, C_m)``, centred (the prior mean shift is 0).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> m = initial_regime(torch.eye(3, dtype=torch.float64), 5, g)
    >>> m.shape, bool(m.mean(0).abs().max() < 1e-12)
    (torch.Size([5, 3]), True)
    """
    d = cov.shape[0]
    vals, vecs = torch.linalg.eigh(cov.to(_F64))
    root = vecs * vals.clamp_min(0.0).sqrt()
    eps = torch.randn(members, d, generator=generator, dtype=_F64)
    draws = eps @ root.T
    return draws - draws.mean(0, keepdim=True) if members > 1 else draws * 0.0
