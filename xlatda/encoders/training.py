r"""Shared fitting machinery of the xlatda encoders: losses, training, auto-decoding.

Area-weighted loss
------------------
Every encoder is trained and every latent fit to data is scored with the
latitude-weighted mean squared error of LAINR (Li, Dong & Zhang 2023,
arXiv:2309.09574, see ``METHODS.md`` §1)

.. math::

    L_w(\hat x, x) = \frac{1}{B\,C\,S} \sum_{b,c,s} w_s\,(\hat x_{bcs} - x_{bcs})^2,
    \qquad w_s = \frac{\cos\varphi_s}{\operatorname{mean}_s \cos\varphi_s},

with :math:`\varphi_s` the latitude of grid point ``s`` (uniform weights on a
generic dimension or when the grid is unknown), so that a field that is
uniformly wrong by one unit has loss one on any grid.

Training loop
-------------
:func:`train_module` runs minibatch Adam (Kingma & Ba 2015) on a loss
function of a batch. Minibatches are drawn by a seeded
:class:`torch.Generator`, a validation set is either given or split off the
training data with the same generator, early stopping with a ``patience``
keeps the weights of the best epoch, and ``ReduceLROnPlateau`` may shrink the
learning rate. The global torch RNG is never touched.

Auto-decoding
-------------
:func:`autodecode` is the encoder of the LAINR paper, written once for every
decoder: given values ``y`` at points ``p`` it minimises, for each sample
``b`` independently,

.. math::

    J_b(z_b) = \frac{1}{P} \sum_p w_p \big(D(z_b; p)_p - y_{bp}\big)^2
               + \lambda \lVert z_b \rVert^2

by Adam on ``z`` alone (the decoder is frozen). Adam acts element by
element and the loss is a sum over samples, so one batched run equals ``B``
separate runs; each sample also has its own plateau learning-rate schedule,
its own early stop and keeps its own best ``z``.

Points
------
:class:`PointOperatorCache` builds the observation operator of a gridded
encoder (bilinear interpolation on a lat/lon grid, nearest neighbours on a
point set, index interpolation on a generic dimension; see
``xlatda.sparse_interp``) for a set of points and caches it.

Examples
--------
>>> import torch
>>> from xlatda.encoders.training import autodecode
>>> M = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])   # 3 points, 2 latents
>>> decode_at = lambda z, points, channel: z @ M.T
>>> z_true = torch.tensor([[0.5, -1.0]])
>>> z = autodecode(decode_at, z_true @ M.T, None, None, torch.zeros(2), steps=400,
...                lr=0.05, progress=False)
>>> torch.allclose(z, z_true, atol=1e-3)
True
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xlatda.errors import ConfigError, ShapeError
from xlatda.obs_geometry import (
    cos_lat_weights,
    grid_interpolation_matrix,
    index_interpolation_matrix,
    nearest_point_matrix,
)
from xlatda.options import get_options
from xlatda.sparse_interp import ObservationOperator

__all__ = [
    "PointOperatorCache",
    "area_weights",
    "autodecode",
    "check_grid",
    "minimise_per_sample",
    "point_weights",
    "seeded",
    "train_module",
    "weighted_mse",
]


# ---------------------------------------------------------------------------
# grids and weights
# ---------------------------------------------------------------------------
def _floats(values: Any) -> list[float]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def check_grid(grid: dict[str, Any] | None, spatial_shape: Sequence[int]) -> dict | None:
    """Validate a grid description against a spatial shape; return it JSON-ready.

    Coordinates given as arrays or tensors become lists of floats so that the
    encoder's ``config`` stays JSON-serialisable.

    Parameters
    ----------
    grid : dict or None
        ``{"kind": "latlon", "lat", "lon"}``, ``{"kind": "points", "lat",
        "lon"}`` or ``{"kind": "generic", "n", "periodic"}`` (see
        :class:`xlatda.encoders.base.Encoder`).
    spatial_shape : sequence of int
        ``(nlat, nlon)`` or ``(S,)``.

    Raises
    ------
    ConfigError
        For an unknown kind or coordinates that do not match the shape.

    Examples
    --------
    >>> check_grid({"kind": "latlon", "lat": [-45, 45], "lon": [0, 120, 240]}, (2, 3))["lat"]
    [-45.0, 45.0]
    """
    if grid is None:
        return None
    grid = dict(grid)
    kind = grid.get("kind")
    shape = tuple(int(s) for s in spatial_shape)
    if kind == "latlon":
        grid["lat"], grid["lon"] = _floats(grid["lat"]), _floats(grid["lon"])
        want = (len(grid["lat"]), len(grid["lon"]))
    elif kind == "points":
        grid["lat"], grid["lon"] = _floats(grid["lat"]), _floats(grid["lon"])
        if len(grid["lat"]) != len(grid["lon"]):
            raise ConfigError(
                f"a 'points' grid needs as many latitudes as longitudes, got "
                f"{len(grid['lat'])} and {len(grid['lon'])}"
            )
        want = (len(grid["lat"]),)
    elif kind == "generic":
        grid["n"] = int(grid.get("n", shape[0] if shape else 0))
        grid["periodic"] = bool(grid.get("periodic", False))
        want = (grid["n"],)
    else:
        raise ConfigError(f"grid kind must be 'latlon', 'points' or 'generic', got {kind!r}")
    if want != shape:
        raise ConfigError(
            f"the {kind!r} grid describes a spatial shape {want} but the encoder was "
            f"built for {shape}; pass matching spatial_shape and grid"
        )
    return grid


def _normalised_coslat(lat_deg: Tensor) -> Tensor:
    try:
        return cos_lat_weights(lat_deg)
    except ConfigError:  # every latitude at a pole: no area to weight by
        return torch.ones_like(torch.as_tensor(lat_deg, dtype=torch.float64))


def area_weights(
    grid: dict[str, Any] | None,
    spatial_shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Area weights on the training layout, shape ``spatial_shape``, mean one.

    ``cos(lat)`` for ``latlon`` (broadcast along longitude) and ``points``
    grids; ones for ``generic`` grids and when ``grid`` is ``None``.

    Examples
    --------
    >>> w = area_weights({"kind": "latlon", "lat": [-60.0, 0.0, 60.0], "lon": [0.0, 180.0]},
    ...                  (3, 2))
    >>> [round(v, 3) for v in w[:, 0].tolist()], round(float(w.mean()), 6)
    ([0.75, 1.5, 0.75], 1.0)
    """
    shape = tuple(int(s) for s in spatial_shape)
    kind = None if grid is None else grid.get("kind")
    if kind == "latlon":
        lat = torch.as_tensor(grid["lat"], dtype=torch.float64)
        w = _normalised_coslat(lat)[:, None].expand(shape)
    elif kind == "points":
        w = _normalised_coslat(torch.as_tensor(grid["lat"], dtype=torch.float64))
    else:
        w = torch.ones(shape, dtype=torch.float64)
    return w.to(dtype=dtype, device=device).contiguous()


