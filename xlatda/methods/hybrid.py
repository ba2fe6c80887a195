r"""Hybrid EnKF: an ensemble covariance blended with the model's climatological latent prior.

A latent EnKF with fewer members than latent dimensions sees only an
``N - 1``-dimensional subspace of the latent space: the directions it does
not span get no increment, their error grows, and the filter diverges
without any localisation to repair the rank (latent coordinates have no
distance to localise with). On the shallow-water benchmark of issue #17
(SINR + ODE, latent 128, 1024 observations, ``N = 32``) the stochastic EnKF
reaches 0.148 against 0.053 with ``N = 129``, and inflation or RTPS do not
close the gap (0.12-0.18 over 1.05 / 1.2 / adaptive and RTPS 0 / 0.7).

The hybrid gain of Hamill & Snyder (2000) uses

.. math::

    P^h = (1 - \beta)\, \lambda P^e + \beta\, B,

with :math:`P^e` the (inflated by :math:`\lambda`) ensemble covariance and
:math:`B = S S^\top` the model's latent prior (``model.prior``, the
covariance of the training codes), full rank. With
:math:`Z = [\sqrt{(1-\beta)\lambda}\, X, \sqrt\beta\, S]` (``X`` the scaled
ensemble anomalies) and :math:`G = R^{-1/2} H Z` the gain is
:math:`K = Z (I + G^\top G)^{-1} G^\top R^{-1/2}`: one
``(N + d) x (N + d)`` factorisation, whatever the number of observations.
:math:`HS` is the secant of the observation operator across one prior
standard deviation, :math:`(h(\bar z + s_k) - h(\bar z - s_k)) / 2` for each
column :math:`s_k` of :math:`S` (exact for affine decoders such as PCA and
SINR), from ``2 d`` extra decodes per analysis. Members are updated with
centred perturbed observations,
:math:`z^a_i = z_i + K (y + \epsilon_i - h(z_i))`, so the analysis mean is
:math:`\bar z + K (y - \bar h)` exactly. Regime and parameter entries of the
control vector have no static part (:math:`B` covers the latent state).

``beta = 0`` is the stochastic EnKF (centred perturbations, multiplicative
inflation); ``beta = 1`` with an affine decoder is optimal interpolation
(BLUE) with the climatological prior, for the mean.

The members carry only the ensemble part of the blended covariance (as in
Hamill & Snyder): their spread is an underestimate wherever ``B`` matters
(ERA5 stations, PCA-32: spread 0.58 K against an RMSE of 0.94 K, where the
default ETKF's spread is 0.95 K). Use it for the analysis mean; for
calibrated spread, give the ensemble filters members enough to span the
latent space (``xlatda.cycle``'s default).

References
----------
Hamill, T. M. and Snyder, C. (2000). A hybrid ensemble Kalman filter-3D
variational analysis scheme. Mon. Wea. Rev. 128, 2905-2919.

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.lorenz96(n=16, steps=300, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, dynamics="linear", progress=False)
>>> obs = xlatda.obs.sample_points(ds.isel(time=slice(201, 211)), n=6, error_std=1.0, seed=1)
>>> res = xlatda.cycle(ds.isel(time=200), obs, model, method="hybrid", members=5,
...                    progress=False)
>>> dict(res.analysis.sizes)["member"], "chi2" in res.diagnostics
(5, True)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from xlatda.errors import ConfigError, NotFittedError
from xlatda.methods.consistency import (
    AnalysisLabel,
    DivergenceMonitor,
    innovation_chi2,
    monitor_entries,
    monitor_state,
    spread_ratio,
)
from xlatda.methods.inflation import check_inflation
from xlatda.methods.protocol import CycleMethod, WindowAnalysis
from xlatda.methods.regime import check_regime
from xlatda.methods.registry import methods

__all__ = ["DEFAULT_BETA", "HybridEnKF", "hybrid_gain_update"]

_F64 = torch.float64

#: Weight of the climatological prior in the blended covariance, chosen on the validation
#: trajectory of ``benchmarks/bench_sinr.py`` part c (latent 128, N = 32, inflation 1.05),
#: analysis RMSE for beta = 0 / 0.01 / 0.03 / 0.1 / 0.3 / 0.5 / 1: SINR + ODE 0.146 / 0.067 /
#: 0.059 / 0.059 / 0.056 / 0.057 / 0.056, autoencoder + ODE (0 / 0.01 / 0.05 / 0.2)
#: 0.137 / 0.126 / 0.128 / 0.129: flat beyond 0.03; 0.3 is within 2.5 % of the best of both.
DEFAULT_BETA = 0.3


def hybrid_gain_update(
    ensemble: Tensor,
    hx: Tensor,
    y: Tensor,
    r_std: Tensor,
    static: Tensor,
    h_static: Tensor,
    *,
    beta: float,
    inflation: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""One hybrid-gain EnKF analysis (see the module docstring).

    Parameters
    ----------
    ensemble : Tensor
        ``(N, n)`` forecast control vectors.
    hx : Tensor
        ``(N, P)`` their observation equivalents.
    y, r_std : Tensor
        ``(P,)`` observations and error standard deviations.
    static : Tensor
        ``(n, k)`` factor of the static covariance :math:`B = S S^\top`
        (rows without a static part are zero).
    h_static : Tensor
        ``(P, k)``: :math:`H S`, the observation operator applied to its columns.
    beta : float
        Weight of ``B`` in ``[0, 1]``.
    inflation : float
        Multiplicative inflation: the factor of the ensemble anomalies.
    generator : torch.Generator, optional
        For the perturbed observations.

    Returns
    -------
    analysis : Tensor
        ``(N, n)``.
    diagnostics : dict of str to Tensor
        Scalars ``chi2`` and ``spread_ratio`` of the blended forecast
        covariance (:mod:`xlatda.methods.consistency`), ``inflation``, ``n_obs``.

    Examples
    --------
    With ``beta = 1`` the mean is the BLUE with covariance ``S S^T``:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> ens = torch.randn(6, 3, generator=g, dtype=torch.float64)
    >>> H = torch.randn(4, 3, generator=g, dtype=torch.float64)
    >>> S, y, r = torch.eye(3, dtype=torch.float64), torch.ones(4, dtype=torch.float64), \
    ...     torch.full((4,), 0.5, dtype=torch.float64)
    >>> ana, _ = hybrid_gain_update(ens, ens @ H.T, y, r, S, H @ S, beta=1.0, generator=g)
    >>> xb = ens.mean(0)
    >>> blue = xb + H.T @ torch.linalg.solve(H @ H.T + torch.diag(r**2), y - H @ xb)
    >>> bool(torch.allclose(ana.mean(0), blue))
    True
    """
    n_members = ensemble.shape[0]
    if n_members < 2:
        raise ConfigError("the hybrid EnKF needs at least 2 members")
    mean, hmean = ensemble.mean(0), hx.mean(0)
    rho = float(inflation)
    ens = mean + rho * (ensemble - mean)  # inflated anomalies, and their images
    hxi = hmean + rho * (hx - hmean)
    Xs = (ens - mean) / math.sqrt(n_members - 1)  # (N, n)
    HXs = (hxi - hmean) / math.sqrt(n_members - 1)  # (N, P)
    a, b = math.sqrt(1.0 - beta), math.sqrt(beta)
    Z = torch.cat([a * Xs, b * static.T], 0)  # (m, n): the rows are the columns of Z
    G = torch.cat([a * HXs, b * h_static.T], 0) / r_std  # (m, P), whitened
    d = (y - hmean) / r_std
    A = torch.eye(Z.shape[0], dtype=Z.dtype, device=Z.device) + G @ G.T
    L = torch.linalg.cholesky(A)
    eps = torch.randn(hx.shape, generator=generator, dtype=hx.dtype, device="cpu").to(hx)
    eps = eps - eps.mean(0)  # centred: the analysis mean is the Kalman mean exactly
    v = (y + eps * r_std - hxi) / r_std  # (N, P) whitened perturbed innovations
    w = torch.cholesky_solve(G @ v.T, L)  # (m, N)
    ana = ens + w.T @ Z
    diag = {
        "chi2": innovation_chi2(G, d),
        "spread_ratio": spread_ratio(G, d, r_std),
        "inflation": torch.tensor(float(inflation), dtype=_F64),
        "n_obs": torch.tensor(float(y.shape[-1]), dtype=_F64),
    }
    return ana, diag


