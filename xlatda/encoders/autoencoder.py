r"""Convolutional autoencoder on the sphere, periodic in longitude (LAINR/SLAMS baseline).

Maths
-----
An encoder network :math:`E` and a decoder network :math:`D` with a linear
bottleneck of size ``latent_dim`` are trained to minimise the area-weighted
reconstruction error (``METHODS.md`` §1, :mod:`xlatda.encoders.training`)

.. math::

    L = \frac{1}{B C S}\sum_{b,c,s} w_s \big(D(E(x_b))_{cs} - x_{bcs}\big)^2,
    \qquad w_s \propto \cos\varphi_s .

On a latitude/longitude grid both networks are convolutional ("AEflow"-like,
the autoencoder baseline of LAINR, Li, Dong & Zhang 2023, arXiv:2309.09574,
and the encoder/decoder of SLAMS, Qu et al. 2024): each of the ``len(channels)``
stages of the encoder is a stride-2 3x3 convolution followed by a residual
block ``h + conv(act(h))`` (the residual path makes these small networks
train several times faster on CPU than a plain stack); the decoder mirrors
it with nearest-neighbour upsampling. Every
convolution pads *circularly in longitude* (the grid wraps around) and by
zeros (or replication) in latitude. A flattening linear layer maps the coarsest
feature map to ``z`` and back.

*Equivariance.* The convolutional feature extractor commutes with rolls along
longitude by multiples of ``2**depth`` points (and the convolutional part of
the decoder with rolls of the coarse map by one point) when ``nlon`` is a
multiple of ``2**depth``; the linear bottleneck breaks this on purpose (the
latent is a global code), so the autoencoder as a whole is not equivariant.

On a point set or a generic dimension (no neighbourhood structure to convolve
over) both networks fall back to multilayer perceptrons with widths
``hidden``.

*Multimodal input (SLAMS §3).* With ``aux_channels = A > 0`` the encoder
takes ``A`` auxiliary input channels (observation images, other fields) on the
same layout, concatenated to the state channels; the decoder still outputs
the ``C`` state channels only, so one latent space fuses the modalities.
``encode(x, aux)``; a missing ``aux`` is filled with zeros (train with zeros
in place of missing images for that to be meaningful).

*Reading the latent from points.* ``decode_at`` decodes on the grid and
applies an interpolating observation operator (:mod:`xlatda.obs_geometry`,
:mod:`xlatda.sparse_interp`); ``encode_from`` fits ``z`` to scattered values by Adam on ``z`` alone
(auto-decoding, :func:`xlatda.encoders.training.autodecode`), starting from
the mean training code.

References
----------
Z. Li, B. Dong, P. Zhang, "Latent assimilation with implicit neural
representations for unknown dynamics", arXiv:2309.09574.
L. Qu, J. Nathaniel, Y. Li, P. Gentine, "Deep generative data assimilation in
multimodal setting" (SLAMS), CVPR Workshops 2024.

Examples
--------
>>> import torch
>>> from xlatda.encoders.autoencoder import ConvAutoencoder
>>> grid = {"kind": "latlon", "lat": [-67.5, -22.5, 22.5, 67.5],
...         "lon": [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]}
>>> ae = ConvAutoencoder(2, (4, 8), latent_dim=3, grid=grid, channels=[4, 8])
>>> x = torch.randn(16, 2, 4, 8)
>>> history = ae.fit(x, epochs=2, batch_size=8, progress=False)
>>> ae.encode(x).shape, ae.decode(ae.encode(x)).shape
(torch.Size([16, 3]), torch.Size([16, 2, 4, 8]))
>>> points, channel = torch.tensor([[10.0, 20.0]]), torch.tensor([1])
>>> ae.decode_at(ae.encode(x), points, channel).shape
torch.Size([16, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from xlatda.encoders.base import Encoder, encoders
from xlatda.encoders.training import (
    PointOperatorCache,
    area_weights,
    autodecode,
    check_grid,
    point_weights,
    seeded,
    train_module,
    weighted_mse,
)
from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype

__all__ = [
    "ConvAutoencoder",
    "ConvDecoderNet",
    "ConvEncoderNet",
    "MLPDecoderNet",
    "MLPEncoderNet",
    "NeuralEncoder",
    "PeriodicConv2d",
    "ResidualConv",
    "build_networks",
]

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}
_LAT_PADDINGS = ("replicate", "zeros")


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; known: {', '.join(map(repr, _ACTIVATIONS))}"
        ) from None


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------
class PeriodicConv2d(nn.Module):
    """2-D convolution padded circularly along longitude (last axis).

    Input ``(B, C_in, nlat, nlon)``, output ``(B, C_out, ceil(nlat/s),
    ceil(nlon/s))`` for stride ``s`` and an odd kernel. Longitude is padded
    by wrapping around (any width, even narrower than the padding), latitude
    with zeros (``lat_padding="zeros"``, done inside the convolution, cheapest)
    or by replicating the edge rows (``"replicate"``).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd kernel size.
    stride : int
    periodic_lon : bool
        Wrap around in longitude; zeros padding otherwise.
    lat_padding : {"zeros", "replicate"}

    Examples
    --------
    >>> conv = PeriodicConv2d(1, 1, 3)
    >>> x = torch.randn(1, 1, 4, 8)
    >>> torch.allclose(conv(x.roll(3, -1)), conv(x).roll(3, -1), atol=1e-6)
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        periodic_lon: bool = True,
        lat_padding: str = "zeros",
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ConfigError(f"kernel_size must be odd, got {kernel_size}")
        if lat_padding not in _LAT_PADDINGS:
            raise ConfigError(f"lat_padding must be one of {_LAT_PADDINGS}, got {lat_padding!r}")
        self.pad = kernel_size // 2
        self.periodic_lon = bool(periodic_lon)
        self.lat_padding = lat_padding
        # zeros in latitude come free with the convolution's own padding
        lat_pad = self.pad if lat_padding == "zeros" else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(lat_pad, 0)
        )

    def forward(self, x: Tensor) -> Tensor:
        p = self.pad
        if p:
            nlat, nlon = x.shape[-2:]
            if self.lat_padding == "replicate":
                if nlat > 1:
                    x = F.pad(x, (0, 0, p, p), mode="replicate")
                else:
                    x = x.expand(*x.shape[:-2], nlat + 2 * p, nlon)
            if not self.periodic_lon:
                x = F.pad(x, (p, p, 0, 0))
            elif nlon >= p:
                x = F.pad(x, (p, p, 0, 0), mode="circular")
            else:  # narrower than the padding: wrap around several times
                idx = torch.arange(-p, nlon + p, device=x.device) % nlon
                x = x.index_select(-1, idx)
        return self.conv(x)


