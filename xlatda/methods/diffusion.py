r"""Score-based generative models of latent windows: VP-SDE, ε-networks, training.

Diffusion
---------
A variance-preserving diffusion (Song et al. 2021) perturbs a clean window of
latent states :math:`x_0` into

.. math::

    x_t = \mu_t\, x_0 + \sigma_t\, \varepsilon, \qquad
    \varepsilon \sim \mathcal{N}(0, I), \qquad t \in [0, 1],

with the cosine schedule of SLAMS and of score-based data assimilation
(``METHODS.md`` §3)

.. math::

    \mu_t = \alpha(t) = \cos\big(\arccos(\sqrt\eta)\, t\big)^2, \qquad
    \sigma_t = \sigma(t) = \sqrt{1 - \alpha(t)^2 + \eta^2}, \qquad \eta = 10^{-3},

so that :math:`\mu_0 = 1, \sigma_0 = \eta` (almost clean data) and
:math:`\mu_1 = \eta, \sigma_1 = 1` (almost pure noise). A network
:math:`\varepsilon_\phi(x_t, t)` is trained to predict the noise
(ε-prediction, Ho et al. 2020):

.. math::

    L(\phi) = \mathbb{E}_{t \sim U(0, 1),\, x_0,\, \varepsilon}
              \lVert \varepsilon_\phi(\mu_t x_0 + \sigma_t \varepsilon, t)
              - \varepsilon \rVert^2 ,

whose minimiser is :math:`\varepsilon^*(x_t, t) = -\sigma_t \nabla_{x_t}
\log p_t(x_t)`: the score of the perturbed data is
:math:`-\varepsilon_\phi / \sigma_t`, and Tweedie's formula gives the
denoised mean :math:`\hat x_0 = \mathbb{E}[x_0 \mid x_t] = (x_t - \sigma_t
\varepsilon^*)/\mu_t`. :mod:`xlatda.methods.score` samples from this
model, conditioned on observations.

Networks
--------
Every ε-network maps ``(x_t: (..., *event_shape), t: (...))`` to
``(..., *event_shape)`` and carries ``event_shape``. :class:`ScoreMLP` acts
on flattened windows of ``window`` consecutive latent vectors of size
``dim`` (``event_shape = (window, dim)``; SLAMS uses windows of 5 states, a
Markov blanket of order 2); :class:`ScoreUNet` on windows of latents that keep
a 1-D or 2-D grid. Both follow the project's model-store contract: a
JSON-serialisable ``config`` and a ``kind`` such that
``type(m)(**m.config)`` followed by ``load_state_dict`` rebuilds ``m``
bit-exactly; they are registered by kind in :data:`score_networks`.
:class:`GaussianEps` is the exact ε of Gaussian data, the closed-form
reference of the tests.

The diffusion constants (:math:`\eta`, and :math:`\gamma` of the guidance)
assume data of unit scale: standardise the latents (zero mean, unit
variance per component) before training.

References
----------
Qu, Nathaniel, Li, Gentine (2024). Deep generative data assimilation in
multimodal setting (SLAMS). CVPR workshops (EarthVision).
Rozet, F. and Louppe, G. (2023). Score-based data assimilation. NeurIPS.
Song, Y., Sohl-Dickstein, J., Kingma, D. P., Kumar, A., Ermon, S. and Poole, B.
(2021). Score-based generative modeling through stochastic differential
equations. ICLR.
Ho, J., Jain, A. and Abbeel, P. (2020). Denoising diffusion probabilistic
models. NeurIPS.
Nichol, A. and Dhariwal, P. (2021). Improved denoising diffusion
probabilistic models. ICML (cosine schedule).

Examples
--------
>>> import torch
>>> sched = CosineSchedule()
>>> round(float(sched.alpha(0.0)), 6), round(float(sched.sigma(1.0)), 6)
(1.0, 1.0)
>>> net = ScoreMLP(dim=3, window=2, hidden=16, depth=2, seed=0)
>>> x = torch.randn(10, 2, 3, generator=torch.Generator().manual_seed(0))
>>> net(x, torch.full((10,), 0.5)).shape
torch.Size([10, 2, 3])
>>> history = fit_score(net, x, epochs=2, batch_size=5, progress=False)
>>> len(history["train_loss"])
2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xlatda._registry import Registry
from xlatda.dynamics.latent_ode import mlp
from xlatda.encoders.training import seeded, train_module
from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype

__all__ = [
    "CosineSchedule",
    "GaussianEps",
    "MarkovScore",
    "ScoreMLP",
    "ScorePrior",
    "ScoreUNet",
    "blanket_windows",
    "eps_loss",
    "fit_score",
    "score_networks",
    "sliding_windows",
    "time_features",
]

score_networks = Registry("score network")


# ---------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------
def _time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(t, dtype=torch.float64)


@dataclass(frozen=True)
class CosineSchedule:
    r"""The cosine VP-SDE schedule of SLAMS / score-based data assimilation.

    .. math::

        \alpha(t) = \cos(\arccos(\sqrt\eta)\, t)^2, \qquad
        \sigma(t) = \sqrt{1 - \alpha(t)^2 + \eta^2}

    and :math:`x_t = \alpha(t) x_0 + \sigma(t) \varepsilon` (``alpha`` is the
    signal scale :math:`\mu_t`). :math:`\alpha` falls from 1 to :math:`\eta`
    and :math:`\sigma` rises from :math:`\eta` to 1 as ``t`` goes from 0
    to 1.

    Parameters
    ----------
    eta : float
        Smallest signal scale and noise level, ``0 < eta < 1`` (``1e-3`` in
        the papers).

    Examples
    --------
    >>> s = CosineSchedule(eta=1e-3)
    >>> [round(v, 4) for v in s.alpha(torch.tensor([0.0, 0.5, 1.0])).tolist()]
    [1.0, 0.5158, 0.001]
    >>> x0 = torch.ones(4, 2)
    >>> xt, eps = s.add_noise(x0, torch.full((4,), 0.3),
    ...                       generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(s.denoise(xt, eps, torch.full((4,), 0.3)), x0, atol=1e-6)
    True
    """

    eta: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 < float(self.eta) < 1.0:
            raise ConfigError(f"eta must be in (0, 1), got {self.eta!r}")

    @property
    def omega(self) -> float:
        r""":math:`\arccos(\sqrt\eta)`, the angular rate of :math:`\alpha`."""
        return math.acos(math.sqrt(float(self.eta)))

    def alpha(self, t: Tensor | float) -> Tensor:
        """Signal scale :math:`\\mu_t = \\alpha(t)`, same shape as ``t`` (float64 for a float)."""
        t = _time(t)
        return torch.cos(self.omega * t) ** 2

    def sigma(self, t: Tensor | float) -> Tensor:
        """Noise level :math:`\\sigma(t) = \\sqrt{1 - \\alpha(t)^2 + \\eta^2}`, shape of ``t``."""
        a = self.alpha(t)
        return torch.sqrt(1.0 - a**2 + float(self.eta) ** 2)

    def _coefs(self, t: Tensor | float, x: Tensor, event_ndim: int) -> tuple[Tensor, Tensor]:
        t = _time(t, x)
        if t.dim() > 0:
            t = t.reshape(*t.shape, *(1,) * event_ndim)
        mu = self.alpha(t.to(torch.float64)).to(dtype=x.dtype, device=x.device)
        sig = self.sigma(t.to(torch.float64)).to(dtype=x.dtype, device=x.device)
        return mu, sig

    def add_noise(
        self,
        x0: Tensor,
        t: Tensor | float,
        *,
        generator: torch.Generator | None = None,
        event_ndim: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Forward noising: ``x_t = alpha(t) x0 + sigma(t) eps``.

        Parameters
        ----------
        x0 : Tensor, shape ``(*batch, *event)``
            Clean samples.
        t : float or Tensor, shape ``(*batch,)``
            Diffusion times, one per sample (or one for all).
        generator : torch.Generator, optional
            Draws ``eps``; on the device of ``x0``.
        event_ndim : int, optional
            Number of trailing event dimensions of ``x0``; default
            ``x0.dim() - t.dim()``.

        Returns
        -------
        x_t, eps : Tensor, Tensor
            Both shaped like ``x0``.
        """
        t = _time(t, x0)
        nd = x0.dim() - t.dim() if event_ndim is None else int(event_ndim)
        mu, sig = self._coefs(t, x0, nd)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return mu * x0 + sig * eps, eps

    def denoise(
        self, x_t: Tensor, eps: Tensor, t: Tensor | float, *, event_ndim: int | None = None
    ) -> Tensor:
        """Tweedie's mean ``x0_hat = (x_t - sigma(t) eps) / alpha(t)``, shaped like ``x_t``."""
        t = _time(t, x_t)
        nd = x_t.dim() - t.dim() if event_ndim is None else int(event_ndim)
        mu, sig = self._coefs(t, x_t, nd)
        return (x_t - sig * eps) / mu


# ---------------------------------------------------------------------------
# loss and time features
# ---------------------------------------------------------------------------
def eps_loss(
    net: Any,
    x0: Tensor,
    *,
    schedule: CosineSchedule | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The ε-prediction loss of one minibatch, a scalar.

    .. math:: \frac{1}{B D} \sum_b \lVert \varepsilon_\phi(\mu_{t_b} x_{0,b}
              + \sigma_{t_b} \varepsilon_b, t_b) - \varepsilon_b \rVert^2,
              \qquad t_b \sim U(0, 1)

    Parameters
    ----------
    net : callable
        ``net(x_t: (B, *event), t: (B,)) -> (B, *event)``.
    x0 : Tensor, shape ``(B, *event)``
        Clean samples (standardised latent windows).
    schedule : CosineSchedule, optional
        Default ``CosineSchedule()``.
    generator : torch.Generator, optional
        Draws ``t`` and ``eps``; on the device of ``x0``.

    Returns
    -------
    Tensor, shape ``()``

    Examples
    --------
    >>> net = ScoreMLP(dim=2, hidden=8, depth=1)
    >>> loss = eps_loss(net, torch.zeros(16, 1, 2), generator=torch.Generator().manual_seed(0))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """
    schedule = CosineSchedule() if schedule is None else schedule
    t = torch.rand(x0.shape[:1], generator=generator, dtype=x0.dtype, device=x0.device)
    x_t, eps = schedule.add_noise(x0, t, generator=generator)
    return ((net(x_t, t) - eps) ** 2).mean()


def time_features(t: Tensor, n: int) -> Tensor:
    r"""Fourier features of the diffusion time, ``(...,) -> (..., n)``.

    :math:`[\sin(\pi k t), \cos(\pi k t)]_{k=1}^{n/2}`: a smooth basis on
    :math:`t \in [0, 1]`.

    Examples
    --------
    >>> time_features(torch.tensor([0.0, 1.0]), 4).shape
    torch.Size([2, 4])
    """
    if n < 2 or n % 2:
        raise ConfigError(f"the time embedding size must be even and >= 2, got {n}")
    k = torch.arange(1, n // 2 + 1, dtype=t.dtype, device=t.device)
    angle = math.pi * k * t.unsqueeze(-1)
    return torch.cat((angle.sin(), angle.cos()), dim=-1)


def _batch_times(t: Tensor | float, x: Tensor, event_ndim: int) -> Tensor:
    """``t`` broadcast to the batch shape of ``x``, in the dtype of ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[: x.dim() - event_ndim])


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------
@score_networks.register("score_mlp")
class ScoreMLP(nn.Module):
    r"""An ε-network over flattened windows of consecutive latent states.

    .. math:: \varepsilon_\phi(x_t, t) = \mathrm{MLP}\big([\operatorname{vec}(x_t);
              \phi(t)]\big), \qquad \phi(t) = \text{Fourier features of } t

    Parameters
    ----------
    dim : int
        Size ``d`` of one latent state.
    window : int
        Number of consecutive states in a window (SLAMS: 5).
    hidden : int
        Units per hidden layer.
    depth : int
        Number of hidden layers.
    time_embedding : int
        Number of Fourier features of the time (even).
    activation : {"silu", "swish", "tanh", "gelu"}
        Hidden activation.
    skip : bool
        Precondition for standardised data: :math:`\varepsilon_\phi =
        \sigma_t x_t / (\mu_t^2 + \sigma_t^2) + \mu_t\, \mathrm{MLP}`,
        the exact ε of standard-normal data plus a residual scaled by
        :math:`\mu_t` (the exact residual of Gaussian data vanishes like
        :math:`\mu_t` at high noise). Then the denoised mean
        :math:`\hat x_0 = (x_t - \sigma_t \varepsilon_\phi)/\mu_t =
        \mu_t x_t/(\mu_t^2+\sigma_t^2) - \sigma_t \mathrm{MLP}` stays
        bounded; without the skip the sampler divides the MLP's error by
        :math:`\mu_t \approx \eta` at high noise, and an MLP trained on few
        windows gives exploding samples, more so under guidance.
    seed : int
        Seed of the weight initialisation (local generator).
    device, dtype
        Where and in which precision the weights live (defaults from
        :func:`xlatda.get_options`).

    Attributes
    ----------
    event_shape : tuple of int
        ``(window, dim)``.

    Examples
    --------
    >>> net = ScoreMLP(dim=4, window=3, hidden=16, depth=2, seed=1)
    >>> x, t = torch.zeros(5, 3, 4), torch.rand(5)
    >>> net(x, t).shape
    torch.Size([5, 3, 4])
    >>> rebuilt = ScoreMLP(**net.config)
    >>> _ = rebuilt.load_state_dict(net.state_dict())
    >>> torch.equal(rebuilt(x, t), net(x, t))
    True
    """

    kind = "score_mlp"

    def __init__(
        self,
        dim: int,
        window: int = 1,
        *,
        hidden: int = 256,
        depth: int = 3,
        time_embedding: int = 64,
        activation: str = "silu",
        seed: int = 0,
        skip: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if int(dim) < 1 or int(window) < 1:
            raise ConfigError(f"need dim >= 1 and window >= 1, got {dim=} {window=}")
        if int(time_embedding) < 2 or int(time_embedding) % 2:
            raise ConfigError(f"time_embedding must be even and >= 2, got {time_embedding}")
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        self.dim, self.window = int(dim), int(window)
        self.hidden, self.depth = int(hidden), int(depth)
        self.time_embedding, self.activation = int(time_embedding), str(activation)
        self.seed = int(seed)
        self.skip = bool(skip)
        self.event_shape = (self.window, self.dim)
        n = self.window * self.dim
        self.net = mlp(
            n + self.time_embedding,
            n,
            self.hidden,
            self.depth,
            self.activation,
            seed=self.seed,
            device=dev,
            dtype=dt,
        )

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(m)(**m.config)`` rebuilds ``m``."""
        return {
            "dim": self.dim,
            "window": self.window,
            "hidden": self.hidden,
            "depth": self.depth,
            "time_embedding": self.time_embedding,
            "activation": self.activation,
            "seed": self.seed,
            "dtype": _dtype_name(next(self.parameters()).dtype),
            **({"skip": True} if self.skip else {}),
        }

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """ε of ``x`` ``(..., window, dim)`` at times ``t`` (scalar or ``(...)``)."""
        if tuple(x.shape[-2:]) != self.event_shape:
            raise ShapeError(
                f"ScoreMLP expects windows (..., window, dim) = (..., {self.window}, "
                f"{self.dim}), got {tuple(x.shape)}"
            )
        t = _batch_times(t, x, 2)
        h = torch.cat((x.flatten(-2), time_features(t, self.time_embedding)), dim=-1)
        out = self.net(h).unflatten(-1, self.event_shape)
        if self.skip:
            sched = CosineSchedule()  # the skip only preconditions: eta barely matters
            mu = sched.alpha(t.double()).to(x.dtype)[..., None, None]
            sig = sched.sigma(t.double()).to(x.dtype)[..., None, None]
            out = mu * out + sig / (mu**2 + sig**2) * x
        return out


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, time shift, GroupNorm -> SiLU -> conv, plus skip."""

    def __init__(self, conv: type, c_in: int, c_out: int, n_time: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(8, c_in), c_in)
        self.conv1 = conv(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(n_time, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(8, c_out), c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(emb).reshape(*emb.shape[:1], -1, *(1,) * (x.dim() - 2))
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


@score_networks.register("score_unet")
class ScoreUNet(nn.Module):
    r"""A small U-Net ε-network for windows of latents that keep a 1-D or 2-D grid.

    The window and the latent channels are stacked into the convolution
    channels (``window * channels``); the U-Net (residual blocks with a time
    shift, average-pool down, nearest up, skip connections) works on the
    grid, as the U-Net kernel of SLAMS does on its latent grid.

    Parameters
    ----------
    channels : int
        Latent channels ``C`` of one state.
    grid : sequence of int
        Latent grid, ``(L,)`` or ``(H, W)``; every size divisible by
        ``2 ** (len(widths) - 1)``.
    window : int
        Consecutive states in a window.
    widths : sequence of int
        Channels at each resolution level (finest first).
    time_embedding : int
        Fourier features of the time (even).
    skip : bool
        Precondition for standardised data as :class:`ScoreMLP` does: the
        exact ε of standard-normal data plus :math:`\mu_t` times the U-Net
        (keeps the denoised mean bounded at high noise).
    seed : int
        Seed of the weight initialisation (the global RNG is restored).
    device, dtype
        Where and in which precision the weights live.

    Attributes
    ----------
    event_shape : tuple of int
        ``(window, channels, *grid)``.

    Examples
    --------
    >>> net = ScoreUNet(channels=2, grid=(8,), window=3, widths=(8, 16), seed=0)
    >>> x = torch.zeros(4, 3, 2, 8)
    >>> net(x, torch.rand(4)).shape
    torch.Size([4, 3, 2, 8])
    >>> rebuilt = ScoreUNet(**net.config)
    >>> _ = rebuilt.load_state_dict(net.state_dict())
    >>> torch.equal(rebuilt(x, 0.5), net(x, 0.5))
    True
    """

    kind = "score_unet"

    def __init__(
        self,
        channels: int,
        grid: Sequence[int],
        window: int = 1,
        *,
        widths: Sequence[int] = (32, 64),
        time_embedding: int = 64,
        skip: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.skip = bool(skip)
        grid = tuple(int(g) for g in grid)
        widths = tuple(int(w) for w in widths)
        if len(grid) not in (1, 2) or not widths or min(widths) < 1:
            raise ConfigError(
                f"ScoreUNet needs a 1-D or 2-D grid and positive widths, got {grid=} {widths=}"
            )
        factor = 2 ** (len(widths) - 1)
        if any(g % factor for g in grid):
            raise ConfigError(
                f"every grid size must be divisible by 2**(len(widths)-1) = {factor}, got {grid}"
            )
        if int(time_embedding) < 2 or int(time_embedding) % 2:
            raise ConfigError(f"time_embedding must be even and >= 2, got {time_embedding}")
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        self.channels, self.grid, self.window = int(channels), grid, int(window)
        self.widths, self.time_embedding, self.seed = widths, int(time_embedding), int(seed)
        self.event_shape = (self.window, self.channels, *grid)
        conv = nn.Conv1d if len(grid) == 1 else nn.Conv2d
        self._pool = nn.functional.avg_pool1d if len(grid) == 1 else nn.functional.avg_pool2d
        c_io = self.window * self.channels
        n_t = 4 * widths[0]
        with seeded(self.seed):
            self.time_mlp = nn.Sequential(
                nn.Linear(self.time_embedding, n_t), nn.SiLU(), nn.Linear(n_t, n_t)
            )
            self.head = conv(c_io, widths[0], 3, padding=1)
            self.down = nn.ModuleList()
            c = widths[0]
            for w in widths:
                self.down.append(_ResBlock(conv, c, w, n_t))
                c = w
            self.mid = _ResBlock(conv, c, c, n_t)
            self.up = nn.ModuleList()
            for w in reversed(widths):
                self.up.append(_ResBlock(conv, c + w, w, n_t))
                c = w
            self.norm = nn.GroupNorm(math.gcd(8, c), c)
            self.tail = conv(c, c_io, 3, padding=1)
            with torch.no_grad():
                self.tail.weight.mul_(0.1)
                self.tail.bias.zero_()
        self.to(device=dev, dtype=dt)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(m)(**m.config)`` rebuilds ``m``."""
        return {
            "channels": self.channels,
            "grid": list(self.grid),
            "window": self.window,
            "widths": list(self.widths),
            "time_embedding": self.time_embedding,
            "seed": self.seed,
            "dtype": _dtype_name(next(self.parameters()).dtype),
            **({"skip": True} if self.skip else {}),
        }

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """ε of ``x`` ``(..., window, channels, *grid)`` at times ``t`` (scalar or ``(...)``)."""
        nd = len(self.event_shape)
        if tuple(x.shape[-nd:]) != self.event_shape:
            raise ShapeError(
                f"ScoreUNet expects (..., window, channels, *grid) = (..., "
                f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        batch = x.shape[: x.dim() - nd]
        t_b = _batch_times(t, x, nd)
        t = t_b.reshape(-1)
        h = x.reshape(-1, self.window * self.channels, *self.grid)
        emb = self.time_mlp(time_features(t, self.time_embedding))
        h = self.head(h)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = self._pool(h, 2)
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            if i > 0:
                h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat((h, skips.pop()), dim=1), emb)
        h = self.tail(nn.functional.silu(self.norm(h)))
        out = h.reshape(*batch, *self.event_shape)
        if self.skip:  # as ScoreMLP(skip=True): the exact ε of standard-normal data + μ_t U-Net
            sched = CosineSchedule()
            shape = (*t_b.shape, *(1,) * nd)
            mu = sched.alpha(t_b.double()).to(x.dtype).reshape(shape)
            sig = sched.sigma(t_b.double()).to(x.dtype).reshape(shape)
            out = mu * out + sig / (mu**2 + sig**2) * x
        return out


@score_networks.register("gaussian_eps")
class GaussianEps(nn.Module):
    r"""The exact ε of Gaussian data :math:`x_0 \sim \mathcal{N}(m, S)`.

    :math:`x_t \sim \mathcal{N}(\mu_t m, \mu_t^2 S + \sigma_t^2 I)`, so

    .. math:: \varepsilon^*(x_t, t) = -\sigma_t \nabla \log p_t(x_t)
              = \sigma_t (\mu_t^2 S + \sigma_t^2 I)^{-1} (x_t - \mu_t m),

    evaluated with the eigendecomposition :math:`S = U \Lambda U^\top`. A
    closed-form stand-in for a trained network (tests, benchmarks) and a
    Gaussian (climatological) prior for :class:`~xlatda.methods.score.ScoreDA`.

    Parameters
    ----------
    mean : Tensor, shape ``event_shape``
        :math:`m`; its shape is the event shape (``(window, dim)``).
    cov : Tensor, shape ``(D, D)``
        :math:`S`, symmetric positive semi-definite, ``D = mean.numel()``,
        over the flattened event.
    schedule : CosineSchedule, optional
    eta : float, optional
        Shortcut for ``schedule=CosineSchedule(eta)`` (used when rebuilt
        from :attr:`config`).
    dtype : str or torch.dtype, optional
        Precision of the buffers (default: that of ``mean``).

    Notes
    -----
    Like the trained networks it has a ``kind`` and a JSON ``config`` (the
    mean and covariance as nested lists), so a model store can hold it as
    a closed-form Gaussian prior; ``load_state_dict`` then restores the
    buffers bit-exactly.

    Examples
    --------
    >>> eps_fn = GaussianEps(torch.zeros(1, 2), torch.eye(2))
    >>> sched = CosineSchedule()
    >>> x = torch.ones(3, 1, 2)   # for S = I: eps = sigma x / (mu^2 + sigma^2)
    >>> t = torch.tensor(0.5)
    >>> want = sched.sigma(t) / (sched.alpha(t) ** 2 + sched.sigma(t) ** 2)
    >>> torch.allclose(eps_fn(x, t), want.float() * x)
    True
    """

    kind = "gaussian_eps"

    def __init__(
        self,
        mean: Tensor,
        cov: Tensor,
        schedule: CosineSchedule | None = None,
        *,
        eta: float | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        mean = torch.as_tensor(mean)
        if dtype is not None:
            mean = mean.to(resolve_dtype(dtype))
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        if schedule is None and eta is not None:
            schedule = CosineSchedule(float(eta))
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        d = mean.numel()
        if cov.shape != (d, d):
            raise ShapeError(
                f"cov must be (D, D) with D = mean.numel() = {d}, got {tuple(cov.shape)}"
            )
        self.schedule = CosineSchedule() if schedule is None else schedule
        self.event_shape = tuple(mean.shape)
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        self.register_buffer("mean", mean.clone())
        self.register_buffer("evals", evals.clamp_min(0.0))
        self.register_buffer("evecs", evecs)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (mean and covariance as nested lists)."""
        cov = (self.evecs * self.evals) @ self.evecs.T
        return {
            "mean": self.mean.tolist(),
            "cov": cov.tolist(),
            "eta": float(self.schedule.eta),
            "dtype": _dtype_name(self.mean.dtype),
        }

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """ε* of ``x`` ``(..., *event_shape)`` at times ``t`` (scalar or ``(...)``)."""
        nd = len(self.event_shape)
        t = _batch_times(t, x, nd)
        mu = self.schedule.alpha(t.double()).to(x.dtype)[..., None]
        sig = self.schedule.sigma(t.double()).to(x.dtype)[..., None]
        xf = x.flatten(-nd) if nd else x[..., None]
        coords = (xf - mu * self.mean.flatten()) @ self.evecs
        coords = coords * sig / (mu**2 * self.evals + sig**2)
        return (coords @ self.evecs.T).reshape(x.shape)


def blanket_windows(length: int, window: int) -> tuple[Tensor, Tensor]:
    r"""Which window and which of its states give each state's score in a composed trajectory.

    The Markov-blanket rule of score-based data assimilation (Rozet and
    Louppe 2023, §3.2 and their ``MCScoreNet(order=k)``): a trajectory of
    ``length`` states is cut into its ``length - window + 1`` overlapping
    windows of ``window`` consecutive states (stride 1); state ``i`` takes
    its score from the window whose centre it is,

    .. math:: j(i) = \min\big(\max(i - c, 0),\; L - w\big), \qquad
              c = \lfloor (w - 1)/2 \rfloor,

    at position :math:`i - j(i)` of that window: the windows are centred on
    their state and clamped at the ends, where the first (last) window
    gives the first (last) :math:`c` states. For an odd ``window = 2k + 1``
    this is SDA's rule for a Markov blanket of order ``k``.

    Parameters
    ----------
    length : int
        States ``L`` of the trajectory, ``L >= window``.
    window : int
        States ``w`` of a window.

    Returns
    -------
    start, offset : Tensor, Tensor
        Integer tensors of shape ``(L,)``: window index :math:`j(i)` and
        position :math:`i - j(i)`.

    Examples
    --------
    >>> start, offset = blanket_windows(7, 3)
    >>> start.tolist(), offset.tolist()
    ([0, 0, 1, 2, 3, 4, 4], [0, 1, 1, 1, 1, 1, 2])
    """
    length, window = int(length), int(window)
    if window < 1 or length < window:
        raise ConfigError(
            f"a composed trajectory needs length >= window >= 1, got length={length}, "
            f"window={window}"
        )
    i = torch.arange(length)
    start = (i - (window - 1) // 2).clamp(0, length - window)
    return start, i - start


@score_networks.register("markov_score")
class MarkovScore(nn.Module):
    r"""The score of a whole trajectory composed from a local score over windows.

    A local ε-network over windows of ``w`` consecutive states (trained on
    windows cut from trajectories, :func:`sliding_windows`) is evaluated on
    every window of a trajectory of ``length`` states at once, and state
    :math:`i`'s ε is taken from the window centred on it
    (:func:`blanket_windows`):

    .. math:: \varepsilon(x_{1:L}, t)_i = \varepsilon_\phi\big(
              x_{j(i)+1 : j(i)+w}, t\big)_{i - j(i)} .

    ε is :math:`-\sigma_t` times the score, so this is the composition of
    the scores. It is exact when the trajectory is a Markov chain of order
    :math:`k \le \lfloor (w-1)/2 \rfloor` and :math:`t \to 0` (state
    :math:`i`'s score depends only on its Markov blanket, which its window
    holds); at larger noise the perturbed trajectory is only approximately
    Markov, which is the approximation of score-based data assimilation
    (Rozet and Louppe 2023). A trajectory of ``length == window`` gives
    back the local network itself.

    Parameters
    ----------
    net : torch.nn.Module or dict
        The local ε-network, with ``event_shape = (window, *state)``, or
        ``{"kind": ..., "config": ...}`` to rebuild one from
        :data:`score_networks`.
    length : int
        States of the trajectory, ``>= window``.

    Attributes
    ----------
    event_shape : tuple of int
        ``(length, *state)``.
    window : int
        The local window.

    Notes
    -----
    Compute: one call of ``net`` on ``length - window + 1`` windows per
    trajectory, i.e. about ``window`` times the cost of cutting the
    trajectory into disjoint windows.

    Examples
    --------
    >>> local = GaussianEps(torch.zeros(3, 2), torch.eye(6))
    >>> traj = MarkovScore(local, length=10)
    >>> traj.event_shape
    (10, 2)
    >>> x = torch.randn(4, 10, 2, generator=torch.Generator().manual_seed(0))
    >>> traj(x, 0.5).shape
    torch.Size([4, 10, 2])
    >>> torch.allclose(traj(x, 0.5), GaussianEps(torch.zeros(10, 2), torch.eye(20))(x, 0.5))
    True
    """

    kind = "markov_score"

    def __init__(self, net: nn.Module | dict[str, Any], length: int) -> None:
        super().__init__()
        if isinstance(net, dict):
            net = score_networks.get(str(net["kind"]))(**net["config"])
        event = getattr(net, "event_shape", None)
        if event is None or len(event) < 1:
            raise ConfigError(
                f"net must be a local ε-network with event_shape (window, *state), got "
                f"{type(net).__name__}"
            )
        self.net = net
        self.window = int(event[0])
        self.length = int(length)
        start, offset = blanket_windows(self.length, self.window)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.event_shape = (self.length, *(int(s) for s in event[1:]))

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(m)(**m.config)`` rebuilds ``m``."""
        return {"net": {"kind": str(self.net.kind), "config": self.net.config},
                "length": self.length}

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """ε of trajectories ``x`` ``(..., length, *state)`` at ``t`` (scalar or ``(...)``)."""
        nd = len(self.event_shape)
        if tuple(x.shape[x.dim() - nd:]) != self.event_shape:
            raise ShapeError(
                f"MarkovScore expects trajectories (..., length, *state) = (..., "
                f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        if self.length == self.window:
            return self.net(x, t)
        batch = x.shape[: x.dim() - nd]
        n_w = self.length - self.window + 1
        t_b = _batch_times(t, x, nd).reshape(-1, 1).expand(-1, n_w)
        flat = x.reshape(-1, *self.event_shape)
        wins = flat.unfold(1, self.window, 1).movedim(-1, 2)  # (B, n_w, w, *state)
        eps = self.net(wins, t_b)
        out = eps[:, self.start, self.offset]  # (B, L, *state)
        return out.reshape(*batch, *self.event_shape)


class ScorePrior(nn.Module):
    r"""A trained ε-network with the standardisation and time step of its windows.

    The diffusion model works on standardised windows
    :math:`u = (x - m) / s` (``m``, ``s`` per state component, broadcast
    over the window); this module keeps ``m`` and ``s`` next to the
    network, so that a model store holds everything needed to sample
    physical or latent windows. Calling it is calling the network (on
    standardised windows).

    Parameters
    ----------
    net : torch.nn.Module or dict
        The ε-network (:class:`ScoreMLP`, :class:`ScoreUNet`,
        :class:`GaussianEps`, any module with ``event_shape``), or
        ``{"kind": ..., "config": ...}`` to rebuild one from
        :data:`score_networks` (how a model store reopens it; never
        unpickled).
    mean, std : Tensor, optional
        Standardisation of one state, broadcastable to
        ``event_shape[1:]`` (default 0 and 1). Kept in float64.
    space : {"latent", "physical"}
        What the windows hold: latent vectors, or normalised physical states.
    time_step : dict, optional
        Time between consecutive states of a window, ``{"value": 3600.0,
        "units": "s"}`` or ``{"value": 1.0, "units": "model"}``.
    eta : float
        :math:`\eta` of the :class:`CosineSchedule` the network was trained with.
    stat_shape : sequence of int, optional
        Shape of ``mean``/``std`` when they are not given (rebuilding).
    stat_dtype : str, optional
        dtype of ``mean``/``std`` when they are not given (rebuilding).

    Attributes
    ----------
    event_shape : tuple of int
        The network's ``(window, *state)``.
    window : int
        ``event_shape[0]``.
    schedule : CosineSchedule

    Examples
    --------
    >>> net = ScoreMLP(dim=2, window=3, hidden=8, depth=1)
    >>> prior = ScorePrior(net, mean=torch.tensor([1.0, 2.0]), std=torch.tensor([2.0, 4.0]),
    ...                    time_step={"value": 1.0, "units": "model"})
    >>> prior.window, prior.event_shape
    (3, (3, 2))
    >>> prior.standardize(torch.tensor([[3.0, 6.0]])).tolist()
    [[1.0, 1.0]]
    >>> rebuilt = ScorePrior(**prior.config)
    >>> _ = rebuilt.load_state_dict(prior.state_dict())
    >>> x = torch.zeros(4, 3, 2)
    >>> torch.equal(rebuilt(x, 0.5), prior(x, 0.5))
    True
    """

    kind = "score_prior"

    def __init__(
        self,
        net: nn.Module | dict[str, Any],
        *,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        space: str = "latent",
        time_step: dict[str, Any] | None = None,
        eta: float = 1e-3,
        stat_shape: Sequence[int] | None = None,
        stat_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(net, dict):
            if set(net) != {"kind", "config"}:
                raise ConfigError(
                    f"net as a dict must be {{'kind': ..., 'config': ...}}, got keys {sorted(net)}"
                )
            net = score_networks.get(str(net["kind"]))(**net["config"])
        if not isinstance(net, nn.Module) or getattr(net, "event_shape", None) is None:
            raise ConfigError(
                "net must be an ε-network module with an event_shape (ScoreMLP, ScoreUNet, "
                f"GaussianEps), got {type(net).__name__}"
            )
        if space not in ("latent", "physical"):
            raise ConfigError(f"space must be 'latent' or 'physical', got {space!r}")
        self.net = net
        self.space = str(space)
        self.time_step = None if time_step is None else dict(time_step)
        self.schedule = CosineSchedule(float(eta))
        event = tuple(int(s) for s in net.event_shape)
        shape = tuple(int(s) for s in stat_shape) if stat_shape is not None else None
        dt = resolve_dtype(stat_dtype) if stat_dtype is not None else torch.float64
        if mean is None:
            mean = torch.zeros(shape if shape is not None else event[1:], dtype=dt)
        if std is None:
            std = torch.ones(tuple(mean.shape), dtype=dt)
        mean = torch.as_tensor(mean, dtype=dt if stat_dtype is not None else torch.float64)
        std = torch.as_tensor(std, dtype=mean.dtype)
        try:
            torch.broadcast_shapes(tuple(mean.shape), tuple(std.shape), event[1:])
        except RuntimeError:
            raise ShapeError(
                f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must broadcast to one "
                f"state {event[1:]}"
            ) from None
        if not bool((std > 0).all()):
            raise ConfigError("std must be positive")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    @property
    def event_shape(self) -> tuple[int, ...]:
        """``(window, *state)``."""
        return tuple(int(s) for s in self.net.event_shape)

    @property
    def window(self) -> int:
        """Number of consecutive states in a window."""
        return self.event_shape[0]

    @property
    def net_dtype(self) -> torch.dtype:
        """Floating dtype of the network's weights (or buffers)."""
        for t in (*self.net.parameters(), *self.net.buffers()):
            if t.is_floating_point():
                return t.dtype
        return self.mean.dtype

    @property
    def eta(self) -> float:
        r""":math:`\eta` of the schedule."""
        return float(self.schedule.eta)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(m)(**m.config)`` rebuilds ``m``."""
        kind = getattr(self.net, "kind", None)
        config = getattr(self.net, "config", None)
        if kind is None or config is None or kind not in score_networks:
            raise ConfigError(
                f"the ε-network {type(self.net).__name__} has no registered kind/config, so it "
                "cannot be stored; use ScoreMLP, ScoreUNet or GaussianEps (or register it in "
                "xlatda.methods.diffusion.score_networks)"
            )
        return {
            "net": {"kind": str(kind), "config": config},
            "space": self.space,
            "time_step": self.time_step,
            "eta": self.eta,
            "stat_shape": list(self.mean.shape),
            "stat_dtype": _dtype_name(self.mean.dtype),
        }

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """ε of standardised windows ``x`` ``(..., *event_shape)`` at times ``t``."""
        return self.net(x, t)

    def trajectory(self, length: int) -> ScorePrior:
        """This prior composed over trajectories of ``length >= window`` states.

        The network becomes :class:`MarkovScore` ``(net, length)``; the
        standardisation (per state), space, time step and schedule are
        shared (the buffers are the same tensors). ``length == window``
        returns ``self``.

        Examples
        --------
        >>> prior = ScorePrior(ScoreMLP(dim=2, window=3, hidden=8, depth=1))
        >>> prior.trajectory(12).event_shape
        (12, 2)
        """
        if int(length) == self.window:
            return self
        return ScorePrior(MarkovScore(self.net, int(length)), mean=self.mean, std=self.std,
                          space=self.space, time_step=self.time_step, eta=self.eta)

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` over trailing state dims, in the dtype of ``x``."""
        return (x - self.mean.to(x)) / self.std.to(x)

    def destandardize(self, u: Tensor) -> Tensor:
        """Inverse of :meth:`standardize`."""
        return u * self.std.to(u) + self.mean.to(u)


# ---------------------------------------------------------------------------
# data and training
# ---------------------------------------------------------------------------
def sliding_windows(z: Tensor, window: int) -> Tensor:
    """All windows of ``window`` consecutive states of trajectories.

    Parameters
    ----------
    z : Tensor, shape ``(T, *state)`` or ``(B, T, *state)``
        One trajectory, or ``B`` trajectories of equal length.
    window : int
        Window length, ``1 <= window <= T``.

    Returns
    -------
    Tensor, shape ``(M, window, *state)``
        ``M = B * (T - window + 1)`` windows (a copy), trajectory by trajectory.

    Examples
    --------
    >>> z = torch.arange(5.0)[:, None]    # T = 5 states of size 1
    >>> sliding_windows(z, 3)[:, :, 0].tolist()
    [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
    """
    if z.dim() < 2:
        raise ShapeError(f"z must be (T, *state) or (B, T, *state), got {tuple(z.shape)}")
    return _windows(z if z.dim() >= 3 else z[None], int(window))


def _windows(z: Tensor, window: int) -> Tensor:
    n_t = z.shape[1]
    if not 1 <= window <= n_t:
        raise ConfigError(f"window must be in [1, T] = [1, {n_t}], got {window}")
    w = z.unfold(1, window, 1)  # (B, T-w+1, *state, window)
    w = w.movedim(-1, 2)  # (B, T-w+1, window, *state)
    return w.reshape(-1, window, *z.shape[2:]).clone()


def fit_score(
    net: nn.Module,
    windows: Tensor,
    *,
    schedule: CosineSchedule | None = None,
    val: Tensor | None = None,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    patience: int | None = None,
    val_fraction: float = 0.0,
    lr_plateau: bool = False,
    grad_clip: float | None = 1.0,
    lr_schedule: str | None = "cosine",
) -> dict[str, Any]:
    """Train an ε-network on clean windows by the ε-prediction loss (in place).

    Parameters
    ----------
    net : torch.nn.Module
        ``net(x_t: (B, *event), t: (B,)) -> (B, *event)`` (:class:`ScoreMLP`,
        :class:`ScoreUNet`); moved to ``device`` and left in eval mode with
        the weights of the best epoch.
    windows : Tensor, shape ``(M, *event)``
        Standardised training windows, ``(M, window, d)`` for
        :class:`ScoreMLP` (see :func:`sliding_windows`).
    schedule : CosineSchedule, optional
        Default ``CosineSchedule()``.
    val : Tensor, shape ``(M_val, *event)``, optional
        Validation windows; its loss (with common random numbers across
        epochs) picks the best epoch. Without it, a fraction
        ``val_fraction`` of ``windows`` is held out (default none: the
        training loss is watched).
    epochs, batch_size, lr, weight_decay, seed, patience, lr_plateau, grad_clip
        As in :func:`xlatda.encoders.training.train_module`; ``seed`` also
        seeds the noise levels and noises of the loss.
    lr_schedule : {"cosine", None}
        Default ``"cosine"``: the rate decays to 0 over the ``epochs``
        (:func:`~xlatda.encoders.training.train_module`). The ε-loss draws
        one noise level per window, so at a constant rate the final weights
        keep that noise: on windows of a Gaussian AR(1) (the trajectory
        benchmark's), the ε error against the exact score fell about
        tenfold (2e-3 to 2e-4) and the sampled prior's mean bias from 0.13
        to 0.05 std. ``None`` keeps the rate constant.
    device : str or torch.device, optional
        Where to train (default: where ``net`` lives).
    progress : bool, optional
        tqdm bar (default from :func:`xlatda.get_options`).

    Returns
    -------
    dict
        The history of :func:`~xlatda.encoders.training.train_module`.

    Raises
    ------
    ShapeError
        If the windows do not end in the network's ``event_shape``.

    Notes
    -----
    Compute: ``epochs * M`` forward/backward passes of ``net``; one random
    noise level per window and per pass (the loss is noisy: prefer many
    epochs over early stopping on a small validation set).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> data = 0.5 * torch.randn(256, 2, 2, generator=g)
    >>> net = ScoreMLP(dim=2, window=2, hidden=32, depth=2)
    >>> hist = fit_score(net, data, epochs=3, batch_size=64, lr=1e-3, progress=False)
    >>> hist["epochs"]
    3
    """
    schedule = CosineSchedule() if schedule is None else schedule
    param = next(net.parameters(), None)
    dtype = torch.get_default_dtype() if param is None else param.dtype
    dev = param.device if device is None and param is not None else resolve_device(device)
    net.to(dev)
    event_shape = getattr(net, "event_shape", None)
    windows = torch.as_tensor(windows)
    for name, data in (("windows", windows), ("val", val)):
        if data is None or event_shape is None:
            continue
        if tuple(data.shape[1:]) != tuple(event_shape):
            raise ShapeError(
                f"{name} must be (M, *event_shape) = (M, {', '.join(map(str, event_shape))}) "
                f"for this network, got {tuple(data.shape)}"
            )

    def loss_fn(batch: tuple, generator: torch.Generator) -> Tensor:
        return eps_loss(net, batch[0], schedule=schedule, generator=generator)

    return train_module(
        net,
        loss_fn,
        (windows,),
        None if val is None else (torch.as_tensor(val),),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        device=dev,
        dtype=dtype,
        progress=progress,
        patience=patience,
        val_fraction=val_fraction,
        lr_plateau=lr_plateau,
        grad_clip=grad_clip,
        lr_schedule=None if lr_plateau else lr_schedule,
        desc="fit_score",
    )
