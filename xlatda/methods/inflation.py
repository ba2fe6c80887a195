r"""Adaptive multiplicative inflation: a spatially (latent-) uniform estimate from innovations.

The estimate follows Miyoshi (2011), the Gaussian approximation of
Anderson's (2009) Bayesian inflation applied to one inflation value for the
whole state. In the scaled notation of :mod:`xlatda.methods.ensemble`
(un-inflated scaled observation anomalies :math:`S_0` of shape
:math:`N \times P`, scaled innovation :math:`d = R^{-1/2}(y - \bar h)`,
:math:`p` active observations), a forecast covariance that is too small by
the *variance* factor :math:`\rho` gives :math:`d \sim N(0, I_p + \rho\,G)`,
:math:`G = S_0^\top S_0`, so that (Li, Kalnay & Miyoshi 2009, eq. 6)

.. math::

    \rho^o = \frac{d^\top d - p}{\operatorname{tr} G}, \qquad
    \sigma_o^2 = \operatorname{var}(\rho^o)
      = \frac{2\,\operatorname{tr}\big((I + \rho^b G)^2\big)}{(\operatorname{tr} G)^2}
      = \frac{2\,(p + 2\rho^b \operatorname{tr} G + (\rho^b)^2 \lVert G\rVert_F^2)}
             {(\operatorname{tr} G)^2},

the observed estimate and its variance (Miyoshi 2011, eq. 11, evaluated at
the prior mean; :math:`\lVert G\rVert_F = \lVert S_0 S_0^\top\rVert_F` costs
:math:`O(N^2 P)`). It is combined with the prior estimate
:math:`N(\rho^b, \sigma_b^2)` carried from the previous analysis:

.. math::

    \rho^a = \frac{\sigma_o^2 \rho^b + \sigma_b^2 \rho^o}{\sigma_b^2 + \sigma_o^2},
    \qquad \sigma_a^2 = \frac{\sigma_b^2 \sigma_o^2}{\sigma_b^2 + \sigma_o^2}.

As in Miyoshi (2011) the prior variance :math:`\sigma_b^2` is a fixed
setting (it sets the time scale of the temporal smoothing: roughly
:math:`\sigma_o^2/\sigma_b^2` analyses), the prior mean is the previous
posterior mean (persistence), and :math:`\rho^a` is kept in
``[1, max_inflation**2]`` (no deflation; Anderson 2009 bounds it the same
way). The anomalies are multiplied by :math:`\sqrt{\rho^a}` before the
update. Analyses without information (:math:`\operatorname{tr} G = 0` or no
active observation) keep the prior estimate.

References
----------
Anderson, J. L. (2009). Spatially and temporally varying adaptive covariance
inflation for ensemble filters. Tellus A 61.
Li, H., Kalnay, E., Miyoshi, T. (2009). Simultaneous estimation of covariance
inflation and observation errors within an ensemble Kalman filter. Q. J. R.
Meteorol. Soc. 135.
Miyoshi, T. (2011). The Gaussian approach to adaptive covariance inflation and
its implementation with the local ensemble transform Kalman filter. Mon. Wea.
Rev. 139.

Examples
--------
>>> import torch
>>> sign = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
>>> S0 = 0.1 * sign.expand(4, 50)                     # small forecast spread
>>> d = torch.full((50,), 1.5, dtype=torch.float64)   # innovations far larger than the spread
>>> mean, var = adaptive_inflation(S0, d, torch.tensor(50.0), torch.tensor(1.0), 0.1)
>>> bool(mean > 1.0), bool(var < 0.1)
(True, True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError

__all__ = [
    "ADAPTIVE",
    "DEFAULT_CYCLE_INFLATION",
    "DEFAULT_CYCLE_SETTINGS",
    "DEFAULT_INFLATION_VAR",
    "LATENT_CYCLE_SETTINGS",
    "adaptive_inflation",
    "check_inflation",
    "cycle_defaults",
]

#: The value of the ``inflation`` setting that asks for the adaptive estimate.
ADAPTIVE = "adaptive"

#: Inflation a cycling driver should use when the user sets none.
DEFAULT_CYCLE_INFLATION = ADAPTIVE

#: Prior variance of the (variance) inflation estimate: with it, the estimate
#: averages over roughly ``sigma_o^2 / DEFAULT_INFLATION_VAR`` analyses
#: (chosen on Lorenz-96 validation runs; see benchmarks/bench_lorenz96_filters.py).
DEFAULT_INFLATION_VAR = 0.01

#: Ensemble-filter settings a cycling driver should use when the user sets
#: none (kernel defaults stay exact: no inflation, no relaxation), per method
#: name; see :func:`cycle_defaults`. Chosen on Lorenz-96 validation runs
#: (benchmarks/bench_lorenz96_filters.py): the global filters need only the
#: adaptive inflation; the LETKF's one domain-wide estimate does not see
#: local spread collapse in sparsely observed regions, and RTPS 0.3 keeps it
#: stable there (20 random observations of 40, N = 10: RMSE 2.2, diverged,
#: without RTPS; 0.43 with it).
DEFAULT_CYCLE_SETTINGS: dict[str, dict[str, Any]] = {
    "etkf": {"inflation": DEFAULT_CYCLE_INFLATION},
    "denkf": {"inflation": DEFAULT_CYCLE_INFLATION},
    "ensrf": {"inflation": DEFAULT_CYCLE_INFLATION},
    "enkf": {"inflation": DEFAULT_CYCLE_INFLATION},
    "letkf": {"inflation": DEFAULT_CYCLE_INFLATION, "rtps": 0.3},
}


#: What cycling in a *latent* space adds to :data:`DEFAULT_CYCLE_SETTINGS` for the
#: global filters and 4DEnVar. Before additive inflation (below) both used RTPS
#: 0.4 of the state (parameters keep an exact
#: update, ``param_rtps=0``: relaxing their spread would hide what the
#: observations taught about them). A latent model fitted on a few weeks of data
#: makes out-of-sample forecast errors of another size and structure than its
#: fitted ``Q`` (3-hour residual variance on the validation week 2.8x (ERA5) and
#: 5.5x (WFDE5) the training one, concentrated in a few directions;
#: ``benchmarks/bench_real_bounds.py``), which one domain-wide inflation factor
#: cannot follow. Chosen on the validation weeks of
#: ``benchmarks/bench_real_stations.py`` (PCA-64 + linear dynamics, cycled ETKF,
#: spread/RMSE at the verification points for RTPS 0 / 0.3 / 0.4 / 0.5): ERA5 30
#: stations 0.86 / 0.98 / - / 1.11, 300 stations 0.82 / 1.12 / 1.26 / 1.43; WFDE5 10
#: stations 0.59 / 0.68 / 0.72 / 0.76, 30 stations 0.68 / 0.79 / - / 0.91, RMSE equal
#: or lower than without (4DEnVar alike: ERA5 300 stations 1.11 at 0.3, WFDE5 10
#: stations 0.67). 0.4 is the value inside 0.7-1.3 at both ends.
#:
#: The global filters also get adaptive additive inflation shaped like the
#: model's own tendencies (``additive="adaptive"``, :mod:`xlatda.methods.additive`),
#: which adds the directions of the out-of-sample error that RTPS and
#: multiplicative inflation cannot; with it their RTPS drops to 0.2. Chosen on
#: the same validation weeks (PCA-64 ETKF, two station draws per density),
#: RMSE / OI and spread/RMSE without additive (RTPS 0.4) -> with it (RTPS 0 / 0.2
#: / 0.3 / 0.4): WFDE5 30 stations 1.003, 1.070 -> 0.905-0.938, 1.023-1.031
#: (spread 0.96 / 1.09 / 1.16 / 1.24 and 0.66 / 0.75 / 0.81 / 0.87), 100 stations
#: 1.128, 0.946 -> 1.016-1.119, 0.896-0.897, 300 stations 0.950, 0.947 ->
#: 0.919-0.922, 0.929-0.931 (spread 0.84 / 1.27 / 1.54 / 1.85); ERA5 within
#: 0.005 of without at every density. 0.2 has the spread closest to the RMSE
#: (sum of |log spread/RMSE| over the 14 cases: 2.77 / 2.19 / 2.88 for RTPS 0 /
#: 0.2 / 0.3); RTPS 0 has a 1-4 % lower RMSE on WFDE5 at 30 and 100 stations.
#: 4DEnVar (additive inflation at each window's start, from its first
#: observations) likewise, validation RMSE / OI and spread/RMSE for RTPS 0.4
#: without -> 0.4 with -> 0.2 with: WFDE5 30 stations 1.013 / 0.936 / 0.917
#: (spread 0.87 / 1.23 / 1.07) and 1.064 / 1.033 / 1.029, 100 stations 1.131 /
#: 1.121 / 1.063 and 0.996 / 0.901 / 0.900 (spread 1.00 / 1.51 / 1.15), 300
#: stations 0.985 / 0.925 / 0.923 (spread 1.29 / 1.84 / 1.25); ERA5 within 0.006
#: at every density, spread at 300 stations 1.26 / 1.30 / 1.03.
#: ``regime="auto"``: an uncertain regime mean carried in the control vector for
#: models with a clock (:mod:`xlatda.methods.regime`; validation weeks, exact
#: augmented KF: WFDE5 0.969 -> 0.923 x OI at 30 stations, ERA5 1.016 -> 0.996,
#: lower at every density of both).
LATENT_CYCLE_SETTINGS: dict[str, dict[str, Any]] = {
    **{name: {"rtps": 0.2, "param_rtps": 0.0, "additive": "adaptive", "regime": "auto"}
       for name in ("etkf", "denkf", "ensrf", "enkf")},
    "4denvar": {"rtps": 0.2, "additive": "adaptive", "regime": "auto"},
}


def cycle_defaults(method: str, settings: dict[str, Any] | None = None,
                   space: str = "physical") -> dict[str, Any]:
    """The user's ``settings`` completed with the cycling defaults of an ensemble filter.

    Parameters
    ----------
    method : str
        Registered method name (case-insensitive); names without cycling
        defaults (variational methods) get the settings back unchanged.
    settings : dict, optional
        What the user set; always wins. A user who sets ``inflation`` to a
        number gets no default RTPS either (their tuning is kept as is).
    space : {"physical", "latent"}
        The kind of state space cycled; ``"latent"`` adds
        :data:`LATENT_CYCLE_SETTINGS`.

    Returns
    -------
    dict
        A new dict.

    Examples
    --------
    >>> cycle_defaults("letkf", {"radius": 4})
    {'inflation': 'adaptive', 'rtps': 0.3, 'radius': 4}
    >>> cycle_defaults("etkf", {"inflation": 1.02})
    {'inflation': 1.02}
    >>> cycle_defaults("etkf", space="latent")  # doctest: +NORMALIZE_WHITESPACE
    {'inflation': 'adaptive', 'rtps': 0.2, 'param_rtps': 0.0, 'additive': 'adaptive',
     'regime': 'auto'}
    """
    given = dict(settings or {})
    defaults = DEFAULT_CYCLE_SETTINGS.get(str(method).lower(), {})
    if space == "latent":
        defaults = {**defaults, **LATENT_CYCLE_SETTINGS.get(str(method).lower(), {})}
    if "inflation" in given:
        return given
    return {**defaults, **given}


def check_inflation(value: Any, name: str = "inflation") -> None:
    """Refuse an inflation setting that is neither a positive number nor ``"adaptive"``.

    Examples
    --------
    >>> check_inflation("adaptive"); check_inflation(1.02)
    >>> check_inflation(0.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xlatda.errors.ConfigError: inflation must be a positive finite number ... got 0.0
    """
    if value == ADAPTIVE and isinstance(value, str):
        return
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        raise ConfigError(
            f"{name} must be a positive finite number (1 = none) or 'adaptive', got {value!r}"
        )


def adaptive_inflation(
    S0: Tensor,
    d: Tensor,
    n_active: Tensor,
    prior_mean: Tensor,
    prior_var: float,
    *,
    max_inflation: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """Posterior (mean, variance) of the variance-inflation factor (see module docs).

    Parameters
    ----------
    S0 : Tensor
        Un-inflated scaled observation anomalies ``(*batch, N, P)``
        (``R^-1/2 (h_j - h_mean) / sqrt(N-1)``; switched-off observations are
        zero columns).
    d : Tensor
        Scaled innovations ``(*batch, P)`` (zero where switched off).
    n_active : Tensor
        Number of active observations ``(*batch,)`` (or scalar).
    prior_mean : Tensor
        Prior estimate of the variance factor ``rho`` (``(*batch,)`` or scalar).
    prior_var : float
        Prior variance of ``rho`` (fixed, Miyoshi 2011), ``> 0``.
    max_inflation : float
        Largest *anomaly* factor allowed, ``rho <= max_inflation**2``.

    Returns
    -------
    mean, var : Tensor
        ``(*batch,)`` posterior mean (in ``[1, max_inflation**2]``) and variance.
    """
    if not (isinstance(prior_var, (int, float)) and prior_var > 0):
        raise ConfigError(f"inflation_var must be a positive number, got {prior_var!r}")
    batch = S0.shape[:-2]
    like = {"dtype": S0.dtype, "device": S0.device}
    rho_b = torch.as_tensor(prior_mean, **like).expand(batch)
    p = torch.as_tensor(n_active, **like).expand(batch)
    tr_g = S0.square().sum((-2, -1))
    gram = S0 @ S0.mT
    fro2 = gram.square().sum((-2, -1))
    informative = (tr_g > 0) & (p > 0)
    safe_tr = torch.where(informative, tr_g, 1.0)
    rho_o = (d.square().sum(-1) - p) / safe_tr
    var_o = 2.0 * (p + 2.0 * rho_b * tr_g + rho_b.square() * fro2) / safe_tr.square()
    mean = (var_o * rho_b + prior_var * rho_o) / (prior_var + var_o)
    var = prior_var * var_o / (prior_var + var_o)
    mean = mean.clamp(1.0, float(max_inflation) ** 2)
    mean = torch.where(informative, mean, rho_b)
    var = torch.where(informative, var, torch.full_like(var, float(prior_var)))
    return mean, var
