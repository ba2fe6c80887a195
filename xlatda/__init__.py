"""xlatda: latent data assimilation on xarray.

Importing xlatda registers the ``.lda`` accessor on :class:`xarray.Dataset`
and :class:`xarray.DataArray`. Nothing else global is changed at import.
"""

from xlatda import accessor as _accessor  # noqa: F401  (registers .lda)
from xlatda import batch, datasets, errors, metrics, obs, plot, streaming
from xlatda._version import __version__
from xlatda.api import decode, encode, encode_obs, fit
from xlatda.batch import assimilate_cases
from xlatda.cycle import CycleResult, assimilate, cycle
from xlatda.errors import XlatdaError
from xlatda.forecast import evolve, fit_dynamics, forecast
from xlatda.generative import PixelScoreModel, fit_score
from xlatda.io import open_model
from xlatda.layout import StateLayout, layout
from xlatda.model import LatentModel
from xlatda.options import get_options, set_options
from xlatda.streaming import encode_to_zarr

__all__ = [
    "CycleResult",
    "LatentModel",
    "PixelScoreModel",
    "StateLayout",
    "XlatdaError",
    "__version__",
    "assimilate",
    "assimilate_cases",
    "batch",
    "cycle",
    "datasets",
    "decode",
    "encode",
    "encode_obs",
    "encode_to_zarr",
    "errors",
    "evolve",
    "fit",
    "fit_dynamics",
    "fit_score",
    "forecast",
    "get_options",
    "layout",
    "metrics",
    "obs",
    "open_model",
    "plot",
    "set_options",
    "streaming",
]
