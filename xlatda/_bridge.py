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

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from xlatda.options import OPTIONS, resolve_device, resolve_dtype

__all__ = ["apply_torch", "is_lazy"]


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

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.token = uuid.uuid4().hex

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self.fn(block)

    def __dask_tokenize__(self) -> str:
        return self.token


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(str(dtype).replace("torch.", ""))


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

    Returns
    -------
    DataArray
        Dims ``(*batch dims, *out_core)``; dask-backed when ``da`` is.

    Notes
    -----
    Per-block work only: memory is that of one chunk plus the model. Torch
    threads inside each task follow the ``torch_threads`` option.
    """
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    out_np = _numpy_dtype(tdtype)
    in_core = list(in_core)
    out_core = list(out_core)
    threads = OPTIONS["torch_threads"]

    def kernel(block: np.ndarray) -> np.ndarray:
        if threads is not None:
            torch.set_num_threads(threads)
        lead = block.shape[: block.ndim - len(in_core)]
        batch = int(np.prod(lead)) if lead else 1
        x = torch.from_numpy(np.ascontiguousarray(block)).reshape(batch, *block.shape[len(lead):])
        x = x.to(device=dev, dtype=tdtype)
        if batch == 0:
            sizes = [out_sizes.get(d) if out_sizes and d in out_sizes else da.sizes[d]
                     for d in out_core]
            return np.zeros((*lead, *sizes), dtype=out_np)
        if grad:
            with torch.enable_grad():
                y = fn(x)
        else:
            with torch.inference_mode():
                y = fn(x)
        y = y.detach().to("cpu", tdtype).numpy()
        return y.reshape(*lead, *y.shape[1:])

    if isinstance(da.data, dsa.Array):
        kernel = _Tokenized(kernel)
        rechunk = {d: -1 for d in in_core if len(da.chunksizes.get(d, (1,))) > 1}
        if rechunk:
            da = da.chunk(rechunk)
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