def point_weights(grid: dict[str, Any] | None, points: Tensor) -> Tensor:
    """``cos(lat)`` weights of scattered points, mean one, shape ``(P,)``.

    Uniform for ``generic`` grids or an unknown grid. ``points`` is ``(P, 2)``
    (latitude, longitude in degrees) or ``(P, 1)``.
    """
    kind = None if grid is None else grid.get("kind")
    if kind in ("latlon", "points") and points.dim() == 2 and points.shape[-1] == 2:
        return _normalised_coslat(points[:, 0].detach())
    return torch.ones(points.shape[0], dtype=points.dtype, device=points.device)


def weighted_mse(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Area-weighted mean squared error ``mean(w * (pred - target)**2)``.

    Parameters
    ----------
    pred, target : Tensor
        ``(B, C, *spatial)``.
    weights : Tensor, optional
        ``spatial`` shaped (mean one); broadcast over batch and channels.

    Examples
    --------
    >>> x = torch.zeros(2, 1, 3, 2)
    >>> weighted_mse(x + 1.0, x, torch.tensor([[0.5, 0.5], [2.0, 2.0], [0.5, 0.5]])).item()
    1.0
    """
    err = (pred - target) ** 2
    if weights is not None:
        err = err * weights
    return err.mean()


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """Run a block with the global torch RNG seeded, restoring it afterwards.

    Used for weight initialisation and randomised SVD, whose torch functions
    take no generator: the caller's RNG state is left exactly as it was.

    Examples
    --------
    >>> with seeded(0):
    ...     a = torch.rand(2)
    >>> with seeded(0):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b)
    True
    """
    dev = torch.device("cpu" if device is None else device)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


# ---------------------------------------------------------------------------
# training loop
# ---------------------------------------------------------------------------
def _resolve_progress(progress: bool | None) -> bool:
    return bool(get_options()["progress"] if progress is None else progress)


def _take(data: Sequence[Tensor | None], idx: Tensor, device, dtype) -> tuple:
    out = []
    for t in data:
        if t is None:
            out.append(None)
        else:
            out.append(t[idx.to(t.device)].to(device=device, dtype=dtype))
    return tuple(out)


def _state_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_module(
    module: nn.Module,
    loss_fn: Callable[[tuple, torch.Generator], Tensor],
    train: Sequence[Tensor | None],
    val: Sequence[Tensor | None] | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    patience: int | None = 20,
    min_delta: float = 0.0,
    val_fraction: float = 0.1,
    lr_plateau: bool = False,
    plateau_factor: float = 0.5,
    plateau_patience: int = 5,
    grad_clip: float | None = None,
    lr_schedule: str | None = None,
    desc: str = "training",
) -> dict[str, Any]:
    """Train ``module`` in place with minibatch Adam; return the history.

    Parameters
    ----------
    module : torch.nn.Module
        Already on ``device`` and in ``dtype``; left with the weights of the
        best epoch.
    loss_fn : callable
        ``loss_fn(batch, generator) -> scalar`` where ``batch`` is the tuple of
        minibatch tensors (``None`` entries of ``train`` stay ``None``) and
        ``generator`` a :class:`torch.Generator` on ``device`` for any noise
        (VAE reparameterisation). Called under ``no_grad`` with
        ``module.eval()`` for validation.
    train : sequence of Tensor or None
        Training tensors sharing their first (sample) dimension ``N``; they may
        stay on the CPU, minibatches are moved to ``device``.
    val : sequence of Tensor or None, optional
        Validation tensors in the same order. When ``None``, a fraction
        ``val_fraction`` of the training samples is held out (chosen with the
        seeded generator); ``val_fraction=0`` trains on everything and then
        early stopping watches the training loss.
    epochs, batch_size, lr, weight_decay : int, int, float, float
        Adam settings; the last minibatch of an epoch may be smaller.
    seed : int
        Seeds the split, the minibatch order and ``generator``.
    device, dtype
        Where and in which precision minibatches are evaluated.
    progress : bool, optional
        Show a tqdm bar; ``None`` takes ``xlatda.get_options()["progress"]``.
    patience : int or None
        Stop after this many epochs without an improvement of more than
        ``min_delta`` of the monitored loss; ``None`` never stops early. The
        weights of the best epoch are restored in every case.
    lr_plateau : bool
        Use :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` on the
        monitored loss (``plateau_factor``, ``plateau_patience``).
    grad_clip : float, optional
        Clip the global gradient norm.
    lr_schedule : {None, "cosine"}
        ``"cosine"``: the learning rate decays from ``lr`` to 0 along a half
        cosine over the ``epochs`` planned (one step per minibatch; Loshchilov
        & Hutter 2017). What a noisy loss (the ε-loss of a score network, one
        random noise level per sample) needs to settle: at a constant rate
        the last weights keep the minibatch noise. ``None``: constant (or
        ``lr_plateau``).

    Returns
    -------
    dict
        ``{"train_loss": [...], "val_loss": [...], "lr": [...], "epochs": n,
        "best_epoch": k, "stopped_early": bool, "seconds": t}``, one entry
        per epoch run (``val_loss`` empty without validation data).

    Notes
    -----
    Compute: ``epochs * N`` forward/backward passes. Memory: one minibatch
    of activations and two copies of the weights (current and best). A
    non-finite training loss stops training with a :class:`RuntimeWarning`
    and restores the best weights seen so far.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(
            f"need epochs >= 0, batch_size >= 1 and lr > 0, got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if lr_schedule not in (None, "cosine"):
        raise ConfigError(f"lr_schedule must be None or 'cosine', got {lr_schedule!r}")
    if lr_schedule is not None and lr_plateau:
        raise ConfigError("lr_schedule='cosine' and lr_plateau=True both set the learning "
                          "rate; choose one")
    device = torch.device(device)
    train = tuple(train)
    n = int(next(t for t in train if t is not None).shape[0])
    for t in train:
        if t is not None and t.shape[0] != n:
            raise ShapeError(f"training tensors disagree on the sample count: {n} vs {t.shape[0]}")

    split_gen = torch.Generator().manual_seed(int(seed))
    train_idx = torch.arange(n)
    val_data: tuple | None = None
    if val is not None:
        val_data = tuple(val)
    elif val_fraction > 0:
        n_val = math.floor(n * val_fraction)
        if 0 < n_val < n:
            perm = torch.randperm(n, generator=split_gen)
            train_idx, val_idx = perm[n_val:].sort().values, perm[:n_val].sort().values
            val_data = tuple(None if t is None else t[val_idx.to(t.device)] for t in train)
    n_train = int(train_idx.numel())

    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
    val_gen = torch.Generator(device=device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=plateau_factor, patience=plateau_patience
        )
        if lr_plateau
        else None
    )
    per_step = None
    if lr_schedule == "cosine":
        total_steps = max(1, epochs * math.ceil(n_train / batch_size))
        per_step = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

    def evaluate() -> float:
        val_gen.manual_seed(int(seed) + 2)  # common random numbers across epochs
        module.eval()
        total, count = 0.0, 0
        m = int(next(t for t in val_data if t is not None).shape[0])
        with torch.no_grad():
            for start in range(0, m, 4 * batch_size):
                idx = torch.arange(start, min(m, start + 4 * batch_size))
                batch = _take(val_data, idx, device, dtype)
                total += float(loss_fn(batch, val_gen)) * idx.numel()
                count += idx.numel()
        return total / max(count, 1)

    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "lr": []}
    best = math.inf
    best_state = _state_copy(module)
    best_epoch, bad, stopped = -1, 0, False
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not _resolve_progress(progress), leave=False)
    for epoch in bar:
        module.train()
        perm = train_idx[torch.randperm(n_train, generator=split_gen)]
        total = 0.0
        for start in range(0, n_train, batch_size):
            idx = perm[start : start + batch_size]
            batch = _take(train, idx, device, dtype)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(batch, noise_gen)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if per_step is not None:
                per_step.step()
            total += float(loss.detach()) * idx.numel()
        train_loss = total / n_train
        history["train_loss"].append(train_loss)
        history["lr"].append(opt.param_groups[0]["lr"])
        if not math.isfinite(train_loss):
            warnings.warn(
                f"{desc}: training loss is {train_loss} at epoch {epoch}; stopping and "
                "restoring the best weights (lower lr or normalise the data)",
                RuntimeWarning,
                stacklevel=2,
            )
            stopped = True
            break
        monitored = train_loss
        if val_data is not None:
            monitored = evaluate()
            history["val_loss"].append(monitored)
        if sched is not None:
            sched.step(monitored)
        bar.set_postfix(train=f"{train_loss:.4g}", val=f"{monitored:.4g}")
        if monitored < best - min_delta:
            best, best_epoch, bad = monitored, epoch, 0
            best_state = _state_copy(module)
        else:
            bad += 1
            if patience is not None and bad >= patience:
                stopped = True
                break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    history.update(
        epochs=len(history["train_loss"]),
        best_epoch=best_epoch,
        stopped_early=stopped,
        seconds=time.perf_counter() - t0,
    )
    return history


# ---------------------------------------------------------------------------
# auto-decoding
# ---------------------------------------------------------------------------
def minimise_per_sample(
    losses: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    steps: int,
    lr: float,
    factor: float = 0.5,
    patience: int = 20,
    min_lr: float | None = None,
    rel_tol: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    progress: bool | None = False,
    desc: str = "autodecode",
) -> tuple[Tensor, Tensor]:
    """Adam on ``z (B, K)`` for a batch of independent per-sample losses.

    ``losses(z) -> (B,)``, where row ``b`` depends on ``z[b]`` only; Adam's
    statistics are elementwise, so the batch is ``B`` separate optimisations
    run as one tensor computation. Each sample has its own learning rate,
    multiplied by ``factor`` when its loss has not improved by the relative
    amount ``rel_tol`` for ``patience`` steps; a sample whose rate falls below
    ``min_lr`` (default ``lr / 100``) stops moving, and the loop ends when every
    sample has stopped or after ``steps`` steps.

    Returns
    -------
    best_z : Tensor
        ``(B, K)``, the best ``z`` met for each sample (detached).
    best : Tensor
        ``(B,)``, their losses.
    """
    b1, b2 = betas
    min_lr = lr / 100.0 if min_lr is None else float(min_lr)
    with torch.inference_mode(False), torch.enable_grad():
        z = z0.detach().contiguous().clone().requires_grad_(True)
        B = z.shape[0]
        m = torch.zeros_like(z)
        v = torch.zeros_like(z)
        rate = torch.full((B,), float(lr), dtype=z.dtype, device=z.device)
        best_z = z.detach().clone()
        best = torch.full((B,), math.inf, dtype=z.dtype, device=z.device)
        ref = best.clone()  # the loss level a plateau test must beat
        bad = torch.zeros(B, dtype=torch.long, device=z.device)
        bar = tqdm(range(1, int(steps) + 1), desc=desc, leave=False,
                   disable=not _resolve_progress(progress))
        for t in bar:
            per = losses(z)
            (g,) = torch.autograd.grad(per.sum(), z)
            with torch.no_grad():
                per = per.detach()
                better = per < best
                best = torch.where(better, per, best)
                best_z = torch.where(better[:, None], z, best_z)
                improved = per < ref * (1.0 - rel_tol)
                ref = torch.where(improved, per, ref)
                bad = torch.where(improved, torch.zeros_like(bad), bad + 1)
                plateau = bad >= patience
                rate = torch.where(plateau, rate * factor, rate)
                bad = torch.where(plateau, torch.zeros_like(bad), bad)
                active = rate >= min_lr
                if not bool(active.any()):
                    break
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
                z.sub_((rate * active)[:, None] * step)
            if t % 10 == 0:
                bar.set_postfix(loss=f"{float(best.mean()):.4g}")
        bar.close()
        with torch.no_grad():
            per = losses(z).detach()
            better = per < best
            best = torch.where(better, per, best)
            best_z = torch.where(better[:, None], z.detach(), best_z)
    return best_z, best


def autodecode(
    decode_at_fn: Callable[[Tensor, Any, Any], Tensor],
    values: Tensor,
    points: Any,
    channel: Any,
    z0: Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weights: Tensor | None = None,
    l2: float = 0.0,
    factor: float = 0.5,
    patience: int = 20,
    min_lr: float | None = None,
    rel_tol: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    progress: bool | None = None,
    return_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fit latent vectors to values at points by Adam on ``z`` (decoder frozen).

    Parameters
    ----------
    decode_at_fn : callable
        ``decode_at_fn(z, points, channel) -> (B, P)``, differentiable in ``z``
        (an encoder's ``decode_at``).
    values : Tensor
        ``(B, P)`` values to fit.
    points, channel
        Passed through to ``decode_at_fn`` (``(P, 2)`` and ``(P,)`` for the
        encoders).
    z0 : Tensor
        ``(B, K)`` or ``(K,)`` starting point.
    steps : int
        Maximum number of Adam steps.
    lr : float
        Initial learning rate (per sample).
    weights : Tensor, optional
        Point weights, broadcastable to ``(B, P)`` (area weights, inverse error
        variances, zeros for missing values); ones when ``None``.
    l2 : float
        Weight of the ridge penalty ``l2 * ||z||^2``.
    factor, patience, min_lr, rel_tol : float, int, float or None, float
        Per-sample plateau schedule: a sample whose loss has not improved by
        the relative amount ``rel_tol`` for ``patience`` steps has its
        learning rate multiplied by ``factor``; a sample whose rate falls
        below ``min_lr`` (default ``lr / 100``) stops moving; the loop ends
        when every sample has stopped.
    betas, eps
        Adam constants.
    progress : bool, optional
        Show a tqdm bar (``None``: ``xlatda.get_options()["progress"]``).
    return_loss : bool
        Also return the best loss of each sample, ``(B,)``.

    Returns
    -------
    Tensor
        ``(B, K)``, the best ``z`` met for each sample (detached).

    Notes
    -----
    Runs with gradients enabled even when called under
    :func:`torch.inference_mode`; gradients are taken with respect to ``z``
    only (``torch.autograd.grad``), so decoder parameters accumulate none.
    Compute: up to ``steps`` batched forward/backward passes of the decoder at
    the ``P`` points.
    """
    if values.dim() != 2:
        raise ShapeError(f"values must be (batch, points), got {tuple(values.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        values = values.detach().clone()
        z = z0.detach().clone().to(values.device)
        if z.dim() == 1:
            z = z.expand(values.shape[0], -1)
        w = None if weights is None else weights.detach().clone().to(values)

        def losses(zz: Tensor) -> Tensor:
            err = (decode_at_fn(zz, points, channel) - values) ** 2
            if w is not None:
                err = err * w
            out = err.mean(-1)
            if l2:
                out = out + l2 * (zz**2).sum(-1)
            return out

        best_z, best = minimise_per_sample(
            losses, z, steps=steps, lr=lr, factor=factor, patience=patience, min_lr=min_lr,
            rel_tol=rel_tol, betas=betas, eps=eps, progress=progress,
        )
    if return_loss:
        return best_z, best
    return best_z


# ---------------------------------------------------------------------------
# observation operators of gridded encoders
# ---------------------------------------------------------------------------
class PointOperatorCache:
    """Observation operators of a training layout at point sets, cached.

    The operator maps fields ``(..., C, *spatial)`` to values ``(..., P)`` at
    ``points`` (``(P, 2)`` latitude/longitude in degrees, or ``(P, 1)``
    fractional indices for a generic dimension) for the state channel
    ``channel`` (``(P,)`` long) of each point:

    - ``latlon`` grid: bilinear interpolation, periodic in longitude
      (:func:`xlatda.grid_interpolation_matrix`);
    - ``points`` grid: nearest neighbour (``k=1``) or inverse-distance
      weighting of ``k`` neighbours (:func:`xlatda.nearest_point_matrix`);
    - ``generic`` grid: linear interpolation in the index
      (:func:`xlatda.index_interpolation_matrix`).

    The last ``maxsize`` operators are kept, keyed by the content of
    ``points`` and ``channel`` and by dtype and device. Operators are always
    built outside inference mode so that they can take part in autograd
    (auto-decoding, variational assimilation) later.

    Parameters
    ----------
    neighbours : int
        ``k`` for point-set grids.
    maxsize : int
        Number of point sets kept.
    """

    def __init__(self, neighbours: int = 1, maxsize: int = 8) -> None:
        self.neighbours = int(neighbours)
        self.maxsize = int(maxsize)
        self._items: OrderedDict = OrderedDict()
        self._valid: Tensor | None = None
        self._valid_key = ""

    def set_valid(self, valid: Any) -> None:
        """Cells with data, ``(C, *spatial)`` bool (``None``: all).

        A model with a fixed mask (the sea of a land-only product) has no data
        in the masked cells; the decoded fields hold a fill value there. Point
        weights touching them are dropped and the rest renormalised, so a
        coastal point reads the cells with data only (a bilinear value from
        fewer corners) instead of blending in the fill. Operators are keyed by
        the mask's content too.
        """
        if valid is None:
            self._valid, self._valid_key = None, ""
            return
        v = torch.as_tensor(np.asarray(valid, dtype=bool))
        self._valid = v.reshape(v.shape[0], -1)
        self._valid_key = self._digest(self._valid)

    @staticmethod
    def _digest(t: Tensor) -> str:
        arr = t.detach().cpu().contiguous().numpy()
        return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()

    def get(
        self,
        grid: dict[str, Any] | None,
        n_channels: int,
        spatial_shape: Sequence[int],
        points: Tensor,
        channel: Tensor,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> ObservationOperator:
        """Return the :class:`xlatda.sparse_interp.ObservationOperator` for these points.

        Raises
        ------
        ConfigError
            If the encoder has no grid, or a channel index is out of range.
        ShapeError
            If ``points`` or ``channel`` have the wrong shape.
        ObservationError
            If a point lies outside the grid's domain (regional grids).
        """
        if grid is None:
            raise ConfigError(
                "decode_at/encode_from need to know where the training layout lives; "
                "construct the encoder with grid={...} (see Encoder)"
            )
        kind = grid["kind"]
        points = torch.as_tensor(points)
        channel = torch.as_tensor(channel)
        ncol = 1 if kind == "generic" else 2
        if kind == "generic" and points.dim() == 1:
            points = points[:, None]
        if points.dim() != 2 or points.shape[1] != ncol:
            raise ShapeError(
                f"points must be (P, {ncol}) for a {kind!r} grid, got {tuple(points.shape)}"
            )
        if channel.shape != (points.shape[0],):
            raise ShapeError(
                f"channel must be ({points.shape[0]},), one channel per point, got "
                f"{tuple(channel.shape)}"
            )
        key = (self._digest(points), self._digest(channel), dtype, str(device),
               self._valid_key)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        with torch.inference_mode(False), torch.no_grad():
            op = self._build(
                grid,
                n_channels,
                tuple(spatial_shape),
                points.clone(),
                channel.clone(),
                dtype,
                device,
            )
        self._items[key] = op
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return op

    def _build(self, grid, n_channels, spatial_shape, points, channel, dtype, device):
        mat = interpolation_weights(grid, points, self.neighbours, dtype=dtype,
                                    device=device)
        if self._valid is not None:
            mat = _renormalised(mat, channel, self._valid, points)
        return ObservationOperator(mat, channel.to(device), n_channels, spatial_shape=spatial_shape)

    def clear(self) -> None:
        """Forget every cached operator."""
        self._items.clear()

    def __deepcopy__(self, memo):
        out = PointOperatorCache(self.neighbours, self.maxsize)
        out._valid, out._valid_key = self._valid, self._valid_key  # (never written in place)
        return out

    def __getstate__(self):
        return {"neighbours": self.neighbours, "maxsize": self.maxsize,
                "valid": None if self._valid is None else self._valid.numpy()}

    def __setstate__(self, state):
        valid = state.pop("valid", None)
        self.__init__(**state)
        self.set_valid(valid)


def interpolation_weights(grid: dict[str, Any], points: Tensor, neighbours: int = 1, *,
                          dtype: torch.dtype = torch.float64,
                          device: torch.device | str = "cpu") -> Tensor:
    """Interpolation weights ``(P, S)`` of the grid's cells at ``points`` (no mask).

    ``grid`` as an encoder's ``grid``; the kinds and ``points`` columns as in
    :class:`PointOperatorCache`.
    """
    pts = torch.as_tensor(points).to(device=device, dtype=torch.float64)
    kw = {"dtype": dtype, "device": device}
    kind = grid["kind"]
    if kind == "latlon":
        return grid_interpolation_matrix(
            torch.as_tensor(grid["lat"], dtype=torch.float64),
            torch.as_tensor(grid["lon"], dtype=torch.float64), pts[:, 0], pts[:, 1], **kw)
    if kind == "points":
        return nearest_point_matrix(
            torch.as_tensor(grid["lat"], dtype=torch.float64),
            torch.as_tensor(grid["lon"], dtype=torch.float64), pts[:, 0], pts[:, 1],
            k=int(neighbours), **kw)
    return index_interpolation_matrix(int(grid["n"]), pts[:, 0],
                                      periodic=bool(grid.get("periodic", False)),
                                      method="linear", **kw)


def without_data(mat: Tensor, channel: Tensor, valid: Tensor) -> Tensor:
    """``(P,)`` bool: the rows of point weights ``mat`` ``(P, S)`` whose every weight
    falls on cells ``valid`` ``(C, S)`` marks as empty for the row's channel.

    Examples
    --------
    >>> import torch
    >>> mat = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    >>> valid = torch.tensor([[True, False, False]])
    >>> without_data(mat, torch.zeros(2, dtype=torch.long), valid).tolist()
    [False, True]
    """
    _, _, _, total, kept = _kept_weights(mat, channel, valid)
    return _empty_rows(total, kept)


def _kept_weights(mat: Tensor, channel: Tensor, valid: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``mat`` as coalesced COO, which of its entries fall on ``valid`` cells, and each
    row's sum of all weights and of the kept ones: ``(coo, vals, keep, total, kept)``."""
    if mat.layout != torch.sparse_coo:
        mat = mat.to_sparse(layout=torch.sparse_coo)
    coo = mat.coalesce()
    rows, cols = coo.indices()
    vals = coo.values()
    keep = valid.to(rows.device)[channel.to(rows.device)[rows], cols]
    total = torch.zeros(mat.shape[0], dtype=vals.dtype, device=vals.device)
    total.index_add_(0, rows, vals)
    kept = torch.zeros_like(total)
    kept.index_add_(0, rows, torch.where(keep, vals, torch.zeros_like(vals)))
    return coo, vals, keep, total, kept


def _empty_rows(total: Tensor, kept: Tensor) -> Tensor:
    """Rows with weights whose kept part is zero (to rounding)."""
    return (kept.abs() <= 1e-12 * total.abs().clamp_min(1e-300)) & (total != 0)


def _renormalised(mat: Tensor, channel: Tensor, valid: Tensor, points: Tensor) -> Tensor:
    """Point weights ``(P, S)`` without the cells ``valid`` ``(C, S)`` marks as empty
    for each point's channel, each row rescaled to its former sum (COO result).

    Raises
    ------
    ObservationError
        If a point's weights all fall on empty cells (nothing to read there).
    """
    from xlatda.errors import ObservationError

    coo, vals, keep, total, kept = _kept_weights(mat, channel, valid)
    rows = coo.indices()[0]
    empty = _empty_rows(total, kept)
    if bool(empty.any()):
        bad = torch.nonzero(empty).reshape(-1)[:5].tolist()
        raise ObservationError(
            f"{int(empty.sum())} observation place(s) (first at index {bad}, "
            f"{points[bad[0]].tolist()}) lie only on cells where the model has no data (its "
            "fixed mask, e.g. the sea of a land-only product); drop them before assimilating")
    scale = torch.where(kept != 0, total / torch.where(kept != 0, kept, torch.ones_like(kept)),
                        torch.ones_like(kept))
    new_vals = torch.where(keep, vals * scale[rows], torch.zeros_like(vals))
    return torch.sparse_coo_tensor(coo.indices(), new_vals, coo.shape,
                                   check_invariants=True).coalesce()
