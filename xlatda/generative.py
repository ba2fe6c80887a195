r"""Score-based (SLAMS) assimilation on xarray: train score priors, sample posteriors.

:func:`fit_score` trains a diffusion prior over windows of ``window``
consecutive states (METHODS.md §3):

- ``space="latent"`` (SLAMS): windows of latent vectors of a
  :class:`~xlatda.LatentModel` (encoded from a state Dataset, or given as a
  latent Dataset ``z(..., time, latent)``), standardised per latent
  component; an MLP ε-network (:class:`~xlatda.methods.diffusion.ScoreMLP`).
  The result is a copy of the model with the prior in its ``score`` part,
  which :meth:`~xlatda.LatentModel.save` stores with the rest.
- ``space="physical"`` (the pixel-space baseline of SLAMS): windows of
  normalised physical states on the Dataset's grid; a U-Net ε-network
  (:class:`~xlatda.methods.diffusion.ScoreUNet`). The result is a
  :class:`PixelScoreModel`.

Either model then serves ``method="score"`` of :func:`xlatda.assimilate`
(one observation time) and :func:`xlatda.cycle` (windows of observation
times): the guided predictor-corrector sampler of
:class:`~xlatda.methods.score.ScoreDA` draws ``members`` posterior samples
of a window given every observation in it. The likelihood goes through the
observation operator at the observation points: ``H o D`` (the decoder at
the points, :meth:`~xlatda.LatentModel.decode_points`) in latent space, the
interpolation ``H`` in physical space. Point, coarsened and sparsified
observations, and several kinds at once (:func:`xlatda.obs.concat`), are
therefore all assimilated together.

**Whole trajectories** (score-based data assimilation, Rozet and Louppe
2023; SLAMS). The prior is trained on windows of ``w`` states, but
:func:`xlatda.cycle` samples one continuous trajectory through every
observation: the observation times must lie on the prior's time step, the
states from the first to the last observation time form a trajectory of
``L`` states (a span shorter than ``w`` is centred in one window), and the
local score is composed over it by the Markov-blanket rule
(:class:`~xlatda.methods.diffusion.MarkovScore`: state ``i``'s score from
the window centred on it, clamped at the ends), so that every posterior
sample is one trajectory drawn jointly given all the observations. Spans
longer than ``block`` states (sampler setting, default 64) are sampled in
blocks of ``block`` states one after the other: block ``b + 1`` starts
``2 (w - 1)`` states before the end of block ``b`` (the last block is moved
back to hold ``block`` states); its first ``w - 1`` states are block
``b``'s samples, kept by replacement
(:meth:`~xlatda.methods.score.ScoreDA.analyse` ``known=``), the next
``w - 1`` are sampled again now that they see the observations beyond block
``b``; block ``b`` gives the states before that point, block ``b + 1`` the
rest. ``joint=False`` restores the independent windows of ``window``
observation times (each centred in one prior window, knowing nothing of
the others).

**Representation error** (``representation_error=True``, latent models). The
decoder cannot represent every state: what it misses, H∘D sees as error of the
observations, and the decoded ensemble lacks it. Two error models:

- the covariance model of :func:`fit_representation_error` (used when the model
  holds one): the residuals ``x - D(E(x))`` of held-out states give
  :math:`\Sigma_{\rm rep}` (low rank plus diagonal, with a lag-one correlation
  in time, :class:`~xlatda.methods.score.RepresentationError`). The likelihood
  becomes :math:`\mathcal N(y \mid A D(z), R + A \Sigma_{\rm rep} A^\top)` with
  ``A`` each observation's operator (a point reading, or the weighted mean of a
  block's cells, so block means get the variance of the block average of the
  correlated error), including the covariance between observations and
  between the times of a block (whitened jointly up to
  :data:`REP_MAX_JOINT` observations, per observation time above);
  :func:`predictive_samples` then turns the decoded members into predictive
  samples :math:`D(z) + \varepsilon` of the state (:math:`\varepsilon` drawn
  given the observations by Matheron's rule; exact for a linear-Gaussian
  model, ``tests/test_score_representation.py``);
- otherwise the per-channel held-out reconstruction RMSE that :func:`xlatda.fit`
  records (``model.history["representation_error"]`` without a covariance) is
  added in quadrature to each observation's error (which overstates the error of
  block means: they average part of it away).

Default ``False``: the likelihood holds the observation error alone, as in
SLAMS. The estimate is only as good as the held-out states are like the
analysed ones: on the shallow-water benchmark the test trajectories lie twice
as far from the decoder's manifold as the held-out ones
(``benchmarks/RESULTS.md``, score_representation).

``representation_scale`` (with the covariance model): a factor :math:`s^2` on
:math:`\Sigma_{\rm rep}` (default 1, :data:`LIKELIHOOD_DEFAULTS`), or
``"adaptive"``, estimated from the observations themselves, so usable where no
truth is: each analysis (window, or block of a trajectory) is made with the
fitted model, :math:`s^2` is the maximum-likelihood factor of its members'
residuals :math:`y - A D(z_i)` off the range of the Jacobian of H∘D at the
members' mean (the part of the residual no latent change can fit;
:func:`~xlatda.methods.score.representation_scale`), and the analysis is made
again with :math:`s^2 \Sigma_{\rm rep}` (:data:`REP_ADAPTIVE_UPDATES` updates;
about twice the cost). The factor is the ``representation_scale`` variable of
``CycleResult.diagnostics``; pass it to :func:`predictive_samples` as ``scale``
so that the predictive error is the one the likelihood used. With fewer
observations than latent values in an analysis nothing is left to estimate it
from and the factor stays 1. Exact for a linear decoder
(``tests/test_score_adaptive_rep.py``).

``representation_scale="two_part"`` (with a model fitted with
``fit_representation_error(..., smooth=True)``, the default): the error model
:math:`s_1^2\,U^\top U + s_2^2\,C` of
:class:`~xlatda.methods.score.TwoPartError`, the fitted low-rank modes plus a
smooth isotropic part :math:`C` (per channel the variance the held-out residuals
keep outside the modes' span and a Gaussian correlation of the length fitted on
them), both factors estimated jointly per analysis as ``"adaptive"`` does the
one (:func:`~xlatda.methods.score.representation_scales`, REML off the range of
the Jacobian of H∘D); a single factor on a rank-``k`` :math:`\Sigma_{\rm rep}`
cannot grow an error outside the span of its modes, the second factor can. The
factors are the ``representation_scale`` (:math:`s_1^2`) and
``representation_scale_smooth`` (:math:`s_2^2`) diagnostics; pass the pair to
:func:`predictive_samples` as ``scale=(s1, s2)``, or let it estimate its own
(``scale="two_part"``). A pair of numbers as ``representation_scale`` fixes
both. ``representation_floor`` (default 0) is a lower bound on the estimated
factor on the modes (``"adaptive"``, ``"two_part"``): 1 keeps at least the
error the held-out states showed. Exact for a linear decoder
(``tests/test_score_two_part.py``).

**Latent conditioning** (``conditioning="latent"``, latent models; SLAMS'
multimodal fusion, :mod:`xlatda.latent_obs`). Instead of ``H o D`` at the
observation points, each observation time's observations are binned into an
image on the model grid (as :func:`xlatda.obs.rasterize`), coded by the
multimodal encoder with zero state channels, and enter through the
linear-Gaussian latent likelihood ``latent_obs`` fitted on held-out pairs by
:func:`xlatda.fit_latent_obs` (refused without it, for another model, with
``representation_error=True``, or for a model without observation-image
channels). Default ``"explicit"``.

**No background.** As in SLAMS, the prior is the score model itself: the
analysis does not use a background state or a forecast model. ``state`` /
``background`` only give the layout and the starting time (both may be
``None`` with a latent model, whose layout is used). In :func:`xlatda.cycle`
``window`` groups the observation times of each record (and checkpoint of
a ``store``); the ``background`` of the :class:`~xlatda.CycleResult` holds
unconditioned draws of the same prior (the climatological ensemble the
observations update, composed over the same blocks), so innovation and
spread diagnostics mean what they do for the other methods. A store resumed
with more observations keeps the analyses it holds, which did not see the
new observations.

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
>>> model = xlatda.fit_score(ds, model, window=3, epochs=2, hidden=32, depth=2,
...                          progress=False)
>>> model.score.window, model.score.time_step
(3, {'value': 0.05, 'units': 'model'})
>>> obs = xlatda.obs.sample_points(ds.isel(time=[200]), n=4, error_std=0.5, seed=1)
>>> post = xlatda.assimilate(None, obs, model, method="score", members=5, steps=8)
>>> dict(post.x.sizes)
{'member': 5, 'k': 8}
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.encode_decode import encode
from xlatda.errors import ConfigError, ObservationError
from xlatda.jsonable import to_jsonable
from xlatda.latent_data import LATENT_DIM, check_latent
from xlatda.latent_obs import LatentObservation, image_channels, table_codes
from xlatda.layout import CHANNEL_DIM, StateLayout, layout
from xlatda.methods.diffusion import (
    CosineSchedule,
    ScoreMLP,
    ScorePrior,
    ScoreUNet,
    sliding_windows,
)
from xlatda.methods.diffusion import fit_score as _fit_windows
from xlatda.methods.protocol import CycleMethod, WindowAnalysis, adapts
from xlatda.methods.score import (
    RepresentationError,
    ScoreDA,
    TwoPartError,
    fit_smooth_error,
    observation_gain,
    representation_scale,
    representation_scales,
)
from xlatda.model import LatentModel
from xlatda.normalize import Normalizer
from xlatda.options import get_options, resolve_device, resolve_dtype
from xlatda.pixel_score_model import PixelScoreModel
from xlatda.validation import check_keywords, refuse_unknown_keywords
from xlatda.windows import float_times

__all__ = ["PixelScoreModel", "ScoreWindows", "fit_representation_error", "fit_score",
           "predictive_samples", "representation_model", "two_part_model"]

_F64 = torch.float64
_SAMPLER_SETTINGS = ("steps", "corrections", "tau", "gamma", "guide_clip", "cg_iters", "grid")
_SPAN_SETTINGS = ("joint", "block", "representation_error", "representation_scale",
                  "representation_floor", "conditioning", "latent_obs")
_CONDITIONINGS = ("explicit", "latent")
#: Defaults of the likelihood settings of ``method="score"`` (the xarray layer's; the
#: sampler's are :data:`xlatda.methods.score.SAMPLER_DEFAULTS`), the one place they are
#: set. ``representation_scale`` 1 (the error model as fitted): ``"adaptive"`` was not
#: better on the validation windows of ``benchmarks/bench_score_fusion.py`` (predictive
#: CRPS within 2 % at r = 4, 16 and stations, 36 % worse at r = 8, where the factor fell
#: to 0; ``benchmarks/RESULTS.md``, score_adaptive_rep); nor was ``"two_part"`` on the
#: 8 validation windows (predictive CRPS +4 / +8 / -6 / +0.2 % at r = 4 / 8 / 16 /
#: stations, score_two_part). ``representation_floor`` 0: no bound on the estimated factor.
LIKELIHOOD_DEFAULTS: dict[str, Any] = {"representation_error": False,
                                       "representation_scale": 1.0,
                                       "representation_floor": 0.0}




# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _uniform_step(values: np.ndarray, what: str) -> dict[str, Any] | None:
    """The (uniform) spacing of a time axis as ``{"value", "units"}``."""
    values = np.asarray(values)
    if values.size < 2:
        return None
    if np.issubdtype(values.dtype, np.datetime64):
        t = values.astype("datetime64[ns]").astype(np.int64).astype(float) / 1e9
        units = "s"
    elif values.dtype.kind in "fiu":
        t, units = values.astype(float), "model"
    else:
        raise ConfigError(f"the time coordinate of {what} must be datetimes or numbers")
    d = np.diff(t)
    step = float(np.median(d))
    if step <= 0 or np.any(np.abs(d - step) > 1e-6 * abs(step)):
        raise ConfigError(
            f"{what} must be equally spaced in time (windows are consecutive states); got "
            f"spacings from {d.min()} to {d.max()}. Select a regular subset, e.g. "
            "ds.isel(time=slice(None, None, k))"
        )
    return {"value": float(f"{step:.12g}"), "units": units}


def _latent_trajectories(data: xr.Dataset, model: LatentModel):
    if "z" in data.data_vars and LATENT_DIM in data["z"].dims:
        z = check_latent(data, model)
    else:
        z = encode(data, model)["z"]
    tname = model.layout.axes.time or "time"
    if tname not in z.dims:
        raise ConfigError(
            f"fit_score needs trajectories: a {tname!r} dimension along which windows of "
            f"consecutive states are taken; got dims {z.dims}"
        )
    others = [d for d in z.dims if d not in (tname, LATENT_DIM)]
    z = z.transpose(*others, tname, LATENT_DIM)
    arr = np.asarray(z.values, dtype=np.float64)
    n_t = z.sizes[tname]
    return arr.reshape(-1, n_t, arr.shape[-1]), _uniform_step(z[tname].values, "the data")


def _physical_trajectories(data: xr.Dataset, variables: Any):
    L = layout(data, variables=variables)
    tname = L.axes.time
    if tname is None or tname not in data.dims:
        raise ConfigError("fit_score needs trajectories: a time dimension in the data")
    if L.member_dim is not None and L.member_dim in data.dims:
        raise ConfigError(
            f"space='physical' trains on trajectories; stack or select the {L.member_dim!r} "
            "dimension first"
        )
    if L.kind == "points" or len(L.spatial_shape) not in (1, 2):
        raise ConfigError("the pixel-space U-Net needs a 1-D or 2-D grid (not scattered points)")
    others = [d for d in L.sample_dims if d != tname and d in data.dims]
    stacked = L.stack(data).transpose(*others, tname, CHANNEL_DIM, *L.spatial_dims)
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(stacked.values, dtype=np.float64)))
    n_t = data.sizes[tname]
    x = x.reshape(-1, n_t, *x.shape[len(others) + 1:])
    return L, x, _uniform_step(data[tname].values, "the data")


@refuse_unknown_keywords
def fit_score(
    data: xr.Dataset | xr.DataArray,
    model: LatentModel | None = None,
    *,
    window: int = 5,
    space: str = "latent",
    variables: Sequence[str] | None = None,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    hidden: int = 256,
    depth: int = 3,
    widths: Sequence[int] = (32, 64),
    time_embedding: int = 64,
    activation: str = "silu",
    skip: bool = True,
    eta: float = 1e-3,
    val_fraction: float = 0.0,
    patience: int | None = None,
    weight_decay: float = 0.0,
    lr_schedule: str | None = "cosine",
    device: Any = None,
    dtype: Any = None,
    seed: int = 0,
    progress: bool | None = None,
) -> LatentModel | PixelScoreModel:
    r"""Train a score-based prior over windows of consecutive states (SLAMS).

    Windows of ``window`` consecutive states are cut along time within each
    trajectory (never across trajectories, members or other sample
    dimensions), standardised, and an ε-network is trained on them with the
    ε-prediction loss of the cosine VP-SDE
    (:func:`xlatda.methods.diffusion.fit_score`).

    Parameters
    ----------
    data : Dataset or DataArray
        Training trajectories, equally spaced in time. For
        ``space="latent"``: states on ``model``'s layout (encoded here), or
        latents ``z(..., time, latent)`` from ``ds.lda.encode(model)``. For
        ``space="physical"``: states on a 1-D or 2-D grid.
    model : LatentModel, optional
        The latent model (required for ``space="latent"``; not used for
        ``space="physical"``).
    window : int
        States per window (SLAMS: 5, a Markov blanket of order 2). Analyses
        can use up to this many consecutive observation times at once.
    space : {"latent", "physical"}
        Latent prior (MLP over the latent windows) or pixel-space baseline
        (U-Net over normalised physical windows).
    variables : list of str, optional
        ``space="physical"``: state variables (default all on the grid).
    epochs, batch_size, lr, val_fraction, patience, weight_decay :
        Training settings (one noise level per window and per pass; the
        loss is noisy, so prefer many epochs).
    lr_schedule : {"cosine", None}
        Learning-rate schedule (:func:`xlatda.methods.diffusion.fit_score`):
        by default a cosine decay to 0 over ``epochs``, which lets the noisy
        ε-loss settle; ``None`` keeps ``lr`` constant.
    hidden, depth, time_embedding, activation, skip :
        :class:`~xlatda.methods.diffusion.ScoreMLP` (latent space);
        ``skip=True`` (default) lets the MLP learn the residual from the
        exact ε of standard-normal windows, which keeps the sampler stable
        with few training windows.
    widths, time_embedding :
        :class:`~xlatda.methods.diffusion.ScoreUNet` (physical space);
        each grid size must be divisible by ``2 ** (len(widths) - 1)``.
        ``skip`` preconditions the U-Net the same way.
    eta : float
        :math:`\eta` of the cosine schedule.
    device, dtype, seed, progress :
        Where and in which precision to train, seed of the weights and of
        the training noise, progress bar (default: options).

    Returns
    -------
    LatentModel or PixelScoreModel
        ``space="latent"``: a copy of ``model`` (same encoder, dynamics and
        ``model_id``, so existing latents still decode) with ``score`` set
        and ``history["score"]`` recording the training; ``model`` itself is
        not changed. ``space="physical"``: a :class:`PixelScoreModel`.
        The prior records the window, the data time step (what a window
        step stands for), :math:`\eta` and the standardisation.

    Raises
    ------
    ConfigError
        For settings out of range, unequally spaced times, trajectories
        shorter than ``window``, or a missing model; before any training.

    Notes
    -----
    Compute: ``epochs * M`` forward/backward passes of the network for
    ``M`` windows. The latent windows are standardised per component (mean
    and std over all training states), which the diffusion constants
    (:math:`\eta`, :math:`\gamma`) assume; physical windows use the
    per-channel normaliser.

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=200, seed=0)
    >>> pca = xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)
    >>> m = xlatda.fit_score(ds, pca, window=3, epochs=3, hidden=32, depth=2, progress=False)
    >>> m.score is not None and pca.score is None
    True
    >>> len(m.history["score"]["train_loss"])
    3
    """
    if isinstance(data, xr.DataArray):
        data = data.to_dataset(name=data.name if data.name is not None else "data")
    if not isinstance(data, xr.Dataset):
        raise ConfigError(f"data must be an xarray Dataset, got {type(data).__name__}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"need epochs, batch_size, lr > 0, got {epochs}, {batch_size}, {lr}")
    if space not in ("latent", "physical"):
        raise ConfigError(f"space must be 'latent' or 'physical', got {space!r}")
    if lr_schedule not in (None, "cosine"):
        raise ConfigError(f"lr_schedule must be 'cosine' or None, got {lr_schedule!r}")
    if space == "latent" and not isinstance(model, LatentModel):
        raise ConfigError(
            "a latent score prior needs the LatentModel whose latents it models: "
            "fit_score(ds, model) (or space='physical' for the pixel-space baseline)"
        )
    CosineSchedule(float(eta))  # refuses a bad eta before any work
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    progress = get_options()["progress"] if progress is None else progress

    if space == "latent":
        traj, step = _latent_trajectories(data, model)
        flat = traj.reshape(-1, traj.shape[-1])
        mean = flat.mean(0)
        std = flat.std(0)
        std = np.where(std > 0, std, 1.0)
        u = torch.from_numpy((traj - mean) / std)
        L, norm = None, None
    else:
        L, x, step = _physical_trajectories(data, variables)
        norm = Normalizer.fit(x.flatten(0, 1), weights=torch.as_tensor(L.area_weights()))
        u = norm.normalize(x.flatten(0, 1)).reshape(x.shape)
        if torch.isnan(u).any():
            raise ConfigError("the training states contain NaN; fill or mask them first")
    n_t = u.shape[1]
    if n_t < window:
        raise ConfigError(
            f"trajectories have {n_t} times, fewer than window={window}; use longer "
            "trajectories or a smaller window"
        )
    if window > 1 and step is None:
        raise ConfigError("windows of consecutive states need a time coordinate in the data")
    windows = sliding_windows(u, int(window)).to(tdtype)
    if space == "latent":
        net = ScoreMLP(dim=u.shape[-1], window=int(window), hidden=hidden, depth=depth,
                       time_embedding=time_embedding, activation=activation, seed=seed,
                       skip=skip, device=dev, dtype=tdtype)
        stats = {"mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
    else:
        net = ScoreUNet(channels=u.shape[2], grid=tuple(u.shape[3:]), window=int(window),
                        widths=widths, time_embedding=time_embedding, skip=skip, seed=seed,
                        device=dev, dtype=tdtype)
        ones = (u.shape[2], *(1,) * (u.dim() - 3))
        stats = {"mean": torch.zeros(ones, dtype=_F64), "std": torch.ones(ones, dtype=_F64)}
    prior = ScorePrior(net, space=space, time_step=step, eta=float(eta), **stats)
    start = _time.perf_counter()
    hist = _fit_windows(net, windows, schedule=prior.schedule, epochs=int(epochs),
                        batch_size=int(batch_size), lr=float(lr), weight_decay=weight_decay,
                        seed=int(seed), device=dev, progress=progress, patience=patience,
                        val_fraction=val_fraction, lr_schedule=lr_schedule)
    prior.to(device=dev)
    record = {**to_jsonable(hist), "seconds": _time.perf_counter() - start,
              "windows": int(windows.shape[0]), "window": int(window), "time_step": step,
              "eta": float(eta)}
    if space == "latent":
        history = {**model.history, "score": record}
        return dataclasses.replace(model, score=prior, history=history)
    return PixelScoreModel(layout=StateLayout.from_dict(L.to_dict()), normalizer=norm,
                           score=prior, history={"score": record})


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------
def _score_settings(settings: dict[str, Any]) -> dict[str, Any]:
    check_keywords(settings, _SAMPLER_SETTINGS + _SPAN_SETTINGS,
                   where="method 'score' (its sampler settings)")
    # The defaults are the kernel's (xlatda.methods.score.SAMPLER_DEFAULTS), the one
    # place they are set: only the settings given are passed on.
    return {k: v for k, v in settings.items() if k not in _SPAN_SETTINGS}


def _require_score(model: Any) -> ScorePrior:
    if isinstance(model, (LatentModel, PixelScoreModel)):
        prior = model.require_score()
    else:
        raise ConfigError(
            "method='score' needs a LatentModel with a score prior (xlatda.fit_score(ds, "
            "model)) or a PixelScoreModel (xlatda.fit_score(ds, space='physical')); got "
            f"{type(model).__name__}"
        )
    return prior


def _check_space(model: Any, space: str | None) -> str:
    want = "latent" if isinstance(model, LatentModel) else "physical"
    if space is not None and space != want:
        raise ConfigError(
            f"method='score' with space={space!r} needs "
            + ("a PixelScoreModel (fit_score(ds, space='physical'))" if space == "physical"
               else "a LatentModel with a score prior (fit_score(ds, model))")
            + f"; got {type(model).__name__}"
        )
    return want


class _WindowSampler:
    """Posterior windows of a score prior given observation tables at window positions."""

    def __init__(self, model: Any, settings: dict[str, Any]) -> None:
        self.model = model
        self.prior = prior = _require_score(model)
        self.latent = isinstance(model, LatentModel)
        if self.latent and prior.space != "latent":
            raise ConfigError("the LatentModel's score prior is not a latent prior")
        try:
            self.da = ScoreDA(net=prior, schedule=prior.schedule, **_score_settings(settings))
        except TypeError as err:  # pragma: no cover - guarded by _score_settings
            raise ConfigError(str(err)) from None
        self.settings = _score_settings(settings)
        self.joint = bool(settings.get("joint", True))
        block = settings.get("block", 64)
        if not isinstance(block, (int, np.integer)) or block < 2 * self.window - 1:
            raise ConfigError(
                f"block (states sampled jointly) must be an integer >= 2 * window - 1 = "
                f"{2 * self.window - 1}, got {block!r}"
            )
        self.block = int(block)
        self.dtype = prior.net_dtype
        self.device = prior.mean.device
        self.rep_var = self._representation_variance(settings.get(
            "representation_error", LIKELIHOOD_DEFAULTS["representation_error"]))
        self.rep_scale = self._representation_scale(settings.get(
            "representation_scale", LIKELIHOOD_DEFAULTS["representation_scale"]))
        self.rep_floor = self._representation_floor(settings.get(
            "representation_floor", LIKELIHOOD_DEFAULTS["representation_floor"]))
        self.rep_two = self._two_part_model()
        # the factor of the last analysis's Σ_rep (two-part model: (s1², s2²))
        self.last_scale: float | tuple[float, float] | None = None
        self.conditioning = settings.get("conditioning", "explicit")
        self.latent_obs = self._latent_likelihood(settings)

    def _latent_likelihood(self, settings: dict[str, Any]) -> LatentObservation | None:
        """The fitted latent likelihood of ``conditioning="latent"`` (checked), else None."""
        cond, lo = self.conditioning, settings.get("latent_obs")
        if cond not in _CONDITIONINGS:
            raise ConfigError(
                f"conditioning must be one of {list(_CONDITIONINGS)} ('explicit': H o D at the "
                f"observation points; 'latent': observation images through the encoder), got "
                f"{cond!r}"
            )
        if cond == "explicit":
            if lo is not None:
                raise ConfigError("latent_obs is used with conditioning='latent' only; pass "
                                  "conditioning='latent' or drop latent_obs")
            return None
        if not self.latent:
            raise ConfigError(
                "conditioning='latent' conditions a latent score prior through the encoder; "
                f"a {type(self.model).__name__} has none (use a LatentModel)"
            )
        image_channels(self.model)  # refuses a model without observation-image inputs
        if not isinstance(lo, LatentObservation):
            raise ConfigError(
                "conditioning='latent' needs latent_obs=xlatda.fit_latent_obs(model, "
                "heldout_states, heldout_obs), the latent likelihood fitted on held-out pairs "
                f"of the observation design; got {type(lo).__name__}"
            )
        if lo.model_id != str(self.model.model_id):
            raise ConfigError(
                f"latent_obs was fitted for model {lo.model_id!r}, not this model "
                f"{self.model.model_id!r}; refit it with xlatda.fit_latent_obs(model, ...)"
            )
        if self.rep_var is not None or self.rep_model is not None:
            raise ConfigError(
                "representation_error=True adds the decoder's error to H o D; the latent "
                "likelihood's covariance already holds what the codes miss: drop it with "
                "conditioning='latent'"
            )
        return lo

    def likelihood(self, tables, positions, prior, gen: torch.Generator, scale: float = 1.0,
                   rep_blocks=None):
        """``(observe, y, r_std, obs_gain)`` of the observation tables at window ``positions``.

        ``explicit``: the values through H o D (latent) or H (physical), the observation
        errors, and gains estimated by :func:`observation_gain`; with the covariance
        model of :func:`fit_representation_error`, whitened by ``R + scale A Σ_rep Aᵀ``
        (``rep_blocks``: its blocks from :meth:`rep_blocks`, computed here if not given).
        ``latent``: the whitened codes of each table's observation image through the
        fitted linear operator, unit errors, exact gains (:mod:`xlatda.latent_obs`).
        """
        if self.latent_obs is None:
            y = torch.cat([t.values for t in tables]).to(self.dtype).to(self.device)
            r = self.error_std(tables)
            observe = self._observe(tables, positions, prior)
            if self.rep_model is not None:
                blocks = rep_blocks or self.rep_blocks(tables, positions)
                observe, y, r = self._whitened(observe, tables, blocks, scale)
            # The guidance inflates the observation-error variance by γ(σ_t/μ_t)² in
            # standardised prior units; the gains carry that into observation units
            # (physical units, through the decoder), observation by observation.
            gain = observation_gain(observe, tuple(prior.event_shape), generator=gen,
                                    device=self.device, dtype=self.dtype)
            return observe, y, r, gain
        return self._latent_conditioning(tables, positions, prior)

    def rep_blocks(self, tables, positions) -> list[tuple[slice, torch.Tensor]]:
        """Diagonal blocks ``[(slice, A Σ_rep Aᵀ)]`` of the fitted error model's covariance
        at the observations (the grouping of :func:`_rep_blocks`), float64."""
        ops = _rep_obs_operators(self.model, tables)
        tscale = _rep_time_scale(self.model, self.prior.time_step)
        return _rep_blocks(self.rep_model, ops, [float(p) * tscale for p in positions])

    def _whitened(self, observe, tables, rep_blocks, scale: float = 1.0):
        """``(observe, y, r_std)`` whitened by the Cholesky factor ``L`` of ``R + scale A Σ_rep
        Aᵀ`` (:func:`fit_representation_error`): ``N(y | h, L Lᵀ) = N(L⁻¹y | L⁻¹h, I)``."""
        r = torch.cat([t.error_std for t in tables]).to(_F64)
        blocks = [(sl, c.to(self.device)) for sl, c in _cholesky_blocks(rep_blocks, r, scale)]
        y = torch.cat([t.values for t in tables]).to(_F64).to(self.device)
        yw = _whiten(blocks, y).to(self.dtype)

        def observe_w(u: torch.Tensor) -> torch.Tensor:
            return _whiten(blocks, observe(u)).to(u.dtype)

        return observe_w, yw, torch.ones_like(yw)

    def jacobian(self, observe, prior) -> torch.Tensor | None:
        """``J = d observe / d u`` at the prior mean ``u = 0`` (central differences of unit
        steps, one batched call), ``(P, *event)``, for the Tweedie guidance
        (``cg_iters > 0``) of explicit conditioning; ``None`` otherwise."""
        if int(self.settings.get("cg_iters", 0)) == 0 or self.latent_obs is not None:
            return None
        event = tuple(prior.event_shape)
        n = int(np.prod(event))
        step = 1e-2
        eye = torch.eye(n, dtype=self.dtype, device=self.device).reshape(n, *event)
        cols = []
        with torch.no_grad():
            for e in eye.split(256):  # bounded memory for long blocks
                cols.append((observe(step * e) - observe(-step * e)) / (2.0 * step))
        return torch.cat(cols).T.reshape(-1, *event).contiguous()  # (P, *event)

    def _latent_conditioning(self, tables, positions, prior):
        """``(observe, y, r_std, obs_gain)`` of ``conditioning="latent"``."""
        lo = self.latent_obs
        kw = dict(dtype=self.dtype, device=self.device)
        y = lo.whitened(table_codes(self.model, tables)).reshape(-1).to(**kw)
        w = lo.operator().to(**kw)  # (K, K)
        std = prior.std.to(**kw).reshape(-1)
        gain = (w * std).square().sum(1).sqrt().repeat(len(tables))
        nd = len(prior.event_shape)
        pos = list(positions)

        def observe(u: torch.Tensor) -> torch.Tensor:
            z = prior.destandardize(u)
            zs = torch.stack([z.select(z.dim() - nd, p) for p in pos], -2)  # (..., T, K)
            return (zs @ w.T).flatten(-2)

        return observe, y, torch.ones_like(y), gain

    def _representation_scale(self, scale: Any) -> float | str | tuple[float, float]:
        """The checked ``representation_scale`` setting: a factor on Σ_rep, ``"adaptive"``,
        ``"two_part"`` or the pair ``(s1², s2²)`` of the two-part model."""
        if isinstance(scale, (tuple, list)):
            if len(scale) != 2 or not all(
                    isinstance(v, (int, float, np.integer, np.floating))
                    and not isinstance(v, (bool, np.bool_)) and v >= 0 for v in scale):
                raise ConfigError(f"representation_scale as a pair is (s1², s2²), two "
                                  f"non-negative numbers, got {scale!r}")
            scale = (float(scale[0]), float(scale[1]))
        elif isinstance(scale, str):
            if scale not in ("adaptive", "two_part"):
                raise ConfigError(f"representation_scale must be a non-negative number, "
                                  f"'adaptive', 'two_part' or a pair (s1², s2²), got "
                                  f"{scale!r}")
        elif (isinstance(scale, (bool, np.bool_))
              or not isinstance(scale, (int, float, np.integer, np.floating)) or not scale >= 0):
            raise ConfigError(f"representation_scale must be a non-negative number or "
                              f"'adaptive', got {scale!r}")
        if scale != 1.0 and self.rep_model is None:
            raise ConfigError(
                "representation_scale scales the covariance model of the decoder's error: it "
                "needs representation_error=True and a model from "
                "xlatda.fit_representation_error(model, heldout_states)")
        return scale if isinstance(scale, (str, tuple)) else float(scale)

    def _representation_floor(self, floor: Any) -> float:
        """The checked ``representation_floor``: lower bound on the estimated factor on the
        low-rank part of Σ_rep (``"adaptive"``, ``"two_part"``)."""
        if (isinstance(floor, (bool, np.bool_))
                or not isinstance(floor, (int, float, np.integer, np.floating))
                or not floor >= 0):
            raise ConfigError(f"representation_floor must be a non-negative number, got "
                              f"{floor!r}")
        if floor > 0 and self.rep_scale not in ("adaptive", "two_part"):
            raise ConfigError(
                "representation_floor bounds an estimated factor: pass it with "
                "representation_scale='adaptive' or 'two_part'")
        return float(floor)

    def _two_part_model(self) -> TwoPartError | None:
        """The two-part error model of ``representation_scale="two_part"`` or a pair."""
        if not (self.rep_scale == "two_part" or isinstance(self.rep_scale, tuple)):
            return None
        two = two_part_model(self.model)
        if two is None:
            raise ConfigError(
                "representation_scale='two_part' (or a pair) needs the smooth part of the "
                "error model: refit it with xlatda.fit_representation_error(model, "
                "heldout_states) (smooth=True, the default)")
        return two

    def rep_parts(self, tables, positions) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Blocks ``[(slice, B, M2)]`` of the two-part model at the observations
        (:meth:`~xlatda.methods.score.TwoPartError.obs_parts`, grouped as
        :func:`_rep_blocks`), float64."""
        ops = _rep_obs_operators(self.model, tables)
        tscale = _rep_time_scale(self.model, self.prior.time_step)
        return _rep_parts(self.rep_two, ops, [float(p) * tscale for p in positions])

    def analyse(self, da: ScoreDA, members: int, tables, positions, prior, gen, known=None):
        """Standardised posterior samples of one analysis (``ScoreDA.analyse``), with the
        factor on Σ_rep of ``representation_scale`` (``"adaptive"``: 1, then
        :data:`REP_ADAPTIVE_UPDATES` times the factor that the members' residuals to their
        own observations show off the decoder's tangent space at the members' mean,
        :func:`~xlatda.methods.score.representation_scale` with the Jacobian of H∘D, and a
        new analysis with it). The factor used is left in ``last_scale``."""
        if self.rep_two is not None and self.rep_model is not None:
            return self._analyse_two_part(da, members, tables, positions, prior, gen, known)
        adaptive = self.rep_scale == "adaptive"
        scale = 1.0 if adaptive else float(self.rep_scale)
        blocks = self.rep_blocks(tables, positions) if self.rep_model is not None else None
        kw = dict(generator=gen, device=self.device, dtype=self.dtype)
        u = None
        for _ in range(1 + (REP_ADAPTIVE_UPDATES if adaptive else 0)):
            if u is not None:
                scale = self._residual_scale(u, tables, positions, prior, blocks)
            observe, y, r, gain = self.likelihood(tables, positions, prior, gen, scale, blocks)
            u = da.analyse(members, observe, y, r, obs_gain=gain, known=known,
                           obs_jacobian=self.jacobian(observe, prior), **kw)
        self.last_scale = scale if blocks is not None else None
        return u

    def _residual_scale(self, u, tables, positions, prior, blocks) -> float:
        """The maximum-likelihood factor on Σ_rep of the members ``u``' residuals ``y - A
        D(z_i)``, restricted to the directions that no latent change about the members'
        mean can fit (see ``analyse``); 1 (the fitted model) when no such direction is left
        (fewer observations than latent values)."""
        resid, r, jac = self._residuals(u, tables, positions, prior)
        s2 = representation_scale(resid, r, blocks, jacobian=jac, floor=self.rep_floor)
        return 1.0 if math.isnan(s2) else s2

    def _residuals(self, u, tables, positions, prior
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The members ``u``' residuals ``y - H D(u)`` ``(N, P)``, the observation errors
        ``(P,)`` and the Jacobian of H∘D at their mean ``(P, d)``, float64 on the CPU."""
        observe = self._observe(tables, positions, prior)
        with torch.no_grad():
            hx = observe(u).to(_F64).cpu()
            jac = _jacobian_at(observe, u.mean(0)).to(_F64).cpu()
        y = torch.cat([t.values for t in tables]).to(_F64).cpu()
        r = torch.cat([t.error_std for t in tables]).to(_F64).cpu()
        return y - hx, r, jac

    def _analyse_two_part(self, da, members, tables, positions, prior, gen, known):
        """``analyse`` with the two-part model: the factors ``(s1², s2²)`` given, or
        (``"two_part"``) 1 and 1, then :data:`REP_ADAPTIVE_UPDATES` times the pair the
        members' residuals show off the tangent space of H∘D at their mean
        (:func:`~xlatda.methods.score.representation_scales`, jointly, ``s1² >=
        representation_floor``) and a new analysis with it."""
        adaptive = self.rep_scale == "two_part"
        factors = (1.0, 1.0) if adaptive else self.rep_scale
        parts = self.rep_parts(tables, positions)
        kw = dict(generator=gen, device=self.device, dtype=self.dtype)
        u = None
        for _ in range(1 + (REP_ADAPTIVE_UPDATES if adaptive else 0)):
            if u is not None:
                factors = self._residual_scales(u, tables, positions, prior, parts)
            blocks = [(sl, factors[0] * (b @ b.T) + factors[1] * m2) for sl, b, m2 in parts]
            observe, y, r, gain = self.likelihood(tables, positions, prior, gen, 1.0, blocks)
            u = da.analyse(members, observe, y, r, obs_gain=gain, known=known,
                           obs_jacobian=self.jacobian(observe, prior), **kw)
        self.last_scale = (float(factors[0]), float(factors[1]))
        return u

    def _residual_scales(self, u, tables, positions, prior, parts) -> tuple[float, float]:
        """The two-part factors of the members ``u``' residuals (``_residual_scale`` with
        :func:`~xlatda.methods.score.representation_scales`); ``(1, 1)`` without degrees
        of freedom."""
        resid, r, jac = self._residuals(u, tables, positions, prior)
        s1, s2 = representation_scales(resid, r, parts, jacobian=jac, floor=self.rep_floor)
        return (1.0, 1.0) if math.isnan(s1) else (s1, s2)

    def _representation_variance(self, flag: Any) -> torch.Tensor | None:
        """Per-channel variance the decoder cannot represent (``None`` when not used)."""
        if not isinstance(flag, (bool, np.bool_)):
            raise ConfigError(f"representation_error must be True or False, got {flag!r}")
        self.rep_model = None
        if not flag:
            return None
        self.rep_model = representation_model(self.model) if self.latent else None
        if self.rep_model is not None:  # the covariance model: through _whitened
            return None
        rec = (getattr(self.model, "history", None) or {}).get("representation_error")
        if not self.latent or rec is None:
            raise ConfigError(
                "representation_error=True needs a LatentModel whose history holds the "
                "decoder's held-out reconstruction error (xlatda.fit(..., validation=...) records "
                f"history['representation_error']); this {type(self.model).__name__} has none"
            )
        return torch.as_tensor(rec["rmse"], dtype=torch.float64) ** 2

    def error_std(self, tables) -> torch.Tensor:
        """Observation-error std of the likelihood, ``(P,)``: with ``representation_error``
        the decoder's held-out reconstruction error of each value's channel is added in
        quadrature (what the latent space cannot represent, seen by H∘D as error)."""
        r = torch.cat([t.error_std for t in tables]).to(torch.float64)
        if self.rep_var is not None:
            chan = torch.cat([t.channel for t in tables]).cpu()
            r = (r**2 + self.rep_var[chan]).sqrt()
        return r.to(self.dtype).to(self.device)

    @property
    def window(self) -> int:
        return self.prior.window

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def positions(self, times: Sequence[float]) -> list[int]:
        """Window positions of observation times (centred in the window)."""
        w = self.window
        if len(times) == 1:
            return [(w - 1) // 2]
        step = (self.prior.time_step or {}).get("value")
        if step is None:
            raise ConfigError("the score prior has no time step; it cannot span several times")
        rel = (np.asarray(times, float) - times[0]) / float(step)
        pos = np.round(rel).astype(int)
        if np.any(np.abs(rel - pos) > 1e-6) or pos[-1] > w - 1:
            units = self.prior.time_step.get("units", "")
            raise ObservationError(
                f"the observation times of a window must lie on the score prior's time step "
                f"({step} {units}) within {w} consecutive states; got offsets {rel.tolist()} "
                "steps. Use window=k observation times that are whole steps apart and span at "
                f"most {w - 1} steps (or fit_score with a larger window)"
            )
        return (pos + (w - 1 - int(pos[-1])) // 2).tolist()

    def states(self, times: Sequence[float]) -> list[int]:
        """Trajectory state of each observation time: whole time steps from the first."""
        if len(times) == 1:
            return [0]
        step = (self.prior.time_step or {}).get("value")
        if step is None:
            raise ConfigError("the score prior has no time step; it cannot span several times")
        rel = (np.asarray(times, float) - times[0]) / float(step)
        pos = np.round(rel).astype(int)
        bad = np.abs(rel - pos) > 1e-6
        if np.any(bad):
            units = self.prior.time_step.get("units", "")
            raise ObservationError(
                f"the observation times must lie on the score prior's time step ({step} "
                f"{units}): {int(bad.sum())} of {len(times)} are off it (offsets "
                f"{rel[bad][:5].tolist()} steps from the first). Select times that are whole "
                "steps apart"
            )
        return pos.tolist()

    def blocks(self, n_states: int) -> list[tuple[int, int, int]]:
        """``(start, known, end)`` of the blocks sampled one after the other.

        A block holds states ``[start, end)``; its first ``known`` states are
        taken from the block before (see :func:`cycle_score` for the rule).
        """
        w, size = self.window, self.block
        if n_states <= size:
            return [(0, 0, n_states)]
        out = [(0, 0, size)]
        while out[-1][2] < n_states:
            start = min(out[-1][2] - 2 * (w - 1), n_states - size)
            out.append((start, w - 1, min(start + size, n_states)))
        return out

    def draw_block(self, members: int, tables, positions, length: int, gen: torch.Generator,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised samples ``(N, length, *state)`` of a block of the trajectory.

        ``tables`` are observed at block states ``positions``; ``cond``
        ``(N, c, *state)`` (standardised) fixes the first ``c`` states per
        member (by replacement, ``ScoreDA.analyse(known=)``).
        """
        prior = self.prior.trajectory(max(length, self.window))
        da = ScoreDA(net=prior, schedule=prior.schedule, **self.settings)
        kw = dict(generator=gen, device=self.device, dtype=self.dtype)
        if not tables and cond is None:
            return da.sample(members, **kw)
        if not tables:
            return da.analyse(members, known=cond, **kw)
        return self.analyse(da, members, tables, positions, prior, gen, known=cond)

    def draw_span(self, members: int, tables, states, seed: int, prior_too: bool):
        """Samples of the trajectory through every observation, block by block.

        Yields, block after block, ``{state: (posterior, prior)}`` of the
        states the block completes (each ``(N, n)`` float64; ``prior`` is
        ``None`` without ``prior_too``).
        """
        n_states = int(states[-1]) + 1
        w = self.window
        if n_states < w:  # a short span is centred in one window
            shift = (w - n_states) // 2
            states, n_states = [s + shift for s in states], w
        blocks = self.blocks(n_states)
        self.state_scale: dict[int, float | None] = {}
        prev = None
        for b, (start, c, end) in enumerate(blocks):
            gen = self.generator(int(seed) * 1_000_003 + b + 1)
            # observations of the states this block samples (not of the known ones)
            inside = [i for i, s in enumerate(states) if start + c <= s < end]
            subs = [tables[i] for i in inside]
            pos = [states[i] - start for i in inside]
            cond = cond0 = None
            if prev is not None:
                p_start, p_post, p_prior = prev
                cond = p_post[:, start - p_start:start - p_start + c]
                if prior_too:
                    cond0 = p_prior[:, start - p_start:start - p_start + c]
            u = self.draw_block(members, subs, pos, end - start, gen, cond)
            if subs:
                self.state_scale.update({states[i]: self.last_scale for i in inside})
            u0 = self.draw_block(members, [], [], end - start, gen, cond0) if prior_too else None
            prev = (start, u, u0)
            # this block's states up to the first the next block samples itself
            upto = end if b == len(blocks) - 1 else blocks[b + 1][0] + blocks[b + 1][1]
            keep = [i for i in inside if states[i] < upto]
            sel = [states[i] - start for i in keep]
            post = self._states(u, sel)
            prior = self._states(u0, sel) if prior_too else [None] * len(sel)
            yield {states[i]: (a, p) for i, a, p in zip(keep, post, prior)}

    def _observe(self, tables, positions, prior=None):
        prior = self.prior if prior is None else prior
        nd = len(prior.event_shape)
        if self.latent:
            m = self.model
            # the places of each table (every footprint point of block means)
            where = [m.observation_points(t) for t in tables]

            def observe(u: torch.Tensor) -> torch.Tensor:
                z = prior.destandardize(u)
                outs = []
                for p, (pt, ch, pool) in zip(positions, where):
                    zj = z[..., p, :]
                    v = m.pool_points(m.decode_points(zj.reshape(-1, zj.shape[-1]), pt, ch),
                                      pool)
                    outs.append(v.reshape(*zj.shape[:-1], -1).to(u.dtype))
                return torch.cat(outs, -1)

            return observe
        from xlatda.obs.operator import build_operator

        L, norm = self.model.layout, self.model.normalizer
        ops = [build_operator(L, t, dtype=self.dtype, device=self.device) for t in tables]

        def observe_physical(u: torch.Tensor) -> torch.Tensor:
            x = prior.destandardize(u)
            outs = []
            for p, op in zip(positions, ops):
                xj = x.select(x.dim() - nd, p)  # (..., C, *S), normalised
                xj = norm.denormalize(xj, channel_dim=xj.dim() - nd + 1)
                outs.append(op(xj))
            return torch.cat(outs, -1)

        return observe_physical

    def draw(self, members: int, tables, positions, gen: torch.Generator, prior_too: bool):
        """Posterior (and prior) samples at ``positions``: lists of ``(N, n)`` float64."""
        u = self.analyse(self.da, members, tables, positions, self.prior, gen)
        post = self._states(u, positions)
        if not prior_too:
            return post, None
        u0 = self.da.sample(members, generator=gen, device=self.device, dtype=self.dtype)
        return post, self._states(u0, positions)

    def _states(self, u: torch.Tensor, positions) -> list[torch.Tensor]:
        x = self.prior.destandardize(u.to(_F64))  # (N, W, *state)
        out = []
        for p in positions:
            xj = x[:, p]
            if not self.latent:
                xj = self.model.normalizer.denormalize(xj, channel_dim=1)
            out.append(xj.reshape(xj.shape[0], -1).cpu())
        return out


