"""Library-wide options, changed only through :func:`set_options`.

Nothing global is changed at import. Options are defaults for arguments that
every public function also takes explicitly (an explicit argument always
wins).

Examples
--------
>>> import xlatda
>>> with xlatda.set_options(progress=True):
...     xlatda.get_options()["progress"]
True
>>> with xlatda.set_options(progress=False):
...     xlatda.get_options()["progress"]
False

The default, ``progress="auto"``, shows bars in a terminal or a Jupyter
kernel and none when output goes to a file or a CI log; ``get_options``
returns what it resolves to (a bool).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from xlatda.errors import ConfigError, DeviceError

if TYPE_CHECKING:  # torch is imported only when a device or dtype is resolved
    import torch

__all__ = ["get_options", "resolve_device", "resolve_dtype", "set_options"]

_DTYPE_NAMES = ("float32", "float64")

_DEFAULTS: dict[str, Any] = {
    "progress": "auto",
    "device": "cpu",
    "dtype": "float32",
    "torch_threads": None,
    "threads": "auto",
    "max_forecast_steps": 100_000,
}


def _is_torch(value: Any, name: str) -> bool:
    # A torch object can only exist once torch is imported: no import needed here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, getattr(torch, name))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_VALIDATORS = {
    "progress": lambda v: isinstance(v, bool) or v == "auto",
    "device": lambda v: isinstance(v, str) or _is_torch(v, "device"),
    "dtype": lambda v: v in _DTYPE_NAMES or (_is_torch(v, "dtype") and str(v)[6:] in _DTYPE_NAMES),
    "torch_threads": lambda v: v is None or _positive_int(v),
    "threads": lambda v: v is None or v == "auto" or _positive_int(v),
    "max_forecast_steps": _positive_int,
}

_HELP = {
    "progress": "True, False or 'auto'",
    "device": "a torch device string such as 'cpu' or 'cuda:0'",
    "dtype": "'float32' or 'float64'",
    "torch_threads": "None or a positive int",
    "threads": "'auto', a positive int, or None (leave torch's setting alone)",
    "max_forecast_steps": "a positive int",
}

OPTIONS: dict[str, Any] = dict(_DEFAULTS)


def interactive() -> bool:
    """Whether progress bars have someone to show to: standard error is a
    terminal, or the code runs in a Jupyter (IPython) kernel."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # closed or replaced streams
        pass
    return "ipykernel" in sys.modules


def get_options() -> dict[str, Any]:
    """Return a copy of the current options (``progress="auto"`` resolved to a bool,
    :func:`interactive`)."""
    out = dict(OPTIONS)
    if out["progress"] == "auto":
        out["progress"] = interactive()
    return out


class set_options:
    """Set options for a ``with`` block (or until reset, if called plainly).

    Parameters
    ----------
    progress : bool or "auto"
        Show progress bars for training, cycling and large encodes;
        ``"auto"`` (default): in a terminal or a Jupyter kernel, not when
        output goes to a file or a CI log.
    device : str or torch.device
        Default torch device where a function is called with ``device=None``.
    dtype : {"float32", "float64"}
        Default torch dtype where a function is called with ``dtype=None``.
    torch_threads : int or None
        Threads torch may use inside each dask task (None: torch's default).
    threads : "auto" or int or None
        Intra-op torch threads while a public function runs (see
        :mod:`xlatda._threads`): ``"auto"`` (default) runs small problems on
        one thread, so OpenMP threads never spin-wait on tiny tensors, and
        leaves large ones to torch's setting; an int sets exactly that many;
        ``None`` leaves torch's setting alone. Restored when the call returns.
    max_forecast_steps : int
        Most model time steps a cycle may forecast from the background to its
        last observation time (default 100000); observation times further
        ahead (a wrong year or unit) are refused before any work
        (:func:`xlatda.validation.check_time_span`).

    Raises
    ------
    ConfigError
        For an unknown option or a value of the wrong kind.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._old: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key not in _DEFAULTS:
                raise ConfigError(
                    f"unknown option {key!r}; known options are {sorted(_DEFAULTS)}"
                )
            if not _VALIDATORS[key](value):
                raise ConfigError(f"option {key!r} must be {_HELP[key]}, got {value!r}")
        for key, value in kwargs.items():
            self._old[key] = OPTIONS[key]
            OPTIONS[key] = value

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        OPTIONS.update(self._old)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``device`` (or the option default) into an available torch device.

    Raises
    ------
    DeviceError
        If CUDA is asked for and none is available.
    """
    import torch

    dev = torch.device(OPTIONS["device"] if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(dev)!r} was asked for but torch sees no CUDA device; "
            "pass device='cpu' or install a CUDA build of torch"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Turn ``dtype`` (or the option default) into a torch floating dtype."""
    import torch

    value = OPTIONS["dtype"] if dtype is None else dtype
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(value, torch.dtype):
        if value not in dtypes.values():
            raise ConfigError(f"dtype must be float32 or float64, got {value}")
        return value
    try:
        return dtypes[str(value)]
    except KeyError:
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {value!r}") from None
