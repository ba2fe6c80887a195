"""3DVar: exact BLUE with linear operators, L-BFGS path, analysis covariance."""

from __future__ import annotations

import pytest
import torch

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.covariance import DenseCovariance, DiagonalCovariance
from xlatda.methods.registry import get_method
from xlatda.methods.var3d import Var3D, linear_matrix

F64 = torch.float64


def _problem(n: int, p: int, seed: int = 0, batch: tuple[int, ...] = (3,)):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=F64)
    b = a @ a.T / n + 0.5 * torch.eye(n, dtype=F64)
    h = torch.randn(p, n, generator=g, dtype=F64)
    r = 0.5 + torch.rand(p, generator=g, dtype=F64)
    xb = torch.randn(*batch, n, generator=g, dtype=F64)
    y = torch.randn(*batch, p, generator=g, dtype=F64)
    return b, h, r, xb, y


def _closed_form(b, h, r, xb, y):
    rmat = torch.diag(r**2)
    gain = b @ h.T @ torch.linalg.inv(h @ b @ h.T + rmat)
    xa = xb + (y - xb @ h.T) @ gain.T
    cov = torch.linalg.inv(torch.linalg.inv(b) + h.T @ torch.linalg.inv(rmat) @ h)
    return xa, cov


@pytest.mark.parametrize(("n", "p"), [(6, 4), (5, 9)])
@pytest.mark.parametrize("form", ["auto", "observation", "state"])
def test_linear_solve_is_blue(n, p, form):
    b, h, r, xb, y = _problem(n, p)
    xa_ref, cov_ref = _closed_form(b, h, r, xb, y)
    out = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, h, covariance=True, form=form)
    torch.testing.assert_close(out.mean, xa_ref)
    torch.testing.assert_close(out.covariance, cov_ref)
    assert out.converged and out.iterations == 0
    assert out.cost.shape == (2, 3)
    inc = out.mean - xb
    resid = (y - out.mean @ h.T) / r
    j_a = 0.5 * (inc * (inc @ torch.linalg.inv(b))).sum(-1) + 0.5 * (resid**2).sum(-1)
    torch.testing.assert_close(out.cost[1], j_a)
    torch.testing.assert_close(out.cost[0], 0.5 * (((y - xb @ h.T) / r) ** 2).sum(-1))


def test_lbfgs_with_linear_callable_converges_to_blue():
    b, h, r, xb, y = _problem(8, 5, seed=1, batch=(4,))
    xa_ref, cov_ref = _closed_form(b, h, r, xb, y)
    var = Var3D(b=DenseCovariance(b), tol=1e-9, iterations=200)
    out = var.analyse(xb, y, r, lambda x: x @ h.T, covariance=True)
    assert out.converged
    torch.testing.assert_close(out.mean, xa_ref, atol=1e-6, rtol=1e-6)
    # Gauss-Newton covariance at the analysis = exact for a linear h
    torch.testing.assert_close(out.covariance, cov_ref.expand(4, 8, 8))
    assert bool((out.cost[-1] < out.cost[0]).all())


def test_sparse_and_matrix_object_operators():
    b, h, r, xb, y = _problem(6, 3, seed=2)
    h[h.abs() < 0.8] = 0.0
    ref = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, h).mean

    class Interp:
        def __init__(self, m):
            self.matrix = m

        def __call__(self, x):
            return x @ self.matrix.T

    assert linear_matrix(Interp(h)) is not None
    assert linear_matrix(lambda x: x) is None
    sparse = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, h.to_sparse())
    obj = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, Interp(h))
    torch.testing.assert_close(sparse.mean, ref)
    torch.testing.assert_close(obj.mean, ref)


def test_batched_r_and_float32():
    b, h, _, xb, y = _problem(4, 4, seed=3, batch=(2,))
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1]], dtype=F64)
    out = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, h, covariance=True)
    for i in range(2):
        xa_ref, cov_ref = _closed_form(b, h, r[i], xb[i], y[i])
        torch.testing.assert_close(out.mean[i], xa_ref)
        torch.testing.assert_close(out.covariance[i], cov_ref)
    out32 = Var3D(b=DenseCovariance(b)).analyse(xb.float(), y.float(), 1.0, h.float())
    assert out32.mean.dtype == torch.float32


def test_nonlinear_operator_reduces_cost_and_fits():
    # observe x + 0.3 x**2; the analysis moves towards the truth
    g = torch.Generator().manual_seed(4)
    truth = torch.randn(16, 3, generator=g, dtype=F64)
    xb = truth + 0.3 * torch.randn(16, 3, generator=g, dtype=F64)

    def h(x):
        return x + 0.3 * x**2

    y = h(truth) + 0.1 * torch.randn(16, 3, generator=g, dtype=F64)
    var = Var3D(b=DiagonalCovariance(torch.full((3,), 0.09, dtype=F64)), tol=1e-5)
    with torch.inference_mode():  # grads are switched back on inside
        out = var.analyse(xb, y, 0.1, h)
    assert out.converged
    assert bool((out.cost[-1] < out.cost[0]).all())
    assert (out.mean - truth).abs().mean() < 0.6 * (xb - truth).abs().mean()


def test_registered_and_bad_input():
    assert get_method("3dvar") is Var3D
    b, h, r, xb, y = _problem(4, 3)
    var = Var3D(b=DenseCovariance(b))
    with pytest.raises(ShapeError):
        var.analyse(xb[..., :3], y, r, h)
    with pytest.raises(ShapeError):
        var.analyse(xb, y[..., :2], r, h)
    with pytest.raises(ConfigError):
        var.analyse(xb, y, -1.0, h)
    with pytest.raises(ConfigError):
        var.analyse(xb, y, r, h, form="spectral")
    with pytest.raises(ShapeError):
        var.analyse(xb, y, r, lambda x: x)  # returns 4 values for 3 observations
    with pytest.raises(ConfigError):
        Var3D(b=b)
    with pytest.raises(ConfigError):
        Var3D(b=DenseCovariance(b), iterations=0)
