"""Public functions on xarray objects: fit and encode_obs, and (re-exported
from :mod:`xlatda.encode_decode`) encode and decode.

These are what the ``.lda`` accessor calls. They validate, turn Datasets into
tensors, call the tensor kernels, and put CF metadata back. Evolve and
forecast live in :mod:`xlatda.forecast`; the latent Dataset helpers in
:mod:`xlatda.latent_data`.

Examples
--------
>>> import xlatda
>>> ds = xlatda.datasets.lorenz96(n=8, steps=60, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
>>> z = ds.lda.encode(model)
>>> z.z.dims
('time', 'latent')
>>> back = z.lda.decode(model)
>>> float(abs(back.x - ds.x).max()) < 1e-3
True
"""

from __future__ import annotations

import time as _time
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda._bridge import is_lazy
from xlatda._threads import with_thread_scope
from xlatda.aux_inputs import aux_training
from xlatda.encode_decode import decode, encode
from xlatda.errors import ConfigError, LayoutError, NotFittedError, ObservationError
from xlatda.forecast import fit_dynamics
from xlatda.jsonable import to_jsonable
from xlatda.latent_data import LATENT_DIM, as_dataset, encoder_needs_grad, latent_dataset
from xlatda.layout import StateLayout, layout
from xlatda.model import LatentModel
from xlatda.normalize import Normalizer
from xlatda.obs.contract import to_tensors, validate
from xlatda.options import get_options, resolve_device, resolve_dtype
from xlatda.validation import check_keywords, refuse_unknown_keywords
from xlatda.windows import float_times

__all__ = ["LATENT_DIM", "decode", "encode", "encode_obs", "fit", "latent_dataset"]


def _time_step(ds: xr.Dataset, L: StateLayout) -> dict[str, Any] | None:
    t = L.axes.time
    if t is None or t not in ds.coords or ds.sizes.get(t, 0) < 2:
        return None
    values = np.asarray(ds[t].values)
    diffs = np.diff(values)
    if np.issubdtype(values.dtype, np.datetime64):
        step = np.median(diffs.astype("timedelta64[ns]").astype(np.int64)) / 1e9
        return {"value": float(step), "units": "s"}
    if values.dtype.kind in "fiu":
        return {"value": float(np.median(diffs)), "units": "model"}
    if values.dtype.kind == "O" and hasattr(values.ravel()[0], "calendar"):
        # cftime dates (noleap, 360_day, ...): their differences are timedeltas
        seconds = float_times(values)
        return {"value": float(np.median(np.diff(seconds))), "units": "s"}
    return None