@methods.register("hybrid")
class HybridEnKF(CycleMethod):
    """Hybrid EnKF in latent space: ensemble covariance plus the latent prior (module docstring).

    Parameters
    ----------
    beta : float
        Weight of the model's climatological latent prior ``B`` in the
        forecast covariance, in ``[0, 1]``. Default :data:`DEFAULT_BETA`
        (0.1), chosen on the validation trajectory of
        ``benchmarks/bench_sinr.py`` part c.
    inflation : float
        Multiplicative inflation of the ensemble part (default 1.05).
    regime : optional
        Accepted as for the other latent filters (:mod:`xlatda.methods.regime`);
        the regime shift has no static part.

    Notes
    -----
    Latent space only, for models with a latent prior (``xlatda.fit``
    stores one). Each analysis costs ``2 d`` extra decodes at the
    observation points and one ``(N + d)``-square Cholesky factorisation.
    """

    spaces: ClassVar[tuple[str, ...]] = ("latent",)
    inference = True
    #: its gain keeps every latent direction (no SmallEnsembleWarning from xlatda.cycle)
    blends_prior: ClassVar[bool] = True

    def __init__(self, *, beta: float = DEFAULT_BETA, inflation: float = 1.05,
                 regime: Any = None) -> None:
        if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) <= 1.0):
            raise ConfigError(f"beta must be a number in [0, 1], got {beta!r}")
        if isinstance(inflation, str):
            raise ConfigError(
                "the hybrid EnKF takes a fixed inflation factor (a number), got "
                f"{inflation!r}; its climatological part keeps the rank that adaptive "
                "inflation would otherwise have to make up for")
        check_inflation(inflation)
        check_regime(regime)
        self.beta, self.inflation = float(beta), float(inflation)
        self.monitor = DivergenceMonitor()

    @classmethod
    def choose_space(cls, model: Any, space: str | None) -> str | None:
        # a latent model (duck-typed: the kernels know no xarray layer) with its prior
        if getattr(model, "latent_dim", None) is None or space == "physical":
            raise ConfigError(
                "method='hybrid' analyses the latent state of a LatentModel (its prior is the "
                "static covariance); for a physical model use 'enkf', 'etkf' or 'letkf'")
        if getattr(model, "prior", None) is None:
            raise NotFittedError(
                "method='hybrid' blends the ensemble with the model's latent prior, and this "
                "model has none: refit it with xlatda.fit (which stores model.prior), or use "
                "method='enkf'")
        return space

    def _static(self, space: Any, n: int) -> Tensor:
        prior = space.model.prior
        S = prior.scale.detach().to("cpu", _F64)  # (d, d)
        static = torch.zeros(n, S.shape[1], dtype=_F64)
        static[: space.d] = S
        return static

    def analyse(self, space, ensemble, window, *, generator, state):
        table = window.tables[0]
        ens = ensemble.to(_F64)
        n = ens.shape[1]
        static = self._static(space, n)
        mean = ens.mean(0)
        with torch.no_grad():
            probes = torch.cat([mean + static.T, mean - static.T], 0)  # (2k, n)
            both = space.observe(torch.cat([ens, probes], 0), table)
        hx, hp = both[: ens.shape[0]], both[ens.shape[0]:]
        k = static.shape[1]
        h_static = ((hp[:k] - hp[k:]) / 2.0).T  # (P, k)
        y, r = table.values.to(_F64), table.error_std.to(_F64)
        ana, diag = hybrid_gain_update(ens, hx, y, r, static, h_static, beta=self.beta,
                                       inflation=self.inflation, generator=generator)
        mon = self.monitor.update(diag, monitor_state(state), where=AnalysisLabel(window))
        return WindowAnalysis([(ensemble, ana.to(ensemble))], diag, monitor_entries(mon), [hx])
