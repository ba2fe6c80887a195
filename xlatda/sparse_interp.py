r"""The sparse autograd kernel: a batched, differentiable observation operator ``y = H x``.

:class:`ObservationOperator` holds one sparse CSR matrix ``(P, C * S)`` (the
spatial interpolation rows of :mod:`xlatda.obs_geometry` combined with the
channel each observation measures) and applies it to states
``(..., C, *spatial)``: a sparse-times-dense product batched over members and
samples, with its own autograd function (the adjoint is the transposed
matrix, kept sorted for a fast product). Tensors only; it knows nothing of
xarray nor of grids. Not to be confused with :mod:`xlatda.obs.operator`,
which builds such operators from a state layout and an observation table.

Examples
--------
>>> import torch
>>> H = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
>>> op = ObservationOperator(H, channel=torch.tensor([0, 0]), n_channels=1, spatial_shape=(3,))
>>> op(torch.tensor([[[2.0, 4.0, 6.0]]], dtype=torch.float64)).tolist()
[[3.0, 6.0]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError

__all__ = ["ObservationOperator", "as_csr", "csr_tensor", "float_dtype"]

# On CPU a batch of large states is multiplied one member at a time: torch
# would otherwise transpose the whole batch into column-major order first,
# which costs more than the sparse product itself. "Large": at least this many
# elements per member and in all (small batches are transposed in cache).
_LOOP_MIN_STATE = 1 << 16
_LOOP_MIN_ELEMENTS = 1 << 20


def float_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if it is float32 or float64; refuses any other."""
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def csr_tensor(
    crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int], device: Any = None
) -> Tensor:
    """Build a CSR tensor from components that already satisfy the invariants."""
    with warnings.catch_warnings():
        # torch warns once per process that CSR support is "beta"; the subset
        # used here (construction, mv, mm, to_dense) is stable.
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        return torch.sparse_csr_tensor(
            crow, col, val, size=shape, device=device, check_invariants=False
        )


