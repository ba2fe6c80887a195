r"""Latent conditioning on observation images (SLAMS' multimodal fusion) for ``method="score"``.

SLAMS (Qu et al. 2024) conditions its latent diffusion prior without an
explicit observation operator: the observations (station data rasterised on
the model grid, coarse satellite-like fields) enter a multimodal encoder as
extra input channels, so that they reach the sampler through the latent
space. xlatda's score method has no background state, so the state channels
of the encoder are filled with zeros (the normalised climatological mean)
and the encoder must have learned to code observation images alone
(:func:`xlatda.fit` with ``aux=`` and ``encoder_options={"state_dropout":
p}``). The code of the images of one observation time is the *latent
observation*

.. math:: c = E(0, \mathrm{img}(y)) \in \mathbb{R}^K .

**Likelihood** (estimated, not set by hand). :math:`c` is an observation of
the latent state :math:`z = E(x)` through a linear-Gaussian model

.. math:: c = M z + b + e, \qquad e \sim \mathcal{N}(0, \Sigma),

whose :math:`M`, :math:`b` (least squares) and :math:`\Sigma` (covariance
of the errors of :math:`M z + b` on the half of the pairs it was not fitted
on, cross-fitted over two contiguous halves, shrunk towards its diagonal by
:math:`\lambda` chosen by the same two-fold held-out likelihood) are fitted by
:func:`fit_latent_obs` on held-out pairs (true state, observation set made
with the design to be assimilated: same kinds, density and error). A
regression rather than :math:`c \approx z`: the code of sparse or coarse
images shrinks towards the mean, and treating it as an unbiased observation
of :math:`z` would over-weight it; :math:`\Sigma` holds everything the
images miss, the encoder's errors and the observation noise, and
:math:`M \to 0` for images that carry no information, so that the posterior
falls back to the prior. With :math:`\Sigma = L L^\top` the sampler sees
:math:`K` whitened observations per time, :math:`L^{-1}(c - b)`, of the
linear operator :math:`L^{-1} M z` with unit errors; guidance and sampler
are those of :class:`~xlatda.methods.score.ScoreDA` (``obs_gain`` exact: the
row norms of :math:`L^{-1} M \operatorname{diag}(s)` for the prior's
standardisation :math:`z = \bar z + s \odot u`). For a Gaussian prior the
posterior of :math:`z` is then the Kalman posterior of this linear model
(``tests/test_latent_obs.py``).

The observation sets are binned onto the model grid as
:func:`xlatda.obs.rasterize` does (nearest cell, duplicates averaged); every
observed variable must be one of the encoder's auxiliary variables, which
must be state variables (``aux=xlatda.obs.rasterize(obs, ds)``).

References
----------
Qu, Nathaniel, Li, Gentine (2024). Deep generative data assimilation in
multimodal setting (SLAMS). CVPR workshops (EarthVision).
Rozet, F. and Louppe, G. (2023). Score-based data assimilation. NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.aux_inputs import aux_stack
from xlatda.encode_decode import encode
from xlatda.errors import ConfigError, ObservationError
from xlatda.latent_data import LATENT_DIM, as_dataset
from xlatda.layout import CHANNEL_DIM
from xlatda.model import LatentModel
from xlatda.obs.raster import rasterize, table_image

__all__ = ["LatentObservation", "fit_latent_obs", "image_channels", "image_codes", "table_codes"]

_F64 = torch.float64
_SHRINKAGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass(frozen=True, eq=False)
class LatentObservation:
    r"""The fitted likelihood :math:`c = M z + b + e`, :math:`e \sim N(0, L L^\top)`.

    Attributes
    ----------
    matrix : Tensor ``(K, K)``
        :math:`M`.
    offset : Tensor ``(K,)``
        :math:`b`.
    chol : Tensor ``(K, K)``
        Lower Cholesky factor :math:`L` of :math:`\Sigma`.
    model_id : str
        The latent model whose encoder made the codes.
    channels : tuple of str
        The auxiliary channels (state channel names) the images fill.
    n_pairs : int
        Held-out (state, observation) pairs of the fit.
    shrinkage : float
        :math:`\lambda` of :math:`\Sigma = (1-\lambda) S + \lambda \operatorname{diag}(S)`.
    explained : float
        Fraction of the variance of the codes :math:`c` that :math:`M z + b`
        explains on the pairs (0: the images tell nothing about the state).
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    chol: torch.Tensor
    model_id: str
    channels: tuple[str, ...]
    n_pairs: int
    shrinkage: float
    explained: float

    def whitened(self, codes: torch.Tensor) -> torch.Tensor:
        """:math:`L^{-1}(c - b)` of codes ``(n, K)``."""
        c = codes.to(_F64) - self.offset
        return torch.linalg.solve_triangular(self.chol, c.T, upper=False).T

    def operator(self) -> torch.Tensor:
        """:math:`W = L^{-1} M`, ``(K, K)``: whitened predicted observations ``W z``."""
        return torch.linalg.solve_triangular(self.chol, self.matrix, upper=False)


