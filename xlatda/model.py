"""LatentModel: a state layout, a normaliser, an encoder, and optional latent
dynamics and model-error covariance, in one object that saves to zarr.

The model works on physical-unit tensors at its edges and normalised
tensors inside:

``encode_tensor(x)``    ``(B, C, *spatial)`` physical -> ``(B, latent)``
``decode_tensor(z)``    ``(B, latent)`` -> ``(B, C, *spatial)`` physical
``decode_points(z, lat, lon, channel)``  -> ``(B, P)`` physical values

Build one with :func:`xlatda.fit`; open a saved one with
:func:`xlatda.open_model`.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from xlatda.errors import NotFittedError
from xlatda.layout import StateLayout
from xlatda.model_store import FORMAT, missing_mask, parts_from_state, save_model, to_state
from xlatda.normalize import Normalizer
from xlatda.options import resolve_device, resolve_dtype

__all__ = ["LatentModel", "model_from_state"]


@dataclass(eq=False)
class LatentModel:
    """Encoder/decoder pair with its layout and normalisation (+ dynamics, Q).

    Attributes
    ----------
    layout : StateLayout
        The training layout (grid, variables, metadata; no sample coords).
    normalizer : Normalizer
        Per-channel statistics of the training data.
    encoder : xlatda.encoders.base.Encoder
        The fitted encoder.
    dynamics : torch.nn.Module, optional
        Latent dynamics (``xlatda.dynamics``), with ``step``/``integrate``.
    model_error : torch.nn.Module, optional
        Model-error covariance of one-step latent residuals.
    time_step : dict, optional
        The data time step one latent step stands for:
        ``{"value": 3600.0, "units": "s"}`` for datetime axes, or
        ``{"value": 0.05, "units": "model"}`` for numeric time.
    history : dict
        Training histories (losses per epoch, times).
    model_id : str
        Identity written into latent Datasets' attrs.
    score : xlatda.methods.diffusion.ScorePrior, optional
        Score-based prior over windows of consecutive (standardised) latent
        states, for ``method="score"`` (train it with :func:`xlatda.fit_score`).
    prior : xlatda.prior.LatentPrior, optional
        Gaussian distribution (mean, covariance factor) of the training
        codes, fitted by :func:`xlatda.fit`: the prior of
        :func:`xlatda.encode_obs` and the climatological background of latent
        assimilation. ``None`` for models saved before it existed.
    missing : ndarray of bool, optional
        ``(C, *spatial)``: grid points missing in every training field (a
        fixed land or sea mask). The encoder saw them filled with the channel
        mean; :func:`xlatda.decode` sets them back to NaN.
    """

    store_format: ClassVar[str] = FORMAT

    layout: StateLayout
    normalizer: Normalizer
    encoder: nn.Module
    dynamics: nn.Module | None = None
    model_error: nn.Module | None = None
    time_step: dict[str, Any] | None = None
    history: dict[str, Any] = field(default_factory=dict)
    model_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    score: nn.Module | None = None
    prior: nn.Module | None = None
    missing: np.ndarray | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("encoder", "missing"):
            self._sync_point_mask()

    def _sync_point_mask(self) -> None:
        """Tell the encoder's point operators which cells hold data (the fixed mask),
        so values at places next to masked cells read only cells with data."""
        from xlatda.encoders.training import PointOperatorCache

        ops = getattr(self.__dict__.get("encoder"), "_operators", None)
        if isinstance(ops, PointOperatorCache):
            missing = self.__dict__.get("missing")
            ops.set_valid(None if missing is None else ~np.asarray(missing, dtype=bool))

    # -- properties ----------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Size of the latent vector."""
        return int(self.encoder.latent_dim)

    @property
    def encoder_kind(self) -> str:
        """Registry name of the encoder."""
        return str(self.encoder.kind)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters or buffers."""
        for t in itertools.chain(self.encoder.parameters(), self.encoder.buffers()):
            return t.device  # the first one (no list of every tensor per call)
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the encoder's weights."""
        for t in itertools.chain(self.encoder.parameters(), self.encoder.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def to(self, device: Any = None, dtype: Any = None) -> LatentModel:
        """Move every module to ``device``/``dtype`` (in place); returns self."""
        for mod in (self.encoder, self.dynamics, self.model_error, self.prior):
            if mod is not None:
                mod.to(device=device, dtype=dtype)
        if self.score is not None:  # the standardisation stays float64
            self.score.net.to(device=device, dtype=dtype)
            self.score.to(device=device)
        return self

    def place(self, device: Any = None, dtype: Any = None) -> tuple[torch.device, torch.dtype]:
        """Resolve ``device``/``dtype`` (``None``: where the model is), move the model
        there if it is elsewhere (in place), and return them."""
        dev = self.device if device is None else resolve_device(device)
        tdtype = self.dtype if dtype is None else resolve_dtype(dtype)
        if dev != self.device or tdtype != self.dtype:
            self.to(device=dev, dtype=tdtype)
        return dev, tdtype

    def require_dynamics(self) -> nn.Module:
        """The dynamics, or a clear error if the model has none."""
        if self.dynamics is None:
            raise NotFittedError(
                "this model has no latent dynamics; fit them with "
                "xlatda.fit(ds, ..., dynamics='ode') or xlatda.fit_dynamics(model, ds)"
            )
        return self.dynamics

    def require_prior(self) -> nn.Module:
        """The latent prior, or a clear error if the model has none."""
        if self.prior is None:
            raise NotFittedError(
                "this model has no latent prior (it was saved before priors existed); refit it "
                "with xlatda.fit, or attach one: model.prior = xlatda.prior.LatentPrior.fit(codes)"
            )
        return self.prior

    def require_score(self) -> nn.Module:
        """The score prior, or a clear error if the model has none."""
        if self.score is None:
            raise NotFittedError(
                "this model has no score network for method='score'; train one with "
                "model = xlatda.fit_score(ds, model, window=5)"
            )
        return self.score

    # -- tensor edges --------------------------------------------------
    def _cast(self, x: Tensor) -> Tensor:
        return x.to(device=self.device, dtype=self.dtype)

    def encode_tensor(self, x: Tensor) -> Tensor:
        """Physical fields ``(B, C, *spatial)`` -> latents ``(B, latent)``."""
        xn = self.normalizer.normalize(self._cast(x))
        if self.missing is not None:  # the fixed mask, filled as in training
            xn = xn.masked_fill(torch.as_tensor(self.missing, device=xn.device), 0.0)
        return self.encoder.encode(xn)

    def decode_tensor(self, z: Tensor) -> Tensor:
        """Latents ``(B, latent)`` -> physical fields ``(B, C, *spatial)``."""
        return self.normalizer.denormalize(self.encoder.decode(self._cast(z)))

    def points_tensor(self, lat: Any = None, lon: Any = None, position: Any = None) -> Tensor:
        """The ``(P, 2)`` (lat, lon) or ``(P, 1)`` position tensor encoders take."""
        if position is not None:
            return torch.as_tensor(np.asarray(position, float), dtype=self.dtype,
                                   device=self.device)[:, None]
        pts = np.stack([np.asarray(lat, float), np.asarray(lon, float)], axis=-1)
        return torch.as_tensor(pts, dtype=self.dtype, device=self.device)

    def observation_points(self, table: Any) -> tuple[Tensor, Tensor, tuple | None]:
        """Where ``H o D`` decodes for an observation table: ``(points, channel, pool)``.

        Point observations give their own places and ``pool=None``. Block-mean
        (footprint) observations (:func:`xlatda.obs.coarsen`) give every
        footprint point (:func:`~xlatda.obs.operator.footprint_points`), its
        entry's channel, and the ``pool`` that :meth:`pool_points` averages
        them with back to one value per entry.
        """
        from xlatda.obs.operator import footprint_points

        channel = torch.as_tensor(table.channel, dtype=torch.long)
        fp = footprint_points(table)
        if fp is None:
            return self.points_tensor(table.lat, table.lon, table.position), channel, None
        entry = torch.as_tensor(fp["entry"], dtype=torch.long)
        pool = (entry, torch.as_tensor(fp["weight"], dtype=torch.float64), len(table))
        return self.points_tensor(fp["lat"], fp["lon"], fp["position"]), channel[entry], pool

    @staticmethod
    def pool_points(values: Tensor, pool: tuple | None) -> Tensor:
        """Values ``(..., Q)`` at :meth:`observation_points` -> ``(..., P)``, the
        weighted mean of each entry's footprint (unchanged when ``pool`` is None);
        differentiable."""
        if pool is None:
            return values
        entry, weight, n = pool
        out = values.new_zeros(*values.shape[:-1], n)
        return out.index_add(-1, entry.to(values.device), values * weight.to(values))

    def decode_points(self, z: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        """Latents ``(B, latent)`` -> physical values ``(B, P)`` at points.

        Differentiable in ``z``: this is the latent observation operator
        ``H' = H o D`` of latent assimilation.
        """
        channel = torch.as_tensor(channel, dtype=torch.long, device=self.device)
        values = self.encoder.decode_at(self._cast(z), points, channel)
        mean, std = self.normalizer.select(channel.cpu())
        return values * std.to(values) + mean.to(values)

    def encode_points(self, values: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        """Physical values ``(B, P)`` at points -> latents (zero-shot for SINR)."""
        channel = torch.as_tensor(channel, dtype=torch.long, device=self.device)
        mean, std = self.normalizer.select(channel.cpu())
        normed = (self._cast(values) - mean.to(self.device, self.dtype)) / std.to(
            self.device, self.dtype
        )
        return self.encoder.encode_from(normed, points, channel)

    # -- persistence ---------------------------------------------------
    def save(self, path: Any, *, overwrite: bool = False) -> None:
        """Write the model to a zarr v3 store (see :func:`xlatda.io.save_model`)."""
        save_model(self, path, overwrite=overwrite)

    @classmethod
    def from_parts(cls, meta: dict[str, Any], parts: dict[str, nn.Module]) -> LatentModel:
        """Assemble from a store's metadata and rebuilt parts (:mod:`xlatda.model_store`)."""
        return cls(
            layout=StateLayout.from_dict(meta["layout"]),
            normalizer=Normalizer.from_dict(meta["normalizer"]),
            encoder=parts["encoder"],
            dynamics=parts.get("dynamics"),
            model_error=parts.get("model_error"),
            time_step=meta.get("time_step"),
            history=meta.get("history", {}),
            model_id=meta["model_id"],
            score=parts.get("score"),
            prior=parts.get("prior"),
            missing=missing_mask(meta.get("missing")),
        )

    def __reduce__(self):
        # Pickle (dask workers, multiprocessing) as plain data, rebuilt from
        # the registries: never a live torch module, never CUDA tensors.
        return (model_from_state, (to_state(self),))

    def __repr__(self) -> str:
        parts = [
            f"encoder={self.encoder_kind!r}",
            f"latent_dim={self.latent_dim}",
            f"variables={list(self.layout.variables)}",
            f"grid={self.layout.kind}{self.layout.spatial_shape}",
        ]
        if self.dynamics is not None:
            kind = getattr(self.dynamics, "kind", type(self.dynamics).__name__)
            parts.append(f"dynamics={kind!r}")
        if self.model_error is not None:
            parts.append(f"model_error={getattr(self.model_error, 'kind', 'yes')!r}")
        if self.prior is not None:
            parts.append(f"prior={self.prior.kind!r}")
        if self.missing is not None:
            parts.append(f"missing={int(self.missing.sum())}")
        if self.score is not None:
            kind = getattr(getattr(self.score, "net", None), "kind", "yes")
            parts.append(f"score={kind!r}(window={getattr(self.score, 'window', '?')})")
        return f"LatentModel({', '.join(parts)})"


def model_from_state(state: dict[str, Any]) -> LatentModel:
    """A LatentModel (on CPU) from :func:`xlatda.io.to_state`'s plain data (unpickling)."""
    return LatentModel.from_parts(*parts_from_state(state))
