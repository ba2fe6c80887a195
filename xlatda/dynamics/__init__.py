"""Dynamics (tensors only): latent neural ODEs and physical forecast models
behind one interface (``step``/``integrate``; see :mod:`xlatda.dynamics.physical`)."""

from xlatda.dynamics.latent_ode import LatentODE, dynamics
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
    "Lorenz63",
    "Lorenz96",
    "PhysicalModel",
    "ShallowWater",
    "dynamics",
    "galewsky",
    "physical_models",
    "williamson2",
]
