r"""Gaussian covariance operators: small objects with ``@``, inverse and square root.

A covariance :math:`B \in \mathbb{R}^{n \times n}` (symmetric positive
definite) is used by the variational methods in three ways:

* as a matrix-vector product :math:`B v` (``B @ v``),
* through its inverse :math:`B^{-1} v` (``B.inv_matvec(v)``), for the
  background term :math:`\tfrac12 (x - x_b)^\top B^{-1} (x - x_b)`,
* through a square root :math:`L` with :math:`L L^\top = B`
  (``B.sqrt_matvec(v)``), for the control-variable transform
  :math:`x = x_b + L v`, which turns the background term into
  :math:`\tfrac12 \lVert v \rVert^2`, and for sampling
  :math:`x = L \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, I)`.

Every object acts on vectors batched in their leading dimensions, shape
``(..., n)``, and never forms more than it has to: a diagonal covariance
costs :math:`O(n)`, a dense one keeps its Cholesky factor.

The Gaussian correlation model on the sphere is
:math:`C_{ij} = \exp(-d_{ij}^2 / 2 \ell^2)` with :math:`d_{ij}` the
great-circle distance. A Gaussian of *great-circle* distance is not
guaranteed positive definite on the sphere (only a Gaussian of chordal
distance is), so the matrix is projected onto the positive-definite cone
(eigenvalues clipped at a small floor) and rescaled to a unit diagonal.
:func:`covariance_from_differences` estimates a static background covariance
from forecast differences ("NMC method", Parrish and Derber 1992) or from
climatological anomalies, with optional shrinkage towards the diagonal.

References
----------
Parrish, D. F. and Derber, J. C. (1992). The National Meteorological
Center's spectral statistical-interpolation analysis system. Mon. Wea. Rev.
Gaspari, G. and Cohn, S. E. (1999). Construction of correlation functions in
two and three dimensions. Q. J. R. Meteorol. Soc.
Ledoit, O. and Wolf, M. (2004). A well-conditioned estimator for
large-dimensional covariance matrices. J. Multivar. Anal.

Examples
--------
>>> import torch
>>> from xlatda.methods.covariance import DenseCovariance
>>> B = DenseCovariance(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
>>> B @ torch.tensor([1.0, 0.0], dtype=torch.float64)
tensor([2., 1.], dtype=torch.float64)
>>> B.inv_matvec(B @ torch.tensor([1.0, 3.0], dtype=torch.float64))
tensor([1., 3.], dtype=torch.float64)
>>> round(float(B.logdet()), 6)  # log(3)
1.098612
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError

__all__ = [
    "Covariance",
    "DenseCovariance",
    "DiagonalCovariance",
    "GaussianCorrelationCovariance",
    "ScaledIdentity",
    "covariance_from_differences",
]

EARTH_RADIUS_KM = 6371.0


def _as_float_tensor(value: Tensor | float | Sequence[float], dtype=None, device=None) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class Covariance:
    """Base class of covariance operators of size ``n``.

    Subclasses implement ``__matmul__``, ``inv_matvec``, ``sqrt_matvec``,
    ``inv_sqrt_matvec``, ``dense``, ``diagonal``, ``logdet``, ``scaled`` and
    ``to``. Vectors are batched in their leading dimensions: ``v`` has shape
    ``(..., n)`` and results have the broadcast shape ``(..., n)``.
    """

    n: int

    @property
    def dtype(self) -> torch.dtype:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def device(self) -> torch.device:  # pragma: no cover - overridden
        raise NotImplementedError

    def __matmul__(self, v: Tensor) -> Tensor:  # pragma: no cover - overridden
        """``B v`` for ``v`` of shape ``(..., n)``."""
        raise NotImplementedError

    def inv_matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - overridden
        """``B^{-1} v`` for ``v`` of shape ``(..., n)``."""
        raise NotImplementedError

    def sqrt_matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - overridden
        """``L v`` with ``L L^T = B``, for ``v`` of shape ``(..., n)``."""
        raise NotImplementedError

    def inv_sqrt_matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - overridden
        """``L^{-1} v`` (whitening), for ``v`` of shape ``(..., n)``."""
        raise NotImplementedError

    def dense(self) -> Tensor:  # pragma: no cover - overridden
        """The matrix ``B``, shape ``(..., n, n)``."""
        raise NotImplementedError

    def diagonal(self) -> Tensor:  # pragma: no cover - overridden
        """The variances ``diag(B)``, shape ``(..., n)``."""
        raise NotImplementedError

    def logdet(self) -> Tensor:  # pragma: no cover - overridden
        """``log det B`` (a 0-d tensor, or ``(...,)`` for a batched covariance)."""
        raise NotImplementedError

    def scaled(self, factor: float) -> Covariance:  # pragma: no cover - overridden
        """A new covariance ``factor * B`` (``factor > 0``)."""
        raise NotImplementedError

    def to(self, dtype: torch.dtype | None = None, device=None) -> Covariance:  # pragma: no cover
        """The covariance with tensors on ``dtype`` and ``device`` (self if unchanged)."""
        raise NotImplementedError

    def sample(
        self,
        shape: Sequence[int] | int = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw samples of :math:`\\mathcal{N}(0, B)`, shape ``(*shape, n)``.

        Parameters
        ----------
        shape : int or sequence of int
            Leading shape of the samples.
        generator : torch.Generator, optional
            Source of randomness (for reproducible draws).
        """
        if isinstance(shape, int):
            shape = (shape,)
        eps = torch.randn(
            (*shape, self.n), generator=generator, dtype=self.dtype, device=self.device
        )
        return self.sqrt_matvec(eps)

    def _same(self, dtype: torch.dtype | None, device) -> bool:
        """Whether ``to(dtype, device)`` would change nothing."""
        return (dtype is None or dtype == self.dtype) and (
            device is None or torch.device(device) == self.device
        )

    def __mul__(self, factor: float) -> Covariance:
        return self.scaled(factor)

    __rmul__ = __mul__

    def _check(self, v: Tensor) -> Tensor:
        if v.shape[-1:] != (self.n,):
            raise ShapeError(
                f"{type(self).__name__} of size {self.n} cannot act on a tensor of shape "
                f"{tuple(v.shape)}; the last dimension must be {self.n}"
            )
        return v

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dtype={self.dtype})"


