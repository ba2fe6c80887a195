"""The encoder protocol every latent representation in xlatda follows.

Shapes (tensors only; this layer knows nothing of xarray):

- ``x``: fields on the training layout, ``(B, C, *spatial)`` where spatial
  is ``(nlat, nlon)`` for a lat/lon grid and ``(S,)`` for a point set or a
  generic dimension; ``C`` state channels (variables x levels), normalised.
- ``z``: latent vectors ``(B, latent_dim)``.
- ``points``: ``(P, 2)`` latitude and longitude in degrees (for generic
  dimensions: ``(P, 1)`` fractional index positions).
- ``channel``: ``(P,)`` long tensor, the state channel each point observes.

An encoder is a :class:`torch.nn.Module` with

``encode(x) -> z``
    fields on the training layout to latent vectors;
``decode(z) -> x``
    latent vectors to fields on the training layout;
``decode_at(z, points, channel) -> values (B, P)``
    values at arbitrary points (mesh-free for SINR; interpolation for grid
    encoders), differentiable in ``z``;
``encode_from(values, points, channel) -> z``
    latent vectors from scattered values (auto-decoding for SINR, weighted
    least squares for PCA, a fit of ``decode_at`` otherwise);
``fit(x_train, x_val=None, **training) -> dict``
    trains in place and returns the history (losses per epoch).

Serialisation contract (used by the zarr model store, see ``xlatda.io``):
``type(enc)(**enc.config)`` rebuilds an untrained encoder of the same
architecture, where ``enc.config`` is a JSON-serialisable dict (numbers,
strings, lists, dicts only), and ``load_state_dict(enc.state_dict())`` then
restores it bit-exactly. Anything needed after training that is not a
parameter (EOFs, means, grid coordinates) is a registered buffer so that it
is part of ``state_dict()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xlatda._registry import Registry
from xlatda.errors import NotFittedError, ShapeError

__all__ = ["Encoder", "encoders"]

encoders = Registry("encoder")


class Encoder(nn.Module):
    """Base class of xlatda encoders; see the module docstring for the protocol.

    Parameters
    ----------
    n_channels : int
        Number of state channels ``C``.
    spatial_shape : sequence of int
        Spatial shape of one channel on the training layout.
    latent_dim : int
        Size of the latent vector.
    grid : dict, optional
        Where the training layout lives, JSON-serialisable:
        ``{"kind": "latlon", "lat": [...], "lon": [...]}`` (1-D coordinates of
        a regular grid, degrees), ``{"kind": "points", "lat": [...],
        "lon": [...]}`` (one entry per point) or ``{"kind": "generic",
        "n": S, "periodic": bool}``. Needed by ``decode_at``/``encode_from``
        and by encoders that weight by latitude; ``None`` when unknown.
    """

    kind: str = "base"

    def __init__(
        self,
        n_channels: int,
        spatial_shape: Any,
        latent_dim: int,
        grid: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.n_channels = int(n_channels)
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.latent_dim = int(latent_dim)
        self.grid = None if grid is None else dict(grid)
        self.register_buffer("_fitted", torch.zeros((), dtype=torch.bool))

    # -- serialisation -------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (override to add more)."""
        return {
            "n_channels": self.n_channels,
            "spatial_shape": list(self.spatial_shape),
            "latent_dim": self.latent_dim,
            "grid": self.grid,
        }

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run (or fitted weights were loaded)."""
        return bool(self._fitted)

    def _mark_fitted(self) -> None:
        self._fitted.fill_(True)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                f"the {self.kind!r} encoder is not fitted; call .fit(x) first "
                "or open a fitted model with xlatda.open_model(path)"
            )

    def _check_fields(self, x: Tensor) -> None:
        want = (self.n_channels, *self.spatial_shape)
        if x.dim() < 2 or tuple(x.shape[1:]) != want:
            dims = ", ".join(map(str, want))
            raise ShapeError(
                f"{type(self).__name__} expects fields of shape (batch, {dims}), "
                f"got {tuple(x.shape)}"
            )

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[-1] != self.latent_dim:
            raise ShapeError(
                f"{type(self).__name__} expects latents of shape (batch, {self.latent_dim}), "
                f"got {tuple(z.shape)}"
            )

    # -- protocol ------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_at(self, z: Tensor, points: Tensor, channel: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode_from(
        self, values: Tensor, points: Tensor, channel: Tensor
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def fit(self, x_train: Tensor, x_val: Tensor | None = None, **training: Any) -> dict:
        raise NotImplementedError  # pragma: no cover
