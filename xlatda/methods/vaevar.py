r"""VAE-Var: variational analysis in the latent space of a VAE of background errors.

A variational autoencoder is trained on normalised background errors
:math:`e = (x_\text{true} - x_b - \mu_e) / \sigma_e` (per component or per
channel, see :func:`background_errors`), so that its decoder :math:`D` maps
latent vectors :math:`w \sim \mathcal N(0, I)` to plausible, flow-aware error
fields. The analysis searches the state as

.. math:: x(w) = x_b + \mu_e + D(w) \odot \sigma_e,
          \qquad w \in \mathbb{R}^k,

(:math:`\mu_e` is the optional ``offset``, zero by default) and minimises

.. math::

    J(w) = \tfrac{\lambda}{2} \lVert w \rVert^2
         + \tfrac12 \sum_t \lVert y_t - H_t(M_t(x(w))) \rVert^2_{R^{-1}},
    \qquad R = \operatorname{diag}(r^2),

from :math:`w = 0` by L-BFGS, with gradients from autograd through the
decoder (and, in 4D, through the forecast model): no adjoint code. 3D
(:class:`VAEVar`): one time, :math:`t = 0`, :math:`M_0 = I`. 4D
(:class:`VAE4DVar`): the caller's ``forecast_obs`` rolls :math:`x(w)` through
a differentiable forecast model and returns the observations predicted over
the window, stacked in the order of :math:`y`.

**Linear case.** With a linear decoder :math:`D(w) = A w` and linear
:math:`H`, the increment :math:`x - x_b = L w`, :math:`L = \operatorname{diag}
(\sigma_e) A`, has the Gaussian prior :math:`\mathcal N(0, B)` with
:math:`B = L L^\top / \lambda`, and :math:`J` is the 3DVar cost in
control-variable form: the minimiser is exactly the BLUE
:math:`x_a = x_b + B H^\top (H B H^\top + R)^{-1} (y - H x_b)` (with a rank
:math:`k < n` covariance if the latent space is smaller than the state).
:func:`vaevar_increment_covariance` gives this :math:`B`, or the analysis
covariance :math:`L (\lambda I + L^\top H^\top R^{-1} H L)^{-1} L^\top`, for
any decoder Jacobian :math:`A = \partial D / \partial w` (the Gauss-Newton /
Laplace covariance in the nonlinear case).

**Batched L-BFGS.** A batch of analyses is one tensor ``(*batch, k)``, and
every batch element runs its own L-BFGS: its own memory of
``history_size`` pairs, its own step length (backtracking Armijo line
search with safeguarded quadratic interpolation, first trial step 1), its
own stopping rule (a rounding slack in the Armijo test keeps it stepping
on the accurate gradient once cost differences fall below the precision of
:math:`J`, so linear problems are solved to the gradient tolerance). The
two-loop recursion and the line-search trials are evaluated for the whole
batch at once (one decoder and one ``h`` call per trial), and elements
that have stopped are frozen. The problems being
independent, this converges as fast as solving each alone, unlike one
L-BFGS on the sum of the costs, whose shared line search and memory slow
down when the batch mixes differently scaled problems. Curvature pairs
with :math:`s^\top y \le 0` (non-convex regions) are skipped, the initial
inverse Hessian is :math:`I/\lambda` (exact when the observations are
uninformative) and then :math:`(s^\top y / y^\top y) I`.

References
----------
Xiao, Y., Jia, Q., Chen, K., Xue, L. and Bai, L. (2025). VAE-Var:
variational autoencoder-enhanced variational methods for data assimilation
in meteorology. ICLR 2025.
Liu, D. C. and Nocedal, J. (1989). On the limited memory BFGS method for
large scale optimization. Math. Program.
Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed.,
chapters 3 and 7. Springer.

Examples
--------
With the identity as decoder, ``std = 1`` and ``lam = 1`` the prior is
``B = I``: observing ``x[0] = 2`` over a background of zeros lands halfway.

>>> import torch
>>> var = VAEVar(decoder=lambda w: w, std=torch.ones(2, dtype=torch.float64), latent_dim=2)
>>> H = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
>>> out = var.analyse(torch.zeros(2, dtype=torch.float64),
...                   torch.tensor([2.0], dtype=torch.float64), 1.0, H)
>>> [round(float(v), 6) for v in out.mean], out.converged
([1.0, 0.0], True)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.lbfgs import minimise_batched_lbfgs
from xlatda.methods.registry import methods
from xlatda.methods.var3d import linear_matrix, observation_std

__all__ = [
    "VAE4DVar",
    "VAEVar",
    "VAEVarResult",
    "background_errors",
    "flat_decoder",
    "vaevar_increment_covariance",
]

Operator = Callable[[Tensor], Tensor]


# -- decoders -----------------------------------------------------------------
class FlatDecoder:
    """A fields decoder seen as a map of flat vectors ``(..., k) -> (..., n)``.

    Made by :func:`flat_decoder`; see there.
    """

    def __init__(self, encoder: nn.Module) -> None:
        if not hasattr(encoder, "decode") or not hasattr(encoder, "latent_dim"):
            raise ConfigError(
                f"flat_decoder needs an encoder with .decode and .latent_dim, got "
                f"{type(encoder).__name__}"
            )
        self.encoder = encoder
        self.latent_dim = int(encoder.latent_dim)

    def __call__(self, w: Tensor) -> Tensor:
        lead = w.shape[:-1]
        out = self.encoder.decode(w.reshape(-1, self.latent_dim))
        return out.reshape(*lead, -1)

    def __repr__(self) -> str:
        return f"flat_decoder({type(self.encoder).__name__}, latent_dim={self.latent_dim})"


def flat_decoder(encoder: nn.Module) -> FlatDecoder:
    """Wrap an encoder's ``decode`` as a decoder of flat vectors for VAE-Var.

    Parameters
    ----------
    encoder : Encoder
        Any xlatda encoder (typically a fitted
        :class:`~xlatda.encoders.vae.VAE` trained on normalised background
        errors); ``decode`` maps ``(B, latent_dim)`` to ``(B, C, *spatial)``.

    Returns
    -------
    FlatDecoder
        Callable ``w (..., latent_dim) -> (..., n)`` with
        ``n = C * prod(spatial)``, the fields flattened in C order (channel
        first), with a ``latent_dim`` attribute.

    Examples
    --------
    >>> import torch
    >>> from xlatda.encoders.vae import VAE
    >>> vae = VAE(2, (5,), latent_dim=3, hidden=[8])
    >>> _ = vae.fit(torch.randn(16, 2, 5), epochs=1, progress=False, val_fraction=0)
    >>> flat_decoder(vae)(torch.zeros(4, 7, 3)).shape
    torch.Size([4, 7, 10])
    """
    return FlatDecoder(encoder)


def _is_encoder(obj: Any) -> bool:
    """Whether ``obj`` is an xlatda encoder (a module with encode, decode, latent_dim)."""
    return isinstance(obj, nn.Module) and all(
        hasattr(obj, a) for a in ("encode", "decode", "latent_dim")
    )


def _module_of(decoder: Any) -> nn.Module | None:
    """The module behind a decoder: itself, the owner of a bound method, or a wrapped encoder."""
    if isinstance(decoder, FlatDecoder):
        return decoder.encoder
    if isinstance(decoder, nn.Module):
        return decoder
    owner = getattr(decoder, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _reference_tensor(module: nn.Module | None) -> Tensor | None:
    """First floating parameter or buffer of ``module`` (its dtype and device)."""
    if module is None:
        return None
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t
    return None


# -- result and methods ------------------------------------------------------------
@dataclass(frozen=True)
class VAEVarResult:
    """Output of :meth:`VAEVar.analyse` and :meth:`VAE4DVar.analyse`.

    Attributes
    ----------
    mean : Tensor, shape ``(*batch, n)``
        The analysis :math:`x(w^*) = x_b + \\mu_e + D(w^*) \\odot \\sigma_e`
        (for 4D, at the window start).
    w : Tensor, shape ``(*batch, k)``
        The optimal latent vectors :math:`w^*`.
    cost : Tensor, shape ``(K, *batch)``
        Cost :math:`J` at :math:`w = 0` (or ``w0``) and after each L-BFGS
        iteration (the last is the analysis; elements that stopped early
        repeat their final cost).
    iterations : int
        L-BFGS iterations done (the most over the batch).
    converged : bool
        Whether every batch element met the gradient tolerance or stopped
        decreasing at machine precision.
    """

    mean: Tensor
    w: Tensor
    cost: Tensor
    iterations: int
    converged: bool


@dataclass(frozen=True, kw_only=True, eq=False)
class _LatentVar:
    """Settings and kernel shared by :class:`VAEVar` and :class:`VAE4DVar`."""

    decoder: Any
    std: Tensor | float
    lam: float = 1.0
    iterations: int = 50
    history_size: int = 10
    tol: float = 1e-6
    offset: Tensor | float | None = None
    latent_dim: int | None = None
    centre: bool = False

    def __post_init__(self) -> None:
        decoder = self.decoder
        owner = getattr(decoder, "__self__", None)
        if getattr(decoder, "__name__", None) == "decode" and _is_encoder(owner):
            decoder = owner  # encoder.decode: fields out, flatten them below
        if _is_encoder(decoder):
            # An xlatda encoder: decode flat vectors through its fields decoder.
            decoder = FlatDecoder(decoder)
            object.__setattr__(self, "decoder", decoder)
        if not callable(decoder):
            raise ConfigError(
                f"decoder must be callable, mapping w (..., k) to (..., n); got "
                f"{type(decoder).__name__}"
            )
        k = self.latent_dim
        if k is None:
            k = getattr(decoder, "latent_dim", None)
            if k is None:
                k = getattr(_module_of(decoder), "latent_dim", None)
        if k is None:
            raise ConfigError(
                "the latent size could not be read from the decoder (no .latent_dim); "
                "pass latent_dim=k"
            )
        if int(k) < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {k!r}")
        object.__setattr__(self, "latent_dim", int(k))
        std = torch.as_tensor(self.std)
        if not std.is_floating_point():
            std = std.to(torch.get_default_dtype())
        if std.dim() > 1:
            raise ShapeError(f"std must be a scalar or have shape (n,), got {tuple(std.shape)}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ConfigError("std must be positive and finite in every component")
        object.__setattr__(self, "std", std)
        if self.offset is not None:
            offset = torch.as_tensor(self.offset)
            if not offset.is_floating_point():
                offset = offset.to(torch.get_default_dtype())
            if offset.dim() > 1:
                raise ShapeError(
                    f"offset must be a scalar or have shape (n,), got {tuple(offset.shape)}"
                )
            object.__setattr__(self, "offset", offset)
        if not self.lam > 0:
            raise ConfigError(f"lam must be positive, got {self.lam!r}")
        if int(self.iterations) < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations!r}")
        if int(self.history_size) < 1:
            raise ConfigError(f"history_size must be >= 1, got {self.history_size!r}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be positive, got {self.tol!r}")

    def _run(
        self, xb: Tensor, y: Tensor, r_std: Tensor | float, op: Any, w0: Tensor | None, what: str
    ) -> VAEVarResult:
        # Clones made outside inference mode, so that autograd may save them
        # even when the caller works under torch.inference_mode.
        with torch.inference_mode(False):
            return self._analyse(xb, y, r_std, op, w0, what)

    def _analyse(
        self, xb: Tensor, y: Tensor, r_std: Tensor | float, op: Any, w0: Tensor | None, what: str
    ) -> VAEVarResult:
        xb = torch.as_tensor(xb)
        if not xb.is_floating_point():
            xb = xb.to(torch.get_default_dtype())
        if xb.dim() < 1:
            raise ShapeError("xb must have shape (*batch, n)")
        xb = xb.clone()
        dtype, device = xb.dtype, xb.device
        y = torch.as_tensor(y, dtype=dtype, device=device).clone()
        if y.dim() < 1:
            raise ShapeError("y must have shape (*batch, P)")
        n, p, k = xb.shape[-1], y.shape[-1], self.latent_dim
        std = self.std.to(dtype=dtype, device=device).clone()
        if std.dim() == 1 and std.shape[0] != n:
            raise ShapeError(f"std has {std.shape[0]} values but the background has {n}")
        offset = None if self.offset is None else self.offset.to(dtype=dtype, device=device).clone()
        if offset is not None and offset.dim() == 1 and offset.shape[0] != n:
            raise ShapeError(f"offset has {offset.shape[0]} values but the background has {n}")
        r = observation_std(r_std, p, xb).clone()
        batch = torch.broadcast_shapes(xb.shape[:-1], y.shape[:-1], r.shape[:-1])

        hmat = linear_matrix(op)
        if hmat is not None:
            hmat = hmat.to(dtype=dtype, device=device).clone()
            if hmat.shape[-2:] != (p, n):
                raise ShapeError(
                    f"H has shape {tuple(hmat.shape)} but (P, n) = ({p}, {n}) was expected "
                    "from y and xb"
                )

            def apply(x: Tensor, _h: Tensor = hmat) -> Tensor:
                return (_h @ x.unsqueeze(-1)).squeeze(-1)

        elif callable(op):
            apply = op
        else:
            raise ConfigError(
                f"{what} must be a matrix, an object with .matrix, or a callable; got "
                f"{type(op).__name__}"
            )

        ref = _reference_tensor(_module_of(self.decoder))
        eps = torch.finfo(dtype).eps
        if ref is not None:
            eps = max(eps, torch.finfo(ref.dtype).eps)
        decoder = self.decoder

        def increment(w: Tensor) -> Tensor:
            wd = w if ref is None else w.to(dtype=ref.dtype, device=ref.device)
            out = decoder(wd)
            if not isinstance(out, Tensor) or out.shape != (*w.shape[:-1], n):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ShapeError(
                    f"the decoder must map w {tuple(w.shape)} to (..., n) with n = {n}, the "
                    f"size of the background; it returned {shape} (wrap an xlatda encoder "
                    "with flat_decoder)"
                )
            return out.to(dtype=dtype, device=device) * std

        if self.centre:  # x(0) = x_b: subtract the decoder's output at w = 0
            with torch.no_grad():
                d0 = increment(xb.new_zeros(k))
            raw_increment = increment

            def increment(w: Tensor) -> Tensor:
                return raw_increment(w) - d0

        base = xb if offset is None else xb + offset
        lam = float(self.lam)

        def fun(w: Tensor) -> Tensor:
            pred = apply(base + increment(w))
            if not isinstance(pred, Tensor) or pred.shape[-1] != p:
                shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
                raise ShapeError(f"{what} returned {shape}, but y has {p} observations (..., {p})")
            return 0.5 * lam * (w**2).sum(-1) + 0.5 * (((y - pred) / r) ** 2).sum(-1)

        if w0 is None:
            w_start = xb.new_zeros(*batch, k)
        else:
            w_start = torch.as_tensor(w0, dtype=dtype, device=device)
            if w_start.shape[-1:] != (k,):
                raise ShapeError(f"w0 must end in the latent size {k}, got {tuple(w_start.shape)}")
            w_start = w_start.expand(*batch, k).clone()
        w, cost, iters, conv = minimise_batched_lbfgs(
            fun,
            w_start,
            iterations=int(self.iterations),
            tol=float(self.tol),
            history_size=int(self.history_size),
            h0=1.0 / lam,
            eps=eps,
        )
        with torch.no_grad():
            xa = (base + increment(w)).expand(*batch, n).clone()
        return VAEVarResult(mean=xa, w=w, cost=cost, iterations=iters, converged=bool(conv.all()))


_SETTINGS_DOC = """
    Parameters
    ----------
    decoder : callable, nn.Module or xlatda encoder
        :math:`D`: maps latent vectors ``w`` of shape ``(..., k)`` to
        normalised error fields ``(..., n)``, differentiably, batched over the
        leading dimensions; typically ``flat_decoder(vae)`` for a fitted
        :class:`~xlatda.encoders.vae.VAE` (an encoder, or its bound
        ``decode``, passed directly is wrapped so). If the decoder is a
        module, the bound method of one, or a wrapped encoder, ``w`` is
        cast to the dtype and device of its first floating parameter and its
        output cast back, so a float32 network can serve a float64 analysis.
        Its weights are frozen: gradients are taken with respect to ``w``
        alone and no ``.grad`` is accumulated into them. Its train/eval mode
        is left as the caller set it.
    std : float or Tensor, shape ``(n,)``
        :math:`\\sigma_e`, the scale of the normalised errors
        (``x(w) = x_b + offset + D(w) * std``); the ``std`` returned by
        :func:`background_errors`.
    lam : float
        :math:`\\lambda`, weight of the latent prior term
        :math:`\\tfrac{\\lambda}{2} \\lVert w \\rVert^2` (1 is the VAE prior).
    iterations : int
        Largest number of L-BFGS iterations.
    history_size : int
        L-BFGS memory (pairs kept per batch element; 10 in the paper).
    tol : float
        An element stops when the largest entry of :math:`\\nabla_w J` is
        below ``tol`` (``w`` is whitened, so this is scale-free), or when its
        cost has stopped decreasing at machine precision (the coarser of the
        background's and the decoder's dtypes) for 3 iterations, or no step
        decreases it.
    offset : float or Tensor, shape ``(n,)``, optional
        :math:`\\mu_e`, the mean background error added to every background
        (the ``mean`` of :func:`background_errors` when the VAE was trained
        on centred errors); ``None`` adds nothing.
    latent_dim : int, optional
        :math:`k`; read from ``decoder.latent_dim`` (or its module's) when
        omitted.
    centre : bool
        Use :math:`D(w) - D(0)` as the increment shape, so that :math:`w = 0`
        is the background itself. A trained VAE's :math:`D(0)` is rarely
        exactly zero; in cycling, adding it at every analysis drifts the
        state (``benchmarks/bench_sw_generative.py`` does this by hand).
"""


@methods.register("vaevar")
@dataclass(frozen=True, kw_only=True, eq=False)
class VAEVar(_LatentVar):
    __doc__ = (
        """3D VAE-Var: minimise :math:`J(w)` at one time (see the module docstring).
"""
        + _SETTINGS_DOC
        + """
    Raises
    ------
    ConfigError
        For a decoder that is not callable, an unknown latent size, or a
        non-positive ``std``, ``lam``, ``tol``, ``iterations`` or
        ``history_size``.

    References
    ----------
    Xiao, Jia, Chen, Xue, Bai (2025), VAE-Var, ICLR 2025.

    Examples
    --------
    A nonlinear decoder, a batch of two analyses, each observing ``x[0]``:

    >>> import torch
    >>> var = VAEVar(decoder=lambda w: torch.cat((w, w**2), -1), std=1.0, latent_dim=1)
    >>> out = var.analyse(torch.zeros(2, 2), torch.tensor([[1.0], [-1.0]]), 0.1,
    ...                   lambda x: x[..., :1])
    >>> out.w.shape, out.cost.shape[1:], out.converged
    (torch.Size([2, 1]), torch.Size([2]), True)
    >>> [[round(float(v), 2) for v in x] for x in out.mean]
    [[0.99, 0.98], [-0.99, 0.98]]
"""
    )

    def analyse(
        self,
        xb: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        h: Tensor | Operator,
        *,
        w0: Tensor | None = None,
    ) -> VAEVarResult:
        """Analyse a batch of backgrounds with their observations.

        Parameters
        ----------
        xb : Tensor, shape ``(*batch, n)``
            Backgrounds; they set the dtype and device of the analysis.
        y : Tensor, shape ``(*batch, P)``
            Observations.
        r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
            Observation-error standard deviations (``R = diag(r_std**2)``).
        h : Tensor ``(P, n)``, object with ``.matrix``, or callable
            Observation operator: a matrix (dense or sparse, or an object
            with a ``.matrix``), or a callable ``h(x: (*batch, n)) ->
            (*batch, P)`` differentiable by autograd (call outside
            ``torch.inference_mode``).
        w0 : Tensor, shape ``(k,)`` or ``(*batch, k)``, optional
            Starting latent vectors (default zero, as in the paper).

        Returns
        -------
        VAEVarResult

        Raises
        ------
        ShapeError
            If ``xb``, ``y``, ``h``, ``std`` and the decoder's output disagree.
        ConfigError
            For a non-positive ``r_std`` or an ``h`` that is neither a matrix
            nor callable.

        Notes
        -----
        Each L-BFGS iteration evaluates the decoder and ``h`` (forward and
        backward) on the whole batch once per line-search trial (usually
        one); memory ``O(history_size * batch * k)`` plus the decoder's
        activations for one batch.
        """
        return self._run(xb, y, r_std, h, w0, "h")


@methods.register("vae4dvar")
@dataclass(frozen=True, kw_only=True, eq=False)
class VAE4DVar(_LatentVar):
    __doc__ = (
        """4D VAE-Var: minimise :math:`J(w)` over a window through a forecast model.

    The control is the state at the window start,
    :math:`x_0(w) = x_b + \\mu_e + D(w) \\odot \\sigma_e`; the caller's
    ``forecast_obs`` rolls it through a differentiable forecast model to the
    observation times (see the module docstring).
"""
        + _SETTINGS_DOC
        + """
    Raises
    ------
    ConfigError
        As for :class:`VAEVar`.

    References
    ----------
    Xiao, Jia, Chen, Xue, Bai (2025), VAE-Var, ICLR 2025.

    Examples
    --------
    A decaying scalar observed at times 1 and 2 (``x_t = 0.5^t x_0``):

    >>> import torch
    >>> def forecast_obs(x0):   # (..., 1) -> (..., 2)
    ...     return torch.cat((0.5 * x0, 0.25 * x0), -1)
    >>> var = VAE4DVar(decoder=lambda w: w, std=2.0, latent_dim=1, lam=1.0)
    >>> out = var.analyse(torch.zeros(1), forecast_obs(torch.tensor([4.0])), 0.01,
    ...                   forecast_obs)
    >>> round(float(out.mean[0]), 2)
    4.0
"""
    )

    def analyse(
        self,
        xb: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        forecast_obs: Tensor | Operator,
        *,
        w0: Tensor | None = None,
    ) -> VAEVarResult:
        """Analyse a batch of window-start backgrounds with the window's observations.

        Parameters
        ----------
        xb : Tensor, shape ``(*batch, n)``
            Backgrounds at the window start.
        y : Tensor, shape ``(*batch, P)``
            Observations of the window, stacked over times.
        r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
            Observation-error standard deviations.
        forecast_obs : callable or Tensor ``(P, n)``
            ``forecast_obs(x0: (..., n)) -> (..., P)``: integrates each
            initial state through the (differentiable) forecast model and
            returns the predicted observations in the order of ``y``,
            batched over the leading dimensions (as for
            :class:`~xlatda.methods.envar4d.EnVar4D`, but on states). A
            matrix stands for a linear model-and-observation map.
        w0 : Tensor, shape ``(k,)`` or ``(*batch, k)``, optional
            Starting latent vectors (default zero).

        Returns
        -------
        VAEVarResult
            ``mean`` is the analysis at the window start.

        Raises
        ------
        ShapeError
            If ``forecast_obs`` does not return ``(..., P)``, or other sizes
            disagree.
        ConfigError
            For a non-positive ``r_std``.

        Notes
        -----
        Each line-search trial runs the forecast model over the window on
        the whole batch and back-propagates through it: memory grows with
        the window length (the model's activations are kept for the backward
        pass).
        """
        return self._run(xb, y, r_std, forecast_obs, w0, "forecast_obs")


# -- training data and linear theory ---------------------------------------------
def background_errors(
    truth: Tensor,
    forecast: Any,
    *,
    lead: int = 1,
    normalise: bool = True,
    channel: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Background errors of forecasts from the truth: the training set of the VAE.

    .. math:: e_t = x_\text{true}(t) - M^{\text{lead}}(x_\text{true}(t - \text{lead})),
              \qquad \tilde e_t = (e_t - \mu_e) / \sigma_e,

    the forecast started from the truth itself (the simple choice that
    ``METHODS.md`` §4 allows; errors of forecasts from analyses need a
    cycle). :math:`\mu_e` and :math:`\sigma_e` are the mean and standard
    deviation over time, per component, or pooled over all components of a
    channel when ``channel`` is given.

    Parameters
    ----------
    truth : Tensor, shape ``(T, n)``
        True trajectory at consecutive forecast steps.
    forecast : callable or forecast model
        ``forecast(x: (..., n)) -> (..., n)``, one step ahead, batched; an
        object with ``.step(x)`` (such as
        :class:`~xlatda.dynamics.physical.Lorenz96`) works too. It must
        differ from the model that made ``truth`` (model error), else the
        errors are zero.
    lead : int
        Forecast steps between start and verification, ``1 <= lead < T``.
    normalise : bool
        Return :math:`\tilde e` (centred and scaled) rather than :math:`e`.
    channel : Tensor of int, shape ``(n,)``, optional
        The channel (variable) of each component, ``0..C-1``: statistics
        are pooled over each channel's components (and returned expanded to
        ``(n,)``).

    Returns
    -------
    errors : Tensor, shape ``(T - lead, n)``
        :math:`\tilde e` (or :math:`e` if ``normalise=False``), detached.
    mean : Tensor, shape ``(n,)``
        :math:`\mu_e` (``offset`` of :class:`VAEVar`).
    std : Tensor, shape ``(n,)``
        :math:`\sigma_e` (``std`` of :class:`VAEVar`).

    Raises
    ------
    ShapeError
        If ``truth`` is not ``(T, n)`` with ``T > lead`` or ``channel`` is not ``(n,)``.
    ConfigError
        If ``lead < 1``, or some component (or channel) has no error
        variance, as when ``forecast`` is the model that made the truth.

    Notes
    -----
    One batched forecast of ``T - lead`` states per lead step, without
    gradients.

    Examples
    --------
    >>> import torch
    >>> truth = torch.arange(12.0).reshape(6, 2) ** 2
    >>> e, mean, std = background_errors(truth, lambda x: 1.1 * x, lead=2)
    >>> e.shape, bool(e.mean(0).abs().max() < 1e-6)
    (torch.Size([4, 2]), True)
    >>> [round(float(v), 6) for v in e.std(0, correction=0)]   # population std
    [1.0, 1.0]
    """
    truth = torch.as_tensor(truth)
    if not truth.is_floating_point():
        truth = truth.to(torch.get_default_dtype())
    lead = int(lead)
    if lead < 1:
        raise ConfigError(f"lead must be >= 1, got {lead}")
    if truth.dim() != 2 or truth.shape[0] <= lead:
        raise ShapeError(
            f"truth must have shape (T, n) with T > lead = {lead}, got {tuple(truth.shape)}"
        )
    if callable(forecast):
        step = forecast
    elif callable(getattr(forecast, "step", None)):
        step = forecast.step
    else:
        raise ConfigError(
            f"forecast must be callable or have a .step method, got {type(forecast).__name__}"
        )
    n = truth.shape[-1]
    with torch.no_grad():
        x = truth[:-lead]
        for _ in range(lead):
            x = step(x)
        if not isinstance(x, Tensor) or x.shape != truth[:-lead].shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"forecast must map (T, n) to (T, n), it returned {shape}")
        err = (truth[lead:] - x).detach()
        if channel is None:
            mean = err.mean(0)
            std = err.std(0, correction=0)
        else:
            ch = torch.as_tensor(channel, device=truth.device).long()
            if ch.shape != (n,) or bool((ch < 0).any()):
                raise ShapeError(
                    f"channel must be non-negative ints of shape ({n},), got {tuple(ch.shape)}"
                )
            mean = err.new_empty(n)
            std = err.new_empty(n)
            for c in torch.unique(ch).tolist():
                sel = ch == c
                vals = err[:, sel]
                mean[sel] = vals.mean()
                std[sel] = vals.std(correction=0)
        tiny = torch.finfo(err.dtype).tiny
        if not bool((std > tiny).all()):
            bad = torch.nonzero(std <= tiny).flatten()[:5].tolist()
            raise ConfigError(
                f"background errors have zero variance in components {bad}...; forecasts from "
                "the truth with the model that made it have no error: use an imperfect model "
                "(other forcing, step or resolution) or forecasts from analyses"
            )
        out = (err - mean) / std if normalise else err
    return out, mean, std


