"""Public functions on xarray objects: fit, encode, decode (and, through
:mod:`xlatda.forecast`, evolve and forecast).

These are what the ``.lda`` accessor calls. They validate, turn Datasets into
tensors through :mod:`xlatda._bridge` (lazily, chunk by chunk over sample
dimensions), call the tensor kernels, and put CF metadata back.

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

from xlatda._bridge import apply_torch, is_lazy
from xlatda._threads import decoded_size, with_thread_scope
from xlatda.errors import ConfigError, LayoutError
from xlatda.layout import CHANNEL_DIM, StateLayout, layout
from xlatda.model import LatentModel
from xlatda.normalize import Normalizer
from xlatda.options import get_options, resolve_device, resolve_dtype
from xlatda.validation import check_keywords, finite_inputs, refuse_unknown_keywords

__all__ = ["LATENT_DIM", "decode", "encode", "encode_obs", "fit", "latent_dataset"]

LATENT_DIM = "latent"


def _as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        return obj.to_dataset(name=obj.name if obj.name is not None else "data")
    if not isinstance(obj, xr.Dataset):
        raise ConfigError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    return obj


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
        Fraction of samples held out for early stopping, or a validation
        Dataset, or None.
    dynamics : {"ode", None}
        Also fit latent dynamics on the encoded training trajectories.
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

    ds = _as_dataset(ds)
    cls = encoders.get(encoder)  # refuses unknown names before any work
    check_keywords(encoder_options, cls, where=f"encoder {encoder!r}", kind="option",
                   exclude=["n_channels", "spatial_shape", "latent_dim", "grid"])
    if not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if dynamics not in (None, "ode"):
        raise ConfigError(f"dynamics must be 'ode' or None, got {dynamics!r}")
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
        x_val, x_train = xn[perm[:n_val]], xn[perm[n_val:]]
    else:
        x_train = xn
    options = dict(encoder_options or {})
    aux_fit: dict[str, Any] = {}
    if aux is not None:
        a, spec = _aux_training(aux, ds, L, tdtype)
        options.update(aux_channels=a.shape[1], aux_spec=spec, aux_dropout=aux_dropout)
        if isinstance(validation, xr.Dataset):
            raise ConfigError("with aux, pass validation as a fraction (aux has no validation set)")
        if x_val is not None:
            aux_fit = {"aux_train": a[perm[n_val:]], "aux_val": a[perm[:n_val]]}
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
    history = {"encoder": _jsonable(hist), "encoder_seconds": _time.perf_counter() - start}
    model = LatentModel(
        layout=StateLayout.from_dict(L.to_dict()), normalizer=norm, encoder=enc,
        time_step=_time_step(ds, L), history=history, missing=missing,
    )
    model.prior = _fit_prior(model, xn.to(dev))
    history["prior"] = {"shrinkage": model.prior.shrinkage, "n_samples": model.prior.n_samples}
    if dynamics is not None:
        from xlatda.forecast import fit_dynamics

        model = fit_dynamics(model, ds, uncertainty=uncertainty, epochs=epochs, seed=seed,
                             device=dev, progress=progress, **(dynamics_options or {}))
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
    ctx = torch.enable_grad() if _needs_grad(model) else torch.no_grad()
    with ctx:
        for chunk in xn.split(batch):
            rows.append(enc.encode(chunk).detach())
    codes = torch.cat(rows).to(torch.float64)
    return LatentPrior.fit(codes).to(device=model.device, dtype=model.dtype)


def _jsonable(hist: Any) -> Any:
    if isinstance(hist, dict):
        return {str(k): _jsonable(v) for k, v in hist.items()}
    if isinstance(hist, (list, tuple)):
        return [_jsonable(v) for v in hist]
    if isinstance(hist, (np.floating, np.integer)):
        return hist.item()
    if isinstance(hist, torch.Tensor):
        return hist.tolist()
    if hist is None or isinstance(hist, (str, int, float, bool)):
        return hist
    return str(hist)


def latent_dataset(z: xr.DataArray, model: LatentModel, source: str) -> xr.Dataset:
    """Wrap latent vectors ``z(..., latent)`` as a Dataset with provenance attrs."""
    out = z.rename("z").to_dataset()
    out = out.assign_coords({LATENT_DIM: np.arange(model.latent_dim)})
    out["z"].attrs = {"long_name": "latent state", "units": "1"}
    out.attrs = {
        "xlatda_model_id": model.model_id,
        "xlatda_encoder": model.encoder_kind,
        "xlatda_latent_dim": model.latent_dim,
        "xlatda_variables": list(model.layout.variables),
        "history": f"{source} with xlatda {__import__('xlatda').__version__}",
    }
    return out


def _needs_grad(model: LatentModel) -> bool:
    return bool(getattr(model.encoder, "encode_needs_grad", False))


@refuse_unknown_keywords
@with_thread_scope
def encode(
    ds: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    aux: xr.Dataset | xr.DataArray | None = None,
    device: Any = None,
    dtype: Any = None,
) -> xr.Dataset:
    """Encode states to latent vectors.

    Parameters
    ----------
    ds : Dataset or DataArray
        States on the model's layout (same variables and grid); any sample
        dims (time, trajectory, member) are kept.
    model : LatentModel
        A fitted model.
    aux : Dataset or DataArray, optional
        Auxiliary inputs for a model fitted with ``aux=`` (same variables as
        in training, on the same grid and samples as ``ds``); omitted, they
        are treated as missing everywhere.
    device, dtype :
        Where and in which precision to compute (default: the model's).

    Returns
    -------
    Dataset
        Variable ``z`` over the sample dims plus ``latent``, with provenance
        attrs. Lazy when ``ds`` is dask-backed (chunks along sample dims).
    """
    ds = _as_dataset(ds)
    L = model.layout
    stacked = L.stack(ds)  # checks ds against the layout first
    dev = model.device if device is None else resolve_device(device)
    tdtype = model.dtype if dtype is None else resolve_dtype(dtype)
    if dev != model.device or tdtype != model.dtype:
        model.to(device=dev, dtype=tdtype)
    fn = finite_inputs(model.encode_tensor, what="fields to encode", allowed=model.missing)
    if aux is not None:
        spec = getattr(model.encoder, "aux_spec", None)
        if not spec:
            raise ConfigError(
                "this model was fitted without auxiliary inputs; drop aux= or refit with "
                "xlatda.fit(ds, ..., aux=aux)"
            )
        stacked, fn = _with_aux(stacked, aux, ds, model, spec)
    z = apply_torch(stacked, fn, in_core=[CHANNEL_DIM, *L.spatial_dims],
                    out_core=[LATENT_DIM], out_sizes={LATENT_DIM: model.latent_dim},
                    device=dev, dtype=tdtype, grad=_needs_grad(model))
    return latent_dataset(z, model, f"encoded by {model.encoder_kind}")


def _aux_stack(aux: xr.Dataset | xr.DataArray, ds: xr.Dataset, L: StateLayout,
               variables: list[str] | None = None) -> tuple[xr.DataArray, StateLayout]:
    """Auxiliary fields stacked like the state, checked against it."""
    aux = _as_dataset(aux)
    La = layout(aux, variables=variables)
    if La.spatial_dims != L.spatial_dims or La.spatial_shape != L.spatial_shape:
        raise LayoutError(
            f"aux must be on the state grid {dict(zip(L.spatial_dims, L.spatial_shape))}, got "
            f"{dict(zip(La.spatial_dims, La.spatial_shape))}; regrid or rasterize it first"
        )
    a = La.stack(aux)
    lead = list(L.lead_dims(ds))
    alead = list(La.lead_dims(aux))
    if alead != lead or any(a.sizes[d] != ds.sizes[d] for d in lead):
        raise LayoutError(
            f"aux must have the state's sample dims {[(d, ds.sizes[d]) for d in lead]}, got "
            f"{[(d, a.sizes[d]) for d in alead]}"
        )
    return a, La


def _aux_channels(a: xr.DataArray, mean: np.ndarray, std: np.ndarray, dtype) -> xr.DataArray:
    """Standardised values (NaN -> 0) followed by observed masks, along channel (lazy-safe)."""
    m = xr.DataArray(np.asarray(mean, float), dims=[CHANNEL_DIM])
    s = xr.DataArray(np.asarray(std, float), dims=[CHANNEL_DIM])
    observed = a.notnull()
    vals = ((a - m) / s).where(observed, 0.0).astype(dtype)
    out = xr.concat([vals, observed.astype(dtype)], dim=CHANNEL_DIM)
    return out.transpose(*a.dims)


def _aux_training(aux, ds: xr.Dataset, L: StateLayout, tdtype) -> tuple[torch.Tensor, dict]:
    a, La = _aux_stack(aux, ds, L)
    values = np.asarray(a.values, dtype=np.float64)
    ch = a.dims.index(CHANNEL_DIM)
    moved = np.moveaxis(values, ch, 0).reshape(values.shape[ch], -1)
    mean = np.array([np.nanmean(r) if np.isfinite(r).any() else 0.0 for r in moved])
    std = np.array([np.nanstd(r) if np.isfinite(r).any() else 1.0 for r in moved])
    std = np.where(std > 0, std, 1.0)
    chans = _aux_channels(a, mean, std, np.float64).values
    lead = chans.shape[: ch]
    x = torch.as_tensor(chans).reshape(int(np.prod(lead)) if lead else 1, *chans.shape[ch:])
    spec = {"variables": list(La.variables), "channels": list(La.channels),
            "mean": mean.tolist(), "std": std.tolist()}
    return x.to(tdtype), spec


def _with_aux(stacked: xr.DataArray, aux, ds: xr.Dataset, model: LatentModel, spec: dict):
    a, _ = _aux_stack(aux, ds, model.layout, variables=spec["variables"])
    if a.sizes[CHANNEL_DIM] != len(spec["mean"]):
        raise LayoutError(
            f"aux has {a.sizes[CHANNEL_DIM]} channels, the model was fitted with "
            f"{len(spec['mean'])} ({spec['channels']})"
        )
    chans = _aux_channels(a, np.asarray(spec["mean"]), np.asarray(spec["std"]),
                          stacked.dtype).transpose(*stacked.dims)
    # Positional, like the state (join="override"); lazy if either side is.
    combined = xr.concat([stacked, chans], dim=CHANNEL_DIM, join="override", coords="minimal",
                         compat="override")
    C = model.layout.n_channels
    enc = model.encoder

    def fn(x: torch.Tensor) -> torch.Tensor:
        state = model.normalizer.normalize(model._cast(x[:, :C]))
        return enc.encode(state, model._cast(x[:, C:]))

    return combined, fn


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
    from xlatda.errors import NotFittedError
    from xlatda.obs.contract import to_tensors, validate

    L = model.layout
    validate(obs, L)
    table = to_tensors(obs, L)
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


def _check_latent(z: xr.Dataset | xr.DataArray, model: LatentModel) -> xr.DataArray:
    if isinstance(z, xr.Dataset):
        if "z" not in z.data_vars:
            raise ConfigError(
                "a latent Dataset needs a variable 'z' (as returned by ds.lda.encode(model))"
            )
        mid = z.attrs.get("xlatda_model_id")
        if mid is not None and mid != model.model_id:
            raise ConfigError(
                f"these latents come from model {mid!r} but decode got model "
                f"{model.model_id!r}; decode with the model that encoded them"
            )
        da = z["z"]
    else:
        da = z
    if LATENT_DIM not in da.dims or da.sizes[LATENT_DIM] != model.latent_dim:
        raise ConfigError(
            f"latents need a dimension {LATENT_DIM!r} of size {model.latent_dim}, got "
            f"{dict(da.sizes)}"
        )
    return da


@refuse_unknown_keywords
@with_thread_scope(size=decoded_size)
def decode(
    z: xr.Dataset | xr.DataArray,
    model: LatentModel,
    *,
    at: xr.Dataset | None = None,
    device: Any = None,
    dtype: Any = None,
) -> xr.Dataset:
    """Decode latent vectors to fields on the training layout, or anywhere.

    Parameters
    ----------
    z : Dataset or DataArray
        Latents as returned by :func:`encode` (or evolved).
    model : LatentModel
        The model that encoded them.
    at : Dataset, optional
        Where to decode instead of the training grid: an observation-like
        Dataset with dimension ``obs`` and latitude/longitude (or generic
        position) coordinates, or a Dataset holding a latitude/longitude grid.
        SINR evaluates its decoder there directly (mesh-free); other encoders
        interpolate from the training grid.
    device, dtype :
        Compute device and dtype (default: the model's).

    Returns
    -------
    Dataset
        On the training layout: identical in structure, coordinates and
        attributes to the training data, with the sample coords of ``z``.
        With ``at``: every state variable at those points or on that grid.
        Lazy when ``z`` is dask-backed.
    """
    da = _check_latent(z, model)
    L = model.layout
    dev = model.device if device is None else resolve_device(device)
    tdtype = model.dtype if dtype is None else resolve_dtype(dtype)
    if dev != model.device or tdtype != model.dtype:
        model.to(device=dev, dtype=tdtype)
    out_dtype = np.result_type(*[np.dtype(s.dtype) for s in L.specs])
    if at is None:
        sizes = {CHANNEL_DIM: L.n_channels, **dict(zip(L.spatial_dims, L.spatial_shape))}
        fields = apply_torch(da, model.decode_tensor, in_core=[LATENT_DIM],
                             out_core=[CHANNEL_DIM, *L.spatial_dims], out_sizes=sizes,
                             device=dev, dtype=tdtype)
        if fields.dtype != out_dtype and out_dtype.kind == "f":
            fields = fields.astype(out_dtype)
        if model.missing is not None:
            keep = xr.DataArray(~model.missing, dims=[CHANNEL_DIM, *L.spatial_dims])
            fields = fields.where(keep)
        return L.unstack(fields)
    return _decode_at(da, model, at, dev, tdtype)


def _decode_at(da: xr.DataArray, model: LatentModel, at: xr.Dataset, dev, tdtype) -> xr.Dataset:
    from xlatda.cf import find_axes

    L = model.layout
    if "obs" in at.dims:
        axes = find_axes(at) if L.kind != "generic" else None
        if L.kind == "generic":
            pos = np.asarray(at[L.spatial_dims[0]].values, float)
            points = model.points_tensor(position=pos)
            coords = {L.spatial_dims[0]: at[L.spatial_dims[0]]}
        else:
            if axes.lat is None:
                raise LayoutError("`at` has no latitude/longitude coordinates along 'obs'")
            points = model.points_tensor(at[axes.lat].values, at[axes.lon].values)
            coords = {axes.lat: at[axes.lat], axes.lon: at[axes.lon]}
        shape_dims, shape = ["obs"], (at.sizes["obs"],)
    else:
        axes = find_axes(at)
        if axes.lat is None or at[axes.lat].ndim != 1:
            raise LayoutError(
                "`at` must be points along 'obs' or a Dataset with 1-D latitude and longitude "
                "coordinates (a grid)"
            )
        glat, glon = np.meshgrid(at[axes.lat].values, at[axes.lon].values, indexing="ij")
        points = model.points_tensor(glat.ravel(), glon.ravel())
        coords = {axes.lat: at[axes.lat], axes.lon: at[axes.lon]}
        shape_dims = [at[axes.lat].dims[0], at[axes.lon].dims[0]]
        shape = glat.shape
    n_pts = points.shape[0]
    C = L.n_channels
    all_points = points.repeat(C, 1)
    channel = torch.arange(C, device=points.device).repeat_interleave(n_pts)

    def fn(z: torch.Tensor) -> torch.Tensor:
        vals = model.decode_points(z, all_points, channel)
        return vals.reshape(z.shape[0], C, *shape)

    sizes = {CHANNEL_DIM: C, **dict(zip(shape_dims, shape))}
    fields = apply_torch(da, fn, in_core=[LATENT_DIM], out_core=[CHANNEL_DIM, *shape_dims],
                         out_sizes=sizes, device=dev, dtype=tdtype)
    out = xr.Dataset(coords=coords)
    for i, label in enumerate(L.channels):
        name = label.replace("@", "_") if "@" in label else label
        spec = next(s for s in L.specs if s.name == label.split("@")[0])
        out[name] = fields.isel({CHANNEL_DIM: i}, drop=True)
        out[name].attrs = dict(spec.attrs)
    for c, v in da.coords.items():
        if c != LATENT_DIM and set(v.dims) <= set(fields.dims):
            out = out.assign_coords({c: v})
    out.attrs = {"history": f"decoded by {model.encoder_kind} at {n_pts} points",
                 "xlatda_model_id": model.model_id}
    return out


def is_lazy_result(obj: xr.Dataset) -> bool:
    """Whether a result is dask-backed (for docs and tests)."""
    return is_lazy(obj)