def _down(n: int, kernel_size: int) -> int:
    p = kernel_size // 2
    return (n + 2 * p - kernel_size) // 2 + 1


def _stage_shapes(spatial: Sequence[int], depth: int, kernel_size: int) -> list[tuple[int, int]]:
    """Spatial shapes ``[full, after stage 1, ..., after stage depth]``."""
    shapes = [tuple(int(s) for s in spatial)]
    for _ in range(depth):
        h, w = shapes[-1]
        shapes.append((_down(h, kernel_size), _down(w, kernel_size)))
    return shapes


class ResidualConv(nn.Module):
    """Pre-activation residual block ``h + conv(act(h))`` (shape preserving)."""

    def __init__(self, width: int, kernel_size: int, activation: str, **padding: Any) -> None:
        super().__init__()
        self.act = _activation(activation)
        self.conv = PeriodicConv2d(width, width, kernel_size, **padding)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv(self.act(h))


class ConvEncoderNet(nn.Module):
    """Convolutional encoder ``(B, C_in, nlat, nlon) -> (B, out_features)``.

    ``len(channels)`` stages, each a stride-2 :class:`PeriodicConv2d`
    (preceded by an activation, except the first) and a
    :class:`ResidualConv` block, then an activation and a linear map of the
    flattened coarsest feature map. ``features(x)`` gives the feature map
    before the linear map.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_shape: Sequence[int],
        channels: Sequence[int],
        out_features: int,
        *,
        kernel_size: int = 3,
        periodic_lon: bool = True,
        lat_padding: str = "zeros",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        kw = {"periodic_lon": periodic_lon, "lat_padding": lat_padding}
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(channels):
            if i:
                layers.append(_activation(activation))
            layers += [
                PeriodicConv2d(prev, width, kernel_size, stride=2, **kw),
                ResidualConv(width, kernel_size, activation, **kw),
            ]
            prev = width
        layers.append(_activation(activation))
        self.body = nn.Sequential(*layers)
        self.shapes = _stage_shapes(spatial_shape, len(channels), kernel_size)
        h, w = self.shapes[-1]
        self.head = nn.Linear(prev * h * w, out_features)

    def features(self, x: Tensor) -> Tensor:
        """Coarsest feature map ``(B, channels[-1], h, w)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).flatten(1))


