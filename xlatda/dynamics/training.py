r"""Training latent dynamics on encoded trajectories, with scheduled re-anchoring.

Given encoded trajectories :math:`z^{(i)}_0, \dots, z^{(i)}_{T_i-1}` (at ODE
times :math:`s^{(i)}_k`, by default :math:`s_k = k`), training cuts windows
of ``W`` consecutive snapshots inside each trajectory (a window never crosses
a trajectory boundary) and rolls the model out from the window's first code:

.. math::

    \hat z_0 = z_0, \qquad
    \hat z_{k+1} = G\big(a_k \, z_k + (1 - a_k)\, \hat z_k;\ s_{k+1} - s_k, \theta\big),
    \qquad a_k \sim \mathrm{Bernoulli}(p(e)),

for :math:`k = 0, \dots, W-2`, where :math:`G` is one call of the model's
``step`` and :math:`a_k` is drawn independently for every window and step
(re-anchoring: with probability :math:`p` the rolled-out state is reset to
the true code before the step; :math:`a_0 = 1` always). The loss is

.. math::

    L = \frac{1}{W-1} \sum_{k=1}^{W-1} \operatorname{mean}\big(\hat z_k - z_k\big)^2

in latent space (``loss="latent"``), or the weighted mean squared
difference of ``decode_fn(ẑ_k)`` and ``decode_fn(z_k)`` when a decoder is
given. The re-anchoring probability falls over the epochs
:math:`e = 0, \dots, E-1` (``reanchor="linear"``, the default):

.. math::

    p(e) = \max\!\Big(0,\ 1 - \frac{e}{\lceil f E \rceil}\Big),
    \qquad f = \texttt{reanchor\_fraction}\ (0.5),

i.e. teacher forcing (one-step training) at the first epoch, a linear fade,
and pure roll-out (p = 0) for the last ``(1 - f)`` of the epochs. Validation
always scores the pure roll-out (p = 0); the weights with the lowest
validation loss are kept, and training stops after ``patience`` epochs
without improvement at a constant ``p`` (the count restarts while ``p``
changes).

References
----------
Li, Dong, Zhang (2023). Latent assimilation with implicit neural
representations for unknown dynamics. arXiv:2309.09574 (windows of ~10
encoded snapshots, roll-out MSE, fading re-anchoring).

Bengio, Vinyals, Jaitly, Shazeer (2015). Scheduled sampling for sequence
prediction with recurrent neural networks. NeurIPS.

Examples
--------
>>> import torch
>>> from xlatda.dynamics.latent_ode import LatentODE
>>> from xlatda.dynamics.training import fit_dynamics
>>> t = torch.arange(40.0) * 0.2
>>> traj = torch.stack((torch.cos(t), torch.sin(t)), -1)[None]   # (1, 40, 2)
>>> model = LatentODE(2, width=16, depth=1, step_size=1.0, seed=0)
>>> hist = fit_dynamics(model, traj, window=4, epochs=3, progress=False, seed=0)
>>> len(hist["train_loss"]), hist["val_loss"][-1] < hist["val_loss"][0]
(3, True)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xlatda.errors import ConfigError, ShapeError
from xlatda.options import get_options

__all__ = ["fit_dynamics", "reanchor_probability", "window_indices"]


def window_indices(lengths: Sequence[int] | Tensor, window: int, stride: int = 1) -> Tensor:
    """All windows of ``window`` consecutive snapshots inside each trajectory.

    Parameters
    ----------
    lengths : sequence of int
        Number of snapshots ``T_i`` of each trajectory.
    window : int
        Snapshots per window (``>= 2``).
    stride : int
        Offset between the starts of successive windows of one trajectory.

    Returns
    -------
    Tensor
        ``(n_windows, 2)`` long tensor of ``(trajectory, start)``: the window
        covers snapshots ``start, ..., start + window - 1`` of that one
        trajectory. Trajectories shorter than ``window`` give none.

    Examples
    --------
    >>> window_indices([3, 5], window=3).tolist()
    [[0, 0], [1, 0], [1, 1], [1, 2]]
    """
    if int(window) < 2 or int(stride) < 1:
        raise ConfigError(f"need window >= 2 and stride >= 1, got {window=} {stride=}")
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    count = ((lengths - window).clamp_min(-1) // stride + 1).clamp_min(0)
    traj = torch.repeat_interleave(torch.arange(lengths.numel()), count)
    first = torch.cumsum(count, 0) - count
    start = (torch.arange(int(count.sum())) - first[traj]) * stride
    return torch.stack((traj, start), dim=-1)


def reanchor_probability(
    epoch: int,
    epochs: int,
    schedule: str | float | Callable[[int, int], float] = "linear",
    fraction: float = 0.5,
) -> float:
    """Re-anchoring probability ``p(epoch)`` (see the module docstring).

    Parameters
    ----------
    epoch, epochs : int
        Current epoch (0-based) and total number of epochs ``E``.
    schedule : {"linear", "none"}, float or callable
        ``"linear"``: ``max(0, 1 - epoch / ceil(fraction * E))``; ``"none"``:
        0 (pure roll-out throughout); a float: that constant; a callable
        ``(epoch, epochs) -> p``.
    fraction : float
        Share of the epochs over which ``"linear"`` fades from 1 to 0.

    Examples
    --------
    >>> [reanchor_probability(e, 8) for e in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    if callable(schedule):
        p = float(schedule(epoch, epochs))
    elif isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        p = float(schedule)
    elif schedule == "none":
        p = 0.0
    elif schedule == "linear":
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"reanchor_fraction must be in (0, 1], got {fraction!r}")
        p = max(0.0, 1.0 - epoch / max(1, math.ceil(fraction * epochs)))
    else:
        raise ConfigError(
            f"unknown reanchor schedule {schedule!r}; use 'linear', 'none', a float or a callable"
        )
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"re-anchoring probability must be in [0, 1], got {p} at epoch {epoch}")
    return p