def _apply(mat: Tensor, v: Tensor) -> Tensor:
    """``mat @ v`` over the last dimension of ``v``.

    For one matrix, ``v @ mat^T`` is a single matrix product for a whole batch
    of vectors; ``mat @ v[..., None]`` would broadcast the matrix and read it
    from memory once per vector (25x slower for 80 vectors of size 6144).
    Batched matrices pair with the batch of ``v``.
    """
    if mat.dim() == 2:
        return v @ mat.transpose(-1, -2)
    return (mat @ v.unsqueeze(-1)).squeeze(-1)


def _check_factor(factor: float) -> float:
    factor = float(factor)
    if not factor > 0 or not math.isfinite(factor):
        raise ConfigError(f"a covariance can only be scaled by a positive number, got {factor!r}")
    return factor


class DiagonalCovariance(Covariance):
    """Diagonal covariance ``B = diag(var)``.

    Parameters
    ----------
    var : Tensor or array-like, shape ``(..., n)``
        Positive variances (leading dimensions give a batch of covariances).

    Examples
    --------
    >>> import torch
    >>> B = DiagonalCovariance(torch.tensor([1.0, 4.0]))
    >>> B @ torch.ones(3, 2)
    tensor([[1., 4.],
            [1., 4.],
            [1., 4.]])
    >>> B.sqrt_matvec(torch.ones(2))
    tensor([1., 2.])
    """

    def __init__(self, var: Tensor | Sequence[float]) -> None:
        var = _as_float_tensor(var)
        if var.dim() < 1:
            raise ShapeError(
                f"var must have at least one dimension (n,), got shape {tuple(var.shape)}"
            )
        if not bool((var > 0).all()) or not bool(torch.isfinite(var).all()):
            raise ConfigError(
                f"variances must be positive and finite; the smallest is {float(var.min())!r}"
            )
        self.var = var
        self.n = var.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.var.dtype

    @property
    def device(self) -> torch.device:
        return self.var.device

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.var * self._check(v)

    def inv_matvec(self, v: Tensor) -> Tensor:
        return self._check(v) / self.var

    def sqrt_matvec(self, v: Tensor) -> Tensor:
        return self.var.sqrt() * self._check(v)

    def inv_sqrt_matvec(self, v: Tensor) -> Tensor:
        return self._check(v) / self.var.sqrt()

    def dense(self) -> Tensor:
        return torch.diag_embed(self.var)

    def diagonal(self) -> Tensor:
        return self.var

    def logdet(self) -> Tensor:
        return self.var.log().sum(-1)

    def scaled(self, factor: float) -> DiagonalCovariance:
        return DiagonalCovariance(self.var * _check_factor(factor))

    def to(self, dtype: torch.dtype | None = None, device=None) -> DiagonalCovariance:
        if self._same(dtype, device):
            return self
        return DiagonalCovariance(self.var.to(dtype=dtype, device=device))