@adapts(ScoreDA)
class ScoreWindows(CycleMethod):
    """The cycling adapter of :class:`~xlatda.methods.score.ScoreDA` (SLAMS).

    Each window is sampled afresh from the score prior given its
    observations (no forecast, no background); the background of each
    analysis is an unconditioned draw of the same prior.
    """

    forecasts = False
    needs_background = False
    windowed = True
    estimates_parameters = False

    def __init__(self, model: Any, members: int, settings: dict[str, Any]) -> None:
        self.sampler = _WindowSampler(model, settings)
        self.members = int(members)
        self.positions: dict[int, list[int]] = {}
        self.span = None

    @classmethod
    def choose_space(cls, model: Any, space: str | None) -> str:
        kind = _check_space(model, space)
        _require_score(model)
        return kind

    @classmethod
    def setting_names(cls, kernel):
        return None  # checked with a hint by _score_settings when built

    @classmethod
    def build(cls, kernel, settings, *, space, members):
        if members is None or int(members) < 1:
            raise ConfigError(
                f"method='score' draws members=N posterior samples; pass members=N, got {members}")
        return cls(space.model, int(members), settings)

    def prepare(self, windows) -> None:
        self.span = None
        if self.sampler.joint and windows and windows[0].cycling:
            # One posterior trajectory over the whole observed span (SDA's composed
            # score), produced in overlapping blocks and handed out window by window.
            self.states = self.sampler.states([t for w in windows for t in w.times])
            starts = np.cumsum([0, *[len(w) for w in windows]]).tolist()
            self.first = {w.index: (starts[i], starts[i + 1]) for i, w in enumerate(windows)}
            tables = [t for w in windows for t in w.tables]
            self.span = self.sampler.draw_span(self.members, tables, self.states,
                                               windows[0].seed, prior_too=True)
            self.ready: dict[int, tuple] = {}
        else:
            if windows and max(len(w) for w in windows) > self.sampler.window:
                w = max(len(w) for w in windows)
                raise ConfigError(
                    f"window={w} observation times exceed the score prior's window of "
                    f"{self.sampler.window} states; pass window <= {self.sampler.window} or "
                    "fit_score with a larger window"
                )
            self.positions = {w.index: self.sampler.positions(w.times) for w in windows}

    def analyse(self, space, ensemble, window, *, generator, state):
        table = window.tables[0]
        if len(window) == 1 and table.time is not None:
            tv = np.unique(float_times(table.time))
            if tv.size > 1:
                raise ObservationError(
                    f"method='score' in assimilate analyses one time but the observations have "
                    f"{tv.size}; use xlatda.cycle(None, obs, model, method='score', window=k)"
                )
        if self.span is not None and window.index in self.first:
            lo, hi = self.first[window.index]
            want = self.states[lo:hi]
            while not all(k in self.ready for k in want):
                self.ready.update(next(self.span))
            steps = [(self.ready[k][1].to(_F64), self.ready.pop(k)[0].to(_F64)) for k in want]
            return WindowAnalysis(steps, self._diagnostics(self.sampler.state_scale.get(want[-1])),
                                  state)
        positions = self.positions.get(window.index) or self.sampler.positions(window.times)
        gen = self.sampler.generator(window.seed)
        post, prior = self.sampler.draw(self.members, window.tables, positions, gen,
                                        prior_too=window.cycling)
        prior = prior or post  # one analysis only: no background draws are made
        return WindowAnalysis([(b.to(_F64), a.to(_F64)) for b, a in zip(prior, post)],
                              self._diagnostics(self.sampler.last_scale), state)

    def _diagnostics(self, scale: float | None) -> dict[str, torch.Tensor]:
        """``representation_scale`` (the factor on Σ_rep of the window's analysis) when it
        is estimated (``representation_scale="adaptive"``); nothing otherwise."""
        if self.sampler.rep_scale not in ("adaptive", "two_part") or scale is None:
            return {}
        if isinstance(scale, tuple):  # the two-part model: (s1², s2²)
            return {"representation_scale": torch.tensor(float(scale[0]), dtype=_F64),
                    "representation_scale_smooth": torch.tensor(float(scale[1]), dtype=_F64)}
        return {"representation_scale": torch.tensor(float(scale), dtype=_F64)}