# ---------------------------------------------------------------------------
# data handling
# ---------------------------------------------------------------------------


class _Data:
    """Trajectories padded to ``(n, T_max, d)`` with times ``(n, T_max)`` and theta."""

    def __init__(self, z: Tensor, t: Tensor, lengths: Tensor, theta: Tensor | None) -> None:
        self.z, self.t, self.lengths, self.theta = z, t, lengths, theta

    def windows(self, index: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Gather ``(B, W, d)`` codes, ``(B, W)`` times and ``(B, p)`` theta."""
        traj = index[:, 0]
        cols = index[:, 1:2] + torch.arange(window, device=index.device)
        z = self.z[traj[:, None], cols]
        t = self.t[traj[:, None], cols]
        th = None if self.theta is None else self.theta[traj]
        return z, t, th


def _prepare(
    trajectories: Tensor | Sequence[Tensor],
    times: Tensor | Sequence[Tensor] | None,
    theta: Tensor | None,
    latent_dim: int,
    n_params: int,
    device: torch.device,
    dtype: torch.dtype,
    what: str = "trajectories",
) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
    """Validate and split into per-trajectory lists ``z_i (T_i, d)``, ``t_i (T_i,)``."""
    if isinstance(trajectories, Tensor):
        if trajectories.dim() == 2:
            trajectories = trajectories[None]
        if trajectories.dim() != 3:
            raise ShapeError(
                f"{what} must be (n_traj, T, latent) or a list of (T_i, latent) tensors, "
                f"got shape {tuple(trajectories.shape)}"
            )
        zs = list(trajectories.unbind(0))
    else:
        zs = list(trajectories)
    if not zs:
        raise ShapeError(f"{what} is empty; pass at least one trajectory")
    for i, z in enumerate(zs):
        z = torch.as_tensor(z)
        if z.dim() != 2 or z.shape[-1] != latent_dim:
            raise ShapeError(f"{what}[{i}] must have shape (T, {latent_dim}), got {tuple(z.shape)}")
        zs[i] = z.to(device=device, dtype=dtype)
    if times is None:
        ts = [torch.arange(z.shape[0], device=device, dtype=dtype) for z in zs]
    else:
        if isinstance(times, Tensor) and times.dim() == 1:
            ts = [times] * len(zs)
        elif isinstance(times, Tensor) and times.dim() == 2:
            ts = list(times.unbind(0))
        else:
            ts = list(times)
        if len(ts) != len(zs):
            raise ShapeError(f"got {len(ts)} time arrays for {len(zs)} {what}")
        for i, (t, z) in enumerate(zip(ts, zs)):
            t = torch.as_tensor(t).to(device=device, dtype=dtype)
            if t.shape != (z.shape[0],):
                raise ShapeError(
                    f"times[{i}] must have shape ({z.shape[0]},) like its trajectory, "
                    f"got {tuple(t.shape)}"
                )
            if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
                raise ConfigError(f"times[{i}] must be strictly increasing")
            ts[i] = t
    th = None
    if n_params > 0:
        if theta is None:
            raise ConfigError(
                f"the model is conditioned on {n_params} parameter(s); pass theta of shape "
                f"({len(zs)}, {n_params}), one row per trajectory"
            )
        th = torch.as_tensor(theta).to(device=device, dtype=dtype)
        if th.shape != (len(zs), n_params):
            raise ShapeError(
                f"theta must have shape ({len(zs)}, {n_params}) (one row per trajectory), "
                f"got {tuple(th.shape)}"
            )
    elif theta is not None:
        raise ConfigError("theta was given but the model has n_params=0")
    return zs, ts, th


def _pad(zs: list[Tensor], ts: list[Tensor], theta: Tensor | None) -> _Data:
    n, tmax, d = len(zs), max(z.shape[0] for z in zs), zs[0].shape[-1]
    z = zs[0].new_zeros((n, tmax, d))
    t = ts[0].new_zeros((n, tmax))
    for i, (zi, ti) in enumerate(zip(zs, ts)):  # one copy per trajectory, not per member
        z[i, : zi.shape[0]] = zi
        t[i, : ti.shape[0]] = ti
    lengths = torch.tensor([zi.shape[0] for zi in zs], device=z.device)
    return _Data(z, t, lengths, theta)


def _split(
    zs: list[Tensor], ts: list[Tensor], theta: Tensor | None, fraction: float, window: int
) -> tuple[tuple, tuple]:
    """Cut the last ``fraction`` of every long-enough trajectory off as validation."""
    tr_z, tr_t, va_z, va_t, tr_th, va_th = [], [], [], [], [], []
    for i, (z, t) in enumerate(zip(zs, ts)):
        n_val = round(fraction * z.shape[0])
        if n_val >= window and z.shape[0] - n_val >= window:
            tr_z.append(z[:-n_val])
            tr_t.append(t[:-n_val])
            va_z.append(z[-n_val:])
            va_t.append(t[-n_val:])
            if theta is not None:
                tr_th.append(theta[i])
                va_th.append(theta[i])
        else:
            tr_z.append(z)
            tr_t.append(t)
            if theta is not None:
                tr_th.append(theta[i])
    if not va_z:
        raise ConfigError(
            f"val_fraction={fraction} leaves no trajectory with {window} validation and "
            f"{window} training snapshots; pass val_trajectories, a smaller window, or "
            "val_fraction=0"
        )
    stack = (lambda rows: torch.stack(rows)) if theta is not None else (lambda rows: None)
    return (tr_z, tr_t, stack(tr_th)), (va_z, va_t, stack(va_th))


# ---------------------------------------------------------------------------
# roll-out and loss
# ---------------------------------------------------------------------------


def _rollout(
    model: nn.Module,
    z: Tensor,
    t: Tensor,
    theta: Tensor | None,
    p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Roll out ``(B, W, d)`` windows; returns predictions ``(B, W-1, d)``."""
    steps = z.shape[1] - 1
    dt = t[:, 1:] - t[:, :-1]
    regular = bool((dt == dt[:1, :1]).all())
    state = z[:, 0]
    out = []
    for k in range(steps):  # loop over time steps; members/windows are batched
        if k > 0 and p > 0.0:
            if p >= 1.0:
                state = z[:, k]
            else:
                u = torch.rand(z.shape[0], generator=generator, device=generator.device)
                keep_true = (u < p).to(z.device)[:, None]
                state = torch.where(keep_true, z[:, k], state)
        step_dt = float(dt[0, k]) if regular else dt[:, k]
        state = model.step(state, step_dt, theta)
        out.append(state)
    return torch.stack(out, dim=1)


def _loss_fn(
    loss: str | Callable[[Tensor], Tensor],
    weights: Tensor | None,
) -> Callable[[Tensor, Tensor], Tensor]:
    if isinstance(loss, str):
        if loss != "latent":
            raise ConfigError(
                f"unknown loss {loss!r}; use 'latent' or a decoder callable decode_fn(z) -> x"
            )
        if weights is not None:
            return lambda pred, true: (weights * (pred - true) ** 2).mean()
        return lambda pred, true: ((pred - true) ** 2).mean()
    if not callable(loss):
        raise ConfigError(f"loss must be 'latent' or callable, got {type(loss).__name__}")
    decode = loss

    def decoded(pred: Tensor, true: Tensor) -> Tensor:
        d = pred.shape[-1]
        xp = decode(pred.reshape(-1, d))
        with torch.no_grad():
            xt = decode(true.reshape(-1, d))
        err = (xp - xt) ** 2
        return (err if weights is None else weights * err).mean()

    return decoded


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------


def fit_dynamics(
    model: nn.Module,
    trajectories: Tensor | Sequence[Tensor],
    times: Tensor | Sequence[Tensor] | None = None,
    *,
    theta: Tensor | None = None,
    window: int = 10,
    stride: int = 1,
    epochs: int = 50,
    batch_size: int = 64,
    steps_per_epoch: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str = "cosine",
    grad_clip: float | None = None,
    reanchor: str | float | Callable[[int, int], float] = "linear",
    reanchor_fraction: float = 0.5,
    loss: str | Callable[[Tensor], Tensor] = "latent",
    loss_weights: Tensor | None = None,
    val_fraction: float = 0.1,
    val_trajectories: Tensor | Sequence[Tensor] | None = None,
    val_times: Tensor | Sequence[Tensor] | None = None,
    val_theta: Tensor | None = None,
    patience: int | None = None,
    normalise_theta: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    r"""Train latent dynamics in place on windows of encoded trajectories.

    Parameters
    ----------
    model : LatentODE or any ``nn.Module`` with ``step(z, dt, theta)``
        Trained in place (moved to ``device`` if given). ``n_params`` and
        ``latent_dim`` are read from it where present.
    trajectories : Tensor or list of Tensor
        ``(n_traj, T, d)``, or a list of ``(T_i, d)`` of any lengths.
    times : Tensor or list of Tensor, optional
        ODE times of the snapshots: ``(T,)`` shared, ``(n_traj, T)``, or a
        list of ``(T_i,)`` strictly increasing; default ``0, 1, 2, ...``
        (one ODE time unit per snapshot). Convert physical times with
        ``model.ode_time``.
    theta : Tensor, optional
        ``(n_traj, n_params)``, the parameters of each trajectory.
    window : int
        Snapshots per training window (roll-out of ``window - 1`` steps;
        ~10 in LAINR).
    stride : int
        Offset between successive window starts in a trajectory.
    epochs : int
        Number of epochs.
    batch_size : int
        Windows per optimiser step.
    steps_per_epoch : int, optional
        Optimiser steps per epoch (windows drawn without replacement from a
        fresh permutation, cycling if needed); default: one pass over all
        training windows.
    lr, weight_decay : float
        Adam(W) learning rate and decoupled weight decay.
    lr_schedule : {"cosine", "constant"}
        Cosine decay of the learning rate to 0 over all optimiser steps, or
        constant.
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    reanchor : {"linear", "none"}, float or callable
        Re-anchoring schedule, see :func:`reanchor_probability`.
    reanchor_fraction : float
        Share of the epochs over which ``"linear"`` fades ``p`` from 1 to 0.
    loss : "latent" or callable
        ``"latent"``: MSE between rolled-out and true codes; a callable
        ``decode_fn(z (N, d)) -> x (N, ...)``: MSE in decoded space (the
        decoder is differentiated through, not trained: pass frozen weights).
    loss_weights : Tensor, optional
        Weights broadcast against the squared errors (latent ``(d,)`` or
        decoded ``x.shape[1:]``, e.g. cos-latitude weights with mean 1).
    val_fraction : float
        Without ``val_trajectories``: the last ``val_fraction`` of each
        trajectory (long enough to give a window on both sides) is held out
        as a separate validation segment, so no window spans the split.
        0 disables validation.
    val_trajectories, val_times, val_theta
        Explicit validation data, same forms as the training data.
    patience : int, optional
        Stop after this many consecutive epochs without a lower validation
        loss at an unchanged re-anchoring probability. The count restarts
        whenever ``p`` changes, so with the default linear fade it only runs
        once ``p`` has reached 0 (the validation roll-out loss may rise for a
        while as teacher forcing is withdrawn).
    normalise_theta : bool
        Set the model's ``θ`` normalisation to the training parameters' mean
        and standard deviation (models with ``set_theta_normalisation``).
    seed : int
        Seeds window shuffling and re-anchoring draws (local generator).
    device : str or torch.device, optional
        Move the model (and data) there; default: where the model is.
    progress : bool, optional
        Show a tqdm bar over epochs; default ``xlatda.get_options()["progress"]``.

    Returns
    -------
    dict
        ``train_loss``, ``val_loss`` (``nan`` without validation),
        ``reanchor_p``, ``lr`` (lists, one entry per epoch run),
        ``best_epoch``, ``best_val_loss``, ``epochs_run``,
        ``stopped_early``, ``n_train_windows``, ``n_val_windows``,
        ``seconds``.

    Raises
    ------
    ShapeError
        Trajectories, times or theta of the wrong shape.
    ConfigError
        Bad settings, or no window fits into the (training or validation)
        trajectories.

    Notes
    -----
    Compute: each optimiser step rolls ``batch_size`` windows out over
    ``window - 1`` model steps with backpropagation through the solver
    (memory grows with ``window * batch_size``; use ``adjoint=True`` on the
    model to bound it). Windows are gathered from one padded tensor; the only
    Python loop is over the steps of a window. The best weights (lowest
    validation roll-out loss) are restored at the end.

    References
    ----------
    Li, Dong, Zhang (2023), arXiv:2309.09574.
    """
    if progress is None:
        progress = bool(get_options()["progress"])
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ConfigError(f"need epochs >= 1 and batch_size >= 1, got {epochs=} {batch_size=}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if lr_schedule not in ("cosine", "constant"):
        raise ConfigError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if patience is not None and int(patience) < 1:
        raise ConfigError(f"patience must be None or >= 1, got {patience!r}")
    if not hasattr(model, "step"):
        raise ConfigError(
            f"model must have a step(z, dt, theta) method, got {type(model).__name__}"
        )
    reanchor_probability(0, int(epochs), reanchor, reanchor_fraction)  # validate early
    _loss_fn(loss, None)

    if device is not None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(model).__name__} has no trainable parameters to fit")
    dev, dtype = params[0].device, params[0].dtype
    latent_dim = int(getattr(model, "latent_dim", model.state_shape[-1]))
    n_params = int(getattr(model, "n_params", 0))
    window = int(window)

    zs, ts, th = _prepare(trajectories, times, theta, latent_dim, n_params, dev, dtype)
    if val_trajectories is not None:
        vz, vt, vth = _prepare(
            val_trajectories,
            val_times,
            val_theta,
            latent_dim,
            n_params,
            dev,
            dtype,
            what="val_trajectories",
        )
        train, val = (zs, ts, th), (vz, vt, vth)
    elif val_fraction > 0:
        train, val = _split(zs, ts, th, val_fraction, window)
    else:
        train, val = (zs, ts, th), None
    if patience is not None and val is None:
        raise ConfigError(
            "patience needs validation data: set val_fraction > 0 or val_trajectories"
        )

    if n_params > 0 and normalise_theta and hasattr(model, "set_theta_normalisation"):
        tt = train[2]
        std = tt.std(0, unbiased=False) if tt.shape[0] > 1 else torch.ones_like(tt[0])
        std = torch.where(std > 1e-12 * (1 + tt.abs().amax(0)), std, torch.ones_like(std))
        model.set_theta_normalisation(tt.mean(0), std)

    tr = _pad(*train)
    tr_idx = window_indices(tr.lengths.cpu(), window, stride).to(dev)
    if tr_idx.shape[0] == 0:
        raise ConfigError(
            f"no training window of {window} snapshots fits: the longest trajectory has "
            f"{int(tr.lengths.max())}; use a smaller window"
        )
    if val is not None:
        va = _pad(*val)
        va_idx = window_indices(va.lengths.cpu(), window, 1).to(dev)
        if va_idx.shape[0] == 0:
            raise ConfigError(f"no validation window of {window} snapshots fits")
    if loss_weights is not None:
        loss_weights = torch.as_tensor(loss_weights, device=dev, dtype=dtype)
    crit = _loss_fn(loss, loss_weights)

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n_win = tr_idx.shape[0]
    per_epoch = steps_per_epoch or math.ceil(n_win / batch_size)
    total_steps = per_epoch * int(epochs)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        if lr_schedule == "cosine"
        else None
    )

    def evaluate() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for chunk in va_idx.split(max(batch_size, 256)):
                z, t, thb = va.windows(chunk, window)
                pred = _rollout(model, z, t, thb, 0.0, None)
                total += float(crit(pred, z[:, 1:])) * chunk.shape[0]
                count += chunk.shape[0]
        return total / count

    hist: dict[str, Any] = {"train_loss": [], "val_loss": [], "reanchor_p": [], "lr": []}
    best, best_epoch, best_state, bad = math.inf, -1, None, 0
    stopped = False
    start = time.perf_counter()
    bar = tqdm(range(int(epochs)), desc="fit_dynamics", disable=not progress, leave=False)
    was_training = model.training
    model.train()
    p_previous = math.nan
    for epoch in bar:
        p = reanchor_probability(epoch, int(epochs), reanchor, reanchor_fraction)
        # one pass over all windows, or steps_per_epoch batches (cycling permutations)
        n_take = per_epoch * batch_size if steps_per_epoch else n_win
        perm = torch.cat(
            [torch.randperm(n_win, generator=gen) for _ in range(math.ceil(n_take / n_win))]
        )[:n_take]
        run, seen = 0.0, 0
        for b in perm.to(dev).split(batch_size):
            z, t, thb = tr.windows(tr_idx[b], window)
            pred = _rollout(model, z, t, thb, p, gen)
            value = crit(pred, z[:, 1:])
            opt.zero_grad(set_to_none=True)
            value.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            run += float(value.detach()) * b.shape[0]
            seen += b.shape[0]
        train_loss = run / seen
        model.eval()
        val_loss = evaluate() if val is not None else math.nan
        model.train()
        hist["train_loss"].append(train_loss)
        hist["val_loss"].append(val_loss)
        hist["reanchor_p"].append(p)
        hist["lr"].append(opt.param_groups[0]["lr"])
        bar.set_postfix(train=f"{train_loss:.3g}", val=f"{val_loss:.3g}", p=f"{p:.2f}")
        if val is not None:
            if val_loss < best:
                best, best_epoch, bad = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            elif p != p_previous:
                bad = 0  # the training objective changed: patience restarts
            else:
                bad += 1
                if patience is not None and bad >= int(patience):
                    stopped = True
                    break
        p_previous = p
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.train(was_training)
    if hasattr(model, "_mark_fitted"):
        model._mark_fitted()
    hist.update(
        best_epoch=best_epoch,
        best_val_loss=best,
        epochs_run=len(hist["train_loss"]),
        stopped_early=stopped,
        n_train_windows=int(n_win),
        n_val_windows=int(va_idx.shape[0]) if val is not None else 0,
        seconds=time.perf_counter() - start,
    )
    return hist