class ScaledIdentity(Covariance):
    """Covariance ``B = var * I`` of size ``n``.

    Parameters
    ----------
    var : float or 0-d Tensor
        Positive variance.
    n : int
        Size.
    dtype, device : optional
        Of the tensors it returns (default: torch's default dtype, CPU).

    Examples
    --------
    >>> B = ScaledIdentity(4.0, 3)
    >>> B.dense()
    tensor([[4., 0., 0.],
            [0., 4., 0.],
            [0., 0., 4.]])
    >>> round(float(B.logdet()), 4)  # 3 log 4
    4.1589
    """

    def __init__(self, var: float | Tensor, n: int, *, dtype=None, device=None) -> None:
        var_t = _as_float_tensor(var, dtype=dtype, device=device)
        if var_t.dim() != 0:
            raise ShapeError(f"var must be a scalar, got shape {tuple(var_t.shape)}")
        if not float(var_t) > 0 or not math.isfinite(float(var_t)):
            raise ConfigError(f"var must be positive and finite, got {float(var_t)!r}")
        if int(n) < 1:
            raise ConfigError(f"n must be a positive integer, got {n!r}")
        self.var = var_t
        self.n = int(n)

    @property
    def dtype(self) -> torch.dtype:
        return self.var.dtype

    @property
    def device(self) -> torch.device:
        return self.var.device

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.var * self._check(v)

    def inv_matvec(self, v: Tensor) -> Tensor:
        return self._check(v) / self.var

    def sqrt_matvec(self, v: Tensor) -> Tensor:
        return self.var.sqrt() * self._check(v)

    def inv_sqrt_matvec(self, v: Tensor) -> Tensor:
        return self._check(v) / self.var.sqrt()

    def dense(self) -> Tensor:
        return self.var * torch.eye(self.n, dtype=self.dtype, device=self.device)

    def diagonal(self) -> Tensor:
        return self.var.expand(self.n)

    def logdet(self) -> Tensor:
        return self.n * self.var.log()

    def scaled(self, factor: float) -> ScaledIdentity:
        return ScaledIdentity(self.var * _check_factor(factor), self.n)

    def to(self, dtype: torch.dtype | None = None, device=None) -> ScaledIdentity:
        if self._same(dtype, device):
            return self
        return ScaledIdentity(self.var.to(dtype=dtype, device=device), self.n)


