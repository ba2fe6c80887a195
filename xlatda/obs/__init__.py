"""Observations: the contract, building sets, and the observation operator.

See :mod:`xlatda.obs.contract` for what an observation set is.
"""

from xlatda.obs.contract import ObservationTable, to_tensors, validate
from xlatda.obs.observe import observe
from xlatda.obs.operator import build_operator, footprint_points, spatial_matrix, time_weights
from xlatda.obs.raster import rasterize
from xlatda.obs.sampling import coarsen, concat, from_grid, sample_points, sparsify
from xlatda.obs.tables import from_dataframe, from_stations, parse_times

__all__ = [
    "ObservationTable",
    "build_operator",
    "coarsen",
    "concat",
    "footprint_points",
    "from_dataframe",
    "from_grid",
    "from_stations",
    "observe",
    "parse_times",
    "rasterize",
    "sample_points",
    "sparsify",
    "spatial_matrix",
    "time_weights",
    "to_tensors",
    "validate",
]