def as_csr(matrix: Tensor) -> Tensor:
    """Any 2-D torch tensor (dense, COO, CSR, CSC) as a CSR tensor."""
    if not isinstance(matrix, Tensor):
        raise ShapeError(
            f"matrix must be a torch tensor (sparse or dense), got {type(matrix).__name__}"
        )
    if matrix.dim() != 2:
        raise ShapeError(f"matrix must be 2-D (P, S), got shape {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise ConfigError(f"matrix must be floating point, got {matrix.dtype}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        if matrix.layout == torch.sparse_csr:
            return matrix
        if matrix.layout == torch.sparse_coo:
            return matrix.coalesce().to_sparse_csr()
        if matrix.layout == torch.strided:
            return matrix.to_sparse_csr()
        return matrix.to_sparse_coo().coalesce().to_sparse_csr()


# --------------------------------------------------------------------------- #
# the operator
# --------------------------------------------------------------------------- #
class _Kernel:
    """One sparse matrix (R, N) ready to multiply batches ``(B, N) -> (B, R)``.

    With ``sort_rows``, rows are stored sorted by their first column, so that a
    product walks the state in memory order, and ``inverse`` puts the result
    back in the original row order. Indices are 32-bit where they fit.
    """

    def __init__(self, matrix: Tensor, *, sort_rows: bool, use_numpy: bool | None = None) -> None:
        crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values()
        n_rows, n_cols = matrix.shape
        self.shape = (n_rows, n_cols)
        self.inverse: Tensor | None = None
        small = max(n_rows, n_cols, col.numel()) < 2**31 - 1
        sort = sort_rows and col.numel() and n_rows > 1
        if matrix.device.type == "cpu" if use_numpy is None else use_numpy:
            # index bookkeeping in NumPy: single-threaded, so it neither spins
            # nor waits on torch's thread pool
            arrays = crow.numpy(), col.numpy(), val.detach().numpy()
            if sort:
                *arrays, inverse = _sort_rows_numpy(*arrays, n_cols)
                self.inverse = torch.from_numpy(inverse)
            index_dtype = np.int32 if small else np.int64
            crow = torch.from_numpy(arrays[0].astype(index_dtype, copy=False))
            col = torch.from_numpy(arrays[1].astype(index_dtype, copy=False))
            val = torch.from_numpy(arrays[2])
        else:
            if sort:
                crow, col, val, self.inverse = _sort_rows_torch(crow, col, val)
            index_dtype = torch.int32 if small else torch.int64
            crow, col = crow.to(index_dtype), col.to(index_dtype)
        self.matrix = csr_tensor(crow, col, val, self.shape, device=matrix.device)

    def __call__(self, x: Tensor) -> Tensor:
        """``(B, N) -> (B, R)``."""
        n_batch, n_state = x.shape
        h = self.matrix
        if n_batch == 0 or self.shape[0] == 0 or self.shape[1] == 0:
            return x.new_zeros(n_batch, self.shape[0])
        if n_batch == 1:
            y = (h @ x[0]).unsqueeze(0)
        elif (
            x.device.type == "cpu"
            and n_state >= _LOOP_MIN_STATE
            and n_batch * n_state >= _LOOP_MIN_ELEMENTS
        ):
            # Streams through each member instead of transposing the batch.
            y = torch.empty(n_batch, self.shape[0], dtype=x.dtype, device=x.device)
            for b in range(n_batch):
                y[b] = h @ x[b]
        else:
            y = (h @ x.T.contiguous()).T
        if self.inverse is None:
            return y.contiguous()
        return y.index_select(1, self.inverse)


def _sort_rows_numpy(crow: np.ndarray, col: np.ndarray, val: np.ndarray, n_cols: int) -> tuple:
    """Permute CSR rows so that their first columns (roughly) ascend.

    Only memory locality depends on the order, so rows are bucketed by first
    column into 2**16 bins with a linear-time radix sort. Returns the new
    ``crow, col, val`` and the inverse permutation.
    """
    counts = np.diff(crow)
    starts = crow[:-1]
    first = np.zeros(counts.size, dtype=np.int64)
    has = counts > 0
    first[has] = col[starts[has]]
    key = (first * (65535.0 / max(n_cols - 1, 1))).astype(np.uint16)
    order = np.argsort(key, kind="stable")
    new_counts = counts[order]
    new_crow = np.zeros_like(crow)
    np.cumsum(new_counts, out=new_crow[1:])
    k = int(counts[0])
    if (counts == k).all():  # the usual case: the same number of weights per row
        gather = (starts[order][:, None] + np.arange(k)).ravel()
    else:
        gather = np.repeat(starts[order] - new_crow[:-1], new_counts) + np.arange(col.size)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return new_crow, col[gather], val[gather], inverse


def _sort_rows_torch(crow: Tensor, col: Tensor, val: Tensor) -> tuple:
    """Same as :func:`_sort_rows_numpy` with torch ops, for accelerators."""
    counts = crow.diff()
    first = torch.where(counts > 0, col[crow[:-1].clamp_max(col.numel() - 1)], 0)
    order = torch.argsort(first)
    counts = counts[order]
    new_crow = torch.zeros_like(crow)
    torch.cumsum(counts, 0, out=new_crow[1:])
    gather = torch.repeat_interleave(crow[:-1][order] - new_crow[:-1], counts)
    gather += torch.arange(col.numel(), device=col.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return new_crow, col[gather], val[gather], inverse


def _transpose(matrix: Tensor, *, use_numpy: bool | None = None) -> Tensor:
    """CSR of the transpose of a CSR matrix (columns become rows).

    ``use_numpy`` (default: on CPU) picks SciPy over torch ops.
    """
    crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values().detach()
    n_rows, n_cols = matrix.shape
    if matrix.device.type == "cpu" if use_numpy is None else use_numpy:
        import scipy.sparse

        # CSR -> CSC is a linear-time counting sort in SciPy; the CSC arrays
        # of H are the CSR arrays of H^T.
        csc = scipy.sparse.csr_array(
            (val.numpy(), col.numpy(), crow.numpy()), shape=(n_rows, n_cols)
        ).tocsc()
        return csr_tensor(
            torch.from_numpy(csc.indptr.astype(np.int64)),
            torch.from_numpy(csc.indices.astype(np.int64)),
            torch.from_numpy(csc.data),
            (n_cols, n_rows),
        )
    row = torch.repeat_interleave(torch.arange(n_rows, device=col.device), crow.diff())
    order = torch.argsort(col, stable=True)
    t_crow = torch.zeros(n_cols + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(torch.bincount(col, minlength=n_cols), 0, out=t_crow[1:])
    return csr_tensor(t_crow, row[order], val[order], (n_cols, n_rows), device=matrix.device)


class _Compiled:
    """The operator's matrix in one dtype and device, with its transpose on demand."""

    def __init__(self, matrix: Tensor) -> None:
        self._matrix = matrix
        self.forward = _Kernel(matrix, sort_rows=True)
        self._backward: _Kernel | None = None
        # One or two entries per row (points on or along a 1-D grid): a gather
        # and a sum of two products, the same numbers as the sparse product
        # (0 + a + b = a + b exactly), at a fraction of its cost on small batches.
        self.pairs: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
        # Rows with one non-zero weight (observations on grid points): one gather,
        # times the weights unless they are all exactly 1 (then no product at all).
        self.single: tuple[Tensor, Tensor | None] | None = None
        counts = matrix.crow_indices().diff()
        if matrix.shape[0] and bool(((counts >= 1) & (counts <= 2)).all()):
            self.pairs = _pairs(matrix, counts)
            (c0, c1), (w0, w1) = self.pairs
            if not bool(((w0 != 0) & (w1 != 0)).any()):
                first = w1 == 0
                col, w = torch.where(first, c0, c1), torch.where(first, w0, w1)
                self.single = (col, None if bool((w == 1).all()) else w)

    def gather(self, x: Tensor) -> Tensor:
        """``(B, N) -> (B, R)`` through :attr:`pairs` (rows of one or two entries).

        Where one weight of every row is 0 (:attr:`single`) it is ``x[:, c] * w``
        (``x[:, c]`` for unit weights): for finite ``x`` the same numbers as the
        two-entry form ``x[:, c] * w + x[:, c'] * 0`` (adding a zero changes
        nothing but, at most, the sign of a zero result).
        """
        if self.single is not None:
            c0, w0 = self.single
            out = x.index_select(1, c0)
            return out if w0 is None else out * w0
        (c0, c1), (w0, w1) = self.pairs
        return x.index_select(1, c0) * w0 + x.index_select(1, c1) * w1

    @property
    def backward(self) -> _Kernel:
        if self._backward is None:
            self._backward = _Kernel(_transpose(self._matrix), sort_rows=False)
        return self._backward


def _pairs(matrix: Tensor, counts: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Columns and weights (each ``(R,)``, first and second) of a CSR matrix with 1-2
    entries a row; a row with one entry gets its own column again with weight 0."""
    crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values().detach()
    start = crow[:-1]
    second = torch.where(counts == 2, start + 1, start)
    w1 = torch.where(counts == 2, val[second], torch.zeros((), dtype=val.dtype))
    return ((col[start].to(torch.int64), col[second].to(torch.int64)),
            (val[start].contiguous(), w1))


class _SparseApply(torch.autograd.Function):
    """``y = H x`` on ``(B, N)`` batches, with ``grad_x = H^T grad_y``.

    Implemented as an autograd Function so that the backward pass uses a
    precomputed CSR transpose (fast, and differentiable again: the backward
    of the backward is ``H``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, compiled: _Compiled, transpose: bool) -> Tensor:
        ctx.compiled, ctx.transpose = compiled, transpose
        kernel = compiled.backward if transpose else compiled.forward
        return kernel(x.contiguous())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        return _SparseApply.apply(grad, ctx.compiled, not ctx.transpose), None, None


class ObservationOperator:
    r"""A linear observation operator over a multi-channel state.

    Observation ``i`` sees channel ``channel[i]`` of the state through row
    ``i`` of a spatial matrix: with ``S`` spatial points the full matrix
    :math:`H` of shape ``(P, C * S)`` has, in row ``i``, the weights of the
    spatial row at columns ``channel[i] * S + s``.

    Parameters
    ----------
    matrix_spatial : torch.Tensor, shape (P, S)
        Spatial weights, sparse (CSR, COO, CSC) or dense, as returned by
        :func:`grid_interpolation_matrix` and friends. Its dtype and device are
        those of :attr:`matrix`.
    channel : torch.Tensor of int, shape (P,), optional
        Channel (state variable or level) each observation measures;
        default: all channel 0.
    n_channels : int, default 1
        Number of channels ``C`` of the state.
    spatial_shape : tuple of int, optional
        Spatial shape of the state, e.g. ``(nlat, nlon)``; its product must
        be ``S``. Default ``(S,)``.

    Raises
    ------
    ShapeError
        If the shapes of ``matrix_spatial``, ``channel`` and ``spatial_shape``
        do not fit together.
    ConfigError
        If ``n_channels`` is not positive or a channel index is outside
        ``[0, n_channels)``.

    Notes
    -----
    Calling the operator on ``x`` of shape ``(..., C, *spatial_shape)``
    returns ``(..., P)`` and is differentiable with respect to ``x`` (the
    backward pass applies :math:`H^T`). The matrix is cast lazily to ``x``'s
    dtype and device and cached per (dtype, device); the transpose is built
    the first time it is needed. On CPU a large batch is multiplied member by
    member, which streams through memory instead of transposing the batch:
    the cost is about one read of ``x``. Pickling drops the caches.

    Examples
    --------
    >>> import torch
    >>> from xlatda.obs_geometry import index_interpolation_matrix
    >>> H = index_interpolation_matrix(40, [0.5, 10.0, 39.5], periodic=True)
    >>> op = ObservationOperator(H, channel=torch.tensor([0, 0, 1]), n_channels=2)
    >>> op.shape
    (3, 80)
    >>> x = torch.arange(80.0).reshape(2, 40)
    >>> op(x)
    tensor([ 0.5000, 10.0000, 59.5000])
    >>> op.transpose_apply(torch.ones(3)).sum().item()
    3.0
    """

    def __init__(
        self,
        matrix_spatial: Tensor,
        channel: Tensor | Sequence[int] | None = None,
        n_channels: int = 1,
        *,
        spatial_shape: Sequence[int] | None = None,
    ) -> None:
        spatial = as_csr(matrix_spatial)
        n_obs, n_space = spatial.shape
        n_channels = int(n_channels)
        if n_channels < 1:
            raise ConfigError(f"n_channels must be positive, got {n_channels}")
        device = spatial.device
        if channel is None:
            channel = torch.zeros(n_obs, dtype=torch.int64, device=device)
        else:
            channel = torch.as_tensor(channel, device=device)
            if channel.is_floating_point() or channel.is_complex() or channel.dtype == torch.bool:
                raise ShapeError(f"channel must hold integers, got dtype {channel.dtype}")
            channel = channel.to(torch.int64)
            if channel.shape != (n_obs,):
                raise ShapeError(
                    f"channel must have shape ({n_obs},), one entry per matrix row, "
                    f"got {tuple(channel.shape)}"
                )
            if n_obs:
                low, high = (int(v) for v in torch.aminmax(channel))
                if low < 0 or high >= n_channels:
                    raise ConfigError(
                        f"channel indices must lie in [0, {n_channels}), got {low} to {high}; "
                        "pass the state's n_channels"
                    )
        shape = (n_space,) if spatial_shape is None else tuple(int(s) for s in spatial_shape)
        if math.prod(shape) != n_space:
            raise ShapeError(
                f"spatial_shape {shape} has {math.prod(shape)} points but the matrix has "
                f"{n_space} columns"
            )
        crow, col = spatial.crow_indices(), spatial.col_indices().to(torch.int64)
        if n_channels == 1:
            full_col = col
        else:
            row = torch.repeat_interleave(torch.arange(n_obs, device=device), crow.diff())
            full_col = col + channel[row] * n_space
        self._matrix = csr_tensor(
            crow.to(torch.int64),
            full_col,
            spatial.values(),
            (n_obs, n_channels * n_space),
            device=device,
        )
        self._channel = channel
        self._n_channels = n_channels
        self._spatial_shape = shape
        self._cache: dict[tuple[torch.dtype, torch.device], _Compiled] = {}

    # -- description -------------------------------------------------------
    @property
    def matrix(self) -> Tensor:
        """The full sparse CSR matrix ``(P, C * S)``."""
        return self._matrix

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, C * S)``."""
        return tuple(self._matrix.shape)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """``(C, *spatial_shape)``: the trailing shape of the states it applies to."""
        return (self._n_channels, *self._spatial_shape)

    @property
    def n_obs(self) -> int:
        """Number of observations ``P``."""
        return self._matrix.shape[0]

    @property
    def channel(self) -> Tensor:
        """Channel index of each observation, ``(P,)``."""
        return self._channel

    @property
    def dtype(self) -> torch.dtype:
        return self._matrix.dtype

    @property
    def device(self) -> torch.device:
        return self._matrix.device

    def __repr__(self) -> str:
        return (
            f"ObservationOperator(n_obs={self.n_obs}, state_shape={self.state_shape}, "
            f"nnz={self._matrix.values().numel()}, dtype={self.dtype}, device={self.device})"
        )

    # -- conversion ----------------------------------------------------------
    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ObservationOperator:
        """Return a copy whose matrix lives on ``device`` with ``dtype``."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else float_dtype(dtype)
        new = object.__new__(ObservationOperator)
        new.__dict__.update(self.__dict__)
        new._matrix = self._matrix.to(device=device, dtype=dtype)
        new._channel = self._channel.to(device)
        new._cache = {}
        return new

    def dense(self) -> Tensor:
        """The full matrix as a dense tensor ``(P, C * S)`` (for tests and small cases)."""
        return self._matrix.to_dense()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _compiled(self, like: Tensor) -> _Compiled:
        if not like.is_floating_point() or like.dtype not in (torch.float32, torch.float64):
            raise ConfigError(
                f"the state must be float32 or float64, got {like.dtype}; cast it with .double()"
            )
        key = (like.dtype, like.device)
        compiled = self._cache.get(key)
        if compiled is None:
            with torch.inference_mode(False), torch.no_grad():
                compiled = _Compiled(self._matrix.to(device=like.device, dtype=like.dtype))
            self._cache[key] = compiled
        return compiled

    # -- application -----------------------------------------------------------
    def __call__(self, x: Tensor) -> Tensor:
        """Apply the operator: ``(..., C, *spatial) -> (..., P)``.

        Parameters
        ----------
        x : torch.Tensor
            States, float32 or float64, any device, any leading batch shape.

        Returns
        -------
        torch.Tensor
            ``(..., P)`` in ``x``'s dtype and device; differentiable in ``x``.

        Raises
        ------
        ShapeError
            If the trailing dimensions of ``x`` are not :attr:`state_shape`.
        """
        state = self.state_shape
        nd = len(state)
        if not isinstance(x, Tensor) or x.dim() < nd or tuple(x.shape[-nd:]) != state:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"the operator applies to states of shape (..., {', '.join(map(str, state))}), "
                f"got {got}"
            )
        batch = x.shape[: x.dim() - nd]
        x2 = x.reshape(math.prod(batch), self.shape[1])
        compiled = self._compiled(x)
        if compiled.pairs is not None:  # differentiable as it is (index_select)
            y = compiled.gather(x2)
        else:
            y = _SparseApply.apply(x2, compiled, False)
        return y.reshape(*batch, self.n_obs)

    def transpose_apply(self, y: Tensor) -> Tensor:
        """Apply the transpose: ``H^T y``, ``(..., P) -> (..., C, *spatial)``.

        Parameters
        ----------
        y : torch.Tensor
            Values at the observations (e.g. weighted innovations), any
            leading batch shape; differentiable.

        Returns
        -------
        torch.Tensor
            ``(..., C, *spatial_shape)`` in ``y``'s dtype and device.

        Raises
        ------
        ShapeError
            If the last dimension of ``y`` is not ``P``.
        """
        if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[-1] != self.n_obs:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ShapeError(
                f"transpose_apply needs values of shape (..., {self.n_obs}), got {got}"
            )
        batch = y.shape[:-1]
        y2 = y.reshape(math.prod(batch), self.n_obs)
        x = _SparseApply.apply(y2, self._compiled(y), True)
        return x.reshape(*batch, *self.state_shape)