@refuse_unknown_keywords
@with_thread_scope
def fit(
    ds: xr.Dataset | xr.DataArray,
    *,
    encoder: str = "pca",
    latent_dim: int = 32,
    variables: list[str] | None = None,
    epochs: int = 50,
    batch_size: int = 32,
    lr: float | None = None,
    validation: float | xr.Dataset | None = 0.1,
    dynamics: str | None = None,
    uncertainty: str | None = None,
    device: Any = None,
    dtype: Any = None,
    seed: int = 0,
    progress: bool | None = None,
    encoder_options: dict[str, Any] | None = None,
    dynamics_options: dict[str, Any] | None = None,
    aux: xr.Dataset | xr.DataArray | None = None,
    aux_dropout: float = 0.5,
) -> LatentModel:
    """Fit a latent model (encoder, and optionally dynamics and model error).

    Parameters
    ----------
    ds : Dataset or DataArray
        Training states; every sample (time step, trajectory, ...) is one
        training example. Dask-backed data are computed here once.
    encoder : str
        Registered encoder name: ``"pca"``, ``"autoencoder"``, ``"sinr"``,
        ``"vae"`` (see ``xlatda.encoders.encoders.names()``).
    latent_dim : int
        Size of the latent vector (for SINR a multiple of the number of
        channels: one code per channel).
    variables : list of str, optional
        State variables (default: all data variables on the grid).
    epochs, batch_size, lr :
        Training settings for neural encoders (``lr=None``: the encoder's
        default).
    validation : float or Dataset or None
        Fraction of samples held out for early stopping (drawn at random
        with ``seed``; both parts keep the samples' order), or a validation
        Dataset, or None.
    dynamics : {"ode", "linear", None}
        Also fit latent dynamics on the encoded training trajectories: a
        neural ODE (``"ode"``, LAINR) or a linear model forced by the time of
        day/year (``"linear"``; closed form, the better choice for a few
        weeks of reanalysis, see :func:`xlatda.fit_dynamics`).
    uncertainty : {"scalar", "diagonal", "cholesky", None}
        Also fit the model-error covariance of one-step latent residuals.
    device, dtype, seed, progress :
        Torch device and dtype, random seed, progress bar (None: option).
    encoder_options, dynamics_options : dict, optional
        Extra keyword arguments for the encoder's constructor / the dynamics.
    aux : Dataset or DataArray, optional
        Multimodal input (SLAMS): auxiliary fields on the same grid and
        samples as ``ds`` (other variables, observation images with NaN where
        nothing was observed, e.g. from :func:`xlatda.obs.rasterize`). They
        enter the encoder only (``"autoencoder"`` and ``"vae"``); the decoder
        returns the state. Each auxiliary variable becomes two channels: its
        standardised values (NaN set to 0) and an observed/missing mask.
    aux_dropout : float
        With ``aux``: probability of hiding a training sample's auxiliary
        inputs, so the model also encodes states without them.

    Returns
    -------
    LatentModel

    Raises
    ------
    ConfigError
        For settings out of range; nothing is trained then.
    """
    from xlatda.encoders import encoders

    ds = as_dataset(ds)
    cls = encoders.get(encoder)  # refuses unknown names before any work
    check_keywords(encoder_options, cls, where=f"encoder {encoder!r}", kind="option",
                   exclude=["n_channels", "spatial_shape", "latent_dim", "grid"])
    if not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if dynamics not in (None, "ode", "linear"):
        raise ConfigError(f"dynamics must be 'ode', 'linear' or None, got {dynamics!r}")
    if uncertainty not in (None, "scalar", "diagonal", "cholesky"):
        raise ConfigError(
            f"uncertainty must be 'scalar', 'diagonal', 'cholesky' or None, got {uncertainty!r}"
        )
    if uncertainty is not None and dynamics is None:
        raise ConfigError("uncertainty needs dynamics; pass dynamics='ode' as well")
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    progress = get_options()["progress"] if progress is None else progress

    L = layout(ds, variables=variables)
    if L.kind == "latlon" and L.spatial_dims[0] != L.axes.lat:
        # the encoders take (lat, lon) grids: a (lon, lat) file is refitted in that order
        # (encoding and decoding accept either order; decoded fields come back lat first)
        ds = ds.transpose(..., *L.spatial_dims[::-1], missing_dims="ignore")
        L = layout(ds, variables=variables)
    x = L.to_tensor(ds, dtype=torch.float64)
    if L.member_dim in ds.dims:
        x = x.flatten(0, 1)
    weights = torch.as_tensor(L.area_weights())
    norm = Normalizer.fit(x, weights=weights)
    xn = norm.normalize(x).to(tdtype)
    missing = _fixed_mask(xn)
    if missing is not None:
        xn = xn.masked_fill(torch.as_tensor(missing), 0.0)
    x_val = None
    if isinstance(validation, xr.Dataset):
        x_val = norm.normalize(L.to_tensor(validation, dtype=torch.float64)).to(tdtype)
        if missing is not None:
            x_val = x_val.masked_fill(torch.as_tensor(missing), 0.0)
        if torch.isnan(x_val).any():
            raise LayoutError("the validation fields have NaN where the training fields have "
                              "values; give them the training data's land/sea mask")
        x_train = xn
    elif validation:
        if not 0 < float(validation) < 1:
            raise ConfigError(f"validation fraction must be in (0, 1), got {validation!r}")
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(xn.shape[0], generator=gen)
        n_val = max(1, round(float(validation) * xn.shape[0]))
        if xn.shape[0] - n_val < 1:
            raise ConfigError(f"only {xn.shape[0]} samples: too few to hold out a validation set")
        # the held-out samples are random; both sets keep the data's (time) order, so
        # what looks along the sample axis (SINR's blocked choice of its prior) sees it
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        x_val, x_train = xn[val_idx], xn[train_idx]
    else:
        x_train = xn
    options = dict(encoder_options or {})
    aux_fit: dict[str, Any] = {}
    if aux is not None:
        a, spec = aux_training(aux, ds, L, tdtype)
        options.update(aux_channels=a.shape[1], aux_spec=spec, aux_dropout=aux_dropout)
        if isinstance(validation, xr.Dataset):
            raise ConfigError("with aux, pass validation as a fraction (aux has no validation set)")
        if x_val is not None:
            aux_fit = {"aux_train": a[train_idx], "aux_val": a[val_idx]}
        else:
            aux_fit = {"aux_train": a}
    try:
        enc = cls(n_channels=L.n_channels, spatial_shape=L.spatial_shape,
                  latent_dim=int(latent_dim), grid=L.grid_spec(), **options)
    except TypeError as err:
        if aux is not None and "aux" in str(err):
            raise ConfigError(
                f"encoder {encoder!r} takes no auxiliary inputs; use 'autoencoder' or 'vae' "
                "for multimodal (aux=) training"
            ) from err
        raise
    enc = enc.to(device=dev, dtype=tdtype)
    training: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "seed": seed,
                                "device": dev, "progress": progress}
    if lr is not None:
        training["lr"] = lr
    start = _time.perf_counter()
    hist = enc.fit(x_train.to(dev), None if x_val is None else x_val.to(dev), **training,
                   **aux_fit)
    history = {"encoder": to_jsonable(hist), "encoder_seconds": _time.perf_counter() - start}
    model = LatentModel(
        layout=StateLayout.from_dict(L.to_dict()), normalizer=norm, encoder=enc,
        time_step=_time_step(ds, L), history=history, missing=missing,
    )
    model.prior = _fit_prior(model, xn.to(dev))
    history["prior"] = {"shrinkage": model.prior.shrinkage, "n_samples": model.prior.n_samples}
    if x_val is not None and aux is None:
        history["representation_error"] = _representation_error(model, x_val.to(dev), L)
    if dynamics is not None:
        model = fit_dynamics(model, ds, uncertainty=uncertainty, epochs=epochs, seed=seed,
                             device=dev, progress=progress, kind=dynamics,
                             **(dynamics_options or {}))
    return model