# ---------------------------------------------------------------------------
# representation error: the decoder's off-manifold error model
# ---------------------------------------------------------------------------
#: Largest number of observations of one analysis whose representation-error covariance
#: is whitened jointly (all times together); above it each observation time is whitened
#: on its own (the error's correlation between times is then left out).
REP_MAX_JOINT = 6000
#: Updates of the factor on Σ_rep in ``representation_scale="adaptive"``: each is one more
#: analysis (the first uses the fitted model, factor 1).
REP_ADAPTIVE_UPDATES = 1


def _jacobian_at(observe, u0: torch.Tensor, step: float = 1e-2) -> torch.Tensor:
    """``d observe / d u`` at ``u0`` (one event, standardised), ``(P, m)``, by central
    differences of ``step`` (batched, 256 columns at a time)."""
    m = u0.numel()
    eye = torch.eye(m, dtype=u0.dtype, device=u0.device).reshape(m, *u0.shape)
    cols = [(observe(u0 + step * e) - observe(u0 - step * e)) / (2.0 * step)
            for e in eye.split(256)]
    return torch.cat(cols).T.contiguous()


def _state_values(ds: xr.Dataset, L: StateLayout, lead: Sequence[str]) -> np.ndarray:
    """``(*lead, C * S)`` float64 values of the state variables, lead dims in this order."""
    st = L.stack(ds[list(L.variables)])
    st = st.transpose(*lead, CHANNEL_DIM, *L.spatial_dims)
    arr = np.asarray(st.values, dtype=np.float64)
    return arr.reshape(*arr.shape[:len(lead)], -1)