def image_channels(model: LatentModel) -> tuple[list[int], dict]:
    """State channel of each auxiliary value channel, and the aux spec; refuses models
    whose encoder cannot take observation images of its state."""
    enc = model.encoder
    spec = getattr(enc, "aux_spec", None)
    if not getattr(enc, "aux_channels", 0) or spec is None:
        raise ConfigError(
            "conditioning='latent' needs a multimodal encoder that takes observation images as "
            f"auxiliary channels; this model's {type(enc).__name__} has none. Fit one with "
            "xlatda.fit(ds, encoder='autoencoder', aux=xlatda.obs.rasterize(obs, ds), "
            "encoder_options={'state_dropout': 0.5}), or use conditioning='explicit'"
        )
    names = list(model.layout.channels)
    missing = [c for c in spec["channels"] if c not in names]
    if missing:
        raise ConfigError(
            f"the model's auxiliary channels {missing} are not channels of its state {names}: "
            "latent conditioning needs observation images of state variables "
            "(aux=xlatda.obs.rasterize(obs, ds))"
        )
    return [names.index(c) for c in spec["channels"]], spec


def image_codes(model: LatentModel, images: torch.Tensor) -> torch.Tensor:
    r"""Latent observations :math:`c = E(0, \mathrm{img})` of observation images.

    Parameters
    ----------
    model : LatentModel
        Fitted with ``aux=`` observation images of its state variables.
    images : Tensor, shape ``(n, A, *spatial)``
        Values of the model's ``A`` auxiliary channels in physical units, NaN
        where nothing was observed.

    Returns
    -------
    Tensor, shape ``(n, K)``, float64

    Raises
    ------
    ConfigError
        If the model's encoder takes no observation images of its state.

    Examples
    --------
    >>> import torch, xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=120, seed=0)
    >>> obs = xlatda.obs.sample_points(ds, n=4, error_std=0.5, seed=1)
    >>> img = xlatda.obs.rasterize(obs, ds)
    >>> m = xlatda.fit(ds, encoder="autoencoder", latent_dim=4, epochs=2, aux=img,
    ...                encoder_options={"hidden": [16], "state_dropout": 0.5}, progress=False)
    >>> x = torch.as_tensor(img.x.values[:3, None])           # (3, 1, 8), NaN gaps
    >>> image_codes(m, x).shape
    torch.Size([3, 4])
    """
    _, spec = image_channels(model)
    a = torch.as_tensor(images, dtype=_F64)
    n_aux = len(spec["channels"])
    if a.dim() != 2 + len(model.layout.spatial_shape) or a.shape[1] != n_aux or tuple(
            a.shape[2:]) != tuple(model.layout.spatial_shape):
        raise ConfigError(
            f"images must be (n, {n_aux}, *{tuple(model.layout.spatial_shape)}) for the aux "
            f"channels {spec['channels']}, got {tuple(a.shape)}"
        )
    mean = torch.as_tensor(spec["mean"], dtype=_F64).view(1, -1, *([1] * (a.dim() - 2)))
    std = torch.as_tensor(spec["std"], dtype=_F64).view(1, -1, *([1] * (a.dim() - 2)))
    seen = torch.isfinite(a)
    vals = torch.where(seen, (a - mean) / std, torch.zeros((), dtype=_F64))
    aux = torch.cat([vals, seen.to(_F64)], dim=1)
    state = torch.zeros(a.shape[0], model.layout.n_channels, *a.shape[2:], dtype=_F64)
    with torch.no_grad():
        z = model.encoder.encode(model._cast(state), model._cast(aux))
    return z.to(_F64).cpu()


