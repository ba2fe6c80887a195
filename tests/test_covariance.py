"""Covariance operators: algebra against dense matrices, sampling, estimators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlatda.errors import ConfigError, ShapeError, XlatdaError
from xlatda.methods.covariance import (
    Covariance,
    DenseCovariance,
    DiagonalCovariance,
    GaussianCorrelationCovariance,
    ScaledIdentity,
    covariance_from_differences,
)

F64 = torch.float64


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=F64)
    return a @ a.T + n * torch.eye(n, dtype=F64)


def _cases() -> dict[str, Covariance]:
    n = 5
    lat = torch.tensor([0.0, 10.0, -20.0, 45.0, 80.0], dtype=F64)
    lon = torch.tensor([0.0, 15.0, 200.0, 90.0, 300.0], dtype=F64)
    std = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0], dtype=F64)
    return {
        "diagonal": DiagonalCovariance(torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=F64)),
        "identity": ScaledIdentity(2.5, n, dtype=F64),
        "dense": DenseCovariance(_spd(n, 0)),
        "gaussian-sphere": GaussianCorrelationCovariance(std, lat, lon, length_scale_km=3000.0),
        "gaussian-periodic": GaussianCorrelationCovariance.periodic(std, n, 1.5, dtype=F64),
    }


CASES = _cases()


@pytest.fixture(params=sorted(CASES))
def cov(request) -> Covariance:
    return CASES[request.param]


def test_algebra_matches_dense(cov):
    b = cov.dense()
    n = cov.n
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 4, n, generator=g, dtype=F64)
    torch.testing.assert_close(cov @ v, v @ b.T)
    torch.testing.assert_close(cov.inv_matvec(v), v @ torch.linalg.inv(b).T)
    # sqrt_matvec applies L with L L^T = B; its columns are L e_i.
    chol = cov.sqrt_matvec(torch.eye(n, dtype=F64)).T
    torch.testing.assert_close(chol @ chol.T, b)
    torch.testing.assert_close(cov.inv_sqrt_matvec(cov.sqrt_matvec(v)), v)
    torch.testing.assert_close(cov.logdet(), torch.logdet(b))
    torch.testing.assert_close(cov.diagonal(), torch.diagonal(b))
    torch.testing.assert_close(b, b.T)


def test_scaled_and_to(cov):
    b2 = (2.0 * cov).dense()
    torch.testing.assert_close(b2, 2.0 * cov.dense())
    torch.testing.assert_close((cov * 3.0).logdet(), cov.logdet() + cov.n * math.log(3.0))
    c32 = cov.to(dtype=torch.float32)
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.dense(), cov.dense().float())
    with pytest.raises(ConfigError):
        cov.scaled(-1.0)


def test_sample_covariance(cov):
    g = torch.Generator().manual_seed(2)
    x = cov.sample((40000,), generator=g)
    assert x.shape == (40000, cov.n)
    emp = torch.cov(x.T)
    err = (emp - cov.dense()).norm() / cov.dense().norm()
    assert err < 0.04
    # reproducible with the same generator seed
    again = cov.sample(3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(again, cov.sample(3, generator=torch.Generator().manual_seed(5)))


def test_wrong_size_vector(cov):
    with pytest.raises(ShapeError, match="last dimension"):
        cov @ torch.ones(cov.n + 1, dtype=F64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_dense_inverse_roundtrip(n, seed):
    b = DenseCovariance(_spd(n, seed))
    v = torch.randn(2, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    torch.testing.assert_close(b.inv_matvec(b @ v), v)
    torch.testing.assert_close(b.sqrt_matvec(b.inv_sqrt_matvec(v)), v)


def test_batched_dense_and_diagonal():
    mats = torch.stack([_spd(3, 0), _spd(3, 1)])
    b = DenseCovariance(mats)
    v = torch.randn(2, 3, dtype=F64)
    torch.testing.assert_close(b @ v, torch.einsum("bij,bj->bi", mats, v))
    torch.testing.assert_close(b.logdet(), torch.logdet(mats))
    d = DiagonalCovariance(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64))
    torch.testing.assert_close(d.logdet(), torch.log(torch.tensor([2.0, 12.0], dtype=F64)))


def test_gaussian_sphere_is_positive_definite_and_gaussian():
    g = torch.Generator().manual_seed(3)
    n = 300
    lat = torch.rad2deg(torch.asin(2 * torch.rand(n, generator=g, dtype=F64) - 1))
    lon = 360 * torch.rand(n, generator=g, dtype=F64)
    b = GaussianCorrelationCovariance(1.0, lat, lon, length_scale_km=1500.0)
    evals = torch.linalg.eigvalsh(b.dense())
    assert evals.min() > 0
    torch.testing.assert_close(b.diagonal(), torch.ones(n, dtype=F64))
    # two points 1 degree apart on the equator: exp(-d^2 / 2 L^2)
    pair = GaussianCorrelationCovariance(
        1.0, torch.zeros(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), 500.0
    )
    d = 6371.0 * math.pi / 180
    assert float(pair.dense()[0, 1]) == pytest.approx(math.exp(-0.5 * (d / 500.0) ** 2))


def test_gaussian_periodic_is_circulant():
    b = GaussianCorrelationCovariance.periodic(2.0, 40, 4.0, dtype=F64).dense()
    assert torch.linalg.eigvalsh(b).min() > 0
    torch.testing.assert_close(b[5], torch.roll(b[0], 5))
    assert float(b[0, 39]) == pytest.approx(float(b[0, 1]))


def test_covariance_from_differences():
    g = torch.Generator().manual_seed(4)
    true = _spd(4, 7)
    x = DenseCovariance(true).sample((20000,), generator=g) + 3.0
    diag = covariance_from_differences(x, "diagonal")
    assert isinstance(diag, DiagonalCovariance)
    torch.testing.assert_close(diag.diagonal(), torch.diagonal(true), rtol=0.05, atol=0.0)
    dense = covariance_from_differences(x, "dense", shrinkage=0.25, scale=0.5)
    s = torch.cov(x.T)
    expected = 0.5 * (0.75 * s + 0.25 * torch.diag(torch.diagonal(s)))
    torch.testing.assert_close(dense.dense(), expected)
    # more dimensions than samples: singular unless shrunk
    few = torch.randn(3, 6, generator=g, dtype=F64)
    with pytest.raises(ConfigError, match="shrinkage"):
        covariance_from_differences(few, "dense")
    assert covariance_from_differences(few, "dense", shrinkage=0.5).n == 6


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: DenseCovariance(-torch.eye(3)), ConfigError),
        (lambda: DenseCovariance(torch.ones(2, 3)), ShapeError),
        (lambda: DiagonalCovariance(torch.tensor([1.0, 0.0])), ConfigError),
        (lambda: ScaledIdentity(-1.0, 3), ConfigError),
        (lambda: covariance_from_differences(torch.ones(1, 3)), ShapeError),
        (lambda: covariance_from_differences(torch.randn(5, 3), "full"), ConfigError),
        (lambda: covariance_from_differences(torch.randn(5, 3), shrinkage=2.0), ConfigError),
        (
            lambda: GaussianCorrelationCovariance(1.0, torch.zeros(3), torch.zeros(2), 100.0),
            ShapeError,
        ),
    ],
)
def test_bad_input_is_refused(call, error):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, XlatdaError)
    assert isinstance(info.value, ValueError)
