"""Dynamics (tensors only): latent neural ODEs, linear latent models and physical forecast models
behind one interface (``step``/``integrate``; see :mod:`xlatda.dynamics.physical`)."""

from xlatda.dynamics.latent_ode import LatentODE, dynamics
from xlatda.dynamics.linear import LinearDynamics, fit_linear_dynamics
from xlatda.dynamics.physical import (
    CallableModel,
    ForecastModel,
    Lorenz63,
    Lorenz96,
    PhysicalModel,
    physical_models,
)
from xlatda.dynamics.shallow_water import ShallowWater, galewsky, williamson2

__all__ = [
    "CallableModel",
    "ForecastModel",
    "LatentODE",
    "LinearDynamics",
    "Lorenz63",
    "Lorenz96",
    "PhysicalModel",
    "ShallowWater",
    "dynamics",
    "fit_linear_dynamics",
    "galewsky",
    "physical_models",
    "williamson2",
]
