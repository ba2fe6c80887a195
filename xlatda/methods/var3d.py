r"""3DVar: variational analysis with a static background covariance.

The analysis minimises

.. math::

    J(x) = \tfrac12 (x - x_b)^\top B^{-1} (x - x_b)
         + \tfrac12 \lVert y - h(x) \rVert^2_{R^{-1}},
    \qquad R = \operatorname{diag}(r^2).

**Linear** :math:`h(x) = H x`: the minimiser is the best linear unbiased
estimate (BLUE), computed exactly in whichever of its two equivalent forms
is cheaper,

.. math::

    x_a &= x_b + B H^\top (H B H^\top + R)^{-1} (y - H x_b)
        && \text{(observation space, } P \times P \text{ solve)} \\
        &= x_b + (B^{-1} + H^\top R^{-1} H)^{-1} H^\top R^{-1} (y - H x_b)
        && \text{(state space, } n \times n \text{ solve)},

with analysis covariance :math:`A = (B^{-1} + H^\top R^{-1} H)^{-1}
= B - B H^\top (H B H^\top + R)^{-1} H B`.

**Nonlinear** :math:`h`: with the control-variable transform
:math:`x = x_b + L v`, :math:`L L^\top = B`, the cost becomes

.. math:: J(v) = \tfrac12 \lVert v \rVert^2
          + \tfrac12 \lVert y - h(x_b + L v) \rVert^2_{R^{-1}},

which is well conditioned, and is minimised from :math:`v = 0` by L-BFGS
with gradients from autograd through ``h`` (no adjoint code). All batch
elements are minimised together in one tensor, each by its own L-BFGS
(memory, line search and stopping rule per element,
:func:`xlatda.methods.lbfgs.minimise_batched_lbfgs`).

References
----------
Lorenc, A. C. (1986). Analysis methods for numerical weather prediction.
Q. J. R. Meteorol. Soc.
Courtier, P. et al. (1998). The ECMWF implementation of three-dimensional
variational assimilation (3D-Var). Q. J. R. Meteorol. Soc.
Liu, D. C. and Nocedal, J. (1989). On the limited memory BFGS method for
large scale optimization. Math. Program.

Examples
--------
>>> import torch
>>> from xlatda.methods.covariance import ScaledIdentity
>>> var = Var3D(b=ScaledIdentity(1.0, 2, dtype=torch.float64))
>>> H = torch.tensor([[1.0, 0.0]], dtype=torch.float64)   # observe x[0]
>>> out = var.analyse(torch.zeros(2, dtype=torch.float64),
...                   torch.tensor([2.0], dtype=torch.float64), 1.0, H)
>>> out.mean   # halfway between background 0 and observation 2
tensor([1., 0.], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.covariance import Covariance
from xlatda.methods.lbfgs import minimise_batched_lbfgs
from xlatda.methods.registry import methods

__all__ = ["Var3D", "Var3DResult", "linear_matrix", "observation_std"]


def linear_matrix(h: Any) -> Tensor | None:
    """The matrix of a linear observation operator, or None for a nonlinear one.

    ``h`` is linear when it is a tensor (dense or sparse, shape ``(P, n)``)
    or an object with a ``.matrix`` tensor attribute (such as a sparse
    interpolation operator that is also callable). Sparse matrices are
    returned dense.
    """
    if isinstance(h, Tensor):
        mat = h
    elif isinstance(getattr(h, "matrix", None), Tensor):
        mat = h.matrix
    else:
        return None
    if mat.layout != torch.strided:
        mat = mat.to_dense()
    return mat


def observation_std(r_std: Tensor | float, p: int, like: Tensor) -> Tensor:
    """Observation-error standard deviations as a tensor ``(..., P)``.

    Raises
    ------
    ShapeError
        If ``r_std`` is neither a scalar nor ends in ``p``.
    ConfigError
        If some value is not positive.
    """
    r = torch.as_tensor(r_std, dtype=like.dtype, device=like.device)
    if r.dim() == 0:
        r = r.expand(p)
    if r.shape[-1] not in (1, p):
        raise ShapeError(
            f"r_std must be a scalar or end in the number of observations {p}, "
            f"got shape {tuple(r.shape)}"
        )
    r = r.expand(*r.shape[:-1], p)
    if not bool((r > 0).all()):
        raise ConfigError("r_std must be positive for every observation")
    return r


@dataclass(frozen=True)
class Var3DResult:
    """Output of :meth:`Var3D.analyse`.

    Attributes
    ----------
    mean : Tensor, shape ``(*batch, n)``
        The analysis :math:`x_a`.
    covariance : Tensor or None, shape ``(*rbatch, n, n)``
        The analysis covariance :math:`(B^{-1} + H^\\top R^{-1} H)^{-1}` if asked
        for (``rbatch`` is the batch shape of ``r_std`` or of the Jacobian;
        for a nonlinear ``h`` it uses the Jacobian at the analysis).
    iterations : int
        L-BFGS iterations (0 for the exact linear solve).
    cost : Tensor, shape ``(K, *batch)``
        Cost at the background and at each iterate (the last is the analysis).
    converged : bool
        Whether the gradient tolerance was met or the cost stopped decreasing
        at machine precision (always True when linear).
    """

    mean: Tensor
    covariance: Tensor | None
    iterations: int
    cost: Tensor
    converged: bool


def _blue(
    b: Covariance,
    hmat: Tensor,
    xb: Tensor,
    d: Tensor,
    r: Tensor,
    *,
    form: str,
    covariance: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Increment ``x_a - x_b``, the analysis covariance if asked, and ``J(x_a)``.

    ``hmat`` (..., P, n), innovations ``d`` (*batch, P), ``r`` (..., P). The
    minimum of the cost is ``d^T (H B H^T + R)^{-1} d / 2``.
    """
    p, n = hmat.shape[-2], hmat.shape[-1]
    if form == "auto":
        form = "observation" if p <= n else "state"
    if form == "observation":
        hb = b @ hmat  # rows: (B h_i)^T = H B, (..., P, n)
        s = hb @ hmat.transpose(-1, -2) + torch.diag_embed(r**2)
        chol = _cholesky(s, "H B H^T + R")
        u = torch.cholesky_solve(d.unsqueeze(-1), chol)  # (*batch, P, 1)
        inc = (hb.transpose(-1, -2) @ u).squeeze(-1)
        jmin = 0.5 * (d * u.squeeze(-1)).sum(-1)
        cov = None
        if covariance:
            cov = b.dense() - hb.transpose(-1, -2) @ torch.cholesky_solve(hb, chol)
            cov = 0.5 * (cov + cov.transpose(-1, -2))
        return inc, cov, jmin
    if form == "state":
        eye = torch.eye(n, dtype=xb.dtype, device=xb.device)
        binv = b.inv_matvec(eye)
        binv = 0.5 * (binv + binv.transpose(-1, -2))
        rinv2 = r**-2
        info = binv + hmat.transpose(-1, -2) @ (rinv2.unsqueeze(-1) * hmat)
        chol = _cholesky(info, "B^-1 + H^T R^-1 H")
        g = hmat.transpose(-1, -2) @ (d * rinv2).unsqueeze(-1)  # (*batch, n, 1)
        inc = torch.cholesky_solve(g, chol).squeeze(-1)
        # Woodbury: (H B H^T + R)^-1 = R^-1 - R^-1 H (B^-1 + H^T R^-1 H)^-1 H^T R^-1
        jmin = 0.5 * ((d**2 * rinv2).sum(-1) - (g.squeeze(-1) * inc).sum(-1))
        cov = torch.cholesky_inverse(chol) if covariance else None
        return inc, cov, jmin
    raise ConfigError(f"form must be 'auto', 'observation' or 'state', got {form!r}")


