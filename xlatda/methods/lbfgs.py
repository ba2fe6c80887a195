r"""One batched L-BFGS: an independent minimisation per batch element.

A batch of problems is one tensor ``(*batch, k)``, and every batch element
runs its own L-BFGS: its own memory of ``history_size`` pairs, its own step
length (backtracking Armijo line search with safeguarded quadratic
interpolation, first trial step 1), its own stopping rule (a rounding slack
in the Armijo test keeps it stepping on the accurate gradient once cost
differences fall below the precision of the cost, so linear problems are
solved to the gradient tolerance). The two-loop recursion and the
line-search trials are evaluated for the whole batch at once (one call of
the cost per trial), and elements that have stopped are frozen. The problems
being independent, this converges as fast as solving each alone, unlike one
L-BFGS on the sum of the costs, whose shared line search and memory slow
down when the batch mixes differently scaled problems. Curvature pairs with
:math:`s^\top y \le 0` (non-convex regions) are skipped; the initial inverse
Hessian is ``h0 I`` (exact when only a prior term ``|w|^2 / (2 h0)`` acts),
then :math:`(s^\top y / y^\top y) I`.

It serves 3DVar (nonlinear ``h``), autodiff 4DEnVar and VAE-Var.

References
----------
Liu, D. C. and Nocedal, J. (1989). On the limited memory BFGS method for
large scale optimization. Math. Program.
Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed.,
chapters 3 and 7. Springer.

Examples
--------
Two independent quadratics with minima at 1 and -2:

>>> import torch
>>> target = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
>>> w, cost, iters, ok = minimise_batched_lbfgs(
...     lambda w: 0.5 * ((w - target) ** 2).sum(-1), torch.zeros(2, 1, dtype=torch.float64),
...     iterations=20, tol=1e-10, history_size=5, h0=1.0, eps=2.2e-16)
>>> [round(float(v), 6) for v in w.flatten()], bool(ok.all())
([1.0, -2.0], True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["minimise_batched_lbfgs", "value_and_grad"]


def value_and_grad(fun: Callable[[Tensor], Tensor], w: Tensor) -> tuple[Tensor, Tensor]:
    """Costs ``(*batch,)`` and their gradients ``(*batch, k)`` at ``w`` (w only: the
    decoder's weights get no ``.grad``)."""
    with torch.enable_grad():
        w_ = w.detach().requires_grad_(True)
        f = fun(w_)
        (g,) = torch.autograd.grad(f.sum(), w_)
    return f.detach(), g.detach()


def _two_loop(g: Tensor, hist: list[tuple[Tensor, Tensor, Tensor]], gamma: Tensor) -> Tensor:
    """L-BFGS direction ``-H g`` per batch element; pairs with ``rho = 0`` are no-ops."""
    q = g
    alphas = []
    for s, y, rho in reversed(hist):
        a = rho * (s * q).sum(-1)
        q = q - a.unsqueeze(-1) * y
        alphas.append(a)
    r = gamma.unsqueeze(-1) * q
    for (s, y, rho), a in zip(hist, reversed(alphas)):
        b = rho * (y * r).sum(-1)
        r = r + (a - b).unsqueeze(-1) * s
    return -r


def minimise_batched_lbfgs(
    fun: Callable[[Tensor], Tensor],
    w0: Tensor,
    *,
    iterations: int,
    tol: float,
    history_size: int,
    h0: float,
    eps: float,
    max_line_search: int = 30,
    patience: int = 3,
) -> tuple[Tensor, Tensor, int, Tensor]:
    """Minimise independent costs ``fun(w) -> (*batch,)``, one L-BFGS per batch element.

    The Armijo condition allows a rounding slack of ``10 eps max(|J|, 1)``,
    so that steps keep being taken (driven by the gradient, which stays
    accurate) when cost differences fall below the precision of ``J``. An
    element stops (converged) when the largest entry of its gradient falls
    to ``tol``; when its cost has not decreased by more than that slack for
    ``patience`` iterations in a row, or the line search finds no acceptable
    step (precision floor); or else after ``iterations`` iterations.

    Returns
    -------
    w (*batch, k), cost history (K, *batch) starting at ``w0``, iterations
    done (the most over the batch), converged (*batch,) bool.
    """
    c1 = 1e-4
    w = w0.detach().clone()
    f, g = value_and_grad(fun, w)
    batch = w.shape[:-1]
    f = f.expand(batch).clone()
    converged = g.abs().amax(-1) <= tol
    active = ~converged
    gamma = torch.full(batch, h0, dtype=w.dtype, device=w.device)
    flat = torch.zeros(batch, dtype=torch.long, device=w.device)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []
    costs = [f.clone()]
    done = 0
    for _ in range(iterations):
        if not bool(active.any()):
            break
        d = _two_loop(g, hist, gamma)
        gd = (g * d).sum(-1)
        ascent = active & ~(gd < 0)
        if bool(ascent.any()):  # lost descent: forget the memory, steepest descent
            hist = [(s, y, torch.where(ascent, 0.0, rho)) for s, y, rho in hist]
            gamma = torch.where(ascent, h0, gamma)
            d = torch.where(ascent.unsqueeze(-1), -h0 * g, d)
            gd = (g * d).sum(-1)
        slack = 10.0 * eps * f.abs().clamp_min(1.0)
        alpha = torch.where(active, 1.0, 0.0).to(w.dtype)
        settled = ~active
        w_new, f_new, g_new = w.clone(), f.clone(), g.clone()
        for _ in range(max_line_search):
            ft, gt = value_and_grad(fun, w + alpha.unsqueeze(-1) * d)
            ok = ~settled & torch.isfinite(ft) & (ft <= f + c1 * alpha * gd + slack)
            w_new = torch.where(ok.unsqueeze(-1), w + alpha.unsqueeze(-1) * d, w_new)
            f_new = torch.where(ok, ft, f_new)
            g_new = torch.where(ok.unsqueeze(-1), gt, g_new)
            settled = settled | ok
            if bool(settled.all()):
                break
            # Minimiser of the quadratic through f, f'(0) = gd and f(alpha), kept in
            # [0.1, 0.5] alpha; halve if the trial was not finite.
            curv = 2.0 * (ft - f - alpha * gd)
            quad = -gd * alpha**2 / curv
            quad = torch.where(torch.isfinite(quad) & (curv > 0), quad, 0.5 * alpha)
            quad = torch.minimum(torch.maximum(quad, 0.1 * alpha), 0.5 * alpha)
            alpha = torch.where(settled, alpha, quad)
        stalled = active & ~settled
        s = w_new - w
        yv = g_new - g
        sy = (s * yv).sum(-1)
        good = active & settled & (sy > eps * s.norm(dim=-1) * yv.norm(dim=-1)) & (sy > 0)
        rho = torch.where(good, 1.0 / torch.where(good, sy, 1.0), 0.0)
        hist.append((s, yv, rho))
        if len(hist) > history_size:
            hist.pop(0)
        yy = (yv * yv).sum(-1)
        gamma = torch.where(good, sy / torch.where(good, yy, 1.0), gamma)
        flat = torch.where(f - f_new <= slack, flat + 1, 0)
        w, f, g = w_new, f_new, g_new
        done += 1
        costs.append(f.clone())
        now = active & ((g.abs().amax(-1) <= tol) | stalled | (flat >= patience))
        converged = converged | now
        active = active & ~now
    return w, torch.stack(costs), done, converged
