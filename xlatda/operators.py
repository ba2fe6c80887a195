r"""Observation operators: sparse matrices from a state tensor to observation points.

A thin re-export, kept so that ``xlatda.operators`` imports keep working. The
code lives in two modules named after what they do:

* :mod:`xlatda.obs_geometry`: the interpolation matrices (observation
  geometry: grids, index dimensions, unstructured points) and
  :func:`cos_lat_weights`;
* :mod:`xlatda.sparse_interp`: :class:`ObservationOperator`, the batched
  sparse autograd kernel that applies them.

(:mod:`xlatda.obs.operator` builds operators from a state layout and an
observation table on top of both.) The overview of the operators (what they
map, how the matrices are stored, which builders exist) is the module
docstring of :mod:`xlatda.obs_geometry`.

Examples
--------
>>> import torch
>>> from xlatda.operators import ObservationOperator, grid_interpolation_matrix
>>> lat = torch.linspace(-87.5, 87.5, 36, dtype=torch.float64)
>>> lon = torch.arange(72, dtype=torch.float64) * 5.0
>>> H = grid_interpolation_matrix(lat, lon, [10.0, -45.2, 89.0], [3.0, 358.0, -120.0])
>>> op = ObservationOperator(H, channel=torch.tensor([0, 1, 1]), n_channels=2,
...                          spatial_shape=(36, 72))
>>> x = torch.randn(8, 2, 36, 72)                 # 8 members, 2 variables
>>> tuple(op(x).shape)
(8, 3)
"""

from xlatda.obs_geometry import (
    cos_lat_weights,
    grid_interpolation_matrix,
    index_interpolation_matrix,
    index_interpolation_matrix_2d,
    nearest_point_matrix,
)
from xlatda.sparse_interp import ObservationOperator

__all__ = [
    "ObservationOperator",
    "cos_lat_weights",
    "grid_interpolation_matrix",
    "index_interpolation_matrix",
    "index_interpolation_matrix_2d",
    "nearest_point_matrix",
]