@refuse_unknown_keywords
def fit_representation_error(model: LatentModel, heldout: xr.Dataset, *,
                             modes: int = 32, smooth: bool = True) -> LatentModel:
    r"""Estimate the decoder's representation-error covariance on held-out states.

    The residuals :math:`e = x - D(E(x))` of held-out states (in physical
    units, on the model grid) define a zero-mean Gaussian error model
    (:class:`~xlatda.methods.score.RepresentationError`): the leading
    ``modes`` principal directions of their second moment (the low-rank part
    :math:`U^\top U`), plus each value's remaining mean square (the diagonal
    :math:`d`, so that every value's variance is its held-out mean square),
    and the lag-one correlation :math:`\phi` of consecutive residuals along
    time (the time step is recorded with it). ``method="score"`` with
    ``representation_error=True`` then adds :math:`A \Sigma_{\rm rep} A^\top`
    (the operator :math:`A` of each observation: block means average the
    correlated error, not its point variance) to the observation error of the
    likelihood, and :func:`predictive_samples` draws the error the decoded
    samples miss.

    Parameters
    ----------
    model : LatentModel
        The model whose decoder's error is estimated.
    heldout : Dataset
        States on the model's layout that the model was not trained on, of the
        same kind as the states to be analysed (e.g. held-out training
        trajectories with a time axis).
    modes : int
        Rank of the low-rank part (at most the number of held-out states).
    smooth : bool
        Also fit the smooth isotropic part of the two-part model
        (:class:`~xlatda.methods.score.TwoPartError`, used by
        ``representation_scale="two_part"``): the part of the residuals outside
        the modes' span gives a variance per channel, a Gaussian correlation
        length (least squares on the binned correlation against distance, chord
        distance on the unit sphere for latitude-longitude grids, grid indices
        otherwise; :func:`~xlatda.methods.score.fit_smooth_error`) and its
        lag-one correlation in time. It does not change the low-rank model.

    Returns
    -------
    LatentModel
        A copy of ``model`` with ``history["representation_error"]`` set: the
        per-channel ``rmse`` (the format :func:`xlatda.fit` records), and
        ``modes`` ``(k, n)``, ``residual_var`` ``(n,)``, ``time_correlation``,
        ``time_step`` of the error model, and with ``smooth`` the ``smooth_var``
        (per channel), ``smooth_length``, ``smooth_phi`` and ``smooth_fit_rms``
        of the two-part model's smooth part (:meth:`xlatda.LatentModel.save`
        stores them with the model).

    Raises
    ------
    ConfigError
        For a model that is not a LatentModel, ``modes < 0``, or fewer than two
        held-out states.

    Notes
    -----
    The model is linear-Gaussian and stationary in time; the error is treated
    as independent of the state. Grid values missing in ``model.missing`` (or
    NaN) count as zero error.

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    >>> pca = xlatda.fit(ds.isel(time=slice(0, 200)), encoder="pca", latent_dim=4,
    ...                  progress=False)
    >>> m = xlatda.fit_representation_error(pca, ds.isel(time=slice(200, 300)), modes=3)
    >>> rec = m.history["representation_error"]
    >>> len(rec["modes"]), len(rec["residual_var"]), 0 <= rec["time_correlation"] < 1
    (3, 8, True)
    >>> rec["smooth_length"] > 0, len(rec["smooth_var"])
    (True, 1)
    """
    if not isinstance(model, LatentModel):
        raise ConfigError(
            f"fit_representation_error needs a LatentModel, got {type(model).__name__}")
    if isinstance(heldout, xr.DataArray):
        heldout = heldout.to_dataset(name=heldout.name if heldout.name is not None else "data")
    if not isinstance(modes, (int, np.integer)) or modes < 0:
        raise ConfigError(f"modes must be a non-negative integer, got {modes!r}")
    if not isinstance(smooth, (bool, np.bool_)):
        raise ConfigError(f"smooth must be True or False, got {smooth!r}")
    from xlatda.encode_decode import decode

    L = model.layout
    back = decode(encode(heldout, model), model)
    lead = [d for d in L.stack(heldout[list(L.variables)]).dims
            if d != CHANNEL_DIM and d not in L.spatial_dims]
    tname = model.layout.axes.time or "time"
    if tname in lead:  # time last among the sample dims: consecutive residuals are neighbours
        lead = [d for d in lead if d != tname] + [tname]
    e = _state_values(heldout, L, lead) - _state_values(back, L, lead)
    valid = np.isfinite(e)
    e = np.where(valid, e, 0.0)
    n = e.shape[-1]
    flat = e.reshape(-1, n)
    m = flat.shape[0]
    if m < 2:
        raise ConfigError(f"need at least two held-out states, got {m}")
    C = L.n_channels
    sq = (flat**2).reshape(m, C, -1).sum((0, 2))
    cnt = valid.reshape(-1, n).reshape(m, C, -1).sum((0, 2))
    rmse = np.sqrt(sq / np.maximum(cnt, 1))
    E = torch.from_numpy(flat) / np.sqrt(m)
    _, s, vh = torch.linalg.svd(E, full_matrices=False)
    k = min(int(modes), int(s.shape[0]))
    u = s[:k, None] * vh[:k]
    var = (E**2).sum(0) - (u**2).sum(0)
    var = var.clamp_min(0.0)
    phi, step = 0.0, None
    if tname in lead and heldout.sizes[tname] > 1:
        et = e.reshape(-1, heldout.sizes[tname], n)
        a, b = et[:, :-1], et[:, 1:]
        den = np.sqrt((a**2).sum() * (b**2).sum())
        phi = float(np.clip((a * b).sum() / den, 0.0, 0.999)) if den > 0 else 0.0
        step = _uniform_step(heldout[tname].values, "the held-out states")
    total = float((E**2).sum())
    record = {
        "rmse": [float(v) for v in rmse], "channels": list(L.channels), "n_samples": int(m),
        "note": "held-out states (fit_representation_error), physical units, per channel",
        "kind": "covariance", "modes": u.tolist(), "residual_var": var.tolist(),
        "explained": float((u**2).sum()) / total if total > 0 else 1.0,
        "time_correlation": phi, "time_step": step,
    }
    if smooth:
        points, channel = _layout_points(L)
        res = torch.from_numpy(e.reshape(-1, heldout.sizes[tname], n) if tname in lead
                               else flat)
        fit = fit_smooth_error(res, u, points, channel)
        record.update({"smooth_var": [float(v) for v in fit["var"]],
                       "smooth_length": float(fit["length"]),
                       "smooth_phi": float(fit["smooth_phi"]),
                       "smooth_fit_rms": float(fit["fit_rms"])})
    return dataclasses.replace(model, history={**model.history, "representation_error": record})


