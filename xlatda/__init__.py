"""xlatda: latent data assimilation on xarray.

Importing xlatda registers the ``.lda`` accessor on :class:`xarray.Dataset`
and :class:`xarray.DataArray`. Nothing else global is changed at import.
"""

from xlatda import errors
from xlatda._version import __version__
from xlatda.errors import XlatdaError
from xlatda.options import get_options, set_options

__all__ = [
    "XlatdaError",
    "__version__",
    "errors",
    "get_options",
    "set_options",
]