class ConvDecoderNet(nn.Module):
    """Convolutional decoder ``(B, latent_dim) -> (B, C_out, nlat, nlon)``.

    A linear map to the coarsest feature map, then for each stage (coarse to
    fine) a :class:`ResidualConv` block, nearest-neighbour upsampling to the
    next finer shape, an activation and a :class:`PeriodicConv2d` to the next
    width (to ``C_out`` at the end, with no output activation). ``body(h)`` is
    the convolutional part, applied to a coarse map ``(B, channels[-1], h, w)``.
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        spatial_shape: Sequence[int],
        channels: Sequence[int],
        *,
        kernel_size: int = 3,
        periodic_lon: bool = True,
        lat_padding: str = "zeros",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        kw = {"periodic_lon": periodic_lon, "lat_padding": lat_padding}
        self.shapes = _stage_shapes(spatial_shape, len(channels), kernel_size)
        self.channels = [int(c) for c in channels]
        h, w = self.shapes[-1]
        self.head = nn.Linear(latent_dim, self.channels[-1] * h * w)
        self.blocks = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.outs = nn.ModuleList()
        for i in reversed(range(len(channels))):
            width = self.channels[i]
            nxt = self.channels[i - 1] if i > 0 else out_channels
            self.blocks.append(ResidualConv(width, kernel_size, activation, **kw))
            self.acts.append(_activation(activation))
            self.outs.append(PeriodicConv2d(width, nxt, kernel_size, **kw))

    def body(self, h: Tensor) -> Tensor:
        """Convolutional part: coarse map to fields."""
        n = len(self.channels)
        for j in range(n):
            h = self.blocks[j](h)
            h = F.interpolate(h, size=self.shapes[n - 1 - j], mode="nearest")
            h = self.outs[j](self.acts[j](h))
        return h

    def forward(self, z: Tensor) -> Tensor:
        h, w = self.shapes[-1]
        return self.body(self.head(z).reshape(z.shape[0], self.channels[-1], h, w))


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


class MLPEncoderNet(nn.Module):
    """Multilayer perceptron ``(B, C_in, *spatial) -> (B, out_features)``."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.net = _mlp([in_features, *hidden, out_features], activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoderNet(nn.Module):
    """Multilayer perceptron ``(B, latent_dim) -> (B, C_out, *spatial)``."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        spatial_shape: Sequence[int],
        hidden: Sequence[int],
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.out_shape = (int(out_channels), *(int(s) for s in spatial_shape))
        self.net = _mlp(
            [latent_dim, *reversed(list(hidden)), math.prod(self.out_shape)], activation
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(z.shape[0], *self.out_shape)


def build_networks(
    architecture: str,
    in_channels: int,
    out_channels: int,
    spatial_shape: Sequence[int],
    code_features: int,
    latent_dim: int,
    *,
    channels: Sequence[int],
    hidden: Sequence[int],
    kernel_size: int,
    periodic_lon: bool,
    lat_padding: str,
    activation: str,
) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder networks shared by the autoencoder and the VAE.

    Parameters
    ----------
    architecture : {"conv", "mlp"}
    in_channels, out_channels : int
        Channels into the encoder (state + auxiliary) and out of the decoder.
    spatial_shape : sequence of int
    code_features : int
        Encoder output size (``latent_dim`` for an autoencoder, ``2 *
        latent_dim`` for a VAE's mean and log-variance).
    latent_dim : int
        Decoder input size.

    Returns
    -------
    (encoder, decoder) : tuple of torch.nn.Module
    """
    if architecture == "conv":
        kw = {
            "kernel_size": kernel_size,
            "periodic_lon": periodic_lon,
            "lat_padding": lat_padding,
            "activation": activation,
        }
        return (
            ConvEncoderNet(in_channels, spatial_shape, channels, code_features, **kw),
            ConvDecoderNet(latent_dim, out_channels, spatial_shape, channels, **kw),
        )
    n_space = math.prod(spatial_shape)
    return (
        MLPEncoderNet(in_channels * n_space, hidden, code_features, activation),
        MLPDecoderNet(latent_dim, out_channels, spatial_shape, hidden, activation),
    )


def _detect_periodic_lon(grid: dict | None) -> bool:
    if grid is None or grid.get("kind") != "latlon":
        return True
    lon = np.asarray(grid["lon"], dtype=np.float64)
    if lon.size < 2:
        return True
    step = (lon[-1] - lon[0]) / (lon.size - 1)
    return bool(abs(step * lon.size - 360.0) < 1e-3 * 360.0 or lon[-1] - lon[0] >= 360.0 - 1e-9)