def vaevar_increment_covariance(
    decoder_jacobian: Tensor,
    std: Tensor | float,
    lam: float = 1.0,
    *,
    h: Tensor | None = None,
    r_std: Tensor | float | None = None,
) -> Tensor:
    r"""The Gaussian covariance of VAE-Var increments for a (linearised) decoder.

    With :math:`L = \operatorname{diag}(\sigma_e)\, A`, :math:`A = \partial D /
    \partial w` (``(n, k)``), the prior of :math:`x - x_b = L w`,
    :math:`w \sim \mathcal N(0, I/\lambda)`, has covariance

    .. math:: B = L L^\top / \lambda,

    and with a linear observation operator :math:`H` the analysis covariance
    is :math:`L (\lambda I_k + L^\top H^\top R^{-1} H L)^{-1} L^\top`; both
    are exact for a linear decoder, Gauss-Newton (Laplace) approximations at
    the linearisation point otherwise.

    Parameters
    ----------
    decoder_jacobian : Tensor, shape ``(..., n, k)``
        :math:`A` (e.g. ``torch.autograd.functional.jacobian(decoder, w)``).
    std : float or Tensor, shape ``(n,)``
        :math:`\sigma_e`.
    lam : float
        :math:`\lambda`.
    h : Tensor, shape ``(..., P, n)``, or object with ``.matrix``, optional
        Linear observation operator (or the Jacobian of a nonlinear one);
        with it the analysis covariance is returned.
    r_std : float or Tensor, shape ``(P,)``, optional
        Observation-error standard deviations (needed with ``h``).

    Returns
    -------
    Tensor, shape ``(..., n, n)``
        :math:`B` (rank at most ``k``), or the analysis covariance.

    Raises
    ------
    ShapeError
        If the sizes disagree.
    ConfigError
        If ``lam <= 0`` or ``h`` is given without ``r_std``.

    Notes
    -----
    Forms ``n x n`` matrices; the analysis covariance needs one ``k x k``
    Cholesky factorisation.

    Examples
    --------
    >>> import torch
    >>> A, std = torch.eye(2), torch.tensor([1.0, 2.0])
    >>> vaevar_increment_covariance(A, std)
    tensor([[1., 0.],
            [0., 4.]])
    >>> vaevar_increment_covariance(A, std, h=torch.tensor([[1.0, 0.0]]), r_std=1.0)
    tensor([[0.5000, 0.0000],
            [0.0000, 4.0000]])
    """
    jac = torch.as_tensor(decoder_jacobian)
    if not jac.is_floating_point():
        jac = jac.to(torch.get_default_dtype())
    if jac.dim() < 2:
        raise ShapeError(f"decoder_jacobian must have shape (..., n, k), got {tuple(jac.shape)}")
    if not lam > 0:
        raise ConfigError(f"lam must be positive, got {lam!r}")
    n, k = jac.shape[-2], jac.shape[-1]
    s = torch.as_tensor(std, dtype=jac.dtype, device=jac.device)
    if s.dim() > 0 and s.shape[-1] != n:
        raise ShapeError(f"std has {s.shape[-1]} values but the Jacobian has {n} rows")
    ell = (s.unsqueeze(-1) if s.dim() > 0 else s) * jac
    if h is None:
        return ell @ ell.transpose(-1, -2) / lam
    if r_std is None:
        raise ConfigError("the analysis covariance needs r_std together with h")
    hmat = linear_matrix(h)
    if hmat is None:
        raise ConfigError("h must be a matrix (P, n) or an object with .matrix")
    hmat = hmat.to(dtype=jac.dtype, device=jac.device)
    if hmat.shape[-1] != n:
        raise ShapeError(f"h has shape {tuple(hmat.shape)} but the state has {n} values")
    r = observation_std(r_std, hmat.shape[-2], jac)
    g = (hmat @ ell) / r.unsqueeze(-1)  # (..., P, k)
    info = lam * torch.eye(k, dtype=jac.dtype, device=jac.device) + g.transpose(-1, -2) @ g
    chol = torch.linalg.cholesky(info)
    cov = ell @ torch.cholesky_solve(ell.transpose(-1, -2), chol)
    return 0.5 * (cov + cov.transpose(-1, -2))
