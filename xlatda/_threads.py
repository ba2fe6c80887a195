"""Torch thread policy at the public boundary: small problems never spin.

Torch runs element-wise and matrix work on an OpenMP pool of intra-op
threads. On tensors of a few thousand values each parallel region lasts
microseconds, and the pool's threads spin-wait between regions: on a busy
machine a two-thread run of a Lorenz-96 filter was five times slower than a
one-thread run. xlatda's public functions therefore run inside
:func:`thread_scope`, which picks a thread count for the call and puts the
previous one back when the call returns (or raises).

The choice follows the ``threads`` option (:func:`xlatda.set_options`):

``"auto"`` (default)
    one thread when the problem is small (``size_hint`` below
    :data:`AUTO_THRESHOLD` values, or no hint), torch's own setting otherwise;
``n`` (a positive int)
    exactly ``n`` threads;
``None``
    torch's setting is left alone.

Guarantees
----------
* The setting torch had before the outermost xlatda call in a thread is
  back when that call returns, in that thread. Nested calls (a public
  function calling another) change nothing further unless they ask for a
  different count, and restore the outer call's count.
* Calls running at the same time in several threads are safe: scopes are
  counted under a lock, and the restore value of every thread is the
  setting from before the first active scope, so no thread keeps another
  call's count after all calls have returned.
* Nothing is changed inside dask tasks: a lazy result is computed later,
  outside the scope, with the worker's own setting (choose it with the
  ``torch_threads`` option). One torch rule to know: a thread that makes its
  first torch call while a scope is active starts with the scope's count
  (torch copies the process-wide value into each new thread once).

Examples
--------
>>> import torch
>>> from xlatda._threads import thread_scope
>>> before = torch.get_num_threads()
>>> with thread_scope(size_hint=100):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from xlatda.errors import ConfigError
from xlatda.options import OPTIONS

__all__ = ["AUTO_THRESHOLD", "choose_threads", "decoded_size", "size_of", "thread_scope",
           "with_thread_scope"]

#: Problems with fewer values than this run on one thread under ``threads="auto"``
#: (2**20 values: 4 MB of float32, where one element-wise pass takes about a
#: millisecond, long enough to amortise waking the pool).
AUTO_THRESHOLD = 1 << 20

_F = TypeVar("_F", bound=Callable[..., Any])

_lock = threading.Lock()
_active = 0  # scopes open in the whole process
_baseline = 0  # torch's setting before the first open scope
_local = threading.local()  # per thread: stack of counts to restore


def choose_threads(size_hint: int | None = None, threads: Any = "option") -> int | None:
    """The intra-op thread count for a problem of ``size_hint`` values.

    Parameters
    ----------
    size_hint : int, optional
        Number of values the call works on (state size x members, samples x
        fields); ``None`` counts as small.
    threads : "auto" or int or None
        The policy; by default the ``threads`` option.

    Returns
    -------
    int or None
        A thread count, or ``None`` to leave torch's setting alone.

    Examples
    --------
    >>> choose_threads(1000, "auto"), choose_threads(10**9, "auto"), choose_threads(10, 3)
    (1, None, 3)
    """
    policy = OPTIONS["threads"] if threads == "option" else threads
    if policy is None:
        return None
    if policy == "auto":
        return 1 if size_hint is None or size_hint < AUTO_THRESHOLD else None
    if isinstance(policy, int) and not isinstance(policy, bool) and policy > 0:
        return policy
    raise ConfigError(f"threads must be 'auto', a positive int or None, got {policy!r}")


@contextmanager
def thread_scope(size_hint: int | None = None, threads: Any = "option") -> Iterator[int | None]:
    """Run a block with the thread count of :func:`choose_threads`, then restore.

    Yields the count chosen (``None``: torch's setting was left alone).
    See the module docstring for the guarantees under nesting and threads.
    """
    target = choose_threads(size_hint, threads)
    if target is None:
        yield None
        return
    import torch

    global _active, _baseline
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    with _lock:
        if _active == 0:
            _baseline = torch.get_num_threads()
        # The count to restore: the enclosing scope's in this thread, else the
        # setting from before any scope (another thread's scope may have changed
        # what a fresh thread would read from torch).
        restore = stack[-1] if stack else _baseline
        _active += 1
        stack.append(target)
        if torch.get_num_threads() != target:
            torch.set_num_threads(target)
    try:
        yield target
    finally:
        with _lock:
            stack.pop()
            _active -= 1
            if torch.get_num_threads() != restore:
                torch.set_num_threads(restore)


def size_of(obj: Any) -> int | None:
    """Number of values in an xarray object (sum over data variables), array or tensor.

    Cheap on dask-backed data (metadata only). ``None`` for anything else.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> size_of(xr.Dataset({"a": ("x", np.zeros(3)), "b": (("x", "y"), np.zeros((3, 2)))}))
    9
    """
    data_vars = getattr(obj, "data_vars", None)
    if data_vars is not None:
        # sizes of the variables themselves (data_vars.values() builds DataArrays)
        return int(sum(obj.variables[k].size for k in data_vars))
    numel = getattr(obj, "numel", None)  # torch tensors
    if callable(numel):
        return int(numel())
    size = getattr(obj, "size", None)
    return int(size) if isinstance(size, int) else None


def decoded_size(z: Any, model: Any, *args: Any, **kwargs: Any) -> int | None:
    """Size hint of decoding latents ``z`` with ``model``: the values produced.

    ``size_of(z) / latent_dim * (channels x grid points)``; for decorators
    of ``decode(z, model, ...)``.
    """
    n = size_of(z)
    try:
        per_sample = model.layout.n_channels * math.prod(model.layout.spatial_shape)
        return None if n is None else n // max(int(model.latent_dim), 1) * per_sample
    except AttributeError:
        return n


def with_thread_scope(
    fn: _F | None = None, *, size: Callable[..., int | None] | None = None
) -> _F | Callable[[_F], _F]:
    """Decorator: run ``fn`` inside :func:`thread_scope`.

    Parameters
    ----------
    fn : callable
        The public function.
    size : callable, optional
        ``size(*args, **kwargs)`` returns the size hint from the call's
        arguments; by default :func:`size_of` of the first argument.

    Examples
    --------
    >>> import torch
    >>> @with_thread_scope
    ... def work(x):
    ...     return torch.get_num_threads()
    >>> work(torch.zeros(10))      # 10 values: small, one thread
    1
    """

    def wrap(f: _F) -> _F:
        @functools.wraps(f)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if OPTIONS["threads"] is None:
                return f(*args, **kwargs)
            if size is not None:
                hint = size(*args, **kwargs)
            else:
                hint = size_of(args[0]) if args else None
            with thread_scope(hint):
                return f(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