def table_codes(model: LatentModel, tables: Sequence[Any]) -> torch.Tensor:
    """Latent observations ``(len(tables), K)`` of observation tables (one image each)."""
    chans, spec = image_channels(model)
    L = model.layout
    covered = {L.channels[c] for c in chans}
    imgs = []
    for t in tables:
        seen = {L.channels[int(c)] for c in np.unique(np.asarray(t.channel))}
        extra = sorted(seen - covered)
        if extra:
            raise ObservationError(
                f"observations of {extra} have no auxiliary channel in the model (its "
                f"observation images are {spec['channels']}); drop them or use "
                "conditioning='explicit'"
            )
        imgs.append(table_image(L, t)[chans])
    return image_codes(model, torch.as_tensor(np.stack(imgs)))


def _pairs(model: LatentModel, states: xr.Dataset, obs: xr.Dataset) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    states = as_dataset(states)
    _, spec = image_channels(model)
    images = rasterize(obs, states) if "obs" in obs.dims else obs
    a, La = aux_stack(images, states, model.layout, variables=spec["variables"])
    if list(La.channels) != list(spec["channels"]):
        raise ConfigError(
            f"the observation images fill channels {list(La.channels)}, the model's "
            f"auxiliary inputs are {spec['channels']}: observe the same variables"
        )
    lead = [d for d in a.dims if d != CHANNEL_DIM and d not in model.layout.spatial_dims]
    a = a.transpose(*lead, CHANNEL_DIM, *model.layout.spatial_dims)
    vals = torch.as_tensor(np.asarray(a.values, dtype=np.float64))
    vals = vals.reshape(-1, *vals.shape[len(lead):])
    z = encode(states, model)["z"].transpose(*lead, LATENT_DIM)
    zt = torch.as_tensor(np.asarray(z.values, dtype=np.float64)).reshape(-1, z.sizes[LATENT_DIM])
    return zt, image_codes(model, vals)