# ---------------------------------------------------------------------------
# the neural encoder base (shared with the VAE)
# ---------------------------------------------------------------------------
class NeuralEncoder(Encoder):
    """What the autoencoder and the VAE share: networks, points, fitting.

    Subclasses set ``_code_factor`` (encoder outputs per latent) and define
    ``_loss(batch, generator)``; ``_encode``/``_decode`` run the networks
    without the fitted check.
    """

    _code_factor = 1

    def __init__(
        self,
        n_channels: int,
        spatial_shape: Sequence[int],
        latent_dim: int,
        grid: dict[str, Any] | None = None,
        *,
        channels: Sequence[int] = (16, 32, 32),
        hidden: Sequence[int] = (256, 256),
        kernel_size: int = 3,
        activation: str = "gelu",
        lat_padding: str = "zeros",
        periodic_lon: bool | None = None,
        architecture: str = "auto",
        aux_channels: int = 0,
        aux_dropout: float = 0.0,
        aux_spec: dict[str, Any] | None = None,
        state_dropout: float = 0.0,
        neighbours: int = 1,
        seed: int = 0,
        pca_base: bool = False,
    ) -> None:
        grid = check_grid(grid, spatial_shape)
        super().__init__(n_channels, spatial_shape, latent_dim, grid)
        if self.latent_dim < 1 or self.n_channels < 1:
            raise ConfigError(
                f"latent_dim and n_channels must be positive, got {latent_dim}, {n_channels}"
            )
        if architecture == "auto":
            kind = None if grid is None else grid["kind"]
            architecture = (
                "conv" if len(self.spatial_shape) == 2 and kind in (None, "latlon") else "mlp"
            )
        if architecture not in ("conv", "mlp"):
            raise ConfigError(f"architecture must be 'auto', 'conv' or 'mlp', got {architecture!r}")
        if architecture == "conv" and len(self.spatial_shape) != 2:
            raise ConfigError(
                f"the convolutional architecture needs a 2-D (lat, lon) layout, got spatial "
                f"shape {self.spatial_shape}; use architecture='mlp'"
            )
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ConfigError(f"channels must be a non-empty list of positive ints, got {channels}")
        self.architecture = architecture
        self.channels = [int(c) for c in channels]
        self.hidden = [int(h) for h in hidden]
        self.kernel_size = int(kernel_size)
        self.activation = str(activation)
        self.lat_padding = str(lat_padding)
        self.periodic_lon = (
            _detect_periodic_lon(grid) if periodic_lon is None else bool(periodic_lon)
        )
        self.aux_channels = int(aux_channels)
        if not 0.0 <= float(aux_dropout) < 1.0:
            raise ConfigError(f"aux_dropout must be in [0, 1), got {aux_dropout!r}")
        if aux_dropout and not self.aux_channels:
            raise ConfigError("aux_dropout needs aux_channels > 0")
        self.aux_dropout = float(aux_dropout)
        if not 0.0 <= float(state_dropout) < 1.0:
            raise ConfigError(f"state_dropout must be in [0, 1), got {state_dropout!r}")
        if state_dropout and not self.aux_channels:
            raise ConfigError(
                "state_dropout needs aux_channels > 0 (with the state hidden the encoder sees "
                "only the auxiliary inputs); fit with aux= or drop state_dropout"
            )
        self.state_dropout = float(state_dropout)
        self.aux_spec = None if aux_spec is None else dict(aux_spec)
        self.neighbours = int(neighbours)
        self.seed = int(seed)
        with seeded(self.seed):  # deterministic init, caller's RNG untouched
            self.encoder_net, self.decoder_net = build_networks(
                architecture,
                self.n_channels + self.aux_channels,
                self.n_channels,
                self.spatial_shape,
                self._code_factor * self.latent_dim,
                self.latent_dim,
                channels=self.channels,
                hidden=self.hidden,
                kernel_size=self.kernel_size,
                periodic_lon=self.periodic_lon,
                lat_padding=self.lat_padding,
                activation=self.activation,
            )
            self._build_extra()
        self.register_buffer("z_mean", torch.zeros(self.latent_dim))
        self._area_w: dict = {}
        self._operators = PointOperatorCache(self.neighbours)
        self.pca_base = bool(pca_base)
        if self.pca_base:
            self._build_pca_base()

    def _build_pca_base(self) -> None:
        """Hook: the PCA buffers and gates of ``pca_base`` (autoencoder only)."""
        raise ConfigError(f"pca_base is not available for {type(self).__name__}; use the "
                          "autoencoder ('autoencoder') or pca_base=False")

    def _build_extra(self) -> None:
        """Hook for subclasses: more parameters, created under the seeded RNG."""

    def _before_training(self, x_train: Tensor) -> None:
        """Hook for subclasses: work on the checked training fields (the encoder
        already on the training device and dtype), before the first epoch."""

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "channels": list(self.channels),
            "hidden": list(self.hidden),
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "lat_padding": self.lat_padding,
            "periodic_lon": self.periodic_lon,
            "architecture": self.architecture,
            "aux_channels": self.aux_channels,
            "aux_dropout": self.aux_dropout,
            "aux_spec": self.aux_spec,
            "state_dropout": self.state_dropout,
            "neighbours": self.neighbours,
            "seed": self.seed,
        }

    @property
    def area_w(self) -> Tensor:
        """Area weights ``spatial_shape``, mean one, in the encoder's dtype and device."""
        key = (self.z_mean.dtype, self.z_mean.device)
        if key not in self._area_w:
            self._area_w[key] = area_weights(
                self.grid, self.spatial_shape, dtype=key[0], device=key[1]
            )
        return self._area_w[key]

    # -- helpers ---------------------------------------------------------
    def _like(self, t: Tensor) -> Tensor:
        ref = self.z_mean
        return torch.as_tensor(t).to(dtype=ref.dtype, device=ref.device)

    def _input(self, x: Tensor, aux: Tensor | None) -> Tensor:
        x = self._like(x)
        self._check_fields(x)
        if not self.aux_channels:
            if aux is not None:
                raise ConfigError(
                    f"{type(self).__name__} was built with aux_channels=0 but aux was given; "
                    "rebuild it with aux_channels=A to feed auxiliary inputs"
                )
            return x
        want = (x.shape[0], self.aux_channels, *self.spatial_shape)
        if aux is None:
            aux = x.new_zeros(want)
        aux = self._like(aux)
        if tuple(aux.shape) != want:
            raise ShapeError(f"aux must have shape {want}, got {tuple(aux.shape)}")
        return torch.cat([x, aux], dim=1)

    def _train_aux(self, aux: Tensor | None, generator: torch.Generator) -> Tensor | None:
        """Auxiliary inputs for one training batch: whole samples dropped (zeroed)
        with probability ``aux_dropout``, so the encoder also learns to work
        without them (encoding with ``aux=None`` feeds zeros)."""
        if aux is None or not self.aux_dropout or not self.training:
            return aux
        keep = torch.rand(aux.shape[0], generator=generator, device=generator.device)
        keep = (keep >= self.aux_dropout).to(device=aux.device, dtype=aux.dtype)
        return aux * keep.view(-1, *([1] * (aux.dim() - 1)))

    def _train_state(self, x: Tensor, aux: Tensor | None,
                     generator: torch.Generator) -> Tensor:
        """State inputs for one training batch: whole samples hidden (zeroed, the
        normalised climatological mean) with probability ``state_dropout``, so that
        the encoder learns to map the auxiliary inputs alone (observation images) to
        the code of the state they observe, which the decoder then reconstructs
        (latent conditioning of ``method="score"``, :mod:`xlatda.latent_obs`).
        Samples whose auxiliary inputs are dropped keep their state."""
        if aux is None or not self.state_dropout or not self.training:
            return x
        hide = torch.rand(x.shape[0], generator=generator, device=generator.device)
        hide = (hide < self.state_dropout).to(device=x.device)
        has_aux = aux.flatten(1).abs().sum(1) > 0
        keep = (~(hide & has_aux)).to(dtype=x.dtype)
        return x * keep.view(-1, *([1] * (x.dim() - 1)))

    def _decode(self, z: Tensor) -> Tensor:
        return self.decoder_net(z)

    def forward(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        """Reconstruction ``decode(encode(x, aux))``, ``(B, C, *spatial)``."""
        return self._decode(self._encode(self._input(x, aux)))

    # -- protocol --------------------------------------------------------
    def encode(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        """Latent codes of fields.

        Parameters
        ----------
        x : Tensor
            ``(B, C, *spatial)``.
        aux : Tensor, optional
            ``(B, aux_channels, *spatial)`` auxiliary inputs (zeros if omitted).

        Returns
        -------
        Tensor
            ``(B, latent_dim)``.
        """
        self._require_fitted()
        return self._encode(self._input(x, aux))

    def decode(self, z: Tensor) -> Tensor:
        """Fields ``(B, C, *spatial)`` from latent codes ``(B, latent_dim)``."""
        self._require_fitted()
        z = self._like(z)
        self._check_latent(z)
        return self._decode(z)

    def operator(self, points: Tensor, channel: Tensor):
        """The (cached) observation operator of the training layout at ``points``.

        Returns an :class:`xlatda.sparse_interp.ObservationOperator` mapping
        ``(..., C, *spatial)`` to ``(..., P)``.
        """
        ref = self.z_mean
        return self._operators.get(
            self.grid,
            self.n_channels,
            self.spatial_shape,
            points,
            channel,
            dtype=ref.dtype,
            device=ref.device,
        )

    def decode_at(self, z: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        """Values ``(B, P)`` of the decoded fields at ``points`` for ``channel``.

        Decodes on the training layout, then interpolates (see
        :class:`xlatda.encoders.training.PointOperatorCache`); differentiable
        in ``z``.
        """
        return self.operator(points, channel)(self.decode(z))

    def _autodecode_weights(self, values: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        return point_weights(self.grid, self._like(torch.as_tensor(points)))

    def _autodecode_l2(self, n_points: int) -> float:
        return 0.0

    def _z0(self, batch: int) -> Tensor:
        return self.z_mean.expand(batch, -1)

    def encode_from(
        self,
        values: Tensor,
        points: Tensor,
        channel: Tensor,
        *,
        z0: Tensor | None = None,
        weights: Tensor | None = None,
        steps: int = 300,
        lr: float = 1e-2,
        progress: bool | None = None,
    ) -> Tensor:
        """Latent codes fitted to scattered values by auto-decoding.

        Parameters
        ----------
        values : Tensor
            ``(B, P)``.
        points : Tensor
            ``(P, 2)`` latitude, longitude in degrees (``(P, 1)`` indices for a
            generic grid).
        channel : Tensor
            ``(P,)`` state channel of each value.
        z0 : Tensor, optional
            Start, ``(B, latent_dim)`` or ``(latent_dim,)``; default the mean
            training code (autoencoder) or zero (VAE).
        weights : Tensor, optional
            Point weights broadcastable to ``(B, P)``; default ``cos(lat)`` of
            the points, mean one (uniform on generic grids).
        steps, lr : int, float
            Adam settings of :func:`xlatda.encoders.training.autodecode`.

        Returns
        -------
        Tensor
            ``(B, latent_dim)``.
        """
        self._require_fitted()
        values = self._like(values)
        if values.dim() == 1:
            values = values[None]
        w = (
            self._autodecode_weights(values, points, channel)
            if weights is None
            else self._like(weights)
        )
        z0 = self._z0(values.shape[0]) if z0 is None else self._like(z0)
        was_training = self.training
        self.eval()
        try:
            return autodecode(
                self.decode_at,
                values,
                points,
                channel,
                z0,
                steps=steps,
                lr=lr,
                weights=w,
                l2=self._autodecode_l2(values.shape[-1]),
                progress=progress,
            )
        finally:
            self.train(was_training)

    # -- fitting ---------------------------------------------------------
    def _loss(self, batch: tuple, generator: torch.Generator) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def fit(
        self,
        x_train: Tensor,
        x_val: Tensor | None = None,
        *,
        aux_train: Tensor | None = None,
        aux_val: Tensor | None = None,
        epochs: int = 100,
        batch_size: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool | None = None,
        patience: int | None = 20,
        val_fraction: float = 0.1,
        lr_plateau: bool = False,
        grad_clip: float | None = None,
    ) -> dict[str, Any]:
        """Train in place; return the history of :func:`~xlatda.encoders.training.train_module`.

        Parameters
        ----------
        x_train : Tensor
            ``(N, C, *spatial)`` normalised training fields (may stay on the CPU).
        x_val : Tensor, optional
            Validation fields; default: ``val_fraction`` of ``x_train``.
        aux_train, aux_val : Tensor, optional
            ``(N, aux_channels, *spatial)`` auxiliary inputs (zeros if omitted).
        epochs, batch_size, lr, weight_decay : int, int, float, float
            Adam settings.
        seed : int
            Seeds the validation split, the minibatch order and any sampling
            noise. Weights are initialised at construction from the
            ``seed`` given there, so fitting a fresh encoder twice with the
            same seeds gives identical weights.
        device : str or torch.device, optional
            Where to train (``None``: the ``xlatda.set_options`` default); the
            encoder stays there.
        dtype : {"float32", "float64"} or torch.dtype, optional
            Training precision (``None``: the encoder's current dtype, float32
            after construction); the encoder keeps it.
        progress : bool, optional
            Progress bar (``None``: the option default).
        patience : int or None
            Early stopping patience in epochs (the best weights are kept).
        val_fraction : float
            Held-out fraction when ``x_val`` is ``None`` (``0``: none).
        lr_plateau : bool
            Halve the learning rate when the monitored loss plateaus.
        grad_clip : float, optional
            Clip the global gradient norm.

        Returns
        -------
        dict
            ``train_loss``, ``val_loss``, ``lr`` (lists per epoch), ``epochs``,
            ``best_epoch``, ``stopped_early``, ``seconds``.

        Raises
        ------
        ShapeError
            If the fields do not have the encoder's shape.
        """
        device = resolve_device(device)
        dtype = self.z_mean.dtype if dtype is None else resolve_dtype(dtype)
        x_train = torch.as_tensor(x_train)
        self._check_fields(x_train)
        if x_val is not None:
            x_val = torch.as_tensor(x_val)
            self._check_fields(x_val)
        for name, aux, x in (("aux_train", aux_train, x_train), ("aux_val", aux_val, x_val)):
            if aux is not None and (
                x is None
                or tuple(aux.shape) != (x.shape[0], self.aux_channels, *self.spatial_shape)
            ):
                raise ShapeError(
                    f"{name} must have shape (N, {self.aux_channels}, "
                    f"{', '.join(map(str, self.spatial_shape))}) matching its fields, "
                    f"got {tuple(aux.shape)}"
                )
        if aux_train is not None and x_val is not None and aux_val is None:
            raise ConfigError("aux_train was given with x_val: pass aux_val as well")
        self.to(device=device, dtype=dtype)
        self._before_training(x_train)
        val = None if x_val is None else (x_val, aux_val)
        history = train_module(
            self,
            self._loss,
            (x_train, aux_train),
            val,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
            patience=patience,
            val_fraction=val_fraction,
            lr_plateau=lr_plateau,
            grad_clip=grad_clip,
            desc=f"fit {self.kind}",
        )
        with torch.no_grad():
            codes = [
                self._encode(
                    self._input(
                        x_train[i : i + 256].to(device),
                        None if aux_train is None else aux_train[i : i + 256].to(device),
                    )
                )
                for i in range(0, x_train.shape[0], 256)
            ]
            self.z_mean.copy_(torch.cat(codes).mean(0))
        self._mark_fitted()
        return history


@encoders.register("autoencoder")
class ConvAutoencoder(NeuralEncoder):
    """Convolutional autoencoder, periodic in longitude; MLP on other layouts.

    Parameters
    ----------
    n_channels : int
        State channels ``C``.
    spatial_shape : sequence of int
        ``(nlat, nlon)`` (convolutional) or ``(S,)`` (MLP).
    latent_dim : int
        Size of ``z``.
    grid : dict, optional
        See :class:`~xlatda.encoders.base.Encoder`; needed by ``decode_at``,
        ``encode_from`` and for the ``cos(lat)`` loss weights.
    channels : sequence of int, default (16, 32, 32)
        Feature widths of the convolutional stages (one stride-2
        downsampling per stage).
    hidden : sequence of int, default (256, 256)
        Widths of the MLP used on point sets and generic layouts.
    kernel_size : int, default 3
    activation : {"gelu", "silu", "relu", "tanh"}
    lat_padding : {"zeros", "replicate"}
        Padding at the northern/southern edges (zeros: cheapest on CPU).
    periodic_lon : bool, optional
        Wrap around in longitude; ``None`` detects a global grid (and assumes
        one without a grid).
    architecture : {"auto", "conv", "mlp"}
        ``"auto"``: convolutional for 2-D lat/lon layouts, MLP otherwise.
    aux_channels : int, default 0
        Auxiliary input channels of the encoder (SLAMS multimodal input).
    aux_dropout : float, default 0
        Probability of zeroing a training sample's auxiliary inputs, so that
        encoding without them stays meaningful.
    aux_spec : dict, optional
        What the auxiliary channels are (variables and normalisation), kept
        with the model for the xarray level (:func:`xlatda.fit` with ``aux=``);
        the networks do not read it.
    state_dropout : float, default 0
        Probability of hiding (zeroing) a training sample's state channels
        while its auxiliary inputs are kept, the target staying the state:
        the encoder then also learns to code observation images alone, which
        the latent conditioning of ``method="score"`` needs
        (:func:`xlatda.fit_latent_obs`). Needs ``aux_channels > 0``.
    neighbours : int, default 1
        Neighbours of the observation operator on point-set grids.
    seed : int, default 0
        Seeds the weight initialisation (the global RNG is left untouched).
    pca_base : bool, default False
        Build the autoencoder on top of the (area-weighted) PCA of its
        training fields: ``E(x) = U^T W^{1/2}(x - mu) + g_e E_net(x)`` and
        ``D(z) = mu + W^{-1/2} U z + g_d D_net(z)``, with the gates ``g``
        starting at zero (ReZero), so the untrained model is the PCA with
        ``latent_dim`` components and training learns a nonlinear correction.
        On small training sets (a few hundred fields, as with a few weeks of
        reanalysis) a plain autoencoder generalises worse than PCA; this one
        starts from it and early stopping keeps it from drifting far.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(40, 1, 4, 8, generator=torch.Generator().manual_seed(0))
    >>> ae = ConvAutoencoder(1, (4, 8), 3, pca_base=True, channels=(4,))
    >>> _ = ae.fit(x, epochs=0, progress=False)
    >>> pca_rec = ae.decode(ae.encode(x))              # gates still zero: the PCA itself
    >>> u, s, vh = torch.linalg.svd((x - x.mean(0)).flatten(1), full_matrices=False)
    >>> best = x.mean(0).flatten() + (x - x.mean(0)).flatten(1) @ vh[:3].T @ vh[:3]
    >>> torch.allclose(pca_rec.flatten(1), best, atol=1e-4)
    True
    """

    kind = "autoencoder"

    def _build_pca_base(self) -> None:
        size = self.n_channels * math.prod(self.spatial_shape)
        if self.latent_dim > size:
            raise ConfigError(
                f"pca_base needs latent_dim <= the number of state values ({size}), got "
                f"{self.latent_dim}"
            )
        self.register_buffer("pca_mean", torch.zeros(self.n_channels, *self.spatial_shape))
        self.register_buffer("pca_basis", torch.zeros(self.latent_dim, size))
        # ReZero gates (Bachlechner et al. 2021): the networks start switched off,
        # so the untrained autoencoder *is* the PCA and training only adds to it
        self.gates = nn.Parameter(torch.zeros(2))

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "pca_base": self.pca_base}

    def _pca_fit(self, x_train: Tensor) -> None:
        """Area-weighted PCA of the training fields into ``pca_mean``/``pca_basis``."""
        ref = self.pca_basis
        x = x_train.to(device=ref.device, dtype=torch.float64)
        mean = x.mean(0)
        sw = self.area_w.to(device=ref.device, dtype=torch.float64).sqrt()
        anom = ((x - mean) * sw).flatten(1)
        k = self.latent_dim
        _, _, vh = torch.linalg.svd(anom, full_matrices=False)
        basis = torch.zeros(k, anom.shape[1], dtype=torch.float64, device=ref.device)
        basis[: min(k, vh.shape[0])] = vh[:k]
        self.pca_mean.copy_(mean.to(ref.dtype))
        self.pca_basis.copy_(basis.to(ref.dtype))

    def _pca_codes(self, x: Tensor) -> Tensor:
        x = x[:, : self.n_channels]
        sw = self.area_w.sqrt()
        return ((x - self.pca_mean) * sw).flatten(1) @ self.pca_basis.T

    def _encode(self, x: Tensor) -> Tensor:
        if not self.pca_base:
            return self.encoder_net(x)
        return self._pca_codes(x) + self.gates[0] * self.encoder_net(x)

    def _decode(self, z: Tensor) -> Tensor:
        if not self.pca_base:
            return self.decoder_net(z)
        lin = (z @ self.pca_basis).view(z.shape[0], self.n_channels, *self.spatial_shape)
        return self.pca_mean + lin / self.area_w.sqrt() + self.gates[1] * self.decoder_net(z)

    def _before_training(self, x_train: Tensor) -> None:
        """With ``pca_base``: the PCA of ``x_train`` (never of the validation
        fields), which the networks then learn the nonlinear correction to."""
        if self.pca_base:
            self._pca_fit(x_train)

    def _loss(self, batch: tuple, generator: torch.Generator) -> Tensor:
        x, aux = batch
        aux = self._train_aux(aux, generator)
        return weighted_mse(self(self._train_state(x, aux, generator), aux), x, self.area_w)
