r"""Adaptive additive inflation shaped like the codes' own tendencies.

A latent model fitted on a few weeks meets other weather when it is used:
its forecast error on the following week is several times the out-of-fold
``Q`` it was fitted with, and in *other directions* (on the real station
benchmark of issue #14, the 3-hour residual variance of the validation week
is 2.8x (ERA5) and 5.5x (WFDE5) that of training). Multiplicative inflation
only stretches the spread the ensemble already has; it cannot add the missing
directions. Additive inflation with random samples of the model's
climatological tendencies (Whitaker et al. 2008: differences of reanalysis
states a few hours apart) adds them, because the error of a forecast that
missed the weather change is shaped like the change itself.

Here the shape is the covariance :math:`T(\tau)` of the training codes'
changes over the forecast lead :math:`\tau`
(:meth:`xlatda.uncertainty.ModelError.tendency_covariance`), and its size
:math:`\lambda \ge 0` is estimated from the innovations, as adaptive
multiplicative inflation is (Li, Kalnay & Miyoshi 2009). With the
observation-space innovation :math:`d = y - \overline{h(x^f)}` of :math:`p`
observations, the background ensemble's observed variance
:math:`\operatorname{tr}(H P^f H^\top)`, the observation-error variance
:math:`\operatorname{tr} R`, and :math:`\operatorname{tr}(H T H^\top)`,

.. math::

    \lambda^o = \frac{d^\top d - \operatorname{tr}(H P^f H^\top)
                      - \operatorname{tr} R}{\operatorname{tr}(H T H^\top)},
    \qquad
    \lambda = \operatorname{clip}\big((1 - w)\,\lambda^{b} + w\,\lambda^o,\;
              0,\; \lambda_{\max}\big),

:math:`\lambda^b` the previous analysis' value (0 at the start) and
:math:`w` the weight of one analysis (:data:`ADDITIVE_WEIGHT`, an average
over about ten analyses). :math:`\lambda T` is then added to the forecast
ensemble by the square-root method of Raanes et al. (2015)
(:func:`~xlatda.methods.model_noise.add_model_error`: the mean is kept), before
the analysis and before the multiplicative inflation, which sees what is
left. When the ensemble and its ``Q`` already explain the innovations,
:math:`\lambda` stays at 0 and nothing changes.

:math:`H T H^\top` is computed from the observations of the mean and of the
mean plus each column of a square root of :math:`T`: exact for an affine
decoder (PCA), a secant at one tendency standard deviation otherwise.

Chosen on the validation weeks of ``benchmarks/bench_real_stations.py``
(days 15-21, never the test periods), with an exact latent Kalman filter
(``benchmarks/bench_real_bounds.py``), PCA-64, 30 stations every 3 h: WFDE5
1.055x optimal interpolation without it, 0.969x with it (w = 0.1; 0.980 /
0.962 for w = 0.05 / 0.2); ERA5 1.018x and 1.016x (its fitted ``Q`` already
explains its innovations: λ averages 0.06-0.11).

References
----------
Whitaker, J. S., Hamill, T. M., Wei, X., Song, Y. and Toth, Z. (2008).
Ensemble data assimilation with the NCEP Global Forecast System. Mon. Wea.
Rev. 136, 463-482.
Li, H., Kalnay, E. and Miyoshi, T. (2009). Simultaneous estimation of
covariance inflation and observation errors within an ensemble Kalman
filter. Q. J. R. Meteorol. Soc. 135, 523-533.
Raanes, P. N., Carrassi, A. and Bertino, L. (2015). Extending the square
root method to account for additive forecast noise in ensemble methods.
Mon. Wea. Rev. 143, 3857-3873.

Examples
--------
Innovations twice as large (in variance) as the ensemble and the
observation error explain: the scale moves a tenth of the way to the
observed estimate.

>>> import torch
>>> hx = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # variance 2 + 2
>>> d = torch.tensor([2.0, 2.0], dtype=torch.float64)                  # d'd = 8
>>> r = torch.tensor([1.0, 1.0], dtype=torch.float64)                  # tr R = 2
>>> ht = torch.eye(2, dtype=torch.float64)                            # tr HTH' = 2
>>> float(additive_scale(d, hx, r, ht, torch.tensor(0.0, dtype=torch.float64)))
0.1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError
from xlatda.methods.model_noise import add_model_error

__all__ = ["ADDITIVE", "ADDITIVE_MAX", "ADDITIVE_WEIGHT", "additive_scale", "check_additive",
           "tendency_root", "with_tendency_error"]

#: The value of the ``additive`` setting that asks for the adaptive estimate.
ADDITIVE = "adaptive"

#: Weight of one analysis in the running estimate of the scale.
ADDITIVE_WEIGHT = 0.1

#: Upper bound of the scale (in units of the tendency covariance).
ADDITIVE_MAX = 4.0

_F64 = torch.float64


def check_additive(value: Any) -> str | None:
    """``"adaptive"`` or None (off), else a :class:`~xlatda.errors.ConfigError`."""
    if value is None or value is False:
        return None
    if value == ADDITIVE:
        return ADDITIVE
    raise ConfigError(f"additive must be 'adaptive' (adaptive additive inflation shaped like "
                      f"the model's tendencies) or None (off), got {value!r}")


def additive_scale(innovation: Tensor, observed: Tensor, obs_std: Tensor,
                   tendency_observed: Tensor, prior: Tensor, *, weight: float = ADDITIVE_WEIGHT,
                   max_scale: float = ADDITIVE_MAX) -> Tensor:
    """The updated scale ``λ`` of the tendency covariance (see the module docstring).

    Parameters
    ----------
    innovation : Tensor
        ``(P,)`` ``y`` minus the mean of the observed background.
    observed : Tensor
        ``(N, P)`` observed background ensemble.
    obs_std : Tensor
        ``(P,)`` observation-error standard deviations.
    tendency_observed : Tensor
        ``(k, P)`` the observed columns of a square root of ``T``
        (``H T Hᵀ = Gᵀ G``).
    prior : Tensor
        The previous analysis' scale.
    weight, max_scale : float
        Weight of this analysis, upper bound.

    Returns
    -------
    Tensor
        0-d float64.
    """
    prior = torch.as_tensor(prior, dtype=_F64)
    hth = tendency_observed.to(_F64).pow(2).sum()
    if not bool(hth > 0) or observed.shape[0] < 2:
        return prior
    d = innovation.to(_F64)
    spread = observed.to(_F64).var(0, unbiased=True).sum()
    obs = (d @ d - spread - obs_std.to(_F64).pow(2).sum()) / hth
    return ((1 - weight) * prior + weight * obs).clamp(0.0, max_scale)


def tendency_root(cov: Tensor, rtol: float = 1e-10) -> Tensor:
    """``(k, d)`` rows ``G`` with ``Gᵀ G = cov`` (eigenvectors of the positive part).

    Examples
    --------
    >>> import torch
    >>> c = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> g = tendency_root(c)
    >>> bool(torch.allclose(g.T @ g, c))
    True
    """
    c = cov.to(_F64)
    w, V = torch.linalg.eigh(0.5 * (c + c.T))
    keep = w > rtol * w.max().clamp_min(torch.finfo(_F64).tiny)
    return (V[:, keep] * w[keep].sqrt()).T


def with_tendency_error(space: Any, ensemble: Tensor, hx: Tensor, y: Tensor, r: Tensor,
                        table: Any, tendency: Tensor, prior: Tensor, *,
                        generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The forecast ensemble with ``λ T`` added, its observations, and ``λ``.

    ``tendency`` is the ``(d, d)`` covariance of the codes' change over the
    lead (the state entries of the control vector; parameters get none).
    ``space.observe`` gives the observations of control vectors.
    """
    n = ensemble.shape[1]
    d = tendency.shape[0]
    root = tendency_root(tendency)
    mean = ensemble.mean(0, keepdim=True)
    cols = torch.zeros(root.shape[0], n, dtype=ensemble.dtype)
    cols[:, :d] = root.to(ensemble)
    both = space.observe(torch.cat([mean, mean + cols]), table).to(_F64)
    g = both[1:] - both[:1]
    lam = additive_scale(y - hx.mean(0), hx, r, g, prior)
    if not bool(lam > 0):
        return ensemble, hx, lam
    full = torch.zeros(n, n, dtype=_F64)
    full[:d, :d] = lam * tendency.to(_F64)
    out = add_model_error(ensemble, full, generator=generator)
    return out, space.observe(out, table), lam
