"""Exceptions raised by xlatda.

Every error raised on purpose by xlatda derives from :class:`XlatdaError`, so
``except xlatda.XlatdaError`` catches them all. Each subclass also derives
from the builtin a user would expect (``ValueError``, ``KeyError``, ...), so
existing ``except ValueError`` code keeps working.

Messages follow one pattern: what was wrong, the value that was seen, and how
to fix it.

Examples
--------
>>> import xlatda
>>> try:
...     raise xlatda.errors.LayoutError("no latitude found; pass lat='name'")
... except ValueError as err:
...     print(type(err).__name__, "-", err)
LayoutError - no latitude found; pass lat='name'
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "ConfigError",
    "DeviceError",
    "FilterDivergenceWarning",
    "KeywordError",
    "LayoutError",
    "ModelStoreError",
    "NonFiniteError",
    "NotFittedError",
    "ObservationError",
    "ObservationScaleWarning",
    "OutOfDistributionWarning",
    "RegionalGridWarning",
    "ShapeError",
    "SmallEnsembleWarning",
    "StoreError",
    "StoreMismatchError",
    "TimeSpanError",
    "UnitsError",
    "UnknownNameError",
    "VariableNotFoundError",
    "XlatdaError",
]


class XlatdaError(Exception):
    """Base class of every error xlatda raises on purpose."""


class _KeyErrorMessage(KeyError):
    # KeyError quotes its argument in str(); we want readable sentences.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LayoutError(XlatdaError, ValueError):
    """A Dataset's dimensions or coordinates cannot form a state layout.

    Raised when no latitude/longitude/time axis can be found, coordinates are
    not monotonic, or a tensor does not fit the layout it is turned back with.
    """


class ShapeError(XlatdaError, ValueError):
    """A tensor or array has a shape that does not fit what is expected."""


class UnitsError(XlatdaError, ValueError):
    """Units of two objects that must agree (state and observations) differ."""


class ObservationError(XlatdaError, ValueError):
    """An observation set breaks the observation contract (see ``xlatda.obs``)."""


class VariableNotFoundError(XlatdaError, _KeyErrorMessage):
    """A variable name was asked for that the Dataset or model does not have."""


class UnknownNameError(XlatdaError, _KeyErrorMessage):
    """A method, encoder or dynamics name is not in its registry."""


class ConfigError(XlatdaError, ValueError):
    """A setting or argument has a value outside what is allowed."""


class KeywordError(ConfigError, TypeError):
    """A keyword (setting, option, store config key) is not one the callee takes.

    The message names the keyword, the closest valid name and the valid ones
    (see :func:`xlatda.validation.check_keywords`). It is a ``TypeError``
    (what Python raises for an unexpected keyword argument) and a
    :class:`ConfigError` (what xlatda raised for unknown method settings).
    """


class NotFittedError(XlatdaError, RuntimeError):
    """A model part (encoder, dynamics, covariance) is used before it is fitted."""


class ModelStoreError(XlatdaError, OSError):
    """A model store cannot be written or read (exists, corrupt, wrong version)."""


class DeviceError(XlatdaError, RuntimeError):
    """A torch device was asked for that is not available."""


class AnalysisError(XlatdaError, ArithmeticError):
    """An analysis cannot be computed (non-finite forecast or observations, overflow).

    Raised instead of a raw ``torch.linalg`` failure when the numbers handed to
    an assimilation kernel make the update meaningless: a diverged forecast
    holding NaN or inf, or observation errors so small that the scaled
    innovations overflow. The message says which quantity was bad and how
    many values; drivers re-raise it naming the analysis time.
    """


class FilterDivergenceWarning(XlatdaError, RuntimeWarning):
    """A cycling filter's innovation statistics left their consistent band.

    Issued by :class:`xlatda.methods.consistency.DivergenceMonitor` when the
    innovation chi-square or the spread/innovation ratio stays outside its
    band for several analyses in a row: the ensemble no longer describes its
    own error (usually under-dispersion; more inflation, members or a
    working localisation help).
    """





class NonFiniteError(XlatdaError, ValueError):
    """A state, background or field holds NaN or inf where finite values are needed.

    The message names the variable and the first bad index (and time).
    """


class StoreError(XlatdaError, OSError):
    """A result store (a cycle's or ``encode_to_zarr``'s zarr store) cannot be written.

    Raised before any work when the target folder is read-only or cannot be
    created; the message names the path and the operating system's reason.
    """


class StoreMismatchError(ConfigError):
    """A store holds another experiment or encoding than the one asked for.

    Raised before any work, instead of resuming into (and mixing with) it.
    """


class TimeSpanError(ObservationError):
    """Observation times lie absurdly far from the background for the model's time step."""


class SmallEnsembleWarning(XlatdaError, UserWarning):
    """A latent ensemble filter with fewer members than latent dimensions + 1.

    ``N`` members span at most ``N - 1`` latent directions; an ensemble
    filter corrects only those, and the error in the others grows (on the
    shallow-water SINR benchmark, latent 128: RMSE 0.132 with 32 members,
    0.059 with 129). Issued once per :func:`xlatda.cycle` call; use more
    members (the default spans the latent space) or ``method="hybrid"``.
    """


class ObservationScaleWarning(XlatdaError, UserWarning):
    """Most observations of a variable lie far outside the background's range.

    Issued by :func:`xlatda.cycle` / :func:`xlatda.assimilate` before any work,
    typically for values in other units than the state (degrees Celsius
    against Kelvin, hPa against Pa) without a ``units`` attribute to refuse
    them by: the gross-error check would reject every one and the analysis
    would be the forecast. Convert the observations (and set their
    ``units``), or silence it with ``warnings.simplefilter("ignore",
    xlatda.errors.ObservationScaleWarning)`` if the background is far off on
    purpose.
    """


class OutOfDistributionWarning(XlatdaError, UserWarning):
    """Latent states far outside the distribution of the training codes.

    Issued (with :func:`warnings.warn`) when a forecast or analysis leaves the
    latent prior by more than a Mahalanobis-distance threshold: the decoder
    and the dynamics are then extrapolating and their output should not be
    trusted. Silence it with ``warnings.simplefilter("ignore",
    xlatda.errors.OutOfDistributionWarning)``.
    """


class RegionalGridWarning(XlatdaError, UserWarning):
    """A spherical encoder (SINR) built on a limited-area grid without ``region``.

    On a regional box the spherical harmonics of the decoder's degrees are
    nearly low-order polynomials, so a SINR on the raw coordinates can hold
    little more than the box's mean gradient. Pass ``region="auto"`` (the box
    is stretched onto a large patch of the sphere), or use
    ``encoder_options=xlatda.encoders.sinr.SINR_PRESETS["regional"]``. If the
    raw coordinates are meant, silence it with ``warnings.simplefilter(
    "ignore", xlatda.errors.RegionalGridWarning)``.
    """
