r"""Observation operators: sparse matrices from a state tensor to observation points.

A thin re-export, kept so that ``xlatda.operators`` imports keep working. The
code lives in two modules named after what they do:

* :mod:`xlatda.obs_geometry`: the interpolation matrices (observation
  geometry: grids, index dimensions, unstructured points) and
  :func:`cos_lat_weights`;
* :mod:`xlatda.sparse_interp`: :class:`ObservationOperator`, the batched
  sparse autograd kernel that applies them.

(:mod:`xlatda.obs.operator` builds operators from a state layout and an
observation table on top of both.) The overview below holds for both.

An observation operator :math:`H` maps a state :math:`x` of shape
``(..., C, *spatial)`` (``C`` channels, i.e. state variables and levels) to the
``P`` values :math:`y = H x` that the observations see. Every operator here is
linear, so :math:`H` is stored as one sparse matrix of shape ``(P, C * S)``
(``S`` the number of spatial points) with a handful of non-zeros per row, and
applying it is a sparse-times-dense product that is batched over members and
samples and differentiable with autograd.

The builders return the spatial part, a sparse CSR matrix ``(P, S)`` whose
rows are interpolation weights (non-negative, summing to one):

* :func:`grid_interpolation_matrix`: bilinear in latitude/longitude on a
  regular (or merely monotonic, e.g. Gaussian) grid, periodic in longitude and
  continued across the poles for global grids;
* :func:`index_interpolation_matrix` and :func:`index_interpolation_matrix_2d`:
  linear or nearest interpolation along generic index dimensions (Lorenz-96's
  ``x``), optionally periodic;
* :func:`nearest_point_matrix`: inverse great-circle-distance weighting over
  the ``k`` nearest points of an unstructured point set.

:class:`ObservationOperator` combines such a matrix with the channel that each
observation measures. This module works on NumPy arrays and torch tensors only;
it knows nothing of xarray.

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