class DenseCovariance(Covariance):
    """Dense covariance matrix with its Cholesky factor ``B = L L^T``.

    Parameters
    ----------
    matrix : Tensor, shape ``(..., n, n)``
        Symmetric positive-definite matrix (leading dimensions give a batch).
        It is symmetrised as ``(B + B^T) / 2``.

    Raises
    ------
    ShapeError
        If ``matrix`` is not square.
    ConfigError
        If the Cholesky factorisation fails (the matrix is not positive
        definite); add a small multiple of the identity, or estimate it with
        ``shrinkage`` in :func:`covariance_from_differences`.

    Notes
    -----
    Memory :math:`O(n^2)`; construction costs one Cholesky factorisation,
    :math:`O(n^3)`. ``sqrt_matvec`` applies the lower Cholesky factor, a
    (non-symmetric) square root with ``L L^T = B``.

    Examples
    --------
    >>> import torch
    >>> B = DenseCovariance(torch.tensor([[4.0, 2.0], [2.0, 2.0]]))
    >>> B.sqrt_matvec(torch.tensor([1.0, 1.0]))
    tensor([2., 2.])
    >>> B.inv_matvec(torch.tensor([4.0, 2.0]))
    tensor([1., 0.])
    """

    def __init__(self, matrix: Tensor) -> None:
        matrix = _as_float_tensor(matrix)
        if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
            raise ShapeError(
                f"a covariance matrix must be square (..., n, n), got shape {tuple(matrix.shape)}"
            )
        matrix = 0.5 * (matrix + matrix.transpose(-1, -2))
        chol, info = torch.linalg.cholesky_ex(matrix)
        if bool((info != 0).any()):
            raise ConfigError(
                "the covariance matrix is not positive definite (Cholesky failed at column "
                f"{int(info.max()) - 1}); add a small multiple of the identity, or estimate it "
                "with shrinkage > 0"
            )
        self.matrix = matrix
        self.chol = chol
        self.n = matrix.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def __matmul__(self, v: Tensor) -> Tensor:
        return _apply(self.matrix, self._check(v))

    def inv_matvec(self, v: Tensor) -> Tensor:
        return torch.cholesky_solve(self._check(v).unsqueeze(-1), self.chol).squeeze(-1)

    def sqrt_matvec(self, v: Tensor) -> Tensor:
        return _apply(self.chol, self._check(v))

    def inv_sqrt_matvec(self, v: Tensor) -> Tensor:
        v = self._check(v).unsqueeze(-1)
        chol = self.chol
        shape = torch.broadcast_shapes(chol.shape[:-2], v.shape[:-2])
        out = torch.linalg.solve_triangular(
            chol.expand(*shape, self.n, self.n), v.expand(*shape, self.n, 1), upper=False
        )
        return out.squeeze(-1)

    def dense(self) -> Tensor:
        return self.matrix

    def diagonal(self) -> Tensor:
        return torch.diagonal(self.matrix, dim1=-2, dim2=-1)

    def logdet(self) -> Tensor:
        return 2.0 * torch.diagonal(self.chol, dim1=-2, dim2=-1).log().sum(-1)

    def scaled(self, factor: float) -> DenseCovariance:
        return DenseCovariance(self.matrix * _check_factor(factor))

    def to(self, dtype: torch.dtype | None = None, device=None) -> DenseCovariance:
        if self._same(dtype, device):
            return self
        return DenseCovariance(self.matrix.to(dtype=dtype, device=device))


def _nearest_correlation(corr: Tensor, floor: float) -> Tensor:
    """Clip the eigenvalues of a symmetric matrix at ``floor * max`` and
    rescale it to a unit diagonal."""
    evals, evecs = torch.linalg.eigh(0.5 * (corr + corr.transpose(-1, -2)))
    evals = evals.clamp_min(floor * evals.max())
    fixed = (evecs * evals) @ evecs.transpose(-1, -2)
    d = torch.diagonal(fixed).rsqrt()
    return d[:, None] * fixed * d[None, :]


def _great_circle(lat: Tensor, lon: Tensor) -> Tensor:
    """Great-circle angles (radians) between all pairs of points given in degrees."""
    phi, lam = torch.deg2rad(lat), torch.deg2rad(lon)
    xyz = torch.stack((phi.cos() * lam.cos(), phi.cos() * lam.sin(), phi.sin()), dim=-1)  # (n, 3)
    dot = (xyz @ xyz.T).clamp(-1.0, 1.0)
    cross = torch.linalg.cross(xyz[:, None, :], xyz[None, :, :], dim=-1).norm(dim=-1)
    return torch.atan2(cross, dot)


