"""Per-channel normalisation (z-scores), NaN-aware.

Examples
--------
>>> import torch
>>> from xlatda.normalize import Normalizer
>>> x = torch.tensor([[[1.0, 3.0]], [[3.0, float("nan")]]])   # (sample, channel, point)
>>> norm = Normalizer.fit(x)
>>> norm.mean, norm.std
(tensor([2.3333]), tensor([0.9428]))
>>> torch.allclose(norm.denormalize(norm.normalize(x[:, :, :1])), x[:, :, :1])
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlatda.errors import ShapeError

__all__ = ["Normalizer"]


class Normalizer:
    """Per-channel affine map ``(x - mean) / std``.

    Parameters
    ----------
    mean, std : array-like of shape (C,)
        Channel statistics (std must be positive; zeros are replaced by 1 so a
        constant channel passes through centred).
    """

    def __init__(self, mean: Any, std: Any) -> None:
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float64)).reshape(-1)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float64)).reshape(-1)
        if mean_t.shape != std_t.shape:
            raise ShapeError(f"mean {tuple(mean_t.shape)} and std {tuple(std_t.shape)} differ")
        std_t = torch.where((std_t > 0) & torch.isfinite(std_t), std_t, torch.ones_like(std_t))
        self._mean = mean_t
        self._std = std_t

    @property
    def mean(self) -> Tensor:
        """Channel means (float32 view for display; float64 kept inside)."""
        return self._mean.float()

    @property
    def std(self) -> Tensor:
        """Channel standard deviations."""
        return self._std.float()

    @property
    def n_channels(self) -> int:
        return int(self._mean.numel())

    @classmethod
    def fit(cls, x: Tensor, weights: Tensor | None = None, channel_dim: int = -1) -> Normalizer:
        """Statistics of a tensor ``(*lead, C, *spatial)`` over all but the channel axis.

        Parameters
        ----------
        x : Tensor
            Training fields; NaNs are ignored.
        weights : Tensor, optional
            Spatial weights broadcastable to ``x``'s spatial shape (cos-lat).
        channel_dim : int
            Axis of the channels; by default the axis before the spatial axes
            is found from ``weights`` or taken as axis 1 (``(sample, C, ...)``).
        """
        cdim = 1 if channel_dim == -1 else channel_dim
        xd = x.to(torch.float64).movedim(cdim, 0)
        moved = xd.reshape(xd.shape[0], -1)
        if weights is None:
            w = torch.ones_like(moved)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64, device=x.device)
            w = torch.broadcast_to(w, xd.shape[1:]).reshape(1, -1).expand_as(moved)
        valid = torch.isfinite(moved)
        w = torch.where(valid, w, torch.zeros_like(w))
        vals = torch.where(valid, moved, torch.zeros_like(moved))
        total = w.sum(1).clamp_min(1e-300)
        mean = (w * vals).sum(1) / total
        var = (w * (vals - mean[:, None]) ** 2).sum(1) / total
        return cls(mean.numpy(), var.sqrt().numpy())

    def mean_as(self, x: Tensor) -> Tensor:
        """Channel means ``(C,)`` in ``x``'s dtype and on its device."""
        return self._mean.to(device=x.device, dtype=x.dtype)

    def std_as(self, x: Tensor) -> Tensor:
        """Channel standard deviations ``(C,)`` in ``x``'s dtype and on its device."""
        return self._std.to(device=x.device, dtype=x.dtype)

    def _shape(self, x: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
        n = self.n_channels
        if x.shape[channel_dim] != n:
            raise ShapeError(
                f"normaliser has {n} channels but axis {channel_dim} of the input has "
                f"{x.shape[channel_dim]}"
            )
        shape = [1] * x.dim()
        shape[channel_dim] = n
        mean = self._mean.to(device=x.device, dtype=x.dtype).reshape(shape)
        std = self._std.to(device=x.device, dtype=x.dtype).reshape(shape)
        return mean, std

    def normalize(self, x: Tensor, channel_dim: int = -1) -> Tensor:
        """``(x - mean) / std`` with channels on ``channel_dim`` (default: axis 1
        for 2+-D inputs laid out ``(sample, C, *spatial)``; pass the axis
        otherwise)."""
        cdim = self._cdim(x, channel_dim)
        mean, std = self._shape(x, cdim)
        return (x - mean) / std

    def denormalize(self, x: Tensor, channel_dim: int = -1) -> Tensor:
        """Inverse of :meth:`normalize`."""
        cdim = self._cdim(x, channel_dim)
        mean, std = self._shape(x, cdim)
        return x * std + mean

    def scale(self, x: Tensor, channel_dim: int = -1) -> Tensor:
        """Multiply by std only (for anomalies, increments, error std)."""
        cdim = self._cdim(x, channel_dim)
        _, std = self._shape(x, cdim)
        return x * std

    def select(self, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Means and stds for a vector of channel indices (observation points)."""
        idx = torch.as_tensor(channel, dtype=torch.long)
        return self._mean[idx], self._std[idx]

    @staticmethod
    def _cdim(x: Tensor, channel_dim: int) -> int:
        return (1 if x.dim() > 1 else 0) if channel_dim == -1 else channel_dim

    def to_dict(self) -> dict[str, list[float]]:
        """JSON form (float64 values, exact through JSON's repr of floats)."""
        return {"mean": self._mean.tolist(), "std": self._std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(d["mean"], d["std"])

    def __repr__(self) -> str:
        return f"Normalizer(n_channels={self.n_channels})"