def _regress(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    """Least-squares ``c = M z + b``; returns M, b and the unbiased residual covariance."""
    n, k = z.shape
    design = torch.cat([z, torch.ones(n, 1, dtype=_F64)], 1)
    beta = torch.linalg.lstsq(design, c).solution  # (K + 1, K)
    res = c - design @ beta
    cov = res.T @ res / (n - k - 1)
    return beta[:-1].T.contiguous(), beta[-1].clone(), cov


def _shrunk(cov: torch.Tensor, lam: float) -> torch.Tensor:
    return (1.0 - lam) * cov + lam * torch.diag(torch.diagonal(cov))


def _nll(res: torch.Tensor, cov: torch.Tensor) -> float:
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        return float("inf")
    w = torch.linalg.solve_triangular(chol, res.T, upper=False)
    return float(0.5 * w.square().sum(0).mean() + torch.log(torch.diagonal(chol)).sum())


def fit_latent_obs(
    model: LatentModel,
    states: xr.Dataset | Sequence[xr.Dataset],
    obs: xr.Dataset | Sequence[xr.Dataset],
    *,
    shrinkage: float | None = None,
) -> LatentObservation:
    r"""Fit the latent likelihood of ``conditioning="latent"`` on held-out pairs.

    Parameters
    ----------
    model : LatentModel
        Multimodal model (fitted with ``aux=`` observation images of its state
        variables and ``state_dropout > 0``, see the module docstring).
    states : Dataset or list of Dataset
        Held-out true states (not the training states of the encoder, whose
        codes it fits too well), on the model's layout, with a time axis.
    obs : Dataset or list of Dataset
        For each states Dataset, observations of it made with the design to be
        assimilated (:func:`xlatda.obs.coarsen`, :func:`~xlatda.obs.sample_points`,
        with their errors), or their images on the model grid
        (:func:`xlatda.obs.rasterize`); one image per state time.
    shrinkage : float in [0, 1], optional
        :math:`\lambda` of the covariance; default: chosen by two-fold held-out
        Gaussian likelihood (first against second half of the pairs).

    Returns
    -------
    LatentObservation
        Pass it as ``latent_obs=`` with ``conditioning="latent"`` to
        :func:`xlatda.cycle` / :func:`xlatda.assimilate` (``method="score"``).

    Raises
    ------
    ConfigError
        If the model takes no observation images, there are too few pairs
        (need more than ``2 (K + 2)`` to choose :math:`\lambda`, ``K + 1`` with
        it given), or ``shrinkage`` is out of range.
    LayoutError
        If images are not on the model's grid or lack the states' times.

    Notes
    -----
    Encodes every state and every image once; the fit is a least-squares
    solve and a Cholesky factorisation of size ``K``.

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    >>> train, held = ds.isel(time=slice(0, 200)), ds.isel(time=slice(200, None))
    >>> design = lambda s: xlatda.obs.sample_points(s, n=4, error_std=0.5, seed=1)
    >>> m = xlatda.fit(train, encoder="autoencoder", latent_dim=4, epochs=3,
    ...                aux=xlatda.obs.rasterize(design(train), train),
    ...                encoder_options={"hidden": [16], "state_dropout": 0.5}, progress=False)
    >>> lo = xlatda.fit_latent_obs(m, held, design(held))
    >>> lo.matrix.shape, lo.n_pairs
    (torch.Size([4, 4]), 101)
    """
    if not isinstance(model, LatentModel):
        raise ConfigError(f"model must be a LatentModel, got {type(model).__name__}")
    image_channels(model)
    if shrinkage is not None and not 0.0 <= float(shrinkage) <= 1.0:
        raise ConfigError(f"shrinkage must lie in [0, 1] (or None to choose it), got {shrinkage!r}")
    many = not isinstance(states, (xr.Dataset, xr.DataArray))
    s_list = list(states) if many else [states]
    o_list = list(obs) if not isinstance(obs, xr.Dataset) else [obs]
    if len(s_list) != len(o_list):
        raise ConfigError(
            f"pass one observation set per states Dataset; got {len(s_list)} states and "
            f"{len(o_list)} observation sets"
        )
    pairs = [_pairs(model, s, o) for s, o in zip(s_list, o_list)]
    z = torch.cat([p[0] for p in pairs])
    c = torch.cat([p[1] for p in pairs])
    n, k = z.shape
    need = k + 2 if shrinkage is not None else 2 * (k + 2)
    if n < need:
        raise ConfigError(
            f"{n} held-out pairs are too few for a latent likelihood of size K={k}: need at "
            f"least {need}" + ("" if shrinkage is not None else " to choose the shrinkage "
                                "(or pass shrinkage=)") + "; give more held-out states"
        )
    if shrinkage is None:
        half = n // 2
        scores = []
        for lam in _SHRINKAGES:
            total = 0.0
            for fit_idx, test_idx in ((slice(0, half), slice(half, n)),
                                      (slice(half, n), slice(0, half))):
                m_, b_, s_ = _regress(z[fit_idx], c[fit_idx])
                res = c[test_idx] - z[test_idx] @ m_.T - b_
                total += _nll(res, _shrunk(s_, lam))
            scores.append(total)
        lam = _SHRINKAGES[int(np.argmin(scores))]
    else:
        lam = float(shrinkage)
    mat, off, cov = _regress(z, c)
    # The covariance of the errors of M z + b on pairs it was not fitted on (cross-fitted
    # over the two halves): the in-sample residuals of a regression of K outputs on K
    # collinear codes understate them by orders of magnitude on new trajectories.
    if n >= 2 * (k + 2):
        half = n // 2
        held = []
        for fit_idx, test_idx in ((slice(0, half), slice(half, n)),
                                  (slice(half, n), slice(0, half))):
            m_, b_, _ = _regress(z[fit_idx], c[fit_idx])
            held.append(c[test_idx] - z[test_idx] @ m_.T - b_)
        res_out = torch.cat(held)
        cov = res_out.T @ res_out / res_out.shape[0]
    sig = _shrunk(cov, lam)
    sig = sig + 1e-10 * torch.diagonal(sig).mean() * torch.eye(k, dtype=_F64)
    chol = torch.linalg.cholesky(sig)
    res = c - z @ mat.T - off
    explained = 1.0 - float(res.square().sum() / (c - c.mean(0)).square().sum().clamp_min(1e-300))
    _, spec = image_channels(model)
    return LatentObservation(matrix=mat, offset=off, chol=chol, model_id=str(model.model_id),
                             channels=tuple(spec["channels"]), n_pairs=int(n),
                             shrinkage=float(lam), explained=explained)
