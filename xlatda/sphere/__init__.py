"""Spherical harmonics in torch: grids, Legendre functions, transforms.

Tensor-only (no xarray). Angles are radians inside the maths and degrees in
grid coordinates; latitudes run north to south.

Examples
--------
>>> import torch
>>> from xlatda.sphere import SphericalHarmonicTransform, real_sph_harm
>>> sht = SphericalHarmonicTransform(32, 64, dtype=torch.float64)
>>> sht
SphericalHarmonicTransform(nlat=32, nlon=64, lmax=31, mmax=31, grid='gauss', radius=1)
"""

from xlatda.sphere.grids import (
    GRIDS,
    equiangular_grid,
    gaussian_grid,
    latitude_grid,
    longitudes,
)
from xlatda.sphere.harmonics import real_sph_harm, sph_harm_indices
from xlatda.sphere.legendre import associated_legendre, legendre_derivative, legendre_rows
from xlatda.sphere.transform import SphericalHarmonicTransform

__all__ = [
    "GRIDS",
    "SphericalHarmonicTransform",
    "associated_legendre",
    "equiangular_grid",
    "gaussian_grid",
    "latitude_grid",
    "legendre_derivative",
    "legendre_rows",
    "longitudes",
    "real_sph_harm",
    "sph_harm_indices",
]