def _fixed_mask(xn: torch.Tensor) -> np.ndarray | None:
    """The NaN mask shared by every sample ``(C, *spatial)``, or None; refuses varying NaN."""
    nan = torch.isnan(xn)
    if not nan.any():
        return None
    first = nan[0]
    if not bool((nan == first).all()):
        n_bad = int((nan.any(0) & ~nan.all(0)).sum())
        raise LayoutError(
            f"training fields have NaN at {n_bad} grid points that are valid in other samples; "
            "a fixed mask (e.g. sea points NaN in every sample) is handled, gaps that move "
            "between samples are not: fill them first (ds.interpolate_na / ds.fillna)"
        )
    if bool(first.all()):
        raise LayoutError("training fields are NaN everywhere; check the variable and period")
    return first.cpu().numpy()


def _fit_prior(model: LatentModel, xn: torch.Tensor, batch: int = 256):
    """The latent prior of the (normalised, mask-filled) training fields' codes."""
    from xlatda.prior import LatentPrior

    enc = model.encoder
    rows = []
    ctx = torch.enable_grad() if encoder_needs_grad(model) else torch.no_grad()
    with ctx:
        for chunk in xn.split(batch):
            rows.append(enc.encode(chunk).detach())
    codes = torch.cat(rows).to(torch.float64)
    return LatentPrior.fit(codes).to(device=model.device, dtype=model.dtype)


def _representation_error(model: LatentModel, x_val: torch.Tensor, L: Any) -> dict[str, Any]:
    """RMS reconstruction error of held-out states per channel, in physical units.

    What the decoder cannot represent: an analysis decoded from the latent
    space misses it whatever the observations, so a predictive spread is
    ``sqrt(ensemble variance + this squared)`` (the representation error of
    the latent observation operator).
    """
    with torch.enable_grad():  # auto-decoding encoders need autograd
        z = model.encoder.encode(x_val)
    with torch.no_grad():
        rec = model.encoder.decode(z.detach())
        err = (rec - x_val).to(torch.float64)
        if model.missing is not None:
            keep = ~torch.as_tensor(model.missing, device=err.device)
            err = err * keep
            count = keep.to(torch.float64).sum(tuple(range(1, keep.dim())))
        else:
            count = torch.full((err.shape[1],), float(err[0, 0].numel()), dtype=torch.float64)
        mse = err.pow(2).sum(tuple(i for i in range(err.dim()) if i != 1)).cpu()
        mse = mse / (count.cpu() * err.shape[0])
        _, std = model.normalizer.select(torch.arange(err.shape[1]))
        rmse = mse.sqrt() * std.to(torch.float64).reshape(-1)
    return {"rmse": [float(v) for v in rmse], "channels": list(L.channels),
            "n_samples": int(x_val.shape[0]),
            "note": "held-out validation states, physical units, per channel"}


