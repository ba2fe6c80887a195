"""The batched per-element L-BFGS (xlatda.methods.lbfgs), and that it is the only one.

A batch runs one independent L-BFGS per element: solving a batch must give,
element by element, what solving each element alone gives (same minimiser,
same cost history, same convergence flag), however differently the elements
are scaled. Every variational method uses this one minimiser, and every
random rotation comes from one helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlatda.methods.lbfgs import minimise_batched_lbfgs, value_and_grad

F64 = torch.float64
EPS = torch.finfo(F64).eps
PACKAGE = Path(__file__).resolve().parents[1] / "xlatda"


def _problem(scales: torch.Tensor, shifts: torch.Tensor):
    """Rosenbrock valleys of different depths plus ill-conditioned quadratics, per element."""

    def cost(w: torch.Tensor) -> torch.Tensor:
        x, y = w[..., 0], w[..., 1]
        valley = (1.0 - x) ** 2 + scales * (y - x**2) ** 2
        rest = (torch.arange(1, w.shape[-1] - 1, dtype=w.dtype) ** 2
                * (w[..., 2:] - shifts[..., None]) ** 2).sum(-1)
        return valley + 0.5 * rest

    return cost


def _solve(cost, w0, **kw):
    options = {"iterations": 300, "tol": 1e-9, "history_size": 6, "h0": 1.0, "eps": EPS}
    options.update(kw)
    return minimise_batched_lbfgs(cost, w0, **options)


def test_batch_gives_what_each_element_gives_alone():
    scales = torch.tensor([1.0, 10.0, 100.0, 0.5], dtype=F64)
    shifts = torch.tensor([0.0, -3.0, 2.0, 10.0], dtype=F64)
    w0 = torch.tensor([[-1.2, 1.0, 0.0, 0.0, 0.0], [0.5, -0.5, 1.0, 1.0, 1.0],
                       [2.0, 2.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=F64)
    w, costs, iters, conv = _solve(_problem(scales, shifts), w0)
    assert bool(conv.all())
    assert torch.allclose(w[:, :2], torch.ones(4, 2, dtype=F64), atol=1e-6)
    longest = 0
    for i in range(4):
        wi, ci, ki, oki = _solve(_problem(scales[i:i + 1], shifts[i:i + 1]), w0[i:i + 1])
        longest = max(longest, ki)
        assert torch.allclose(w[i], wi[0], rtol=0, atol=1e-12)
        assert bool(conv[i]) == bool(oki[0])
        # The element's own cost history, then frozen once it stopped.
        assert torch.allclose(costs[: ki + 1, i], ci[:, 0], rtol=1e-12, atol=1e-14)
        assert bool((costs[ki:, i] == costs[ki, i]).all())
    assert iters == longest
    # Differently scaled elements need different numbers of iterations: the test
    # would not notice a shared line search otherwise.
    assert len({int((costs[1:, i] != costs[:-1, i]).sum()) for i in range(4)}) > 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(0.1, 50.0), min_size=2, max_size=4), st.integers(0, 2**16))
def test_batch_matches_single_runs_on_random_quadratics(diag_scales, seed):
    """Independent quadratics 1/2 (w - m)^T A_i (w - m) with very different conditioning."""
    g = torch.Generator().manual_seed(seed)
    n, k = len(diag_scales), 6
    q, _ = torch.linalg.qr(torch.randn(n, k, k, generator=g, dtype=F64))
    spectrum = torch.tensor(diag_scales, dtype=F64)[:, None] ** torch.linspace(0, 1, k,
                                                                                dtype=F64)
    a = q @ torch.diag_embed(spectrum) @ q.transpose(-1, -2)
    m = torch.randn(n, k, generator=g, dtype=F64)

    def cost_of(a_, m_):
        def cost(w):
            d = w - m_
            return 0.5 * torch.einsum("...i,...ij,...j->...", d, a_, d)
        return cost

    w0 = torch.zeros(n, k, dtype=F64)
    w, _, _, conv = _solve(cost_of(a, m), w0, tol=1e-10)
    assert bool(conv.all())
    assert torch.allclose(w, m, atol=1e-8)
    for i in range(n):
        wi, _, _, _ = _solve(cost_of(a[i:i + 1], m[i:i + 1]), w0[i:i + 1], tol=1e-10)
        assert torch.allclose(w[i], wi[0], rtol=0, atol=1e-12)


def test_value_and_grad_leaves_no_grad_on_other_tensors():
    weight = torch.tensor(2.0, dtype=F64, requires_grad=True)
    f, grad = value_and_grad(lambda w: weight * (w**2).sum(-1), torch.ones(3, 2, dtype=F64))
    assert torch.allclose(f, torch.full((3,), 4.0, dtype=F64))
    assert torch.allclose(grad, torch.full((3, 2), 4.0, dtype=F64))
    assert weight.grad is None


def _imports(path: Path) -> set[tuple[str, str]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {(node.module, a.name) for a in node.names}
    return out


@pytest.mark.parametrize("module", ["var3d", "envar4d", "vaevar"])
def test_every_variational_method_uses_the_batched_lbfgs(module):
    assert ("xlatda.methods.lbfgs", "minimise_batched_lbfgs") in _imports(
        PACKAGE / "methods" / f"{module}.py")


def test_no_other_lbfgs_and_no_other_random_rotation_in_the_methods():
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        text = path.read_text()
        assert "optim.LBFGS" not in text, path.name
        if path.name != "lbfgs.py":
            assert "def _two_loop" not in text, path.name
        if path.name != "ensemble.py":
            # Orthogonal draws (QR of a Gaussian matrix) only in ensemble.random_rotation.
            assert "linalg.qr" not in text, path.name
    users = [p.stem for p in (PACKAGE / "methods").glob("*.py")
             if "random_rotation(" in p.read_text()]
    assert sorted(users) == ["adapters", "ensemble", "envar4d"]  # adapters: weak 4DEnVar
    assert ("xlatda.methods.ensemble", "random_rotation") in _imports(
        PACKAGE / "methods" / "envar4d.py")