def _layout_points(L: StateLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``(n, D)`` and channels ``(n,)`` of the flattened ``(C, *S)`` state values:
    unit-sphere points of latitude-longitude grids and points, grid indices otherwise."""
    shape = L.spatial_shape
    if L.kind in ("latlon", "points") and L.lat is not None and L.lon is not None:
        lat, lon = np.deg2rad(L.lat), np.deg2rad(L.lon)
        if L.kind == "latlon":
            if L.spatial_dims[0] == L.axes.lat:
                la, lo = np.meshgrid(lat, lon, indexing="ij")
            else:
                lo, la = np.meshgrid(lon, lat, indexing="ij")
        else:
            la, lo = lat, lon
        la, lo = la.reshape(-1), lo.reshape(-1)
        pts = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], 1)
    else:
        pts = np.stack([g.reshape(-1) for g in np.indices(shape)], 1).astype(np.float64)
    C, S = L.n_channels, pts.shape[0]
    points = torch.from_numpy(np.tile(pts, (C, 1)))
    channel = torch.arange(C).repeat_interleave(S)
    return points, channel


def two_part_model(model: Any) -> TwoPartError | None:
    """The two-part :class:`~xlatda.methods.score.TwoPartError` of a model's
    representation-error model (its modes and the smooth part of
    :func:`fit_representation_error`), factors 1; ``None`` without a smooth part."""
    rec = (getattr(model, "history", None) or {}).get("representation_error") or {}
    if rec.get("kind") != "covariance" or "smooth_length" not in rec:
        return None
    n = len(rec["residual_var"])
    modes = torch.as_tensor(rec["modes"], dtype=_F64).reshape(-1, n)
    points, channel = _layout_points(model.layout)
    sd = torch.as_tensor(rec["smooth_var"], dtype=_F64).clamp_min(0.0).sqrt()[channel]
    return TwoPartError(modes, float(rec.get("time_correlation", 0.0)), sd, points, channel,
                        float(rec["smooth_length"]), float(rec.get("smooth_phi", 0.0)))


def representation_model(model: Any) -> RepresentationError | None:
    """The :class:`~xlatda.methods.score.RepresentationError` a model holds
    (:func:`fit_representation_error`), or ``None``."""
    rec = (getattr(model, "history", None) or {}).get("representation_error") or {}
    if rec.get("kind") != "covariance":
        return None
    n = len(rec["residual_var"])
    modes = torch.as_tensor(rec["modes"], dtype=_F64).reshape(-1, n)
    return RepresentationError(modes, torch.as_tensor(rec["residual_var"], dtype=_F64),
                               float(rec.get("time_correlation", 0.0)))


def _rep_time_scale(model: Any, step: dict[str, Any] | None) -> float:
    """Lag units of the error model per unit of ``step`` (1 where either is unknown)."""
    rec = model.history.get("representation_error") or {}
    own = rec.get("time_step")
    if not own or not step or own.get("units") != step.get("units"):
        return 1.0
    return float(step["value"]) / float(own["value"])


def _rep_obs_operators(model: Any, tables) -> list[torch.Tensor]:
    """Each table's linear operator ``(P_t, C * S)`` over the state values (sparse CSR)."""
    from xlatda.obs.operator import build_operator

    return [build_operator(model.layout, t, dtype=_F64).matrix for t in tables]


def _rep_blocks(rep: RepresentationError, ops, lags) -> list[tuple[slice, torch.Tensor]]:
    """Diagonal blocks ``[(slice, A Σ_rep Aᵀ)]``: one block over all observations (at most
    :data:`REP_MAX_JOINT`), else one per table."""
    sizes = [int(a.shape[0]) for a in ops]
    ends = np.cumsum([0, *sizes]).tolist()
    groups = ([list(range(len(ops)))] if ends[-1] <= REP_MAX_JOINT
              else [[i] for i in range(len(ops))])
    return [(slice(ends[g[0]], ends[g[-1] + 1]),
             rep.obs_covariance([ops[i] for i in g], [lags[i] for i in g])) for g in groups]


def _rep_parts(rep: TwoPartError, ops, lags) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Blocks ``[(slice, B, M2)]`` of a two-part model at the observations (the grouping
    of :func:`_rep_blocks`)."""
    sizes = [int(a.shape[0]) for a in ops]
    ends = np.cumsum([0, *sizes]).tolist()
    groups = ([list(range(len(ops)))] if ends[-1] <= REP_MAX_JOINT
              else [[i] for i in range(len(ops))])
    out = []
    for g in groups:
        b, m2 = rep.obs_parts([ops[i] for i in g], [lags[i] for i in g])
        out.append((slice(ends[g[0]], ends[g[-1] + 1]), b, m2))
    return out


def _cholesky_blocks(blocks, r: torch.Tensor, scale: float = 1.0):
    """Blocks ``[(slice, L)]`` of the Cholesky factor of ``diag(r^2) + scale A Σ_rep Aᵀ``
    (``blocks`` of :func:`_rep_blocks`)."""
    return [(sl, torch.linalg.cholesky(float(scale) * m + torch.diag(r[sl].to(_F64) ** 2)))
            for sl, m in blocks]


def _rep_whitener(rep: RepresentationError, ops, lags, r: torch.Tensor):
    """Blocks ``[(slice, L)]`` of the Cholesky factor of ``diag(r^2) + A Σ_rep Aᵀ``: one
    block over all observations (at most :data:`REP_MAX_JOINT`), else one per table."""
    return _cholesky_blocks(_rep_blocks(rep, ops, lags), r)


def _whiten(blocks, v: torch.Tensor) -> torch.Tensor:
    """``L⁻¹ v`` over the last dim of ``v`` (blocks of :func:`_rep_whitener`)."""
    parts = []
    for sl, chol in blocks:
        x = v[..., sl].to(_F64)
        flat = x.reshape(-1, x.shape[-1]).T
        parts.append(torch.linalg.solve_triangular(chol, flat, upper=False).T
                     .reshape(x.shape))
    return torch.cat(parts, -1).to(v.dtype)


def _solve(blocks, v: torch.Tensor) -> torch.Tensor:
    """``S⁻¹ v`` (``S = L Lᵀ``) over the last dim of ``v``, float64."""
    parts = []
    for sl, chol in blocks:
        x = v[..., sl].to(_F64)
        flat = x.reshape(-1, x.shape[-1]).T
        parts.append(torch.cholesky_solve(flat, chol).T.reshape(x.shape))
    return torch.cat(parts, -1)


@refuse_unknown_keywords
def predictive_samples(analysis: xr.Dataset, obs: xr.Dataset, model: LatentModel, *,
                       window: int | None = None, conditional: bool = True,
                       scale: float | str = 1.0, seed: int = 0) -> xr.Dataset:
    r"""Predictive samples :math:`D(z) + \varepsilon` of a decoded latent ensemble.

    The decoded members of a ``method="score"`` analysis lie on the decoder's
    manifold; the truth does not. This adds to every member an error
    :math:`\varepsilon` of the model's representation-error model
    (:func:`fit_representation_error`), so that the spread of the result
    holds what the analysis claims about the state, not only about its
    latent part.

    ``conditional=True`` (default): :math:`\varepsilon` is drawn from its law
    given the member and the observations, by Matheron's rule,

    .. math::

        \varepsilon = \varepsilon_0 + \Sigma_{\varepsilon y} S^{-1}
        \big(y - A D(z) - A \varepsilon_0 - \eta_0\big),
        \qquad S = R + A \Sigma_{\rm rep} A^\top,

    with :math:`\varepsilon_0` a draw of the error model and :math:`\eta_0 \sim
    \mathcal N(0, R)`: with :math:`z` drawn from its posterior under the
    likelihood :math:`\mathcal N(y \mid A D(z), S)` (``representation_error=True``)
    the result is a draw of the posterior predictive of the state (exact for
    a linear-Gaussian model). The observations the decoder cannot fit then
    also correct the state off the manifold (a station's own value).
    ``conditional=False``: :math:`\varepsilon = \varepsilon_0`, the unconditioned
    error added to the decoded member.

    Parameters
    ----------
    analysis : Dataset
        Decoded ensemble with a ``member`` dimension (``CycleResult.analysis``
        of ``xlatda.cycle(..., method="score")``, or the result of
        ``xlatda.assimilate``), on ``model``'s layout.
    obs : Dataset
        The observations the analysis was made with (``conditional=True``);
        each group of ``window`` consecutive observation times is conditioned
        on jointly (the errors' correlation across groups is kept in the draw
        of :math:`\varepsilon_0`, not in the update).
    model : LatentModel
        The model with its representation-error model.
    window : int, optional
        Observation times per group (default: the score prior's window, or 1).
    conditional : bool
        Condition the error on the observations (default) or not.
    scale : float, "adaptive", "two_part" or (float, float)
        Factor on :math:`\Sigma_{\rm rep}` (default 1: the model as fitted).
        ``"adaptive"``: per group of observation times, the maximum-likelihood
        factor :math:`\alpha` of the members' residuals :math:`y - A x_i` to the
        group's own observations under :math:`R + \alpha A \Sigma_{\rm rep}
        A^\top` (:func:`~xlatda.methods.score.representation_scale` on all the
        residuals: for posterior members their covariance is that error
        covariance, as in the a-posteriori diagnostics of Desroziers et al. 2005;
        it uses no truth, and it also counts a sampler's misfit to the
        observations as error), for states farther from the decoder's manifold
        than the held-out ones the model was fitted on. For the factor an
        analysis with ``representation_scale="adaptive"`` used in its
        likelihood, pass its ``representation_scale`` diagnostic as a number
        instead. Times without
        observations keep the factor 1. ``"two_part"``: the two-part model
        (:class:`~xlatda.methods.score.TwoPartError`), both factors estimated
        jointly per group the same way
        (:func:`~xlatda.methods.score.representation_scales` on all the
        residuals); a pair ``(s1, s2)`` of numbers: the two-part model with
        those factors (the ``representation_scale`` and
        ``representation_scale_smooth`` diagnostics of an analysis made with
        ``representation_scale="two_part"``).
    seed : int
        Seed of the draws: the same seed gives bit-identical samples.

    Returns
    -------
    Dataset
        ``analysis`` with the errors added (same dims and coordinates).

    Raises
    ------
    ConfigError
        For a model without a representation-error model, an analysis without a
        ``member`` dimension, or observation times the analysis does not hold.

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    >>> pca = xlatda.fit(ds.isel(time=slice(0, 200)), encoder="pca", latent_dim=4,
    ...                  progress=False)
    >>> pca = xlatda.fit_representation_error(pca, ds.isel(time=slice(200, 250)))
    >>> model = xlatda.fit_score(ds.isel(time=slice(0, 200)), pca, window=3, epochs=2,
    ...                          hidden=32, depth=2, progress=False)
    >>> obs = xlatda.obs.sample_points(ds.isel(time=[280]), n=4, error_std=0.5, seed=1)
    >>> post = xlatda.assimilate(None, obs, model, method="score", members=5, steps=8,
    ...                          representation_error=True)
    >>> pred = xlatda.predictive_samples(post, obs, model, seed=0)
    >>> dict(pred.x.sizes) == dict(post.x.sizes)
    True
    >>> bool((pred.x.std("member") > 0).all())
    True

    With the factor on Σ_rep estimated from the observations
    (``representation_scale="adaptive"``), reported per analysis time:

    >>> obs6 = xlatda.obs.sample_points(ds.isel(time=slice(280, 286)), n=8, error_std=0.5,
    ...                                 seed=1)
    >>> res = xlatda.cycle(None, obs6, model, method="score", members=5, steps=8, window=3,
    ...                    representation_error=True, representation_scale="adaptive",
    ...                    progress=False)
    >>> scale = res.diagnostics.representation_scale
    >>> scale.sizes["time"], bool((scale >= 0).all())
    (6, True)
    >>> pred6 = xlatda.predictive_samples(res.analysis, obs6, model,
    ...                                   scale=float(scale.mean()), seed=0)

    The two-part model (modes and a smooth isotropic part, both factors estimated):

    >>> res2 = xlatda.cycle(None, obs6, model, method="score", members=5, steps=8, window=3,
    ...                     representation_error=True, representation_scale="two_part",
    ...                     progress=False)
    >>> pair = (float(res2.diagnostics.representation_scale.mean()),
    ...         float(res2.diagnostics.representation_scale_smooth.mean()))
    >>> pred2 = xlatda.predictive_samples(res2.analysis, obs6, model, scale=pair, seed=0)
    >>> bool((pred2.x.std("member") > 0).all())
    True
    """

    rep = representation_model(model)
    if rep is None or not isinstance(model, LatentModel):
        raise ConfigError(
            "predictive_samples needs a LatentModel with a representation-error model: "
            "model = xlatda.fit_representation_error(model, heldout_states)")
    if "member" not in analysis.dims:
        raise ConfigError("predictive_samples needs an ensemble analysis with a 'member' dim")
    if not isinstance(conditional, (bool, np.bool_)):
        raise ConfigError(f"conditional must be True or False, got {conditional!r}")
    L = model.layout
    tname = L.axes.time or "time"
    stacked = L.stack(analysis[list(L.variables)])
    lead = [d for d in stacked.dims if d != CHANNEL_DIM and d not in L.spatial_dims]
    has_time = tname in lead
    others = [d for d in lead if d not in (tname, "member")]
    if others:
        raise ConfigError(f"predictive_samples takes dims (time, member, ...), got extra {others}")
    order = [tname, "member"] if has_time else ["member"]
    x = np.asarray(stacked.transpose(*order, CHANNEL_DIM, *L.spatial_dims).values, np.float64)
    if not has_time:
        x = x[None]
    n_t, n_m = x.shape[:2]
    x = torch.from_numpy(x.reshape(n_t, n_m, -1).copy())
    step = (getattr(model, "score", None) and model.score.time_step) or model.time_step
    tscale = _rep_time_scale(model, step)
    if has_time:
        tv = float_times(analysis[tname].values)
        unit = float(step["value"]) if step else 1.0
        lags = (tv - tv[0]) / unit * tscale
    else:
        tv, lags = None, np.zeros(1)
    order_t = np.argsort(lags, kind="stable")
    gen = torch.Generator().manual_seed(int(seed))
    factors: list[Any] = []
    if scale == "two_part" or isinstance(scale, (tuple, list)):
        eps = _two_part_errors(model, obs, x, tv, lags, order_t, has_time, window, conditional,
                               scale, gen, factors)
        return _with_errors(analysis, stacked, order, x, eps, L, has_time,
                            factors if scale == "two_part" else None)
    eps = torch.empty(n_m, n_t, x.shape[-1], dtype=_F64)
    eps[:, order_t] = rep.draw(n_m, lags[order_t].tolist(), generator=gen)
    adaptive = isinstance(scale, str)
    if adaptive and scale != "adaptive":
        raise ConfigError(f"scale must be a non-negative number or 'adaptive', got {scale!r}")
    if not adaptive:
        if not isinstance(scale, (int, float, np.floating, np.integer)) or not scale >= 0:
            raise ConfigError(f"scale must be a non-negative number or 'adaptive', got {scale!r}")
        eps = eps * math.sqrt(float(scale))
        rep = RepresentationError(rep.modes * math.sqrt(float(scale)), rep.var * float(scale),
                                  rep.phi)
    base = rep
    if conditional or adaptive:
        for idx, ops, olags, r, y in _observation_groups(model, obs, window, tv, lags,
                                                          has_time):
            if adaptive:
                hm = torch.cat([(a @ x[i].T).T for a, i in zip(ops, idx)], -1)  # (N, P)
                alpha = representation_scale(y - hm, r, _rep_blocks(base, ops, olags))
                factors.append(alpha)
                rep = base.scaled(alpha)
                for i in idx:
                    eps[:, i] = eps[:, i] * math.sqrt(alpha)
            if conditional:
                _condition(eps, x, rep, idx, ops, olags, r, y, gen)
    return _with_errors(analysis, stacked, order, x, eps, L, has_time,
                        factors if adaptive else None)


def _observation_groups(model, obs, window, tv, lags, has_time: bool):
    """Per group of observation times (``window`` of them, default the score's window):
    the analysis time indices, observation operators, lags, errors and values."""
    from xlatda.obs import to_tensors
    from xlatda.windows import plan_windows

    table = to_tensors(obs, model.layout)
    w = window or (model.score.window if getattr(model, "score", None) else 1)
    for win in plan_windows(table, int(w), seed=0):
        idx = _group_indices(win, tv, has_time)
        ops = _rep_obs_operators(model, win.tables)
        olags = [float(lags[i]) for i in idx]
        r = torch.cat([t.error_std for t in win.tables]).to(_F64)
        y = torch.cat([t.values for t in win.tables]).to(_F64)
        yield idx, ops, olags, r, y


def _condition(eps, x, rep, idx, ops, olags, r, y, gen) -> None:
    """Update the errors ``eps`` ``(N, T, n)`` of one group in place to draws given its
    observations: ``eps += C Aᵀ (A C Aᵀ + R)⁻¹ (y - A (x + eps) - η)`` per member."""
    n_m = eps.shape[0]
    blocks = _rep_whitener(rep, ops, olags, r)
    hx = torch.cat([(a @ (x[i] + eps[:, i]).T).T for a, i in zip(ops, idx)], -1)
    eta = r * torch.randn(n_m, len(r), generator=gen, dtype=_F64)
    wts = _solve(blocks, y - hx - eta)  # (N, P)
    parts = list(wts.split([int(a.shape[0]) for a in ops], -1))
    upd = rep.cross(parts, ops, olags, olags)  # (N, T_w, n)
    for j, i in enumerate(idx):
        eps[:, i] = eps[:, i] + upd[:, j]


def _group_indices(win, tv, has_time: bool) -> list[int]:
    """Analysis time index of each observation time of a group (checked)."""
    if has_time:
        idx = [int(np.argmin(np.abs(tv - t))) for t in win.times]
        if any(abs(tv[i] - t) > 1e-6 * max(1.0, abs(t)) for i, t in zip(idx, win.times)):
            raise ConfigError(
                "predictive_samples: an observation time is not a time of the "
                f"analysis (times {win.times}); pass the observations of this analysis")
        return idx
    if len(win.tables) > 1:
        raise ConfigError("an analysis without a time dim has one observation time")
    return [0]


def _two_part_errors(model, obs, x, tv, lags, order_t, has_time, window, conditional, scale,
                     gen, factors) -> torch.Tensor:
    """``ε`` ``(N, T, n)`` of :func:`predictive_samples` with the two-part model: the
    factors given (a pair) or, per group of observation times, estimated jointly from all
    the members' residuals (``"two_part"``, :func:`~xlatda.methods.score.
    representation_scales` without the Jacobian), then the conditional update."""

    base = two_part_model(model)
    if base is None:
        raise ConfigError(
            "predictive_samples(scale='two_part' or a pair) needs the smooth part of the "
            "error model: refit it with xlatda.fit_representation_error(model, "
            "heldout_states) (smooth=True, the default)")
    adaptive = isinstance(scale, str)
    if not adaptive:
        if len(scale) != 2 or not all(
                isinstance(v, (int, float, np.integer, np.floating)) and v >= 0 for v in scale):
            raise ConfigError(f"scale as a pair is (s1², s2²), two non-negative numbers, got "
                              f"{scale!r}")
        fac = (float(scale[0]), float(scale[1]))
    else:
        fac = (1.0, 1.0)
    n_t, n_m = x.shape[:2]
    e1, e2 = torch.empty(2, n_m, n_t, x.shape[-1], dtype=_F64)
    p1, p2 = base.draw_parts(n_m, lags[order_t].tolist(), generator=gen)
    e1[:, order_t], e2[:, order_t] = p1, p2
    eps = math.sqrt(fac[0]) * e1 + math.sqrt(fac[1]) * e2
    rep = base.with_factors(*fac)
    if not (conditional or adaptive):
        return eps
    for idx, ops, olags, r, y in _observation_groups(model, obs, window, tv, lags, has_time):
        if adaptive:
            hm = torch.cat([(a @ x[i].T).T for a, i in zip(ops, idx)], -1)  # (N, P)
            s1, s2 = representation_scales(y - hm, r, _rep_parts(base, ops, olags))
            if math.isnan(s1):
                s1, s2 = 1.0, 1.0
            factors.append([s1, s2])
            rep = base.with_factors(s1, s2)
            for i in idx:
                eps[:, i] = math.sqrt(s1) * e1[:, i] + math.sqrt(s2) * e2[:, i]
        if conditional:
            _condition(eps, x, rep, idx, ops, olags, r, y, gen)
    return eps


def _with_errors(analysis, stacked, order, x, eps, L, has_time, factors) -> xr.Dataset:
    """``analysis`` with ``x + eps`` as its values (and the estimated factors as the
    ``representation_scale`` attribute when given)."""
    n_t, n_m = x.shape[:2]
    out = x + eps.transpose(0, 1)  # (T, N, n)
    arr = out.reshape(n_t, n_m, L.n_channels, *L.spatial_shape).numpy()
    if not has_time:
        arr = arr[0]
    new = stacked.transpose(*order, CHANNEL_DIM, *L.spatial_dims).copy(data=arr)
    res = L.unstack(new.transpose(*stacked.dims), like=analysis)
    for v in analysis.data_vars:
        if v in res:
            res[v] = res[v].transpose(*analysis[v].dims)
    res = res.assign_attrs(analysis.attrs)
    if factors is not None:  # the factor(s) of each group of observation times, for diagnostics
        res = res.assign_attrs(representation_scale=[
            [float(f"{v:.6g}") for v in f] if isinstance(f, list) else float(f"{f:.6g}")
            for f in factors])
    return res