def _cholesky(mat: Tensor, what: str) -> Tensor:
    chol, info = torch.linalg.cholesky_ex(mat)
    if bool((info != 0).any()):
        raise ConfigError(
            f"{what} is not positive definite; check that B is positive definite and "
            "r_std > 0, or use float64"
        )
    return chol


@methods.register("3dvar")
@dataclass(frozen=True, kw_only=True)
class Var3D:
    """3DVar with a static background covariance ``b``.

    Parameters
    ----------
    b : Covariance
        Background-error covariance :math:`B` of size ``n`` (see
        :mod:`xlatda.methods.covariance`); it is moved to the dtype and
        device of the background at each analysis.
    iterations : int
        Largest number of L-BFGS iterations (nonlinear ``h`` only).
    tol : float
        L-BFGS stops when the largest entry of :math:`\\nabla_v J` is below
        ``tol`` (the control is whitened, so this is scale-free), or when
        the cost stops decreasing at machine precision.
    history_size : int
        L-BFGS memory.

    Examples
    --------
    A nonlinear operator (observing the square) goes through L-BFGS:

    >>> import torch
    >>> from xlatda.methods.covariance import DiagonalCovariance
    >>> var = Var3D(b=DiagonalCovariance(torch.tensor([1.0, 1.0], dtype=torch.float64)))
    >>> xb = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    >>> out = var.analyse(xb, torch.tensor([[4.0]], dtype=torch.float64), 0.1,
    ...                   lambda x: x[..., :1] ** 2)
    >>> round(float(out.mean[0, 0]), 3), out.converged
    (1.999, True)
    """

    b: Covariance
    iterations: int = 100
    tol: float = 1e-6
    history_size: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.b, Covariance):
            raise ConfigError(
                f"b must be a Covariance (see xlatda.methods.covariance), got "
                f"{type(self.b).__name__}"
            )
        if int(self.iterations) < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations!r}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be positive, got {self.tol!r}")
        if int(self.history_size) < 1:
            raise ConfigError(f"history_size must be >= 1, got {self.history_size!r}")

    def analyse(
        self,
        xb: Tensor,
        y: Tensor,
        r_std: Tensor | float,
        h: Tensor | Callable[[Tensor], Tensor],
        *,
        covariance: bool = False,
        form: str = "auto",
    ) -> Var3DResult:
        """Analyse a batch of backgrounds with their observations.

        Parameters
        ----------
        xb : Tensor, shape ``(*batch, n)``
            Backgrounds.
        y : Tensor, shape ``(*batch, P)``
            Observations.
        r_std : float or Tensor, shape ``(P,)`` or ``(*batch, P)``
            Observation-error standard deviations (``R = diag(r_std**2)``).
        h : Tensor ``(P, n)``, object with ``.matrix``, or callable
            A matrix (dense or sparse) or an object with a ``.matrix``
            attribute is linear: exact BLUE solve. Any other callable
            ``h(x: (*batch, n)) -> (*batch, P)`` is minimised by L-BFGS
            (it must be differentiable by autograd; call outside
            ``torch.inference_mode``).
        covariance : bool
            Also return the analysis covariance. For a nonlinear ``h`` it is
            the Gauss-Newton one, with the Jacobian of ``h`` at the analysis
            (computed by autograd; ``h`` must work under ``torch.vmap``).
        form : {"auto", "observation", "state"}
            Which form of the linear solve to use; ``"auto"`` picks the
            observation-space form when ``P <= n``.

        Returns
        -------
        Var3DResult

        Raises
        ------
        ShapeError
            If the sizes of ``xb``, ``y``, ``h`` and ``b`` disagree.
        ConfigError
            For a non-positive ``r_std`` or an unknown ``form``.

        Notes
        -----
        The observation-space form costs :math:`O(P^3 + P^2 n)` plus ``P``
        products with ``B``, the state-space form :math:`O(n^3 + n^2 P)`;
        both hold an ``(P, n)`` dense copy of ``H``. In the nonlinear case
        every batch element runs its own L-BFGS (one ``h`` call on the whole
        batch per line-search trial), so differently scaled problems do not
        slow each other down.
        """
        xb = torch.as_tensor(xb)
        if not xb.is_floating_point():
            xb = xb.to(torch.get_default_dtype())
        y = torch.as_tensor(y, dtype=xb.dtype, device=xb.device)
        n = xb.shape[-1]
        if self.b.n != n:
            raise ShapeError(f"b has size {self.b.n} but the background has {n} values")
        b = self.b.to(dtype=xb.dtype, device=xb.device)
        p = y.shape[-1]
        r = observation_std(r_std, p, xb)
        hmat = linear_matrix(h)
        if hmat is not None:
            hmat = hmat.to(dtype=xb.dtype, device=xb.device)
            if hmat.shape[-2:] != (p, n):
                raise ShapeError(
                    f"H has shape {tuple(hmat.shape)} but (P, n) = ({p}, {n}) was expected "
                    "from y and xb"
                )
            d = y - (hmat @ xb.unsqueeze(-1)).squeeze(-1)
            inc, cov, jmin = _blue(b, hmat, xb, d, r, form=form, covariance=covariance)
            xa = xb + inc
            jb = 0.5 * ((d / r) ** 2).sum(-1)
            cost = torch.stack(torch.broadcast_tensors(jb, jmin))
            return Var3DResult(mean=xa, covariance=cov, iterations=0, cost=cost, converged=True)
        if not callable(h):
            raise ConfigError(
                f"h must be a matrix, an object with .matrix, or a callable; got {type(h).__name__}"
            )
        if form not in ("auto", "observation", "state"):
            raise ConfigError(f"form must be 'auto', 'observation' or 'state', got {form!r}")
        with torch.inference_mode(False):
            xb_ = xb.clone()
            y_ = y.clone()
            r_ = r.clone()
            batch = torch.broadcast_shapes(xb.shape[:-1], y.shape[:-1], r.shape[:-1])

            def fun(v: Tensor) -> Tensor:
                pred = h(xb_ + b.sqrt_matvec(v))
                if pred.shape[-1] != p:
                    raise ShapeError(
                        f"h returned shape {tuple(pred.shape)}, but y has {p} observations"
                    )
                return 0.5 * (v**2).sum(-1) + 0.5 * (((y_ - pred) / r_) ** 2).sum(-1)

            v0 = xb_.new_zeros(*batch, n)
            v, cost, iters, conv = minimise_batched_lbfgs(
                fun, v0, iterations=int(self.iterations), tol=float(self.tol),
                history_size=int(self.history_size), h0=1.0, eps=torch.finfo(xb.dtype).eps)
            converged = bool(conv.all())
            xa = xb_ + b.sqrt_matvec(v)
            cov = None
            if covariance:
                jac = _jacobian(h, xa, p)
                zeros = xa.new_zeros(*jac.shape[:-2], p)
                _, cov, _ = _blue(b, jac, xa, zeros, r_, form=form, covariance=True)
        return Var3DResult(
            mean=xa, covariance=cov, iterations=iters, cost=cost, converged=converged
        )


def _jacobian(h: Callable[[Tensor], Tensor], x: Tensor, p: int) -> Tensor:
    """Jacobian ``(*batch, P, n)`` of a batched ``h`` at ``x`` (*batch, n)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = h(x)
        basis = torch.eye(p, dtype=x.dtype, device=x.device)
        basis = basis.reshape(p, *([1] * (out.dim() - 1)), p).expand(p, *out.shape)
        (jac,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)
    return jac.movedim(0, -2)
