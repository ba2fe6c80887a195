r"""Principal component analysis (empirical orthogonal functions) with area weights.

Maths
-----
Let :math:`X \in \mathbb{R}^{N \times D}` hold ``N`` training fields
flattened over channels and space (``D = C * S``), :math:`\bar x` their mean
and :math:`w \in \mathbb{R}^D` the area weights (``cos(lat)`` of each grid
point, mean one, repeated over channels; ones on generic layouts). The
weighted anomaly matrix and its thin SVD are

.. math::

    X_w = (X - \mathbf 1 \bar x^\top)\,\mathrm{diag}(\sqrt w) = U \Sigma V^\top .

The first ``K = latent_dim`` right singular vectors are the EOFs in the
weighted space, orthonormal for the area-weighted inner product once the
weights are removed. The *physical* patterns stored as ``components`` are

.. math::

    P = \Sigma_K^{-1} U_K^\top (X - \mathbf 1 \bar x^\top) \in \mathbb{R}^{K\times D},

which equals :math:`V_K^\top \mathrm{diag}(w)^{-1/2}` wherever :math:`w > 0` and
stays defined at the poles, where :math:`w = 0`. Encoding is the
area-weighted least-squares projection and decoding the affine map back:

.. math::

    a = (x - \bar x)\,\mathrm{diag}(w)\,P^\top, \qquad
    x = \bar x + a P, \qquad P\,\mathrm{diag}(w)\,P^\top = I_K ,

so ``encode(decode(a)) = a`` and, with ``K = rank(X_w)``, every training field
is reconstructed exactly. With ``whiten=True`` the latent is
:math:`z = a / \sqrt{\lambda}` with the explained variances
:math:`\lambda = \sigma^2 / (N - 1)`, so that training codes have unit
variance. ``explained_variance_ratio`` divides :math:`\sigma_k^2` by the total
weighted variance :math:`\lVert X_w \rVert_F^2`.

*At points.* For an observation operator :math:`H` (interpolation from the
grid, see :mod:`xlatda.obs_geometry`) the decoder at points is affine,
:math:`y = H\bar x + (HP^\top) a`, so ``encode_from`` solves the (weighted,
optionally ridge-regularised) linear least-squares problem

.. math::

    \min_a \sum_p w_p \big(y_p - (H\bar x)_p - (HP^\top a)_p\big)^2 + \rho\lVert a\rVert^2

in closed form, batched over samples (``w_p = cos(lat_p)`` by default, the
weighting of ``encode``: with every grid point given, ``encode_from`` equals
``encode``).

References
----------
H. Björnsson, S. A. Venegas, "A manual for EOF and SVD analyses of climatic
data", McGill University CCGCR Report 97-1 (1997) - area weighting by
:math:`\sqrt{\cos\varphi}`. N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding
structure with randomness", SIAM Review 53 (2011) - randomised SVD. PCA is
the linear baseline of LAINR (Li, Dong & Zhang 2023, arXiv:2309.09574).

Examples
--------
>>> import torch
>>> from xlatda.encoders.pca import PCA
>>> grid = {"kind": "latlon", "lat": [-45.0, 0.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]}
>>> pca = PCA(1, (3, 4), latent_dim=5, grid=grid)
>>> x = torch.randn(6, 1, 3, 4, dtype=torch.float64)
>>> _ = pca.fit(x, dtype="float64", progress=False)       # rank 5 anomalies: exact
>>> torch.allclose(pca.decode(pca.encode(x)), x)
True
>>> float(pca.explained_variance_ratio.sum())
1.0
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from xlatda.encoders.base import Encoder, encoders
from xlatda.encoders.training import (
    PointOperatorCache,
    area_weights,
    check_grid,
    point_weights,
    seeded,
)
from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype

__all__ = ["PCA"]

_SVD_METHODS = ("auto", "full", "lowrank")


@encoders.register("pca")
class PCA(Encoder):
    """Area-weighted PCA (EOF) encoder: linear, closed form, exact at points.

    Parameters
    ----------
    n_channels : int
        State channels ``C``.
    spatial_shape : sequence of int
        ``(nlat, nlon)`` or ``(S,)``.
    latent_dim : int
        Number of components ``K`` (at most ``min(N, D)`` at fit time).
    grid : dict, optional
        See :class:`~xlatda.encoders.base.Encoder`: gives the ``cos(lat)``
        weights and the observation operator of ``decode_at``.
    whiten : bool, default False
        Scale the latent to unit variance over the training set.
    svd : {"auto", "full", "lowrank"}
        ``"full"``: :func:`torch.linalg.svd`; ``"lowrank"``: randomised
        :func:`torch.svd_lowrank` (seeded by ``fit``'s ``seed``); ``"auto"``:
        low-rank when ``min(N, D) > 2000`` and ``K < min(N, D) / 4``.
    neighbours : int, default 1
        Neighbours of the observation operator on point-set grids.

    Attributes
    ----------
    mean : Tensor
        ``(C, *spatial)``.
    components : Tensor
        ``(K, C * S)`` physical EOF patterns ``P`` (see module docstring).
    singular_values, explained_variance, explained_variance_ratio : Tensor
        ``(K,)`` each.
    """

    kind = "pca"
    #: ``encode`` is affine (a matrix product), so a NaN/inf anywhere in a field
    #: makes that field's latent non-finite (IEEE: ``0 * nan`` is nan): callers
    #: may look for non-finite inputs on the small output instead of the input.
    nonfinite_propagates = True

    def __init__(
        self,
        n_channels: int,
        spatial_shape: Sequence[int],
        latent_dim: int,
        grid: dict[str, Any] | None = None,
        *,
        whiten: bool = False,
        svd: str = "auto",
        neighbours: int = 1,
    ) -> None:
        grid = check_grid(grid, spatial_shape)
        super().__init__(n_channels, spatial_shape, latent_dim, grid)
        if self.latent_dim < 1 or self.n_channels < 1:
            raise ConfigError(
                f"latent_dim and n_channels must be positive, got {latent_dim}, {n_channels}"
            )
        if svd not in _SVD_METHODS:
            raise ConfigError(f"svd must be one of {_SVD_METHODS}, got {svd!r}")
        self.whiten = bool(whiten)
        self.svd = svd
        self.neighbours = int(neighbours)
        K, D = self.latent_dim, self.n_channels * self._n_space
        self.register_buffer("mean", torch.zeros(self.n_channels, *self.spatial_shape))
        self.register_buffer("components", torch.zeros(K, D))
        self.register_buffer("singular_values", torch.zeros(K))
        self.register_buffer("explained_variance", torch.zeros(K))
        self.register_buffer("explained_variance_ratio", torch.zeros(K))
        self._weights: dict = {}
        self._operators = PointOperatorCache(self.neighbours)

    @property
    def _n_space(self) -> int:
        n = 1
        for s in self.spatial_shape:
            n *= s
        return n

    @property
    def weights(self) -> Tensor:
        """Area weights of the flattened fields, ``(C * S,)``, mean one (from ``grid``)."""
        key = (self.mean.dtype, self.mean.device)
        if key not in self._weights:
            w = area_weights(self.grid, self.spatial_shape, dtype=key[0], device=key[1])
            self._weights[key] = w.reshape(-1).repeat(self.n_channels)
        return self._weights[key]

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "whiten": self.whiten,
            "svd": self.svd,
            "neighbours": self.neighbours,
        }

    @property
    def eofs(self) -> Tensor:
        """Physical EOF patterns ``(K, C, *spatial)``."""
        return self.components.reshape(self.latent_dim, self.n_channels, *self.spatial_shape)

    # -- helpers ---------------------------------------------------------
    def _like(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t).to(dtype=self.mean.dtype, device=self.mean.device)

    def _scale(self) -> Tensor:
        """Latent-to-coefficient scale ``(K,)``: sqrt of explained variance or ones."""
        if not self.whiten:
            return torch.ones_like(self.explained_variance)
        s = self.explained_variance.sqrt()
        return torch.where(s > 0, s, torch.ones_like(s))

    def _encode_projection(self) -> Tensor:
        """``(diag(w) P^T) / scale``, ``(D, K)``, from the buffers as they are now.

        Made afresh at every call: a cache kept by the buffers' version
        counters used stale EOFs after an edit through ``.data`` or
        ``.numpy()``, and one checked against a copy of the buffers cost as
        much as making it (0.15-0.4 ms at 1-8 samples, 32x64x2 grid, 48 EOFs).
        """
        proj = (self.components * self.weights).T
        if self.whiten:  # (dividing by ones would give the same values)
            proj = proj / self._scale()
        return proj

    # -- protocol --------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Area-weighted projection on the EOFs: ``(B, C, *spatial) -> (B, K)``."""
        self._require_fitted()
        x = self._like(x)
        self._check_fields(x)
        # z = ((x - mean) * w) @ E.T / scale with the weights and scale folded
        # into the (n, K) projection (see _encode_projection), so the
        # batch is copied only once.
        return (x - self.mean).reshape(x.shape[0], -1) @ self._encode_projection()

    @property
    def input_center(self) -> Tensor:
        """What :meth:`encode` subtracts first: the mean field ``(C, *spatial)``.

        With :meth:`encode_centered`, ``encode(x) == encode_centered(x -
        input_center)`` bit for bit: callers that prepare the batch
        themselves (the accessor's fused encode,
        :func:`xlatda._bridge.apply_state`) subtract it in the same pass as
        their own normalisation.
        """
        return self.mean

    def encode_centered(self, x: Tensor) -> Tensor:
        """:meth:`encode` of fields from which :attr:`input_center` was already taken.

        ``(B, C, *spatial) -> (B, K)``; the same projection as :meth:`encode`.
        """
        self._require_fitted()
        x = self._like(x)
        self._check_fields(x)
        return x.reshape(x.shape[0], -1) @ self._encode_projection()

    def decode(self, z: Tensor) -> Tensor:
        """Mean plus EOF combination: ``(B, K) -> (B, C, *spatial)``."""
        self._require_fitted()
        z = self._like(z)
        self._check_latent(z)
        if self.whiten:  # (multiplying by ones would give the same values)
            z = z * self._scale()
        flat = (z @ self.components).reshape(z.shape[0], self.n_channels, *self.spatial_shape)
        # The mean added in place: the same sums as mean + flat, one array fewer.
        return flat.add_(self.mean)

    def operator(self, points: Tensor, channel: Tensor):
        """Cached :class:`xlatda.sparse_interp.ObservationOperator` of the grid at ``points``."""
        return self._operators.get(
            self.grid,
            self.n_channels,
            self.spatial_shape,
            points,
            channel,
            dtype=self.mean.dtype,
            device=self.mean.device,
        )

    def linear_map(self, points: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """The affine decoder at points: ``decode_at(z) = offset + z @ matrix.T``.

        Returns
        -------
        matrix : Tensor
            ``(P, K)``, the Jacobian of ``decode_at`` (whitening included).
        offset : Tensor
            ``(P,)``, the mean at the points.
        """
        self._require_fitted()
        op = self.operator(points, channel)
        matrix = op(self.eofs).T * self._scale()
        return matrix, op(self.mean)

    def decode_at(self, z: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        """Decoded values at points, ``(B, K) -> (B, P)``; exact, differentiable in ``z``."""
        z = self._like(z)
        self._check_latent(z)
        matrix, offset = self.linear_map(points, channel)
        return offset + z @ matrix.T

    def encode_from(
        self,
        values: Tensor,
        points: Tensor,
        channel: Tensor,
        *,
        weights: Tensor | None = None,
        ridge: float = 0.0,
    ) -> Tensor:
        """Latents from scattered values by weighted least squares (closed form).

        Parameters
        ----------
        values : Tensor
            ``(B, P)``.
        points : Tensor
            ``(P, 2)`` latitude, longitude in degrees (``(P, 1)`` indices for a
            generic grid).
        channel : Tensor
            ``(P,)`` state channel of each value.
        weights : Tensor, optional
            ``(P,)`` or ``(B, P)`` non-negative point weights; default
            ``cos(lat)`` of the points (uniform on generic grids). Pass
            ``1 / r_std**2`` for the generalised least-squares estimate.
        ridge : float
            Tikhonov weight ``rho`` on ``||z||^2`` (``0``: minimum-norm least
            squares through the pseudo-inverse).

        Returns
        -------
        Tensor
            ``(B, K)``.

        Notes
        -----
        One ``(P, K)`` pseudo-inverse (or ``K x K`` Cholesky solve with
        ``ridge > 0``) shared by the batch when the weights are ``(P,)``;
        batched over samples when they are ``(B, P)``.
        """
        values = self._like(values)
        if values.dim() == 1:
            values = values[None]
        matrix, offset = self.linear_map(points, channel)
        if values.dim() != 2 or values.shape[-1] != matrix.shape[0]:
            raise ShapeError(
                f"values must be (batch, {matrix.shape[0]}) for {matrix.shape[0]} points, "
                f"got {tuple(values.shape)}"
            )
        w = (
            point_weights(self.grid, self._like(torch.as_tensor(points)))
            if weights is None
            else self._like(weights)
        )
        if (w < 0).any():
            raise ConfigError("encode_from weights must be non-negative")
        sw = w.sqrt()
        a = sw[..., :, None] * matrix  # (P, K) or (B, P, K)
        r = (sw * (values - offset))[..., None]  # (B, P, 1)
        if ridge > 0:
            eye = torch.eye(self.latent_dim, dtype=a.dtype, device=a.device)
            gram = a.mT @ a + ridge * eye
            chol = torch.linalg.cholesky(gram)
            return torch.cholesky_solve(a.mT @ r, chol)[..., 0]
        if ridge < 0:
            raise ConfigError(f"ridge must be non-negative, got {ridge}")
        return (torch.linalg.pinv(a) @ r)[..., 0]

    # -- fitting ---------------------------------------------------------
    def fit(
        self,
        x_train: Tensor,
        x_val: Tensor | None = None,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool | None = None,
        **ignored: Any,
    ) -> dict[str, Any]:
        """Compute mean and EOFs in closed form (one SVD).

        Parameters
        ----------
        x_train : Tensor
            ``(N, C, *spatial)``, ``N >= 2``.
        x_val : Tensor, optional
            Fields on which to report the reconstruction error.
        seed : int
            Seeds the randomised SVD (the global RNG is left untouched).
        device : str or torch.device, optional
            Where to compute and keep the EOFs (``None``: the
            ``xlatda.set_options`` default).
        dtype : {"float32", "float64"} or torch.dtype, optional
            Precision of the computation and of the buffers (``None``: the
            encoder's current dtype, float32 after construction).
        progress : bool, optional
            Unused (one step), accepted for a uniform interface.
        **ignored
            Training settings of the neural encoders (``epochs``, ``lr``,
            ``batch_size``, ``patience``, ``val_fraction`` ...), accepted and
            ignored so that every encoder fits through the same call.

        Returns
        -------
        dict
            ``{"train_loss": [mse], "val_loss": [mse] or [], "epochs": 1,
            "seconds": t}``, area-weighted reconstruction errors.

        Raises
        ------
        ShapeError
            If the fields do not have the encoder's shape.
        ConfigError
            If ``N < 2`` or ``latent_dim > min(N, D)``.

        Notes
        -----
        Memory: the anomaly matrix ``N x D`` and its SVD factors; the
        randomised SVD needs ``(N + D) (K + 10)`` more.
        """
        known = {
            "epochs",
            "batch_size",
            "lr",
            "patience",
            "val_fraction",
            "weight_decay",
            "lr_plateau",
            "grad_clip",
            "aux_train",
            "aux_val",
        }
        unknown = set(ignored) - known
        if unknown:
            raise ConfigError(f"PCA.fit got unknown arguments {sorted(unknown)}")
        t0 = time.perf_counter()
        device = resolve_device(device)
        dtype = self.mean.dtype if dtype is None else resolve_dtype(dtype)
        x = torch.as_tensor(x_train)
        self._check_fields(x)
        n, K = x.shape[0], self.latent_dim
        D = self.n_channels * self._n_space
        if n < 2:
            raise ConfigError(f"PCA needs at least 2 training fields, got {n}")
        if K > min(n, D):
            raise ConfigError(
                f"latent_dim={K} exceeds min(n_samples, n_values)={min(n, D)}; "
                "lower latent_dim or give more training fields"
            )
        self.to(device=device, dtype=dtype)
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            mean = x.mean(0)
            anom = (x - mean).reshape(n, D)
            xw = anom * self.weights.sqrt()
            method = self.svd
            if method == "auto":
                method = "lowrank" if min(n, D) > 2000 and K < min(n, D) / 4 else "full"
            if method == "full":
                u, s, _ = torch.linalg.svd(xw, full_matrices=False)
            else:
                with seeded(seed, device):
                    u, s, _ = torch.svd_lowrank(xw, q=min(K + 10, n, D), niter=4)
            u, s = u[:, :K], s[:K]
            tol = s.max() * max(n, D) * torch.finfo(dtype).eps if s.numel() else 0.0
            inv = torch.where(s > tol, 1.0 / s, torch.zeros_like(s))
            components = (u.T @ anom) * inv[:, None]
            # deterministic signs: largest-magnitude weighted loading positive
            loading = components * self.weights.sqrt()
            sign = torch.sign(loading.gather(1, loading.abs().argmax(1, keepdim=True))[:, 0])
            sign = torch.where(sign == 0, torch.ones_like(sign), sign)
            total = (xw**2).sum()
            self.mean.copy_(mean)
            self.components.copy_(components * sign[:, None])
            self.singular_values.copy_(s)
            self.explained_variance.copy_(s**2 / (n - 1))
            self.explained_variance_ratio.copy_(s**2 / total if total > 0 else s * 0)
        self._mark_fitted()
        with torch.no_grad():
            history: dict[str, Any] = {
                "train_loss": [self._mse(x)],
                "val_loss": [] if x_val is None else [self._mse(torch.as_tensor(x_val))],
                "epochs": 1,
            }
        history["seconds"] = time.perf_counter() - t0
        return history

    def _mse(self, x: Tensor) -> float:
        x = self._like(x)
        err = ((self.decode(self.encode(x)) - x) ** 2).reshape(x.shape[0], -1) * self.weights
        return float(err.mean())
