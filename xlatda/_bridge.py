"""The one place where xarray/dask meets torch.

Everything above this module works on xarray objects; everything below
(``encoders/``, ``dynamics/``, ``assimilate/``) works on torch tensors. The
crossing is :func:`apply_torch`: it runs a tensor function block by block
over the sample dimensions of a DataArray through ``xr.apply_ufunc(...,
dask="parallelized")``, so a dask-backed input gives a dask-backed output and
nothing is computed until the user asks.

Inside each block the leading (sample) dimensions are flattened into one
batch axis, the block is moved to the requested device and dtype, the
function runs under :func:`torch.inference_mode` (unless gradients are asked
for), and the result comes back as a NumPy array of the output dtype.

Examples
--------
>>> import numpy as np, xarray as xr
>>> da = xr.DataArray(np.ones((4, 3)), dims=("time", "x")).chunk({"time": 2})
>>> out = apply_torch(da, lambda t: t.sum(-1, keepdim=True) * 2, in_core=["x"],
...                   out_core=["s"], out_sizes={"s": 1})
>>> out.chunks is not None, out.compute().values[:, 0].tolist()
(True, [6.0, 6.0, 6.0, 6.0])
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from xlatda._threads import thread_scope
from xlatda.options import OPTIONS, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from xlatda.layout import StateLayout
    from xlatda.normalize import Normalizer

__all__ = ["apply_state", "apply_torch", "is_lazy"]


def is_lazy(obj: xr.Dataset | xr.DataArray) -> bool:
    """Whether any data variable of ``obj`` is a dask array."""
    if isinstance(obj, xr.DataArray):
        return isinstance(obj.data, dsa.Array)
    return any(isinstance(v.data, dsa.Array) for v in obj.data_vars.values())


class _Tokenized:
    """A block function with a cheap dask token.

    Dask names graph layers by hashing their function; for a closure over a
    model that means pickling every weight on each call (tens of ms for a few
    MB). Each :func:`apply_torch` call is a new computation, so a random
    token is both correct and free.
    """

    def __init__(self, fn: Callable[..., np.ndarray]) -> None:
        self.fn = fn
        self.token = uuid.uuid4().hex

    def __call__(self, *blocks: np.ndarray) -> np.ndarray:
        return self.fn(*blocks)

    def __dask_tokenize__(self) -> str:
        return self.token


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(str(dtype).replace("torch.", ""))


def _affine(x: torch.Tensor, norm: Normalizer, channel_axis: int, inverse: bool) -> None:
    """Normalise (or denormalise) ``x`` in place along ``channel_axis``."""
    shape = [1] * x.dim()
    shape[channel_axis] = norm.n_channels
    mean = norm.mean_as(x).reshape(shape)
    std = norm.std_as(x).reshape(shape)
    if inverse:
        x.mul_(std).add_(mean)
    else:
        x.sub_(mean).div_(std)


def _run(fn: Callable, x: torch.Tensor, grad: bool) -> torch.Tensor:
    if grad:
        with torch.enable_grad():
            return fn(x)
    with torch.inference_mode():
        return fn(x)


def apply_torch(
    da: xr.DataArray,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    in_core: Sequence[str],
    out_core: Sequence[str],
    out_sizes: dict[str, int] | None = None,
    device: Any = None,
    dtype: Any = None,
    grad: bool = False,
    denormalize: Normalizer | None = None,
    missing: np.ndarray | None = None,
) -> xr.DataArray:
    """Apply a batched torch function over the non-core dimensions of ``da``.

    Parameters
    ----------
    da : DataArray
        Input; its non-core dims are batch dims (chunk along them freely).
    fn : callable
        ``fn(x)`` with ``x`` of shape ``(B, *in_core sizes)`` returns a tensor
        of shape ``(B, *out_core sizes)``.
    in_core, out_core : sequence of str
        Core dimensions consumed and produced (whole in every chunk: core
        dims of a dask input are rechunked to one chunk, lazily).
    out_sizes : dict, optional
        Sizes of output core dims not present in the input.
    device, dtype :
        Torch device and floating dtype for the computation (defaults from
        :func:`xlatda.set_options`). The output has this dtype.
    grad : bool
        Run with autograd enabled (for functions that optimise internally,
        e.g. auto-decoding); by default runs under ``inference_mode``.
    denormalize : Normalizer, optional
        Map the output back to physical units, in place, along the first
        output core dim (channels): ``y * std + mean`` without a copy.
    missing : bool array, optional
        Shaped like the output core dims: places set to NaN in the output, in
        place (a model's fixed mask, after ``denormalize``).

    Returns
    -------
    DataArray
        Dims ``(*batch dims, *out_core)``; dask-backed when ``da`` is.

    Notes
    -----
    Per-block work only: memory is that of one chunk plus the model. On
    NumPy input the call runs in a :func:`xlatda._threads.thread_scope`
    sized by the input; inside dask tasks torch threads change only when
    the ``torch_threads`` option is set.
    """
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    out_np = _numpy_dtype(tdtype)
    in_core = list(in_core)
    out_core = list(out_core)
    lazy = isinstance(da.data, dsa.Array)
    # Inside dask tasks threads change only when the torch_threads option asks.
    threads = OPTIONS["torch_threads"] if lazy else "option"
    fill = None if missing is None else torch.as_tensor(np.asarray(missing, bool))

    def kernel(block: np.ndarray) -> np.ndarray:
        lead = block.shape[: block.ndim - len(in_core)]
        batch = math.prod(lead)
        if batch == 0:
            sizes = [out_sizes.get(d) if out_sizes and d in out_sizes else da.sizes[d]
                     for d in out_core]
            return np.zeros((*lead, *sizes), dtype=out_np)
        x = torch.from_numpy(np.ascontiguousarray(block)).reshape(batch, *block.shape[len(lead):])
        x = x.to(device=dev, dtype=tdtype)
        with thread_scope(block.size, threads=threads):
            y = _run(fn, x, grad).detach()
            if denormalize is not None:
                _affine(y, denormalize, 1, inverse=True)
            if fill is not None:
                y.masked_fill_(fill.to(y.device), float("nan"))
            y = y.to("cpu", tdtype).numpy()
        return y.reshape(*lead, *y.shape[1:])

    if lazy:
        return _blockwise(da, kernel, in_core, out_core, out_sizes or {}, out_np)
    sizes = dict(out_sizes or {})
    out = xr.apply_ufunc(
        kernel,
        da,
        input_core_dims=[in_core],
        output_core_dims=[out_core],
        dask="parallelized",
        output_dtypes=[out_np],
        dask_gufunc_kwargs={"output_sizes": sizes} if sizes else None,
        keep_attrs=False,
    )
    # apply_ufunc drops coordinate attributes with keep_attrs=False; put the
    # input's coordinates (with their CF attributes) back where they still fit.
    # Coordinates that survived only lost their attrs: copy those in place
    # (cheap); re-attach the others that still fit.
    keep = {}
    for name, coord in da.coords.items():
        if name in out_core or not set(coord.dims) <= set(out.dims):
            continue
        if name in out.coords:
            out.coords[name].attrs.update(coord.attrs)
        else:
            keep[name] = coord
    return out.assign_coords(keep) if keep else out


def _unwrapped(kernel: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """``kernel`` on blocks that dask hands over (with ``concatenate=False``) nested
    in one list per contracted dim, each holding the single block of a whole dim."""

    def task(*blocks: Any) -> np.ndarray:
        unwrapped = []
        for block in blocks:
            while isinstance(block, list):
                block = block[0]
            unwrapped.append(block)
        return kernel(*unwrapped)

    return task


def _blockwise(da: xr.DataArray, kernel: Callable, in_core: list[str], out_core: list[str],
               out_sizes: dict[str, int], out_np: np.dtype) -> xr.DataArray:
    """The dask form of :func:`apply_torch`: one task per chunk of the batch dims.

    A single blockwise layer over the input (core dims moved last and joined
    into one chunk only where needed), no layers of its own beyond that.
    """
    lead = [d for d in da.dims if d not in in_core]
    order = [*lead, *in_core]
    if list(da.dims) != order:
        da = da.transpose(*order)
    data = da.data
    split = {i: -1 for i, d in enumerate(order) if d in in_core and len(data.chunks[i]) > 1}
    if split:
        data = data.rechunk(split)
    lead_index = tuple(f"b{k}" for k in range(len(lead)))
    in_index = lead_index + tuple(f"c{k}" for k in range(len(in_core)))
    new_axes, out_index = {}, list(lead_index)
    for k, d in enumerate(out_core):
        if d in in_core:  # a core dim kept as it is (same size, whole)
            out_index.append(in_index[len(lead) + in_core.index(d)])
        else:
            new_axes[f"o{k}"] = int(out_sizes[d]) if d in out_sizes else da.sizes[d]
            out_index.append(f"o{k}")
    # The core dims are one chunk each, so every task gets its one block as
    # it is (concatenate=False: no copy of it through dask's concatenate3).
    out = dsa.blockwise(
        _Tokenized(_unwrapped(kernel)), tuple(out_index), data, in_index, new_axes=new_axes,
        concatenate=False, dtype=out_np, meta=np.empty((0,) * len(out_index), dtype=out_np),
        name=f"xlatda-apply-torch-{uuid.uuid4().hex}",
    )
    coords = {name: c for name, c in da.coords.items()
              if name not in out_core and set(c.dims) <= set(lead)}
    return xr.DataArray(out, dims=(*lead, *out_core), coords=coords)


def apply_state(
    ds: xr.Dataset,
    layout: StateLayout,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    out_core: Sequence[str],
    out_sizes: dict[str, int],
    normalizer: Normalizer | None = None,
    device: Any = None,
    dtype: Any = None,
    grad: bool = False,
    out_coords: dict[str, Any] | xr.Coordinates | None = None,
    missing: np.ndarray | None = None,
    check_finite: str | None = None,
    nonfinite_propagates: bool = False,
    center: torch.Tensor | None = None,
) -> xr.DataArray:
    """Stack (and normalise) the state variables of ``ds`` and apply ``fn``, in one pass.

    The fused form of ``apply_torch(layout.stack(ds), ...)``: each block's
    variables are written straight into one tensor ``(B, channel, *spatial)``
    of the compute dtype, normalised in place, so the only copy is the one
    the tensor needs. On dask input this is one task per chunk of the sample
    dims (the spatial dims are joined inside the task).

    Parameters
    ----------
    ds : Dataset
        States on ``layout`` (checked first).
    layout : StateLayout
        Which variables, in which channel order, over which spatial dims.
    fn : callable
        ``fn(x)`` with ``x`` of shape ``(B, channel, *spatial)``, normalised
        when ``normalizer`` is given (then filled at ``missing``, then minus
        ``center``), returns ``(B, *out_core sizes)``. ``x`` is a tensor made
        for this call alone: ``fn`` may overwrite it.
    out_core, out_sizes :
        Output core dims and their sizes.
    normalizer : Normalizer, optional
        Per-channel statistics to apply while stacking.
    device, dtype, grad :
        As for :func:`apply_torch`.
    out_coords : dict or xarray.Coordinates, optional
        Coordinates of the output core dims (set when the result is built); a
        ``Coordinates`` object lends its indexes (kept for repeated calls).
    missing : bool array, optional
        ``(channel, *spatial)``: places filled with 0 after normalising (a
        model's fixed mask, as :meth:`xlatda.LatentModel.encode_tensor` does).
    check_finite : str, optional
        Refuse NaN/inf outside ``missing`` with the
        :class:`~xlatda.errors.NonFiniteError` of
        :func:`xlatda.validation.finite_inputs`, naming the batch with this
        text (``"fields to encode"``); same message and index.
    nonfinite_propagates : bool
        ``fn``'s output is non-finite wherever its input is (an affine map
        such as PCA): then the check looks at the small output instead of
        making a pass over the input, and reads the input only to report.
    center : Tensor, optional
        ``(channel, *spatial)``, subtracted last (what an encoder such as PCA
        subtracts first, see :attr:`xlatda.encoders.pca.PCA.input_center`).
        Without ``missing``, on the CPU, it is taken off in the division by
        the standard deviation: ``-center + x / std`` in one pass, the same
        values as ``x / std - center`` (IEEE ``a - b`` is ``a + (-b)``).

    Returns
    -------
    DataArray
        Dims ``(*layout.lead_dims(ds), *out_core)`` with the sample dims'
        coordinates; dask-backed when any state variable is.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xlatda
    >>> ds = xr.Dataset({"a": (("time", "k"), np.ones((4, 3))),
    ...                  "b": (("time", "k"), np.zeros((4, 3)))},
    ...                 coords={"time": np.arange(4.0)}).chunk(time=2)
    >>> L = xlatda.layout(ds)
    >>> out = apply_state(ds, L, lambda x: x.sum((1, 2))[:, None], out_core=["s"],
    ...                   out_sizes={"s": 1})
    >>> out.data.npartitions, out.values[:, 0].tolist()
    (2, [3.0, 3.0, 3.0, 3.0])
    """
    layout.check(ds)
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    out_np = _numpy_dtype(tdtype)
    out_core = list(out_core)
    lead = layout.lead_dims(ds)
    spatial = layout.spatial_dims
    variables = [ds.variables[spec.name] for spec in layout.specs]
    orders = []
    for spec, var in zip(layout.specs, variables, strict=True):
        order = (*lead, *((layout.vertical_dim,) if spec.vertical else ()), *spatial)
        if set(var.dims) != set(order):
            from xlatda.errors import LayoutError

            raise LayoutError(
                f"variable {spec.name!r} has dims {var.dims}, expected {order}; "
                "all state variables must share sample and spatial dimensions"
            )
        orders.append(tuple(var.dims.index(d) for d in order))
    n_levels = layout.n_levels
    widths = [n_levels if spec.vertical else 1 for spec in layout.specs]
    n_channels = sum(widths)
    out_shape = tuple(int(out_sizes[d]) for d in out_core)
    lazy = any(isinstance(v.data, dsa.Array) for v in variables)
    threads = OPTIONS["torch_threads"] if lazy else "option"
    mask = None if missing is None else torch.as_tensor(np.asarray(missing, bool))

    def stack(blocks: tuple[np.ndarray, ...], subtract: bool) -> torch.Tensor:
        """The blocks as one ``(B, channel, *spatial)`` tensor of the compute dtype."""
        first = np.transpose(blocks[0], orders[0])
        batch = math.prod(first.shape[: len(lead)])
        x = torch.empty((batch, n_channels, *first.shape[first.ndim - len(spatial):]),
                        dtype=tdtype)
        c = 0
        for block, order, width in zip(blocks, orders, widths, strict=True):
            src = torch.from_numpy(np.transpose(block, order)).reshape(batch, width,
                                                                       *x.shape[2:])
            dst = x[:, c:c + width]
            if subtract:
                mean = normalizer.mean_as(x)[c:c + width]
                torch.sub(src, mean.reshape(1, width, *[1] * len(spatial)), out=dst)
            else:
                dst.copy_(src)
            c += width
        return x

    def refuse_nonfinite(blocks: tuple[np.ndarray, ...]) -> None:
        # The check of the public functions, on the same (physical) batch, so
        # that the error and its index are theirs.
        from xlatda.validation import finite_inputs

        finite_inputs(lambda t: t, what=check_finite, allowed=missing)(stack(blocks, False))

    def kernel(*blocks: np.ndarray) -> np.ndarray:
        lead_shape = np.transpose(blocks[0], orders[0]).shape[: len(lead)]
        if math.prod(lead_shape) == 0:
            return np.zeros((*lead_shape, *out_shape), dtype=out_np)
        # On the CPU, with blocks already in the compute dtype, the mean is
        # subtracted while stacking (one pass instead of a copy and a pass):
        # the same (x - mean) / std as _affine.
        fused = (normalizer is not None and dev.type == "cpu"
                 and all(np.dtype(b.dtype) == out_np for b in blocks))
        size = math.prod(lead_shape) * n_channels * math.prod(layout.spatial_shape)
        with thread_scope(size, threads=threads):
            x = stack(blocks, fused).to(dev)
            centered = False
            if fused:
                std = normalizer.std_as(x).reshape(1, n_channels, *[1] * len(spatial))
                if center is not None and mask is None:
                    # x / std - center in one pass (same values, see the docstring)
                    torch.addcdiv(-center.to(x), x, std, out=x)
                    centered = True
                else:
                    x.div_(std)
            elif normalizer is not None:
                _affine(x, normalizer, 1, inverse=False)
            if mask is not None:
                x.masked_fill_(mask.to(x.device), 0.0)
            if center is not None and not centered:
                x.sub_(center.to(x))
            # Non-finite values outside the mask stay non-finite through the
            # normalisation, so looking at x (or at y) finds every one; a sum
            # holding a NaN/inf is never finite (one pass, no boolean array; an
            # overflowing sum of finite values only costs the exact check).
            if check_finite and not nonfinite_propagates and not bool(x.sum().isfinite()):
                refuse_nonfinite(blocks)
            y = _run(fn, x, grad).detach()
            if check_finite and nonfinite_propagates and not bool(y.sum().isfinite()):
                refuse_nonfinite(blocks)
            y = y.to("cpu", tdtype).numpy()
        return y.reshape(*lead_shape, *out_shape)

    # The sample dims' coordinates keep their indexes (no new pandas index per call).
    from xlatda.layout import coordinates_sharing_indexes

    owned: dict[Any, tuple[xr.Variable, Any]] = {
        d: (ds.variables[d], ds) for d in lead if d in ds.coords}
    if isinstance(out_coords, xr.Coordinates):
        owned.update({k: (out_coords.variables[k], out_coords) for k in out_coords})
    else:
        owned.update({k: (v if isinstance(v, xr.Variable) else xr.Variable((k,), v), None)
                      for k, v in (out_coords or {}).items()})
    coords = coordinates_sharing_indexes(owned)
    dims = (*lead, *out_core)
    if not lazy:
        return xr.DataArray(kernel(*(v.values for v in variables)), dims=dims, coords=coords)
    # One blockwise task per chunk of the lead dims; core dims are joined in the task.
    index = {d: f"i{k}" for k, d in enumerate(ds.dims)}
    out_index = tuple(index[d] for d in lead) + tuple(f"o{k}" for k in range(len(out_core)))
    args: list[Any] = []
    for var in variables:
        data = var.data if isinstance(var.data, dsa.Array) else dsa.from_array(
            var.data, chunks=tuple(ds.chunksizes.get(d, var.shape[i])
                                   for i, d in enumerate(var.dims)))
        # Core dims whole in each block (a rechunk layer only where they are split),
        # so each task gets its blocks as they are, without dask's concatenation copy.
        split = {i: -1 for i, d in enumerate(var.dims) if d not in lead and len(data.chunks[i]) > 1}
        if split:
            data = data.rechunk(split)
        args += [data, tuple(index[d] for d in var.dims)]

    data = dsa.blockwise(
        _Tokenized(_unwrapped(kernel)), out_index, *args,
        new_axes={f"o{k}": n for k, n in enumerate(out_shape)},
        concatenate=False, dtype=out_np, meta=np.empty((0,) * len(out_index), dtype=out_np),
        name=f"xlatda-apply-state-{uuid.uuid4().hex}",
    )
    return xr.DataArray(data, dims=dims, coords=coords)