class GaussianCorrelationCovariance(DenseCovariance):
    r"""``B = diag(std) C diag(std)`` with a Gaussian correlation of distance.

    :math:`C_{ij} = \exp(-d_{ij}^2 / 2\ell^2)`, :math:`d_{ij}` the great-circle
    distance between points ``i`` and ``j``, made positive definite by
    clipping eigenvalues at ``floor`` times the largest and rescaling to a
    unit diagonal. :meth:`periodic` builds the same on a 1-D periodic index
    dimension (Lorenz-96), with the circular index distance.

    Parameters
    ----------
    std : float or Tensor, shape ``(n,)``
        Standard deviations.
    lat, lon : Tensor, shape ``(n,)``
        Point coordinates in degrees.
    length_scale_km : float
        Correlation length :math:`\ell` in kilometres.
    radius_km : float
        Sphere radius (Earth: 6371 km).
    floor : float
        Smallest eigenvalue kept, relative to the largest.

    Notes
    -----
    Memory :math:`O(n^2)`, construction :math:`O(n^3)` (eigen-decomposition
    and Cholesky): meant for latent spaces and small grids.

    Examples
    --------
    >>> import torch
    >>> lat = torch.tensor([0.0, 0.0, 45.0])
    >>> lon = torch.tensor([0.0, 1.0, 0.0])
    >>> B = GaussianCorrelationCovariance(2.0, lat, lon, length_scale_km=500.0)
    >>> B.diagonal()
    tensor([4., 4., 4.])
    >>> bool(B.dense()[0, 1] > B.dense()[0, 2])  # nearer points correlate more
    True
    >>> C = GaussianCorrelationCovariance.periodic(1.0, n=40, length_scale=2.0)
    >>> C.n
    40
    """

    def __init__(
        self,
        std: float | Tensor,
        lat: Tensor,
        lon: Tensor,
        length_scale_km: float,
        *,
        radius_km: float = EARTH_RADIUS_KM,
        floor: float = 1e-6,
    ) -> None:
        lat = _as_float_tensor(lat)
        lon = _as_float_tensor(lon, dtype=lat.dtype, device=lat.device)
        if lat.dim() != 1 or lat.shape != lon.shape:
            raise ShapeError(
                f"lat and lon must be 1-D of the same length, got {tuple(lat.shape)} "
                f"and {tuple(lon.shape)}"
            )
        if not length_scale_km > 0:
            raise ConfigError(f"length_scale_km must be positive, got {length_scale_km!r}")
        dist = _great_circle(lat, lon) * float(radius_km)
        corr = torch.exp(-0.5 * (dist / float(length_scale_km)) ** 2)
        super().__init__(self._build(std, corr, floor))
        self.length_scale = float(length_scale_km)

    @staticmethod
    def _build(std: float | Tensor, corr: Tensor, floor: float) -> Tensor:
        if not 0 < floor < 1:
            raise ConfigError(f"floor must lie in (0, 1), got {floor!r}")
        n = corr.shape[-1]
        std_t = _as_float_tensor(std, dtype=corr.dtype, device=corr.device)
        std_t = std_t.expand(n) if std_t.dim() == 0 else std_t
        if std_t.shape != (n,):
            raise ShapeError(f"std must be a scalar or of shape ({n},), got {tuple(std_t.shape)}")
        if not bool((std_t > 0).all()):
            raise ConfigError("std must be positive everywhere")
        corr = _nearest_correlation(corr, floor)
        return std_t[:, None] * corr * std_t[None, :]

    @classmethod
    def periodic(
        cls,
        std: float | Tensor,
        n: int,
        length_scale: float,
        *,
        floor: float = 1e-6,
        dtype: torch.dtype | None = None,
    ) -> GaussianCorrelationCovariance:
        """Gaussian correlation of the circular index distance ``min(|i-j|, n-|i-j|)``.

        Parameters
        ----------
        std : float or Tensor, shape ``(n,)``
            Standard deviations.
        n : int
            Number of points on the ring.
        length_scale : float
            Correlation length in index units.
        floor : float
            Smallest eigenvalue kept, relative to the largest.
        dtype : torch.dtype, optional
            Of the matrix (default: torch's default dtype).
        """
        if not length_scale > 0:
            raise ConfigError(f"length_scale must be positive, got {length_scale!r}")
        idx = torch.arange(int(n), dtype=dtype or torch.get_default_dtype())
        diff = (idx[:, None] - idx[None, :]).abs()
        dist = torch.minimum(diff, n - diff)
        corr = torch.exp(-0.5 * (dist / float(length_scale)) ** 2)
        obj = cls.__new__(cls)
        DenseCovariance.__init__(obj, cls._build(std, corr, floor))
        obj.length_scale = float(length_scale)
        return obj


