"""Shared pieces of the shallow-water generative-assimilation benchmark.

Data: Galewsky-jet trajectories from :func:`xlatda.datasets.shallow_water`
on a 32 x 64 Gauss grid (the model runs at T42 on 64 x 128 and is truncated
to the output grid), as float64 tensors ``(B, T, 3, 32, 64)`` with channels
``(height, vorticity, divergence)``, normalised per channel with the
statistics of the training trajectories. Training, validation and test
trajectories come from different seeds (different jets and bumps).

Set ``XLATDA_BENCH_CACHE=<dir>`` to keep generated trajectories on disk
between runs (the arrays are deterministic for given arguments).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlatda.datasets import shallow_water

F64 = torch.float64
VARS = ("height", "vorticity", "divergence")


@dataclass(frozen=True)
class Norm:
    """Per-channel mean and std ``(3,)`` (physical units)."""

    mean: torch.Tensor
    std: torch.Tensor

    def fwd(self, x: torch.Tensor) -> torch.Tensor:
        """Physical ``(..., 3, J, K)`` -> normalised."""
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def inv(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., 3, J, K)`` -> physical."""
        return x * self.std[:, None, None] + self.mean[:, None, None]


def trajectories(trajectories: int, hours: int, seed: int, spinup_hours: int = 24,
                 nlat: int = 32, nlon: int = 64) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Physical trajectories ``(B, hours + 1, 3, nlat, nlon)`` float64, lat, lon (degrees)."""
    key = f"{trajectories}-{hours}-{seed}-{spinup_hours}-{nlat}-{nlon}"
    cache = os.environ.get("XLATDA_BENCH_CACHE")
    path = None
    if cache:
        path = Path(cache) / f"sw_{hashlib.md5(key.encode()).hexdigest()[:12]}.pt"
        if path.exists():
            d = torch.load(path)
            return d["x"], d["lat"].numpy(), d["lon"].numpy()
    ds = shallow_water(nlat=nlat, nlon=nlon, hours=hours, trajectories=trajectories, seed=seed,
                       spinup_hours=spinup_hours, variables=VARS, progress=False)
    x = torch.stack([torch.as_tensor(ds[v].values) for v in VARS], dim=2).to(F64)
    lat, lon = ds.lat.values.astype(float), ds.lon.values.astype(float)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x, "lat": torch.as_tensor(lat), "lon": torch.as_tensor(lon)}, path)
    return x, lat, lon


def fit_norm(x: torch.Tensor) -> Norm:
    """Channel statistics of ``(..., 3, J, K)`` fields."""
    flat = x.movedim(-3, 0).reshape(x.shape[-3], -1)
    return Norm(flat.mean(1), flat.std(1))


def rmse(a: torch.Tensor, b: torch.Tensor, channels: tuple[int, ...] = (0, 1)) -> float:
    """RMSE over the given channels (dim -3) and everything else (unweighted grid mean)."""
    idx = list(channels)
    return float(((a[..., idx, :, :] - b[..., idx, :, :]) ** 2).mean().sqrt())