@refuse_unknown_keywords
def encode_obs(
    obs: xr.Dataset,
    model: LatentModel,
    *,
    prior: bool | None = None,
    samples: int | None = None,
    iterations: int | None = None,
    seed: int = 0,
    device: Any = None,
    dtype: Any = None,
) -> xr.Dataset:
    r"""Encode scattered observations to latent vectors (one per observation time).

    By default the estimate is Bayesian: the posterior mean of the code under
    the model's latent prior :math:`\mathcal N(\mu, B)` (``model.prior``,
    fitted by :func:`xlatda.fit`) and the observation errors
    :math:`R = \mathrm{diag}(\sigma_o^2)`,

    .. math::

        \hat z = \arg\min_z \tfrac12 (z-\mu)^\top B^{-1}(z-\mu)
        + \tfrac12 (y - h(z))^\top R^{-1} (y - h(z)),

    with :math:`h` the decoder at the observation points. For PCA (an affine
    :math:`h(z) = Hz + c`) this is the closed-form BLUE
    :math:`\hat z = \mu + BH^\top(HBH^\top + R)^{-1}(y - H\mu - c)`; for
    nonlinear decoders it is found by Gauss–Newton iterations from the prior
    mean (the posterior covariance is then the Laplace approximation). A few
    observations therefore never overfit: where they say little, the code
    stays near the climatological mean.

    Parameters
    ----------
    obs : Dataset
        An observation set on the model's variables (see :mod:`xlatda.obs`).
    model : LatentModel
        A fitted model.
    prior : bool, optional
        ``True``: the Bayesian estimate (needs ``model.prior``); ``False``: the
        old unregularised fit (SINR: zero-shot code; PCA: weighted least
        squares; other encoders: auto-decoding); ``None`` (default): Bayesian
        when the model has a prior (models saved before priors existed have
        none).
    samples : int, optional
        Also draw this many codes from the (Gaussian / Laplace) posterior:
        variable ``z_samples(time, member, latent)``. Needs the prior.
    iterations : int, optional
        Gauss–Newton iterations (default 1 for PCA, where one is exact, and
        8 for nonlinear decoders; stops early once the step is negligible).
    seed : int
        Seed of the posterior draws (a local ``torch.Generator``).
    device, dtype :
        Compute device and dtype (default: the model's).

    Returns
    -------
    Dataset
        ``z(time, latent)`` (or ``z(latent)`` for observations without time);
        with the prior also ``z_std(time, latent)``, the posterior standard
        deviations, and with ``samples`` the draws ``z_samples``.

    Raises
    ------
    NotFittedError
        ``prior=True`` or ``samples`` on a model without a prior.
    ObservationError
        Block-mean observations (with footprints, :func:`xlatda.obs.coarsen`).

    Notes
    -----
    Eager: observation sets are small. Points of different times differ, so
    each time is one fit (a ``(P, d)`` Jacobian and a ``d x d`` solve).

    Examples
    --------
    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=16, steps=200, seed=0)
    >>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    >>> obs = xlatda.obs.sample_points(ds.isel(time=[150]), n=3, error_std=1.0, seed=0)
    >>> z = xlatda.encode_obs(obs, model, samples=5)
    >>> z.z.dims, z.z_samples.dims
    (('time', 'latent'), ('time', 'member', 'latent'))
    """
    L = model.layout
    validate(obs, L)
    table = to_tensors(obs, L)
    fw = table.footprint_weight
    if fw is not None and bool((np.nan_to_num(np.asarray(fw, dtype=float)) > 0).any()):
        raise ObservationError(
            "encode_obs reads the decoder at points, and these observations are block means "
            "(footprint_* from xlatda.obs.coarsen); assimilate them with xlatda.cycle / "
            "xlatda.assimilate (which average the decoder over each footprint), or pass "
            "point observations")
    if device is not None or dtype is not None:
        model.to(device=resolve_device(device) if device is not None else None,
                 dtype=resolve_dtype(dtype) if dtype is not None else None)
    use_prior = model.prior is not None if prior is None else bool(prior)
    if (use_prior or samples) and model.prior is None:
        raise NotFittedError(
            "this model has no latent prior (saved before priors existed): pass prior=False "
            "for the least-squares code, or refit the model with xlatda.fit"
        )
    if samples is not None and (int(samples) < 1 or not use_prior):
        raise ConfigError(f"samples must be a positive integer with the prior, got {samples!r}")
    if table.time is None:
        groups, labels = [np.arange(len(table))], None
    else:
        t = np.asarray(table.time)
        labels, inverse = np.unique(t, return_inverse=True)
        groups = [np.flatnonzero(inverse == i) for i in range(len(labels))]
    gen = torch.Generator().manual_seed(int(seed))
    codes, stds, draws = [], [], []
    for g in groups:
        sub = table.select(g)
        pts = model.points_tensor(sub.lat, sub.lon, sub.position)
        if use_prior:
            mean, chol = _posterior(model, sub, pts, iterations)
            codes.append(mean.cpu().numpy())
            stds.append((chol**2).sum(-1).sqrt().cpu().numpy())
            if samples is not None:
                eps = torch.randn(int(samples), mean.shape[0], generator=gen, dtype=mean.dtype)
                draws.append((mean + eps.to(mean.device) @ chol.T).cpu().numpy())
            continue
        with torch.enable_grad():
            z = model.encode_points(sub.values[None].to(model.dtype), pts, sub.channel)
        codes.append(z.detach().cpu().numpy()[0])
    tname = L.axes.time or "time"

    def wrap(rows: list, dims: list[str]) -> xr.DataArray:
        arr = np.stack(rows)
        if labels is None:
            return xr.DataArray(arr[0], dims=dims)
        return xr.DataArray(arr, dims=[tname, *dims], coords={tname: labels})

    out = latent_dataset(wrap(codes, [LATENT_DIM]), model,
                         f"encoded from {len(table)} observations"
                         + (" (posterior mean under the latent prior)" if use_prior else ""))
    if use_prior:
        out["z_std"] = wrap(stds, [LATENT_DIM])
        out["z_std"].attrs = {"long_name": "posterior standard deviation of the latent state",
                              "units": "1"}
    if draws:
        out["z_samples"] = wrap(draws, ["member", LATENT_DIM])
        out["z_samples"].attrs = {"long_name": "posterior draws of the latent state",
                                  "units": "1"}
    return out


