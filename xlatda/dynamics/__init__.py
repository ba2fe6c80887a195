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

__all__ = [
    "CallableModel",
    "ForecastModel",
    "LatentODE",
    "Lorenz63",
    "Lorenz96",
    "PhysicalModel",
    "dynamics",
    "physical_models",
]
