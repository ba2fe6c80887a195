r"""Variational autoencoder with a Gaussian decoder (for VAE-Var and as an encoder).

Maths
-----
Encoder :math:`q_\phi(w \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}
e^{\ell_\phi(x)})`, prior :math:`p(w) = \mathcal N(0, I)`, decoder
:math:`p_\theta(x \mid w) = \mathcal N(D_\theta(w), \operatorname{diag}\sigma_c^2)`
with one variance per state channel ``c`` (or one scalar), learned or fixed.
Training minimises the :math:`\beta`-weighted negative ELBO per value,
estimated with one reparameterised sample
:math:`w = \mu + e^{\ell/2} \odot \varepsilon`, :math:`\varepsilon \sim
\mathcal N(0, I)` drawn from a seeded :class:`torch.Generator`:

.. math::

    L = \frac{1}{B\,D}\sum_b \Big[\tfrac12 \sum_{c,s} w_s\Big(
        \frac{(x_{bcs} - D(w_b)_{cs})^2}{\sigma_c^2} + \log(2\pi\sigma_c^2)\Big)
        + \beta\,\mathrm{KL}_b\Big],
    \qquad
    \mathrm{KL}_b = \tfrac12 \sum_k \big(\mu_{bk}^2 + e^{\ell_{bk}} - 1 - \ell_{bk}\big),

with ``D = C * S`` values per field and area weights :math:`w_s \propto \cos
\varphi_s` (mean one). With a fixed :math:`\sigma` this is, up to constants,
the VAE-Var loss :math:`\lVert D(w) - e\rVert^2 / (2\sigma^2) + \mathrm{KL}`
(Xiao et al. 2025, ``METHODS.md`` §4), trained on normalised background
errors :math:`e = (x_\text{true} - x_b)/\text{std}`; VAE-Var then searches the
analysis as :math:`x(w) = x_b + \text{std}\cdot D(w)` with ``decode``.

``encode`` returns the posterior mean :math:`\mu`; ``decode`` the decoder mean
:math:`D(w)`; ``encode_from`` the MAP estimate from scattered values,
:math:`\arg\min_w \tfrac12\sum_p w_p (y_p - D(w; p))^2/\sigma_{c_p}^2 +
\tfrac12 \lVert w\rVert^2`, by auto-decoding from :math:`w = 0`.

Architecture: the networks of :mod:`xlatda.encoders.autoencoder`
(convolutional and periodic in longitude on lat/lon grids, MLP otherwise),
the encoder head giving ``2 * latent_dim`` outputs (mean and log-variance).

References
----------
D. P. Kingma, M. Welling, "Auto-encoding variational Bayes", ICLR 2014.
I. Higgins et al., "beta-VAE", ICLR 2017.
Y. Xiao, Q. Jia, K. Chen, L. Xue, L. Bai, "VAE-Var: variational autoencoder-
enhanced variational methods for data assimilation in meteorology", ICLR 2025.

Examples
--------
>>> import torch
>>> from xlatda.encoders.vae import VAE
>>> vae = VAE(1, (8,), latent_dim=2, hidden=[16])        # MLP on a generic layout
>>> e = torch.randn(32, 1, 8)
>>> history = vae.fit(e, epochs=3, batch_size=16, progress=False)
>>> vae.encode(e).shape, vae.decode(torch.zeros(4, 2)).shape
(torch.Size([32, 2]), torch.Size([4, 1, 8]))
>>> vae.decoder_variance.shape
torch.Size([1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xlatda.encoders.autoencoder import NeuralEncoder
from xlatda.encoders.base import encoders
from xlatda.errors import ConfigError

__all__ = ["VAE", "kl_divergence", "reparameterize"]

_LOGVAR_RANGE = (-30.0, 20.0)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One sample ``mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` from ``generator``.

    Parameters
    ----------
    mu, logvar : Tensor
        ``(B, K)``.
    generator : torch.Generator, optional
        On the device of ``mu``; ``None`` uses the global RNG.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> z = reparameterize(torch.zeros(20000, 1), torch.full((20000, 1), math.log(4.0)), g)
    >>> round(float(z.std()), 1)
    2.0
    """
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` per sample, ``(B, K) -> (B,)``.

    Examples
    --------
    >>> kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3))
    tensor([0.])
    >>> kl_divergence(torch.ones(1, 2), torch.zeros(1, 2))
    tensor([1.])
    """
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


@encoders.register("vae")
class VAE(NeuralEncoder):
    """Variational autoencoder with a Gaussian decoder of learned or fixed variance.

    Parameters
    ----------
    n_channels, spatial_shape, latent_dim, grid
        See :class:`~xlatda.encoders.base.Encoder`.
    beta : float, default 1.0
        Weight of the KL term.
    decoder_std : float, optional
        Fixed decoder standard deviation ``sigma`` (normalised units); ``None``
        learns the log-variance.
    decoder_var : {"channel", "scalar"}
        A learned log-variance per state channel or one for all.
    channels, hidden, kernel_size, activation, lat_padding, periodic_lon, \
architecture, aux_channels, aux_dropout, aux_spec, state_dropout, neighbours, seed
        Network settings, as for :class:`~xlatda.encoders.autoencoder.ConvAutoencoder`.

    Notes
    -----
    ``fit`` takes the arguments of
    :meth:`~xlatda.encoders.autoencoder.NeuralEncoder.fit`; its ``seed`` also
    seeds the reparameterisation noise. Validation losses use fixed noise
    (the same draws every epoch) so that early stopping compares like with
    like.
    """

    kind = "vae"
    _code_factor = 2

    def __init__(
        self,
        n_channels: int,
        spatial_shape: Sequence[int],
        latent_dim: int,
        grid: dict[str, Any] | None = None,
        *,
        beta: float = 1.0,
        decoder_std: float | None = None,
        decoder_var: str = "channel",
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
    ) -> None:
        if decoder_var not in ("channel", "scalar"):
            raise ConfigError(f"decoder_var must be 'channel' or 'scalar', got {decoder_var!r}")
        if decoder_std is not None and not decoder_std > 0:
            raise ConfigError(f"decoder_std must be positive or None, got {decoder_std!r}")
        if not beta >= 0:
            raise ConfigError(f"beta must be non-negative, got {beta!r}")
        self.beta = float(beta)
        self.decoder_std = None if decoder_std is None else float(decoder_std)
        self.decoder_var = decoder_var
        super().__init__(
            n_channels,
            spatial_shape,
            latent_dim,
            grid,
            channels=channels,
            hidden=hidden,
            kernel_size=kernel_size,
            activation=activation,
            lat_padding=lat_padding,
            periodic_lon=periodic_lon,
            architecture=architecture,
            aux_channels=aux_channels,
            aux_dropout=aux_dropout,
            aux_spec=aux_spec,
            state_dropout=state_dropout,
            neighbours=neighbours,
            seed=seed,
        )

    def _build_extra(self) -> None:
        n = self.n_channels if self.decoder_var == "channel" else 1
        if self.decoder_std is None:
            self.decoder_log_var = nn.Parameter(torch.zeros(n))
        else:
            self.register_buffer(
                "decoder_log_var", torch.full((n,), 2.0 * math.log(self.decoder_std))
            )

    @property
    def config(self) -> dict[str, Any]:
        return {
            **super().config,
            "beta": self.beta,
            "decoder_std": self.decoder_std,
            "decoder_var": self.decoder_var,
        }

    @property
    def decoder_variance(self) -> Tensor:
        """Decoder variances ``sigma_c^2``: ``(C,)`` or ``(1,)`` (``decoder_var='scalar'``)."""
        return self.decoder_log_var.exp()

    # -- networks --------------------------------------------------------
    def _distribution(self, inp: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder_net(inp)
        mu, logvar = out[:, : self.latent_dim], out[:, self.latent_dim :]
        return mu, logvar.clamp(*_LOGVAR_RANGE)

    def _encode(self, inp: Tensor) -> Tensor:
        return self._distribution(inp)[0]

    def encode_distribution(self, x: Tensor, aux: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each ``(B, latent_dim)``."""
        self._require_fitted()
        return self._distribution(self._input(x, aux))

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means of ``n`` prior draws, ``(n, C, *spatial)``."""
        ref = self.z_mean
        w = torch.randn(n, self.latent_dim, generator=generator, dtype=ref.dtype, device=ref.device)
        return self.decode(w)

    # -- loss ------------------------------------------------------------
    def _nll(self, x: Tensor, mean: Tensor) -> Tensor:
        """Area-weighted Gaussian negative log-likelihood per sample, ``(B,)``."""
        shape = (1, -1) + (1,) * len(self.spatial_shape)
        log_var = self.decoder_log_var.reshape(shape)
        term = (x - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi)
        return 0.5 * (term * self.area_w).flatten(1).sum(-1)

    def _loss(self, batch: tuple, generator: torch.Generator) -> Tensor:
        x, aux = batch
        aux = self._train_aux(aux, generator)
        mu, logvar = self._distribution(self._input(self._train_state(x, aux, generator), aux))
        w = reparameterize(mu, logvar, generator)
        n_values = x[0].numel()
        per = self._nll(x, self._decode(w)) + self.beta * kl_divergence(mu, logvar)
        return per.mean() / n_values

    # -- points ----------------------------------------------------------
    def _z0(self, batch: int) -> Tensor:
        return torch.zeros_like(self.z_mean).expand(batch, -1)

    def _autodecode_weights(self, values: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        w = super()._autodecode_weights(values, points, channel)
        var = self.decoder_variance.detach()
        ch = torch.as_tensor(channel, device=var.device).long()
        var_p = var[ch] if var.numel() > 1 else var.expand(ch.shape[0])
        return w / var_p

    def _autodecode_l2(self, n_points: int) -> float:
        return 1.0 / max(n_points, 1)

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
        """MAP latent ``(B, latent_dim)`` from scattered values ``(B, P)``.

        Auto-decoding from ``w = 0`` (or ``z0``) of
        ``1/2 sum_p weights_p (y_p - D(w; p))^2 + 1/2 ||w||^2``. The default
        weights are ``cos(lat_p) / sigma_{c_p}^2`` (area weight over the decoder
        variance of the point's channel); pass inverse error variances to
        include observation errors. Other arguments as for
        :meth:`~xlatda.encoders.autoencoder.NeuralEncoder.encode_from`.
        """
        return super().encode_from(
            values,
            points,
            channel,
            z0=z0,
            weights=weights,
            steps=steps,
            lr=lr,
            progress=progress,
        )