def covariance_from_differences(
    samples: Tensor,
    kind: str = "diagonal",
    *,
    shrinkage: float = 0.0,
    scale: float = 1.0,
    center: bool = True,
) -> Covariance:
    r"""Estimate a static covariance from samples of errors or differences.

    With ``samples`` forecast differences :math:`x_f^{(48h)} - x_f^{(24h)}`
    valid at the same times (NMC method) or climatological anomalies, the
    estimate is

    .. math:: \hat B = s \left[(1-\lambda) S + \lambda \operatorname{diag}(S)\right],
              \quad S = \frac{1}{K-1} \sum_k (e_k - \bar e)(e_k - \bar e)^\top

    with :math:`\lambda` the shrinkage and :math:`s` the scale.

    Parameters
    ----------
    samples : Tensor, shape ``(..., n)``
        Every index of the leading dimensions is one sample (at least 2).
    kind : {"diagonal", "dense"}
        Keep only the variances, or the full matrix.
    shrinkage : float in [0, 1]
        Weight of the diagonal target (dense only); needed when there are
        fewer samples than dimensions.
    scale : float
        Multiplies the estimate. The NMC method is usually tuned with a
        scalar; with differences of two forecasts whose errors are
        independent, ``scale=0.5`` gives the error covariance of one.
    center : bool
        Subtract the sample mean (else the samples are taken as zero-mean).

    Returns
    -------
    DiagonalCovariance or DenseCovariance

    Raises
    ------
    ConfigError
        For an unknown ``kind``, a shrinkage outside [0, 1], or an estimate
        that is not positive definite (use ``shrinkage > 0``).
    ShapeError
        For fewer than two samples.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> e = torch.randn(5000, 3, generator=g, dtype=torch.float64) * torch.tensor(
    ...     [1.0, 2.0, 3.0], dtype=torch.float64)
    >>> B = covariance_from_differences(e, "diagonal")
    >>> [round(float(s), 1) for s in B.diagonal().sqrt()]
    [1.0, 2.0, 3.0]
    >>> covariance_from_differences(e, "dense", shrinkage=0.1).n
    3
    """
    if kind not in ("diagonal", "dense"):
        raise ConfigError(f"kind must be 'diagonal' or 'dense', got {kind!r}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ConfigError(f"shrinkage must lie in [0, 1], got {shrinkage!r}")
    scale = _check_factor(scale)
    samples = _as_float_tensor(samples)
    if samples.dim() < 1:
        raise ShapeError("samples must have shape (..., n)")
    x = samples.reshape(-1, samples.shape[-1])
    k = x.shape[0]
    if k < 2:
        raise ShapeError(f"need at least 2 samples to estimate a covariance, got {k}")
    if center:
        x = x - x.mean(0)
    denom = k - 1 if center else k
    if kind == "diagonal":
        var = (x**2).sum(0) / denom
        if not bool((var > 0).all()):
            raise ConfigError(
                "some variables have zero variance in the samples; a diagonal estimate "
                "needs every variance positive"
            )
        return DiagonalCovariance(var * scale)
    cov = x.T @ x / denom
    if shrinkage > 0:
        cov = (1.0 - shrinkage) * cov + shrinkage * torch.diag(torch.diagonal(cov))
    return DenseCovariance(cov * scale)
