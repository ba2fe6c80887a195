"""Assimilation kernels (tensors only): ensemble Kalman filters, LETKF,
3DVar, 4DEnVar (LEVDA), VAE-Var and score-based posterior sampling (SLAMS),
behind one name registry.

Look methods up by name with :func:`get_method`; an unknown name lists the
known ones.
"""

from xlatda.methods.covariance import (
    Covariance,
    DenseCovariance,
    DiagonalCovariance,
    GaussianCorrelationCovariance,
    ScaledIdentity,
    covariance_from_differences,
)
from xlatda.methods.diffusion import (
    CosineSchedule,
    GaussianEps,
    ScoreMLP,
    ScoreUNet,
    eps_loss,
    fit_score,
    score_networks,
    sliding_windows,
    time_features,
)
from xlatda.methods.ensemble import (
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
from xlatda.methods.envar4d import EnVar4D, EnVar4DResult, envar4d_cost
from xlatda.methods.hybrid import HybridEnKF, hybrid_gain_update
from xlatda.methods.letkf import LETKF, letkf_update
from xlatda.methods.localization import (
    GC_RADIUS_FACTOR,
    GreatCircleDistance,
    IndexDistance,
    Localization,
    gaspari_cohn,
    halfwidth,
)
from xlatda.methods.registry import get_method, method_names, methods
from xlatda.methods.score import ScoreDA, guided_eps
from xlatda.methods.vaevar import (
    VAE4DVar,
    VAEVar,
    VAEVarResult,
    background_errors,
    flat_decoder,
    vaevar_increment_covariance,
)
from xlatda.methods.var3d import Var3D, Var3DResult

__all__ = [
    "ETKF",
    "GC_RADIUS_FACTOR",
    "LETKF",
    "CosineSchedule",
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
    "GaussianEps",
    "GreatCircleDistance",
    "HybridEnKF",
    "IndexDistance",
    "Localization",
    "ScaledIdentity",
    "ScoreDA",
    "ScoreMLP",
    "ScoreUNet",
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
    "eps_loss",
    "etkf_update",
    "fit_score",
    "flat_decoder",
    "gaspari_cohn",
    "get_method",
    "guided_eps",
    "halfwidth",
    "hybrid_gain_update",
    "inflate",
    "letkf_update",
    "method_names",
    "methods",
    "random_rotation",
    "relax_to_prior_perturbations",
    "relax_to_prior_spread",
    "score_networks",
    "sliding_windows",
    "time_features",
    "vaevar_increment_covariance",
]
