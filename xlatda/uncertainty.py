r"""Data-driven model-error covariance of latent dynamics.

With the encoder and the dynamics :math:`G` frozen, the one-step residuals

.. math::

    r_m = G(z_k) - z_{k+1} \in \mathbb{R}^d, \qquad m = 1, \dots, M,

(over all consecutive pairs of all encoded trajectories) are modelled as
:math:`r \sim \mathcal N(0, Q)` with :math:`Q = L L^\top` and :math:`L`
either :math:`\sigma I` ("scalar"), :math:`\operatorname{diag}(\sigma_i)`
("diagonal") or a lower-triangular Cholesky factor with positive diagonal
("cholesky"). :math:`L` minimises the mean Gaussian negative log-likelihood
plus an optional L1 penalty on the off-diagonal entries of :math:`L`:

.. math::

    J(L) = \frac{1}{M} \sum_m \tfrac12 \lVert L^{-1} r_m \rVert^2
           + \log\det L + \lambda \sum_{i > j} |L_{ij}| .

Closed forms (used by ``solver="auto"``): scalar
:math:`\sigma^2 = \frac{1}{Md}\sum_{m,i} r_{mi}^2`; diagonal
:math:`\sigma_i^2 = \frac1M \sum_m r_{mi}^2`; Cholesky with
:math:`\lambda = 0`: :math:`L = \operatorname{chol}(\frac1M \sum_m r_m
r_m^\top)`. With :math:`\lambda > 0` the Cholesky factor is found by Adam
(or L-BFGS) from the diagonal solution. :math:`Q` is the model-error noise
added to every ensemble member in the forecast step,
:math:`z_b^j = G(z_a^j) + \varepsilon^j`, :math:`\varepsilon^j \sim
\mathcal N(0, Q)`.

Shapes: residuals ``(M, d)``; ``ModelError.sample(shape)`` returns
``(*shape, d)``; ``log_prob`` takes ``(*batch, d)`` and returns ``(*batch,)``.

References
----------
Li, Dong, Zhang (2023). Latent assimilation with implicit neural
representations for unknown dynamics. arXiv:2309.09574 (data-driven
uncertainty, Sect. on model-error estimation).

Examples
--------
>>> import torch
>>> from xlatda.uncertainty import fit_model_error
>>> gen = torch.Generator().manual_seed(0)
>>> r = torch.randn(20000, 3, generator=gen) * torch.tensor([0.1, 0.2, 0.3])
>>> q = fit_model_error(r, kind="diagonal")
>>> q.scale_tril().diagonal().round(decimals=2)
tensor([0.1000, 0.2000, 0.3000])
>>> q.sample((5, 7), generator=gen).shape
torch.Size([5, 7, 3])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype

__all__ = ["TENDENCY_LAGS", "ModelError", "fit_model_error", "residuals", "rollout_residuals",
           "tendency_covariances"]

#: Lags (in data steps) at which :func:`xlatda.fit_dynamics` stores the
#: covariance of the training codes' changes (see :meth:`ModelError.tendency_covariance`).
TENDENCY_LAGS = (1, 2, 3, 6, 12, 24)

_KINDS = ("scalar", "diagonal", "cholesky")
_SOLVERS = ("auto", "closed_form", "adam", "lbfgs")


class ModelError(nn.Module):
    r"""Zero-mean Gaussian model error ``N(0, Q)``, ``Q = L Lᵀ``.

    Parameters
    ----------
    dim : int
        Latent size ``d``.
    kind : {"scalar", "diagonal", "cholesky"}
        Structure of ``L``: ``σ I``, ``diag(σ_i)`` or lower-triangular.
    scale : float
        Initial standard deviation (``L = scale * I``).
    device, dtype
        Where and in which precision the parameters live.

    Notes
    -----
    Parameters: ``log_scale`` (``()`` scalar, ``(d,)`` otherwise: the log of
    the diagonal of ``L``) and, for ``"cholesky"``, ``offdiag`` ``(d, d)``
    whose strictly lower triangle is used. ``type(q)(**q.config)`` plus
    ``load_state_dict`` rebuilds ``q`` bit-exactly. A new ``ModelError`` is
    trainable; :func:`fit_model_error` and :meth:`from_covariance` return
    frozen ones (``requires_grad_(False)``; call ``requires_grad_()`` to
    train further).

    Examples
    --------
    >>> import torch
    >>> q = ModelError(2, kind="scalar", scale=0.5, dtype="float64").requires_grad_(False)
    >>> q.covariance()
    tensor([[0.2500, 0.0000],
            [0.0000, 0.2500]], dtype=torch.float64)
    >>> q.log_prob(torch.zeros(2, dtype=torch.float64)).item()  # log N(0; 0, 0.25 I)
    -0.4515...
    """

    def __init__(
        self,
        dim: int,
        kind: str = "diagonal",
        scale: float = 1.0,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        tendency_lags: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ConfigError(f"unknown model-error kind {kind!r}; choose one of {list(_KINDS)}")
        if int(dim) < 1 or not scale > 0:
            raise ConfigError(f"need dim >= 1 and scale > 0, got {dim=} {scale=}")
        self.dim, self.kind = int(dim), kind
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        shape = () if kind == "scalar" else (self.dim,)
        self.log_scale = nn.Parameter(torch.full(shape, math.log(scale), device=dev, dtype=dt))
        if kind == "cholesky":
            self.offdiag = nn.Parameter(torch.zeros(self.dim, self.dim, device=dev, dtype=dt))
            mask = torch.ones(self.dim, self.dim, device=dev, dtype=torch.bool).tril(-1)
            self.register_buffer("_mask", mask, persistent=False)
        self.tendency_lags: tuple[float, ...] = ()
        if tendency_lags:
            self.set_tendency(tendency_lags, torch.zeros(len(tendency_lags), self.dim, self.dim,
                                                         device=dev, dtype=dt))

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        out = {
            "dim": self.dim,
            "kind": self.kind,
            "dtype": str(self.log_scale.dtype).replace("torch.", ""),
        }
        if self.tendency_lags:
            out["tendency_lags"] = list(self.tendency_lags)
        return out

    # -- tendency statistics -------------------------------------------
    def set_tendency(self, lags: Sequence[float], covariances: Tensor) -> ModelError:
        """Attach the covariances ``T(τ)`` of the training codes' changes over ``lags``.

        ``covariances`` is ``(L, d, d)``, one per lag (data steps, increasing);
        see :func:`tendency_covariances`. Returns ``self``.
        """
        lags = tuple(float(v) for v in lags)
        cov = torch.as_tensor(covariances)
        if cov.shape != (len(lags), self.dim, self.dim):
            raise ShapeError(f"tendency covariances must be ({len(lags)}, {self.dim}, "
                             f"{self.dim}), got {tuple(cov.shape)}")
        if not lags or any(b <= a for a, b in itertools.pairwise(lags)) or lags[0] <= 0:
            raise ConfigError(f"tendency lags must be positive and increasing, got {lags}")
        self.tendency_lags = lags
        self.register_buffer("tendency", cov.to(self.log_scale).detach().clone())
        return self

    def tendency_covariance(self, steps: float) -> Tensor | None:
        r"""Covariance of the codes' change over ``steps`` data steps, or None.

        Linear interpolation between the stored lags, :math:`(\tau/\tau_1)\,
        T(\tau_1)` below the first one and the last one beyond. It is the
        forecast-error covariance of persistence over that lead: the shape
        that adaptive additive inflation gives the model error a fitted ``Q``
        misses (:mod:`xlatda.methods.additive`).

        Examples
        --------
        >>> import torch
        >>> q = ModelError(1, dtype="float64").set_tendency(
        ...     (1, 3), torch.tensor([[[1.0]], [[3.0]]], dtype=torch.float64))
        >>> [float(q.tendency_covariance(s)) for s in (0.5, 2.0, 10.0)]
        [0.5, 2.0, 3.0]
        """
        if not self.tendency_lags:
            return None
        lags, steps = self.tendency_lags, float(steps)
        if steps <= lags[0]:
            return self.tendency[0] * (max(steps, 0.0) / lags[0])
        for i in range(1, len(lags)):
            if steps <= lags[i]:
                w = (steps - lags[i - 1]) / (lags[i] - lags[i - 1])
                return (1 - w) * self.tendency[i - 1] + w * self.tendency[i]
        return self.tendency[-1]

    @classmethod
    def from_covariance(cls, covariance: Tensor, kind: str = "cholesky") -> ModelError:
        """Build from a known ``Q`` (``(d, d)``); scalar/diagonal keep its diagonal part.

        Examples
        --------
        >>> q = ModelError.from_covariance(torch.tensor([[4.0, 2.0], [2.0, 2.0]]))
        >>> q.scale_tril()
        tensor([[2., 0.],
                [1., 1.]])
        """
        cov = torch.as_tensor(covariance)
        if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
            raise ShapeError(f"covariance must be (d, d), got {tuple(cov.shape)}")
        out = cls(cov.shape[0], kind, device=cov.device, dtype=cov.dtype)
        with torch.no_grad():
            if kind == "scalar":
                out.log_scale.copy_(0.5 * cov.diagonal().mean().log())
            elif kind == "diagonal":
                out.log_scale.copy_(0.5 * cov.diagonal().log())
            else:
                out._set_tril(torch.linalg.cholesky(cov))
        return out.requires_grad_(False)

    def _set_tril(self, L: Tensor) -> None:
        with torch.no_grad():
            self.log_scale.copy_(L.diagonal().log())
            self.offdiag.copy_(L.tril(-1))

    # -- the distribution ----------------------------------------------
    def scale_tril(self) -> Tensor:
        """Lower-triangular ``L`` with ``Q = L Lᵀ``, ``(d, d)``."""
        if self.kind == "scalar":
            eye = torch.eye(self.dim, device=self.log_scale.device, dtype=self.log_scale.dtype)
            return self.log_scale.exp() * eye
        diag = torch.diag_embed(self.log_scale.exp())
        if self.kind == "diagonal":
            return diag
        return diag + self.offdiag * self._mask

    def covariance(self) -> Tensor:
        """``Q = L Lᵀ``, ``(d, d)``."""
        L = self.scale_tril()
        return L @ L.mT

    def _whiten(self, r: Tensor) -> Tensor:
        """``L⁻¹ r`` for ``r`` of shape ``(*batch, d)``."""
        if self.kind != "cholesky":
            return r * torch.exp(-self.log_scale)
        L = self.scale_tril()
        flat = r.reshape(-1, self.dim).mT
        sol = torch.linalg.solve_triangular(L, flat, upper=False)
        return sol.mT.reshape(r.shape)

    def log_det_scale(self) -> Tensor:
        """``log det L``."""
        if self.kind == "scalar":
            return self.dim * self.log_scale
        return self.log_scale.sum()

    def _check(self, r: Tensor) -> Tensor:
        r = torch.as_tensor(r, device=self.log_scale.device, dtype=self.log_scale.dtype)
        if r.dim() < 1 or r.shape[-1] != self.dim:
            raise ShapeError(
                f"expected residuals of shape (*batch, {self.dim}), got {tuple(r.shape)}"
            )
        return r

    def log_prob(self, r: Tensor) -> Tensor:
        """Gaussian log density of ``r`` (``(*batch, d)``), shape ``(*batch,)``."""
        r = self._check(r)
        maha = self._whiten(r).pow(2).sum(-1)
        return -0.5 * maha - self.log_det_scale() - 0.5 * self.dim * math.log(2.0 * math.pi)

    def nll(self, r: Tensor) -> Tensor:
        """Mean of ``½‖L⁻¹r‖² + log det L`` over the rows of ``r`` (the fit objective)."""
        r = self._check(r)
        return 0.5 * self._whiten(r).pow(2).sum(-1).mean() + self.log_det_scale()

    def sample(
        self, shape: Sequence[int] | int = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``ε ~ N(0, Q)`` of shape ``(*shape, d)`` with the given generator."""
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        # Draw on the generator's device (a CPU generator gives the same numbers
        # whether Q lives on the CPU or a GPU), then move to Q's device.
        eps = torch.randn(
            (*shape, self.dim),
            generator=generator,
            device=generator.device if generator is not None else self.log_scale.device,
            dtype=self.log_scale.dtype,
        ).to(self.log_scale.device)
        with torch.no_grad():
            if self.kind != "cholesky":
                return eps * self.log_scale.exp()
            return eps @ self.scale_tril().mT

    def forward(self, r: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(r)

    def extra_repr(self) -> str:
        extra = f", tendency_lags={self.tendency_lags}" if self.tendency_lags else ""
        return f"dim={self.dim}, kind={self.kind!r}{extra}"


def tendency_covariances(trajectories: Tensor, lags: Sequence[float] = TENDENCY_LAGS
                         ) -> tuple[tuple[float, ...], Tensor]:
    r"""Covariances of the codes' changes :math:`z_{k+\tau} - z_k` over each lag.

    Pooled over every trajectory and start; a lag is kept when every
    trajectory is at least twice as long (so each covariance rests on at
    least half the pairs of the shortest lag).

    Parameters
    ----------
    trajectories : Tensor
        ``(n_traj, T, d)`` codes, one data step apart.
    lags : sequence of int
        Lags in data steps.

    Returns
    -------
    lags, Tensor
        The lags kept and their ``(L, d, d)`` float64 covariances (empty when
        the trajectories are too short for any).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> walk = torch.randn(1, 4000, 2, generator=g, dtype=torch.float64).cumsum(1)
    >>> lags, cov = tendency_covariances(walk, (1, 4))
    >>> lags, [round(float(v), 1) for v in cov.diagonal(dim1=1, dim2=2)[:, 0]]
    ((1.0, 4.0), [1.0, 4.0])
    """
    z = torch.as_tensor(trajectories, dtype=torch.float64).cpu()
    if z.dim() != 3:
        raise ShapeError(f"trajectories must be (n_traj, T, d), got {tuple(z.shape)}")
    T = z.shape[1]
    kept = tuple(float(v) for v in lags if int(v) == v and 1 <= v and 2 * int(v) <= T)
    covs = []
    for lag in kept:
        dz = (z[:, int(lag):] - z[:, :-int(lag)]).reshape(-1, z.shape[-1])
        dz = dz - dz.mean(0)
        covs.append(dz.T @ dz / dz.shape[0])
    d = z.shape[-1]
    return kept, (torch.stack(covs) if covs else torch.zeros(0, d, d, dtype=torch.float64))


def fit_model_error(
    residuals: Tensor,
    kind: str = "diagonal",
    *,
    l1: float = 0.0,
    solver: str = "auto",
    iterations: int = 500,
    lr: float = 1e-2,
    batch_size: int | None = None,
    jitter: float = 1e-8,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> ModelError:
    r"""Fit the model-error covariance ``Q`` to one-step residuals.

    Parameters
    ----------
    residuals : Tensor
        ``(M, d)`` residuals ``G(z_k) - z_{k+1}`` (see :func:`residuals`).
    kind : {"scalar", "diagonal", "cholesky"}
        Structure of the Cholesky factor ``L``.
    l1 : float
        Weight ``λ`` of the L1 penalty on the off-diagonal entries of ``L``
        (``kind="cholesky"`` only).
    solver : {"auto", "closed_form", "adam", "lbfgs"}
        ``"auto"``: the closed form where one exists (scalar, diagonal,
        Cholesky with ``l1 == 0``), Adam otherwise. ``"adam"``/``"lbfgs"``
        minimise the objective numerically, starting from the diagonal
        closed form (the L1 term is handled by subgradients, so entries near
        zero are small rather than exactly zero).
    iterations : int
        Optimiser iterations (Adam steps, or L-BFGS outer iterations).
    lr : float
        Optimiser learning rate (on ``log σ`` and on the off-diagonals).
    batch_size : int, optional
        Rows per Adam step (drawn with a seeded generator); default all.
    jitter : float
        Relative ridge ``jitter * mean(diag S)`` added to the second-moment
        matrix ``S`` before its Cholesky factorisation.
    seed : int
        Seed of the mini-batch generator.
    device, dtype
        Where and in which precision the fit runs and ``Q`` lives (default:
        those of ``residuals`` when it is floating, else the options).

    Returns
    -------
    ModelError
        Fitted ``N(0, Q)``, frozen (parameters do not require grad).

    Raises
    ------
    ShapeError
        If ``residuals`` is not ``(M, d)`` with ``M >= 1``.
    ConfigError
        For an unknown kind/solver, a negative ``l1``, or ``l1 > 0`` with a
        non-Cholesky kind.

    Notes
    -----
    The residual mean (a model bias) is not removed: ``Q`` is the second
    moment of the residuals, as the forecast step adds zero-mean noise.
    Memory: ``O(M d)`` plus ``O(d²)`` for Cholesky.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(1)
    >>> r = torch.randn(5000, 2, generator=gen, dtype=torch.float64)
    >>> q = fit_model_error(r, kind="scalar", solver="adam", iterations=300, lr=0.05)
    >>> round(float(q.covariance()[0, 0]), 2)
    1.0
    """
    if kind not in _KINDS:
        raise ConfigError(f"unknown model-error kind {kind!r}; choose one of {list(_KINDS)}")
    if solver not in _SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {list(_SOLVERS)}")
    if l1 < 0:
        raise ConfigError(f"l1 must be >= 0, got {l1!r}")
    if l1 > 0 and kind != "cholesky":
        raise ConfigError(f"l1 penalises off-diagonal entries; use kind='cholesky', not {kind!r}")
    if solver == "closed_form" and kind == "cholesky" and l1 > 0:
        raise ConfigError("there is no closed form with l1 > 0; use solver='adam' or 'lbfgs'")
    r = torch.as_tensor(residuals)
    if r.dim() != 2 or r.shape[0] < 1:
        raise ShapeError(f"residuals must be (M, d) with M >= 1, got {tuple(r.shape)}")
    if dtype is None and r.is_floating_point():
        dtype = r.dtype
    dev = r.device if device is None else resolve_device(device)
    r = r.to(device=dev, dtype=resolve_dtype(dtype))
    m, d = r.shape
    if not bool(torch.isfinite(r).all()):
        raise ShapeError("residuals contain NaN or infinite values; drop those rows first")

    q = ModelError(d, kind, device=dev, dtype=r.dtype)
    second = (r.mT @ r) / m if kind == "cholesky" else None
    var = r.pow(2).mean(0).clamp_min(torch.finfo(r.dtype).tiny)
    with torch.no_grad():
        if kind == "scalar":
            q.log_scale.copy_(0.5 * var.mean().log())
        else:
            q.log_scale.copy_(0.5 * var.log())
    closed = solver == "closed_form" or (solver == "auto" and not (kind == "cholesky" and l1 > 0))
    if closed:
        if kind == "cholesky":
            ridge = jitter * second.diagonal().mean()
            eye = torch.eye(d, device=dev, dtype=r.dtype)
            q._set_tril(torch.linalg.cholesky(second + ridge * eye))
        return q.requires_grad_(False)

    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def objective(rows: Tensor) -> Tensor:
        value = q.nll(rows)
        if l1 > 0:
            value = value + l1 * (q.offdiag * q._mask).abs().sum()
        return value

    params = list(q.parameters())
    if solver in ("adam", "auto"):
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(int(iterations)):
            if batch_size is not None and batch_size < m:
                rows = r[torch.randint(m, (int(batch_size),), generator=gen).to(dev)]
            else:
                rows = r
            opt.zero_grad(set_to_none=True)
            objective(rows).backward()
            opt.step()
    else:
        opt = torch.optim.LBFGS(
            params, lr=1.0, max_iter=int(iterations), line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            value = objective(r)
            value.backward()
            return value

        opt.step(closure)
    return q.requires_grad_(False)


def residuals(
    model: Any,
    trajectories: Tensor | Sequence[Tensor],
    *,
    times: Tensor | Sequence[Tensor] | None = None,
    theta: Tensor | None = None,
    batch_size: int = 65536,
) -> Tensor:
    """One-step residuals ``r = G(z_k) - z_{k+1}`` over all consecutive pairs.

    Parameters
    ----------
    model : forecast model
        Anything with ``step(z, dt, theta)`` (e.g. a ``LatentODE``).
    trajectories : Tensor or list of Tensor
        ``(n_traj, T, d)`` or a list of ``(T_i, d)``; pairs never cross a
        trajectory boundary.
    times : Tensor or list of Tensor, optional
        Times in the model's units (ODE time for a ``LatentODE``), ``(T,)``,
        ``(n_traj, T)`` or a list of ``(T_i,)``; default: the model's
        default step between consecutive snapshots (``dt=None``).
    theta : Tensor, optional
        ``(n_traj, n_params)``, one parameter row per trajectory.
    batch_size : int
        Pairs per ``step`` call (bounds memory).

    Returns
    -------
    Tensor
        ``(M, d)`` with ``M = sum_i (T_i - 1)``, trajectory by trajectory.

    Notes
    -----
    Runs under ``torch.no_grad()``. All pairs with the same step length go
    through ``step`` together (one call per distinct ``dt`` and batch).

    Examples
    --------
    >>> import torch
    >>> from xlatda.dynamics.physical import CallableModel
    >>> decay = CallableModel(lambda x, dt, theta: x * (1 - dt), state_shape=(2,), dt=0.5)
    >>> traj = torch.tensor([[[1.0, 2.0], [0.5, 1.0], [0.2, 0.5]]])
    >>> residuals(decay, traj)
    tensor([[0.0000, 0.0000],
            [0.0500, 0.0000]])
    """
    if isinstance(trajectories, Tensor):
        if trajectories.dim() == 2:
            trajectories = trajectories[None]
        if trajectories.dim() < 3:
            raise ShapeError(
                "trajectories must be (n_traj, T, *state) or a list of (T_i, *state), "
                f"got {tuple(trajectories.shape)}"
            )
        zs = list(trajectories.unbind(0))
    else:
        zs = [torch.as_tensor(z) for z in trajectories]
    if not zs:
        raise ShapeError("trajectories is empty")
    if times is None:
        ts = None
    elif isinstance(times, Tensor) and times.dim() == 1:
        ts = [times] * len(zs)
    else:
        ts = list(times.unbind(0)) if isinstance(times, Tensor) else list(times)
        if len(ts) != len(zs):
            raise ShapeError(f"got {len(ts)} time arrays for {len(zs)} trajectories")
    if theta is not None:
        theta = torch.as_tensor(theta)
        if theta.dim() != 2 or theta.shape[0] != len(zs):
            raise ShapeError(
                f"theta must be (n_traj, n_params) = ({len(zs)}, n_params), got "
                f"{tuple(theta.shape)}"
            )
    cur, nxt, th, dts = [], [], [], []
    for i, z in enumerate(zs):
        if z.shape[0] < 2:
            continue
        cur.append(z[:-1])
        nxt.append(z[1:])
        if theta is not None:
            th.append(theta[i].to(z).expand(z.shape[0] - 1, -1))
        if ts is not None:
            t = torch.as_tensor(ts[i]).to(z)
            if t.shape != (z.shape[0],):
                raise ShapeError(f"times[{i}] must be ({z.shape[0]},), got {tuple(t.shape)}")
            dts.append(t[1:] - t[:-1])
    if not cur:
        raise ShapeError("no trajectory has two snapshots; residuals need consecutive pairs")
    z0, z1 = torch.cat(cur), torch.cat(nxt)
    th_all = torch.cat(th) if th else None
    out = torch.empty_like(z0)
    with torch.no_grad():
        if ts is None:
            groups = [(None, torch.arange(z0.shape[0], device=z0.device))]
        else:
            dt_all = torch.cat(dts)
            values = torch.unique(dt_all)
            groups = [(float(v), (dt_all == v).nonzero().squeeze(-1)) for v in values]
        for dt, rows in groups:
            for chunk in rows.split(int(batch_size)):
                thc = None if th_all is None else th_all[chunk]
                out[chunk] = model.step(z0[chunk], dt, thc)
    return out - z1


def rollout_residuals(
    model: Any,
    trajectories: Tensor,
    horizon: int,
    *,
    theta: Tensor | None = None,
    clock: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Residuals of roll-outs of 1 to ``horizon`` steps, scaled to one step.

    From every snapshot :math:`z_s` of each trajectory the model is rolled
    out :math:`k = 1, \dots, K` steps (``times = 0, 1, ..., K`` in the model's
    step units) and compared with :math:`z_{s+k}` where it exists. Each
    residual is divided by :math:`\sqrt{k}`: a forecast whose error grows
    like a random walk with per-step covariance :math:`Q` (what a cycle
    assumes when it adds :math:`\sqrt{\tau}\,\varepsilon`,
    :math:`\varepsilon \sim \mathcal N(0, Q)`, after a lead :math:`\tau`) gives
    scaled residuals of covariance :math:`Q` at every lead. Errors that grow
    faster (systematic errors such as a missed diurnal cycle) raise the
    estimate above the one-step residuals' covariance, so ensembles cycled
    over several steps are not made over-confident by it.

    Parameters
    ----------
    model : LatentODE or anything with ``evolve(z0, times, theta)``
        The dynamics.
    trajectories : Tensor
        ``(n_traj, T, d)`` codes (held-out ones: not those the model was
        trained on).
    horizon : int
        Largest lead ``K`` (``>= 1``; capped at ``T - 1``).
    theta : Tensor, optional
        ``(n_traj, n_params)``.
    clock : Tensor, optional
        ``(n_traj, T)`` absolute times of the codes, passed as ``start=`` to
        dynamics whose forcing depends on the time
        (:attr:`~xlatda.dynamics.LinearDynamics.uses_clock`).

    Returns
    -------
    rows : Tensor
        ``(M, d)`` scaled residuals, all leads pooled.
    per_lead : Tensor
        ``(K,)`` mean squared (unscaled) residual per lead, averaged over ``d``.

    Examples
    --------
    >>> import torch
    >>> from xlatda.dynamics.latent_ode import LatentODE
    >>> ode = LatentODE(2, width=8, depth=1, seed=0)
    >>> rows, per_lead = rollout_residuals(ode, torch.randn(1, 12, 2), horizon=3)
    >>> rows.shape, per_lead.shape
    (torch.Size([30, 2]), torch.Size([3]))
    """
    z = torch.as_tensor(trajectories)
    if z.dim() != 3:
        raise ShapeError(f"trajectories must be (n_traj, T, d), got {tuple(z.shape)}")
    n, T, d = z.shape
    K = min(int(horizon), T - 1)
    if K < 1:
        raise ShapeError(f"roll-out residuals need trajectories of 2 or more snapshots, got {T}")
    starts = z[:, :-1].reshape(-1, d)
    th = None
    if theta is not None:
        th = torch.as_tensor(theta).to(z)[:, None, :].expand(n, T - 1, -1).reshape(n * (T - 1),
                                                                                 -1)
    times = torch.arange(K + 1, dtype=z.dtype, device=z.device)
    kw = {}
    if getattr(model, "uses_clock", False):
        if clock is None:
            raise ConfigError("these dynamics need the clock of the trajectories (clock=)")
        kw["start"] = torch.as_tensor(clock, dtype=torch.float64)[:, :-1].reshape(-1)
    with torch.no_grad():
        pred = model.evolve(starts, times, theta=th, **kw).reshape(n, T - 1, K + 1, d)
    rows, per_lead = [], []
    for k in range(1, K + 1):
        r = pred[:, : T - k, k] - z[:, k:]  # starts s = 0..T-k-1 have a truth at s + k
        per_lead.append(r.pow(2).mean())
        rows.append(r.reshape(-1, d) / k**0.5)
    return torch.cat(rows), torch.stack(per_lead)
