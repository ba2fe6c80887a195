"""Assimilation kernels (tensors only): ensemble Kalman filters, LETKF,
3DVar, 4DEnVar (LEVDA) and VAE-Var, behind one name registry.

Look methods up by name with :func:`get_method`; an unknown name lists the
known ones.
"""

from xlatda.assimilate.covariance import (
    Covariance,
    DenseCovariance,
    DiagonalCovariance,
    GaussianCorrelationCovariance,
    ScaledIdentity,
    covariance_from_differences,
)
from xlatda.assimilate.ensemble import (
    ETKF,
    DEnKF,
    EnKF,
    EnsembleMethod,
    EnSRF,
    denkf_update,
    enkf_update,
    ensrf_update,
    etkf_update,
    inflate,
    random_rotation,
    relax_to_prior_perturbations,
    relax_to_prior_spread,
)
from xlatda.assimilate.envar4d import EnVar4D, EnVar4DResult, envar4d_cost
from xlatda.assimilate.letkf import LETKF, letkf_update
from xlatda.assimilate.localization import (
    GC_RADIUS_FACTOR,
    GreatCircleDistance,
    IndexDistance,
    Localization,
    gaspari_cohn,
    halfwidth,
)
from xlatda.assimilate.registry import get_method, method_names, methods
from xlatda.assimilate.vaevar import (
    VAE4DVar,
    VAEVar,
    VAEVarResult,
    background_errors,
    flat_decoder,
    vaevar_increment_covariance,
)
from xlatda.assimilate.var3d import Var3D, Var3DResult

__all__ = [
    "ETKF",
    "GC_RADIUS_FACTOR",
    "LETKF",
    "Covariance",
    "DEnKF",
    "DenseCovariance",
    "DiagonalCovariance",
    "EnKF",
    "EnSRF",
    "EnVar4D",
    "EnVar4DResult",
    "EnsembleMethod",
    "GaussianCorrelationCovariance",
    "GreatCircleDistance",
    "IndexDistance",
    "Localization",
    "ScaledIdentity",
    "VAE4DVar",
    "VAEVar",
    "VAEVarResult",
    "Var3D",
    "Var3DResult",
    "background_errors",
    "covariance_from_differences",
    "denkf_update",
    "enkf_update",
    "ensrf_update",
    "envar4d_cost",
    "etkf_update",
    "flat_decoder",
    "gaspari_cohn",
    "get_method",
    "halfwidth",
    "inflate",
    "letkf_update",
    "method_names",
    "methods",
    "random_rotation",
    "relax_to_prior_perturbations",
    "relax_to_prior_spread",
    "vaevar_increment_covariance",
]
