"""Built-in systems that make CF-complete Datasets: Lorenz-63, Lorenz-96 and
(when available) shallow water on the sphere."""

from xlatda.datasets.lorenz import lorenz63, lorenz96
from xlatda.datasets.shallow_water import shallow_water

__all__ = ["lorenz63", "lorenz96", "shallow_water"]