def _posterior(model: LatentModel, sub, pts: torch.Tensor,
               iterations: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Newton posterior mean and covariance factor of one observation time.

    Works in the whitened control variable ``z = mu + S v`` (``S`` the prior's
    factor): each step solves ``(I + G^T G) v = G^T e`` with
    ``G = R^{-1/2} J S``, exactly the BLUE when the decoder is affine.
    """
    prior = model.prior
    dt = model.dtype
    mu = prior.mean.to(device=model.device, dtype=dt)
    S = prior.scale.to(device=model.device, dtype=dt)
    y = sub.values.to(device=model.device, dtype=dt)
    r_inv = 1.0 / sub.error_std.to(device=model.device, dtype=dt)
    channel = sub.channel

    def h(z: torch.Tensor) -> torch.Tensor:
        return model.decode_points(z[None], pts, channel)[0]

    linear = hasattr(model.encoder, "linear_map")
    n_iter = (1 if linear else 8) if iterations is None else int(iterations)
    if n_iter < 1:
        raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
    v = torch.zeros(S.shape[1], dtype=dt, device=mu.device)
    eye = torch.eye(S.shape[1], dtype=dt, device=mu.device)

    def cost(v_: torch.Tensor) -> float:
        with torch.no_grad():
            return float(0.5 * (v_ @ v_) + 0.5 * (((y - h(mu + S @ v_)) * r_inv) ** 2).sum())

    chol = None
    for _ in range(n_iter):
        z = (mu + S @ v).detach()
        with torch.enable_grad():
            J = torch.autograd.functional.jacobian(h, z, vectorize=True)
        with torch.no_grad():
            G = (J @ S) * r_inv[:, None]
            e = (y - h(z)) * r_inv + G @ v
            chol = torch.linalg.cholesky(eye + G.T @ G)
            v_new = torch.cholesky_solve((G.T @ e)[:, None], chol)[:, 0]
        if linear:
            v = v_new
            break
        step, c0 = v_new - v, cost(v)
        for _halving in range(6):  # backtrack if the linearisation overshoots
            if cost(v + step) <= c0:
                break
            step = step / 2
        v = v + step
        if float(step.norm()) < 1e-6 * (1.0 + float(v.norm())):
            break
    with torch.no_grad():
        # Posterior covariance S (I + G^T G)^{-1} S^T = (S C^{-T})(S C^{-T})^T.
        factor = torch.linalg.solve_triangular(chol, S.T, upper=False).T
        return (mu + S @ v).detach(), factor


def is_lazy_result(obj: xr.Dataset) -> bool:
    """Whether a result is dask-backed (for docs and tests)."""
    return is_lazy(obj)
