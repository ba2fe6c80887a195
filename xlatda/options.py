"""Library-wide options, changed only through :func:`set_options`.

Nothing global is changed at import. Options are defaults for arguments that
every public function also takes explicitly (an explicit argument always
wins).

Examples
--------
>>> import xlatda
>>> xlatda.get_options()["progress"]
True
>>> with xlatda.set_options(progress=False):
...     xlatda.get_options()["progress"]
False
>>> xlatda.get_options()["progress"]
True
"""

from __future__ import annotations

from typing import Any

import torch

from xlatda.errors import ConfigError, DeviceError

__all__ = ["get_options", "resolve_device", "resolve_dtype", "set_options"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

_DEFAULTS: dict[str, Any] = {
    "progress": True,
    "device": "cpu",
    "dtype": "float32",
    "torch_threads": None,
}

_VALIDATORS = {
    "progress": lambda v: isinstance(v, bool),
    "device": lambda v: isinstance(v, (str, torch.device)),
    "dtype": lambda v: v in _DTYPES or v in _DTYPES.values(),
    "torch_threads": lambda v: v is None or (isinstance(v, int) and v > 0),
}

_HELP = {
    "progress": "a bool",
    "device": "a torch device string such as 'cpu' or 'cuda:0'",
    "dtype": "'float32' or 'float64'",
    "torch_threads": "None or a positive int",
}

OPTIONS: dict[str, Any] = dict(_DEFAULTS)


def get_options() -> dict[str, Any]:
    """Return a copy of the current options."""
    return dict(OPTIONS)


class set_options:
    """Set options for a ``with`` block (or until reset, if called plainly).

    Parameters
    ----------
    progress : bool
        Show progress bars for training, cycling and large encodes.
    device : str or torch.device
        Default torch device where a function is called with ``device=None``.
    dtype : {"float32", "float64"}
        Default torch dtype where a function is called with ``dtype=None``.
    torch_threads : int or None
        Threads torch may use inside each dask task (None: torch's default).

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
    dev = torch.device(OPTIONS["device"] if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(dev)!r} was asked for but torch sees no CUDA device; "
            "pass device='cpu' or install a CUDA build of torch"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Turn ``dtype`` (or the option default) into a torch floating dtype."""
    value = OPTIONS["dtype"] if dtype is None else dtype
    if isinstance(value, torch.dtype):
        if value not in _DTYPES.values():
            raise ConfigError(f"dtype must be float32 or float64, got {value}")
        return value
    try:
        return _DTYPES[str(value)]
    except KeyError:
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {value!r}") from None
