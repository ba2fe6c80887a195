"""xlatda: latent data assimilation on xarray.

Importing xlatda registers the ``.lda`` accessor on :class:`xarray.Dataset`
and :class:`xarray.DataArray`. Nothing else global is changed at import.

Everything else loads on first use (PEP 562): ``import xlatda`` costs little
more than ``import xarray`` and does not import torch; ``xlatda.cycle``,
``xlatda.fit`` and the submodules are imported when first touched.
"""

import sys
import types
from importlib import import_module

from xlatda import accessor as _accessor  # noqa: F401  (registers .lda)
from xlatda._version import __version__
from xlatda.errors import XlatdaError
from xlatda.options import get_options, set_options

# Public name -> module that defines it (the name is looked up there).
_LAZY = {
    "CycleResult": "xlatda.cycle",
    "LatentModel": "xlatda.model",
    "PixelScoreModel": "xlatda.generative",
    "StateLayout": "xlatda.layout",
    "assimilate": "xlatda.cycle",
    "assimilate_cases": "xlatda.batch",
    "cycle": "xlatda.cycle",
    "decode": "xlatda.api",
    "encode": "xlatda.api",
    "encode_obs": "xlatda.api",
    "encode_to_zarr": "xlatda.streaming",
    "evolve": "xlatda.forecast",
    "fit": "xlatda.api",
    "fit_dynamics": "xlatda.forecast",
    "fit_latent_obs": "xlatda.latent_obs",
    "fit_representation_error": "xlatda.generative",
    "fit_score": "xlatda.generative",
    "predictive_samples": "xlatda.generative",
    "LatentObservation": "xlatda.latent_obs",
    "forecast": "xlatda.forecast",
    "layout": "xlatda.layout",
    "open_model": "xlatda.io",
}
_SUBMODULES = (
    "baselines", "batch", "datasets", "dynamics", "encoders", "errors", "generative", "io",
    "methods", "metrics", "obs", "plot", "sphere", "streaming",
)

__all__ = [
    "CycleResult",
    "LatentModel",
    "LatentObservation",
    "PixelScoreModel",
    "StateLayout",
    "XlatdaError",
    "__version__",
    "assimilate",
    "assimilate_cases",
    "baselines",
    "batch",
    "cycle",
    "datasets",
    "decode",
    "dynamics",
    "encode",
    "encode_obs",
    "encode_to_zarr",
    "encoders",
    "errors",
    "evolve",
    "fit",
    "fit_dynamics",
    "fit_latent_obs",
    "fit_representation_error",
    "fit_score",
    "forecast",
    "generative",
    "get_options",
    "io",
    "layout",
    "methods",
    "metrics",
    "obs",
    "open_model",
    "plot",
    "predictive_samples",
    "set_options",
    "sphere",
    "streaming",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = import_module(f"xlatda.{name}")
    else:
        raise AttributeError(f"module 'xlatda' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps public functions bound when a submodule of the same name is imported.

    Importing ``xlatda.cycle`` (the module) makes Python set the package's
    attribute ``cycle`` to that module; ``xlatda.cycle`` must stay the
    function (likewise ``layout``, ``forecast`` and ``assimilate``).
    """

    def __setattr__(self, name: str, value) -> None:
        if (name in _LAZY and isinstance(value, types.ModuleType)
                and value.__name__ == f"xlatda.{name}"):
            return  # the function stays (resolved lazily by __getattr__)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
