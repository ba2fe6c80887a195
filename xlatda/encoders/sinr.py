r"""SINR: a spherical implicit neural representation with an auto-decoding encoder.

The decoder of LAINR (Li, Dong and Zhang) is a *multiplicative filter network*
whose filters are real spherical harmonics. For a point :math:`p` on the sphere
(colatitude :math:`\theta`, longitude :math:`\lambda`), layer :math:`l = 0..L`
has the filter

.. math::

    g_l(p) = A_l\, \big[\, \tilde Y_{|m| + l}^{m}(p) \,\big]_{m=-F..F} + c_l
    \in \mathbb{R}^H,

a linear map of :math:`2F + 1` fixed harmonics (degree :math:`|m| + l`, order
:math:`m`; :math:`F` = ``max_freq``, :math:`H` = ``hidden``), and the hidden
states and the output of channel :math:`c` with code :math:`a_c` are

.. math::

    h_0 = g_0(p), \qquad
    h_l = \big(W_l h_{l-1} + b_l + S_l a_c\big) \odot g_l(p) \quad (l = 1..L),
    \qquad
    u_c(p) = \beta_c + \sum_{l=0}^{L} w_{l,c}^{\top} h_l .

Channels share the filters and the layers :math:`W_l, b_l, S_l`; each has its
own code :math:`a_c` (shift modulation) and its own read-out row
:math:`w_{l,c}, \beta_c`. The latent vector is the concatenation
:math:`z = [a_1; \dots; a_C]`, so ``latent_dim = n_channels * code_dim``.
:math:`\tilde Y = \sqrt{4\pi}\, Y` are the orthonormal real harmonics of
:func:`xlatda.sphere.real_sph_harm` scaled to unit mean square on the sphere
(a constant absorbed in :math:`A_l`; it only makes the initialisation simple).

**Band limit.** A product of harmonics of degrees :math:`\le d_1` and
:math:`\le d_2` is a sum of harmonics of degree :math:`\le d_1 + d_2`, and an
affine map does not raise the degree. :math:`g_l` has degree :math:`\le F + l`,
so :math:`\deg h_l \le \deg h_{l-1} + F + l` and

.. math::

    D_{\max} = \sum_{l=0}^{L} (F + l) = (L + 1) F + \frac{L (L + 1)}{2}.

Every decoded field is a finite sum of spherical harmonics of degree
:math:`\le D_{\max}` (``SINR.max_degree``); the bound is reached for generic
weights (the top-degree Gaunt coefficient of sectoral harmonics is non-zero).
With the paper's ``F = 8``, ``L = 8``: :math:`D_{\max} = 108`.

**The decoder is affine in the code.** The network has no activation
function: the code enters by the shift :math:`S_l a_c`, and the only products
are with the filters :math:`g_l(p)`, which depend on position alone. By
induction every :math:`h_l` is affine in :math:`a_c`, hence

.. math::

    u_c(p) = d_c(p) + J_c(p)\, a_c

*exactly*, for any weights (:meth:`SINR.affine_map`). :math:`d` is one
forward pass at code zero; :math:`J(p) = \sum_l S_l^\top \lambda_l(p)` with
the adjoints :math:`\lambda_L = w_{L,c} \odot g_L`,
:math:`\lambda_l = g_l \odot (w_{l,c} + W_{l+1}^\top \lambda_{l+1})`: one
backward pass gives the Jacobian at every point at once, since each point's
output depends only on its own hidden states. (So a SINR decoder spans, per
channel, an affine subspace of dimension ``code_dim`` of band-limited
fields: a learned, mesh-free basis, comparable to PCA per channel.)

**Encoder.** LAINR's encoder is auto-decoding,

.. math::

    E(x) = \arg\min_z \frac{\sum_p w_p (D(z; p) - x_p)^2}{\sum_p w_p}
           + \frac{\rho}{K C} \sum_c \lVert (a_c - \bar a_c) / s_c \rVert^2,
    \qquad w_p \propto \cos(\mathrm{lat}_p),

(:math:`\bar a, s`: mean and spread of the training codes; :math:`\rho` =
``encode_ridge``, default 0). With an affine decoder this is a weighted linear
least-squares problem per sample and channel: ``method="solve"`` (default)
solves it exactly by a ``K x K`` Cholesky factorisation per channel shared
by the whole batch (Gauss-Newton converges in one step), which is the
global minimum, so its misfit is never above that of any iterative
optimiser. ``method="adam"`` keeps the paper's iterative auto-decoding
(Adam on :math:`z` from the mean training code, per-sample reduce-on-plateau,
best :math:`z` kept). Both work at whatever points :math:`x` is given
(``encode_from``: "zero-shot" encoding of scattered observations).
Training optimises one code per training snapshot (an embedding table, sparse
Adam) jointly with the decoder weights (dense Adam), with two learning rates;
the codes of the training snapshots are kept, by index (``train_codes``,
``encode(x, training_index=...)``).

**Latent coordinates.** Since the decoder is affine in each code, any
invertible affine reparametrisation :math:`a_c = o_c + M_c z_c` represents
the same fields. ``latent_basis="pca"`` takes, per channel, the Gram matrix
:math:`G_c = J_c^\top W J_c / \sum_p w_p` of the cos-lat weighted misfit and
the covariance :math:`S_c` of the training codes, and the eigenvectors
:math:`G_c^{1/2} S_c G_c^{1/2} = V_c \Lambda_c V_c^\top` (descending), with
:math:`o_c = \bar a_c`, :math:`M_c = G_c^{-1/2} V_c`: the latent is then the
principal components of the training decodes within SINR's span, so the
training latents are uncorrelated (variances :math:`\Lambda_c`) and
:math:`\lVert z_c - z_c' \rVert^2` is the weighted mean square of the
decoded difference. Raw codes are far from that (on the shallow-water
benchmark their covariance has eigenvalues from 1e-9 to 0.14 while every
code has a spread of 0.03-0.16), which is what made latent ensembles with
independent per-coordinate spread leave the training distribution.

**Linear path and PCA start** (``linear_degree``; xlatda's addition, preset
``"cpu_linear"``). A channel of this decoder spans an affine
``code_dim``-dimensional subspace of band-limited fields, and the best such
subspace for the training fields is their (cos-lat weighted) PCA. Trained
from random weights at CPU budgets the network gets far from it (on the
shallow-water benchmark a held-out floor of 0.14-0.17 against 0.03 for
per-channel PCA with 64 components). With ``linear_degree = T`` the output
gets a linear term in the code,

.. math::

    u_c(p) \mathrel{+}= \phi(p)^{\top} \big(\beta_c + B_c\, a_c\big),

:math:`\phi(p)` = all :math:`(T + 1)^2` real harmonics of degree
:math:`\le T` (scaled to unit mean square, on the stretched coordinates of a
regional box), so the decoder stays mesh-free, band-limited (degree
:math:`\le \max(D_{\max}, T)`) and affine in the code. The first step of
:meth:`SINR.fit` (:meth:`SINR.init_pca`) sets :math:`\beta_c, B_c` to the
mean and the leading ``code_dim`` EOFs of the training fields' weighted
least-squares projection on :math:`\phi`, and the network's read-outs to
zero: the untrained decoder *is* that PCA (on fields of degree
:math:`\le T`, exactly their weighted PCA per channel). Training then adds
the network as a residual; ``lr_linear`` is the path's learning rate
(``None``: ``lr_weights``; ``0``: frozen, the preset's choice), and with
validation data the PCA start competes as an epoch of its own.
``linear_degree="auto"`` takes the degree the grid resolves
(``nlat - 1`` on a global Gauss grid). Measured (``benchmarks/bench_sinr.py``):
held-out ERA5 t2m 0.466 / 0.360 K at latent 32 / 64 (LAINR's decoder alone
0.509 / 0.401, PCA 0.460 / 0.352); shallow-water encoding floor 0.027 (was
0.145). But the shallow-water latent EnKF with it diverged (0.430 against a
free run of 0.291; without the path 0.239), a cause not yet found, so the
``"cpu"`` preset (for latent assimilation) keeps LAINR's decoder alone.

*Grid fit and prior* (``linear_fit="grid"``, ``linear_prior``). On a regional
patch the harmonics of degree :math:`\le T` are far from independent at the
grid points (UK box, conformal map, degree 55: numerical rank 1037 of 3136
harmonics at 1617 points), so the projection fit loses the part of every
field they cannot hold (0.05 K on the training fields, 0.07 K held out) and
the PCA start trails the grid PCA (held out 0.463 against 0.460 K at latent
32). With ``linear_fit="grid"`` the EOFs are taken from the grid values and
written in the harmonics as the interpolant of the path's Sobolev prior
(:meth:`SINR._init_linear_grid`); on a region ``linear_degree="auto"`` then
takes twice the patch's Shannon number of harmonics, which interpolates the
grid (UK box, ``region_stretch="box"``: degree 86, rank 1617 of 1617, fit
error 0.0003 K, held out 0.0008), so the untrained decoder is the grid PCA at the
grid points and smooth between them. Since a channel is an affine subspace and PCA is
the training optimum, training cannot beat that start on the training
fields; on ERA5 the network residual trained from it lowers the training
error and raises the validation error from the first epochs (lr 2e-2:
training 0.238 -> 0.220 K, validation 0.313 -> 0.340 K in 40 epochs), so
validation keeps the start. What the spherical basis adds is a prior:
``linear_prior = gamma`` shrinks the training covariance towards the
prior's covariance of the harmonic expansion before the EOFs are taken
(``S + gamma tr(S) / tr(K) K``), a smoothness prior on the EOFs that costs
training error and generalises better. UK box, latent 32, ``s = 2``,
validation RMSE at gamma 0 / 0.3 / 1 / 3: 0.348 / 0.322 / 0.313 / 0.318 K.
Use ``region_stretch="box"`` with the grid fit: the conformal map packs the
columns closer than the rows, so the degree that interpolates its columns
(112 on the UK box) is far above what its rows resolve (47), and the
interpolant oscillates between the rows. Fitted on every other row and
column of the UK box and decoded at the dropped validation points (latent
32, no prior): conformal 1.65 K at ``s = 2`` (0.43 at ``s = 3``), box 0.41
K, PCA with bilinear blending 0.40 K; with the box stretch and prior 1:
0.38 K.

**Limited-area domains.** On a regional box (e.g. the 8 x 12 degree UK
box of the ERA5 sample) every harmonic of degree :math:`\le D_{\max}` is
nearly a low-order polynomial, so a SINR on raw coordinates represents
little more than the box's mean gradient. With ``region="auto"`` (or an
explicit box) the coordinates are first stretched isotropically onto a
patch of up to 120 x 180 degrees (:func:`region_to_sphere`, a factor ``k``
of 15 for the UK box): a degree-:math:`D` harmonic then has half-wavelength
:math:`180 / (D k)` degrees in the box. The cos-lat weights of the misfit
use the true latitudes. The conformal map keeps the box's shape, so a grid
regular in degrees has its columns closer than its rows on the patch (1.7
times for the UK box), and the patch covers a quarter of the sphere;
``region_stretch="box"`` stretches latitude and longitude separately onto
[-60, 60] x [-90, 90] (43 % of the sphere, rows and columns 3.75 degrees
apart), where the same degree holds more of the grid (UK box, degree 47:
rank 1271 against 878, projection error held out 0.053 against 0.096 K).
Decoding and encoding work at any point within the patch (points beyond its
poles are refused).

**Presets.** :data:`SINR_PRESETS` holds a ``"cpu"`` setting (trains in
about a minute at 32 x 64; LAINR's decoder, latents in the PCA basis, for
latent assimilation), ``"cpu_linear"`` (plus the linear path from the PCA),
``"regional"`` (for a limited-area grid: ``region="auto"``, the box stretch,
the grid fit of the linear path with ``linear_prior="auto"``) and the
paper's ``"paper"`` setting (hidden 128, depth 8, ``F = 8``, no linear path;
for a GPU); :meth:`SINR.from_preset` builds one.

Shapes: ``x (B, C, *spatial)``; ``z (B, C * code_dim)``; ``points (P, 2)``
latitude/longitude in degrees; ``channel (P,)``; ``values (B, P)``.

References
----------
Li, Z., Dong, B. and Zhang, P. (2023). Latent assimilation with implicit
neural representations for unknown dynamics. arXiv:2309.09574 (J. Comput.
Phys.).

Fathony, R., Sahu, A. K., Willmott, D. and Kolter, J. Z. (2021).
Multiplicative filter networks. ICLR.

Park, J. J. et al. (2019). DeepSDF: learning continuous signed distance
functions for shape representation (auto-decoding). CVPR.

Examples
--------
>>> import torch
>>> from xlatda.encoders.sinr import SINR
>>> grid = {"kind": "latlon", "lat": [60.0, 20.0, -20.0, -60.0],
...         "lon": [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]}
>>> enc = SINR(2, (4, 6), latent_dim=8, grid=grid, hidden=8, depth=2, max_freq=2)
>>> enc.max_degree
9
>>> x = torch.randn(3, 2, 4, 6)
>>> hist = enc.fit(x, epochs=2, batch_size=3, seed=0, progress=False)
>>> z = enc.encode(x, steps=5)
>>> z.shape, enc.decode(z).shape
(torch.Size([3, 8]), torch.Size([3, 2, 4, 6]))
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xlatda import sphere
from xlatda.encoders.base import Encoder, encoders
from xlatda.encoders.sinr_prior import choose_prior, shrunk_eofs
from xlatda.encoders.training import minimise_per_sample
from xlatda.errors import ConfigError, RegionalGridWarning, ShapeError
from xlatda.options import get_options, resolve_device, resolve_dtype

__all__ = ["SINR", "SINR_PRESETS", "region_to_sphere", "sinr_max_degree"]

#: Encoders of :meth:`SINR.encode` / :meth:`SINR.encode_from`.
_METHODS = ("solve", "adam")
#: How :meth:`SINR.fit` obtains the training codes.
_FIT_CODES = ("table", "solve")
#: Coordinates of the latent vector (see :class:`SINR`, ``latent_basis``).
_LATENT_BASES = ("codes", "pca")
#: How :meth:`SINR.init_pca` sets the linear path (see :class:`SINR`, ``linear_fit``).
_LINEAR_FITS = ("projection", "grid")
#: Relative noise of the grid fit's interpolation (``linear_fit="grid"``): the ridge is this
#: times the mean prior variance at the grid points.
_GRID_FIT_RIDGE = 1e-9
#: A grid spanning less than this (latitude, longitude) in degrees is regional: SINR warns
#: when it is built on one without ``region`` (see :class:`~xlatda.errors.RegionalGridWarning`).
_REGIONAL_SPAN = (60.0, 90.0)
#: Points whose affine maps are computed at once (float64 activations of
#: ``(chunk, hidden)`` per layer).
_AFFINE_CHUNK = 8192

# Elements of one (sample, channel, point, hidden) activation that a chunk of
# decoding / auto-decoding may hold at once (float32: 4 bytes each).
_CHUNK_ELEMENTS = 2**24
# Point sets whose harmonics decode_at / encode_from keep (see _point_features).
_POINT_CACHE_SIZE = 4


def sinr_max_degree(max_freq: int, depth: int) -> int:
    """Largest spherical-harmonic degree a SINR decoder can output.

    Parameters
    ----------
    max_freq : int
        ``F``: filter ``l`` uses the harmonics ``Y_{|m|+l}^m``, ``m = -F..F``.
    depth : int
        ``L``: number of multiplicative layers after the first filter.

    Returns
    -------
    int
        ``D_max = (L + 1) F + L (L + 1) / 2`` (see the module docstring).

    Examples
    --------
    >>> sinr_max_degree(8, 8), sinr_max_degree(2, 2), sinr_max_degree(3, 0)
    (108, 9, 3)
    """
    f, d = int(max_freq), int(depth)
    return (d + 1) * f + d * (d + 1) // 2


#: Named SINR settings: constructor keywords for :class:`SINR` (or ``encoder_options`` of
#: :func:`xlatda.fit`; there ``fit``'s own ``epochs`` / ``batch_size`` take precedence).
#: ``"cpu"`` trains a 32 x 64 two-channel shallow-water model in about a minute on one
#: CPU core (hidden 64, depth 4, ``D_max = 50``; variable-projection training, random
#: point subsets; latents in the ``"pca"`` basis, for latent assimilation);
#: ``"cpu_linear"`` is ``"cpu"`` plus a frozen linear spherical-harmonic path of the grid's
#: degree started at the training PCA, the network a residual on it (far lower
#: reconstruction error; but on the shallow-water benchmark its latent EnKF diverged,
#: see the module docstring); ``"regional"`` is ``"cpu_linear"`` for a limited-area grid: the
#: box stretched onto the sphere (``region="auto"``, ``region_stretch="box"``), the path
#: fitted to the grid values (``linear_fit="grid"``) with its smoothness prior chosen by
#: cross-validation (``linear_prior="auto"``); give ``fit`` validation data so the PCA start
#: competes with the trained residual (training stops after 10 epochs without a better
#: validation score); ``"paper"`` is
#: LAINR's decoder (hidden 128, depth 8, ``F = 8``,
#: ``D_max = 108``; with the paper's latent 400 = 2 channels x 200 at 64 x 128), the
#: paper's two learning rates and code table, for a GPU.
_CPU_PRESET: dict[str, Any] = {
    "hidden": 64,
    "depth": 4,
    "max_freq": 8,
    "epochs": 80,
    "batch_size": 16,
    "points_per_batch": 512,
    "lr_weights": 2e-2,
    "lr_codes": 2e-2,
    "fit_codes": "solve",
    "encode_method": "solve",
    "latent_basis": "pca",
}
SINR_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(_CPU_PRESET),
    "cpu_linear": {**_CPU_PRESET, "linear_degree": "auto", "lr_linear": 0.0},
    "regional": {**_CPU_PRESET, "region": "auto", "region_stretch": "box",
                 "linear_fit": "grid", "linear_degree": "auto", "lr_linear": 0.0,
                 "linear_prior": "auto", "patience": 10},
    "paper": {
        "hidden": 128,
        "depth": 8,
        "max_freq": 8,
        "epochs": 400,
        "batch_size": 16,
        "lr_weights": 5e-3,
        "lr_codes": 1e-2,
        "fit_codes": "table",
        "encode_method": "solve",
        "encode_steps": 1000,
        "encode_lr": 1e-2,
    },
}

#: Half-extent (degrees) of the spherical patch a regional box is stretched onto: the
#: box's latitude range fills at most [-60, 60] and its longitude range [-90, 90].
_REGION_HALF_LAT = 60.0
_REGION_HALF_LON = 90.0
#: Maps of a regional box onto the sphere (see :func:`region_to_sphere`).
_STRETCHES = ("conformal", "box")


def _wrap180(deg: Tensor) -> Tensor:
    return torch.remainder(deg + 180.0, 360.0) - 180.0


def _resolve_region(region: Any, lat: Tensor, lon: Tensor) -> dict[str, list[float]] | None:
    """``None``, ``"auto"`` (the grid's bounding box) or ``{"lat": [S, N], "lon": [W, E]}``.

    Returns the box as a JSON-serialisable dict (``None`` for the whole sphere).
    """
    if region is None:
        return None
    if isinstance(region, str):
        if region != "auto":
            raise ConfigError(
                f"region must be None, 'auto' or {{'lat': [south, north], 'lon': [west, east]}}"
                f" (degrees), got {region!r}"
            )
        ref = float(lon.reshape(-1)[0])
        rel = _wrap180(lon - ref)  # eastward offsets from the first point, in [-180, 180)
        return {"lat": [float(lat.min()), float(lat.max())],
                "lon": [ref + float(rel.min()), ref + float(rel.max())]}
    try:
        south, north = (float(v) for v in region["lat"])
        west, east = (float(v) for v in region["lon"])
    except (TypeError, KeyError, ValueError) as err:
        raise ConfigError(
            "region must be None, 'auto' or {'lat': [south, north], 'lon': [west, east]} "
            f"(degrees), got {region!r}"
        ) from err
    if not (-90.0 <= south < north <= 90.0):
        raise ConfigError(f"region latitudes need -90 <= south < north <= 90, got {[south, north]}")
    width = (east - west) % 360.0
    if width == 0.0:
        raise ConfigError(f"region longitudes span nothing: {[west, east]}; use region=None "
                          "for a global domain")
    return {"lat": [south, north], "lon": [west, west + width]}


def region_to_sphere(
    region: dict[str, Any], lat: Tensor, lon: Tensor, stretch: str = "conformal"
) -> tuple[Tensor, Tensor]:
    r"""Stretch a latitude/longitude box onto a large patch of the sphere.

    A limited-area domain covers a small part of the sphere, where harmonics of
    degree :math:`\le D_{\max}` are nearly polynomials of low order (the UK box
    of 8 x 12 degrees is a fifth of the shortest wavelength of degree 10): a
    SINR on raw coordinates could only represent the box's mean gradient. The
    box is therefore mapped to a patch centred on (0, 0) by the isotropic map

    .. math::

        \phi' = k\,(\phi - \phi_c), \qquad
        \lambda' = k \cos\phi_c\,(\lambda - \lambda_c),
        \qquad k = \max\Big(1, \min\Big(\frac{60}{\Delta\phi / 2},
        \frac{90}{\cos\phi_c\, \Delta\lambda / 2}\Big)\Big),

    (:math:`\phi_c, \lambda_c`: the box centre; :math:`\Delta\phi, \Delta\lambda`
    its extent), so the box fills at most latitudes [-60, 60] and longitudes
    [-90, 90] and a degree-:math:`D` harmonic has half-wavelength
    :math:`180 / (D k)` degrees in the box. Distances keep their ratio at the
    box centre (the map is conformal there). Points up to :math:`30 / k`
    degrees of latitude outside the box are still on the patch.

    ``stretch="box"`` stretches latitude and longitude separately,

    .. math::

        \phi' = k_\phi (\phi - \phi_c), \quad \lambda' = k_\lambda (\lambda - \lambda_c),
        \qquad k_\phi = \max\Big(1, \frac{60}{\Delta\phi / 2}\Big), \quad
        k_\lambda = \max\Big(1, \frac{90}{\Delta\lambda / 2}\Big),

    so the box fills the whole patch [-60, 60] x [-90, 90] and a grid that is
    regular in degrees stays regular there (for the 0.25-degree UK box: 3.75
    degrees in both directions, where the conformal map packs the columns 1.7
    times closer than the rows, so harmonics of a given degree resolve the
    rows but not the columns). Not conformal: east-west distances in the box
    are stretched :math:`1 / \cos\phi_c` times more than north-south ones.

    Parameters
    ----------
    region : dict
        ``{"lat": [south, north], "lon": [west, east]}`` in degrees (east may
        exceed 180; the box runs eastwards from ``west``).
    lat, lon : Tensor
        Degrees, any matching shapes.
    stretch : {"conformal", "box"}
        The map (see above; default ``"conformal"``).

    Returns
    -------
    (Tensor, Tensor)
        Latitude and longitude on the sphere (degrees, float64).

    Raises
    ------
    ShapeError
        For points whose image lies beyond a pole (too far outside the box).

    Examples
    --------
    >>> import torch
    >>> box = {"lat": [50.0, 58.0], "lon": [-10.0, 2.0]}
    >>> la, lo = region_to_sphere(box, torch.tensor([50.0, 54.0, 58.0]),
    ...                           torch.tensor([-10.0, -4.0, 2.0]))
    >>> [round(v, 1) for v in la.tolist()], [round(v, 1) for v in lo.tolist()]
    ([-60.0, 0.0, 60.0], [-52.9, 0.0, 52.9])
    """
    south, north = (float(v) for v in region["lat"])
    west, east = (float(v) for v in region["lon"])
    east = west + (east - west) % 360.0  # the box runs eastwards from west
    lat = torch.as_tensor(lat, dtype=torch.float64)
    lon = torch.as_tensor(lon, dtype=torch.float64)
    lat_c, lon_c = 0.5 * (south + north), 0.5 * (west + east)
    cos_c = max(math.cos(math.radians(lat_c)), 1e-6)
    half_lat, half_lon = 0.5 * (north - south), 0.5 * (east - west) * cos_c
    if stretch not in _STRETCHES:
        raise ConfigError(f"region_stretch must be one of {_STRETCHES}, got {stretch!r}")
    if stretch == "box":
        k_lat = max(1.0, _REGION_HALF_LAT / max(half_lat, 1e-9))
        k_lon = max(1.0, _REGION_HALF_LON / max(0.5 * (east - west), 1e-9))
        k = k_lat
    else:
        k = max(1.0, min(_REGION_HALF_LAT / max(half_lat, 1e-9),
                         _REGION_HALF_LON / max(half_lon, 1e-9)))
        k_lat, k_lon = k, k * cos_c
    lat_s = k_lat * (lat - lat_c)
    lon_s = k_lon * _wrap180(lon - lon_c)
    bad = (lat_s.abs() > 90.0) | (lon_s.abs() > 180.0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(-1))[0])
        raise ShapeError(
            f"{int(bad.sum())} point(s) lie too far outside the model's region {region} "
            f"(e.g. lat {float(lat.reshape(-1)[i]):.3f}, lon {float(lon.reshape(-1)[i]):.3f}): "
            f"a regional SINR decodes within {90.0 / k:.2f} degrees of latitude of the box "
            f"centre {lat_c:.2f}; drop those points"
        )
    return lat_s, lon_s


def _code_scale(codes: Tensor) -> Tensor:
    """Spread of the training codes per element, ``(latent_dim,)``: the ridge's units.

    The standard deviation over the snapshots, floored at 1e-3 of its mean
    (and 1 with a single snapshot, where there is no spread to measure).
    """
    codes = codes.detach()
    if codes.shape[0] < 2:
        return torch.ones_like(codes[0])
    std = codes.std(0)
    floor = 1e-3 * float(std.mean()) + torch.finfo(codes.dtype).tiny
    return std.clamp_min(floor)


def _weighted_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted mean squared error.

    ``pred, target (B, *S)``; ``weight`` broadcastable to ``(B, *S)`` with zeros
    where ``target`` is missing. Returns ``(B,)``:
    ``sum w (pred - target)^2 / sum w`` over all non-batch dimensions.
    """
    w = weight.expand_as(pred)
    dims = tuple(range(1, pred.dim()))
    num = (w * (pred - target) ** 2).sum(dims)
    return num / w.sum(dims).clamp_min(torch.finfo(pred.dtype).tiny)


_SKETCH_SIZE = 4
_SKETCH_TOL = 1e-4


def _sketch(x: Tensor) -> Tensor:
    """A few fixed quasi-random projections of each sample: ``(B, ...) -> (B, 4)``.

    Used to recognise training snapshots in :meth:`SINR.encode`: equal fields
    (up to rounding) give equal sketches, distinct snapshots differ by orders
    of magnitude more than the tolerance. Computed in float64; the projection
    weights are a deterministic function of the flat index (nothing stored).
    """
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    n = flat.shape[1]
    idx = torch.arange(n, dtype=torch.float64, device=flat.device)
    k = torch.arange(1, _SKETCH_SIZE + 1, dtype=torch.float64, device=flat.device)
    proj = torch.cos(0.7548776662466927 * idx[:, None] * k + 0.5698402909980532 * k * k)
    return flat @ proj / math.sqrt(max(1, n))


@encoders.register("sinr")
class SINR(Encoder):
    r"""Spherical implicit neural representation with auto-decoding (LAINR).

    Parameters
    ----------
    n_channels : int
        Number of state channels ``C``.
    spatial_shape : sequence of int
        ``(nlat, nlon)`` for a ``"latlon"`` grid, ``(S,)`` for ``"points"``.
    latent_dim : int
        Size of ``z``; must be a multiple of ``n_channels`` (one code of
        ``latent_dim // n_channels`` numbers per channel).
    grid : dict
        ``{"kind": "latlon", "lat": [...], "lon": [...]}`` or
        ``{"kind": "points", "lat": [...], "lon": [...]}`` (degrees). Required:
        the decoder is a function of position.
    hidden : int
        Width ``H`` of the hidden layers (paper: 128).
    depth : int
        Number ``L`` of multiplicative layers after the first filter (paper: 8).
    max_freq : int
        ``F``: each filter sees ``2F + 1`` harmonics (paper: 8).
    seed : int
        Seed of the weight initialisation (and default seed of :meth:`fit`).
    epochs, batch_size, lr_codes, lr_weights, points_per_batch, patience, val_steps
        Defaults of :meth:`fit` (see there).
    encode_steps, encode_lr
        Defaults of the auto-decoding in :meth:`encode` / :meth:`encode_from`.
    code_init_std : float
        Standard deviation of the initial training codes.
    region : None, "auto" or dict
        The spatial domain. ``None`` (default): the whole sphere, harmonics of
        the raw coordinates. For a limited-area grid pass ``"auto"`` (the
        grid's bounding box) or ``{"lat": [south, north], "lon": [west,
        east]}``: the box is stretched onto a large patch of the sphere by
        :func:`region_to_sphere` before the harmonics are evaluated, so the
        band limit ``D_max`` resolves structure inside the box instead of
        wasting it on the rest of the globe. Points far outside the box are
        refused by :meth:`decode_at` / :meth:`encode_from`.
    latent_basis : {"codes", "pca"}
        Coordinates of the latent vector. ``"codes"`` (default; LAINR's): the
        raw shift-modulation codes ``a_c``. ``"pca"``: after :meth:`fit`, the
        principal components of the training decodes in SINR's own span, per
        channel, ``a_c = \bar a_c + G_c^{-1/2} V_c z_c`` (see the module
        docstring): the same decoded fields, but training latents that are
        uncorrelated with descending variances, and latent distances that
        are cos-lat weighted RMS field distances. Raw codes are strongly
        correlated (covariance eigenvalues spanning 8 orders of magnitude on
        shallow water), so independent per-coordinate perturbations of them
        leave the training distribution; use ``"pca"`` for latent
        assimilation and latent dynamics.
    linear_degree : None, int or "auto"
        Degree ``T`` of the linear spherical-harmonic path (see the module
        docstring): ``None`` (default) for LAINR's decoder alone; an integer;
        or ``"auto"``, the degree the training grid resolves (``nlat - 1``
        on a global Gauss grid; ``config`` stores the number). With a path,
        :meth:`fit` starts from the training PCA (:meth:`init_pca`).
    lr_linear : float, optional
        Learning rate of the linear path in :meth:`fit` (``None``:
        ``lr_weights``; ``0``: frozen at the PCA start).
    region_stretch : {"conformal", "box"}
        How a regional box is mapped onto the sphere (:func:`region_to_sphere`):
        ``"conformal"`` (default) keeps the box's shape at its centre;
        ``"box"`` stretches latitude and longitude separately so the box fills
        latitudes [-60, 60] and longitudes [-90, 90] and a regular grid stays
        regular there (the harmonics then resolve rows and columns alike; use
        it with ``linear_fit="grid"``, whose conformal interpolant oscillates
        between the rows of a regular grid, see the module docstring).
    linear_fit : {"projection", "grid"}
        How :meth:`init_pca` sets the linear path. ``"projection"`` (default;
        round 3's): the PCA of the fields' least-squares projection on the
        harmonics, which on a regional patch loses the part the harmonics
        cannot hold (the rows of a patch's harmonics are far from
        independent). ``"grid"``: the EOFs of the grid values themselves,
        written in the harmonics as the prior's interpolant (see
        :meth:`_init_linear_grid`): where the harmonics resolve the grid
        (``linear_degree="auto"`` picks such a degree on a region) the
        untrained decoder equals them at the grid points and is smooth between.
    linear_prior : float or "auto"
        ``gamma >= 0`` of ``linear_fit="grid"``: the training covariance is
        shrunk towards the path's Sobolev prior (a covariance of its harmonic
        expansion, scaled to the same total variance) before its EOFs are
        taken. ``0`` (default): the plain weighted PCA. ``"auto"``: chosen
        per channel among :data:`~xlatda.encoders.sinr_prior.PRIOR_GRID` by
        blocked cross-validation on the training fields alone
        (:func:`~xlatda.encoders.sinr_prior.choose_prior`: 4 contiguous
        blocks, each held out in turn; the choice and the scores are in
        :attr:`prior_choice` and ``fit``'s history). It costs a few
        ``P x P`` products per candidate and fold (about 5 s at 1617 points on
        one busy core). On the ERA5 UK box it picks 3 at latent 32 (a
        hand search on validation days picked 1), see ``benchmarks/RESULTS.md``.
    linear_smoothness : float
        ``s > 0`` of the prior: coefficient variances ``(1 + l (l + 1))^{-s}``
        (default 2); also shapes the grid fit between the grid points.
    reuse_codes : bool
        Default of :meth:`encode`'s ``reuse_codes``: return the code learned
        in :meth:`fit` for a field that is one of the training snapshots
        instead of auto-decoding it again (encoding a training set of
        ``N`` snapshots then costs nothing; e.g. before fitting dynamics).

    Attributes
    ----------
    code_dim : int
        ``latent_dim // n_channels``.
    max_degree : int
        Largest spherical-harmonic degree of any decoded field,
        ``(L + 1) F + L (L + 1) / 2``.

    Raises
    ------
    ConfigError
        For a missing/unsupported grid, a grid that does not match
        ``spatial_shape``, a ``latent_dim`` not divisible by ``n_channels``,
        or non-positive sizes.

    Notes
    -----
    Cost of decoding ``B`` samples at ``P`` points: about
    ``2 B C P L H^2`` flops and ``B C P H`` numbers per live activation; an
    auto-decoding step costs about twice a decode. Decoding and encoding are
    done in chunks of samples that keep one activation below
    ``2**24`` numbers; each chunk is one batched tensor computation (never a
    loop over samples). The harmonics at the training points are computed
    once per dtype/device and cached (they are fixed by ``grid``, so they are
    not in ``state_dict``); those at other points are cached for the last four
    point sets. Computation happens in the module's dtype and device; inputs
    of another dtype/device are converted (differentiably) and results are
    returned in the input's dtype and device.

    Initialisation (seeded, no global RNG): weights uniform with variance
    ``1 / fan_in`` (layers, modulations), ``1 / (H (L + 1))`` (read-outs) and
    ``1 / (4 (2F + 1))`` (filters, on harmonics scaled to unit mean square),
    so that the first products are small and low degrees dominate at the
    start. Read-outs are per channel (the paper shares them; a per-channel
    row costs ``H`` numbers per layer and lets channels of different
    character, such as height and vorticity, share the hidden features).

    References
    ----------
    Li, Dong, Zhang (2023), arXiv:2309.09574.

    Examples
    --------
    >>> import torch
    >>> grid = {"kind": "points", "lat": [0.0, 45.0, -45.0], "lon": [0.0, 90.0, 200.0]}
    >>> enc = SINR(1, (3,), latent_dim=4, grid=grid, hidden=8, depth=1, max_freq=1)
    >>> enc.code_dim, enc.max_degree
    (4, 3)
    >>> rebuilt = SINR(**enc.config)
    >>> _ = rebuilt.load_state_dict(enc.state_dict())
    """

    kind = "sinr"
    #: Decode through the cached affine form ``d + J z`` (exact; differentiable
    #: in ``z`` but not in the weights). Set ``False`` to run the network, e.g.
    #: to differentiate a decode with respect to the decoder's weights.
    affine_decode: bool = True

    def __init__(
        self,
        n_channels: int,
        spatial_shape: Any,
        latent_dim: int,
        grid: dict[str, Any] | None = None,
        *,
        hidden: int = 128,
        depth: int = 8,
        max_freq: int = 8,
        seed: int = 0,
        epochs: int = 100,
        batch_size: int = 16,
        lr_codes: float = 1e-2,
        lr_weights: float = 5e-3,
        points_per_batch: int | None = None,
        patience: int | None = None,
        val_steps: int = 100,
        encode_steps: int = 300,
        encode_lr: float = 1e-2,
        code_init_std: float = 1e-2,
        reuse_codes: bool = False,
        encode_method: str = "solve",
        encode_ridge: float = 0.0,
        fit_codes: str = "table",
        latent_basis: str = "codes",
        region: str | dict[str, Any] | None = None,
        linear_degree: int | str | None = None,
        lr_linear: float | None = None,
        region_stretch: str = "conformal",
        linear_fit: str = "projection",
        linear_prior: float = 0.0,
        linear_smoothness: float = 2.0,
    ) -> None:
        super().__init__(n_channels, spatial_shape, latent_dim, grid)
        for name, value, low in [
            ("n_channels", self.n_channels, 1),
            ("latent_dim", self.latent_dim, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 0),
            ("max_freq", max_freq, 0),
            ("epochs", epochs, 1),
            ("batch_size", batch_size, 1),
            ("val_steps", val_steps, 1),
            ("encode_steps", encode_steps, 1),
        ]:
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.latent_dim % self.n_channels:
            raise ConfigError(
                f"latent_dim={self.latent_dim} is not a multiple of n_channels="
                f"{self.n_channels}; SINR uses one code per channel, so pass "
                f"latent_dim = n_channels * code_dim (e.g. "
                f"{self.n_channels * max(1, self.latent_dim // self.n_channels)})"
            )
        if encode_method not in _METHODS:
            raise ConfigError(
                f"encode_method must be one of {_METHODS}, got {encode_method!r}"
            )
        if fit_codes not in _FIT_CODES:
            raise ConfigError(f"fit_codes must be one of {_FIT_CODES}, got {fit_codes!r}")
        if latent_basis not in _LATENT_BASES:
            raise ConfigError(
                f"latent_basis must be one of {_LATENT_BASES}, got {latent_basis!r}"
            )
        if not float(encode_ridge) >= 0.0:
            raise ConfigError(f"encode_ridge must be >= 0, got {encode_ridge!r}")
        if linear_degree is not None and linear_degree != "auto" and (
            isinstance(linear_degree, (bool, str)) or int(linear_degree) != linear_degree
            or linear_degree < 0
        ):
            raise ConfigError(
                f"linear_degree must be None (no linear path), 'auto' (the grid's resolution) "
                f"or an integer >= 0, got {linear_degree!r}"
            )
        if region_stretch not in _STRETCHES:
            raise ConfigError(
                f"region_stretch must be one of {_STRETCHES}, got {region_stretch!r}"
            )
        if linear_fit not in _LINEAR_FITS:
            raise ConfigError(f"linear_fit must be one of {_LINEAR_FITS}, got {linear_fit!r}")
        auto_prior = isinstance(linear_prior, str) and linear_prior == "auto"
        if not auto_prior and (isinstance(linear_prior, (str, bool))
                               or not float(linear_prior) >= 0.0):
            raise ConfigError(
                f"linear_prior must be a number >= 0 (0: the plain PCA) or 'auto' (chosen by "
                f"cross-validation on the training fields), got {linear_prior!r}")
        if (auto_prior or float(linear_prior) > 0.0) and linear_fit != "grid":
            raise ConfigError(
                f"linear_prior={linear_prior!r} shrinks the grid covariance, so it needs "
                "linear_fit='grid' (or pass linear_prior=0 for the projection fit)"
            )
        if not float(linear_smoothness) > 0.0:
            raise ConfigError(
                f"linear_smoothness must be > 0 (the prior's spectral slope s), got "
                f"{linear_smoothness!r}"
            )
        if lr_linear is not None and not float(lr_linear) >= 0.0:
            raise ConfigError(
                f"lr_linear must be None (= lr_weights) or >= 0 (0 freezes the linear path), "
                f"got {lr_linear!r}"
            )
        self._linear_request = linear_degree
        self.hidden, self.depth, self.max_freq = int(hidden), int(depth), int(max_freq)
        self.code_dim = self.latent_dim // self.n_channels
        self.seed = int(seed)
        self.training_defaults = {
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "lr_codes": float(lr_codes),
            "lr_weights": float(lr_weights),
            "points_per_batch": None if points_per_batch is None else int(points_per_batch),
            "patience": None if patience is None else int(patience),
            "val_steps": int(val_steps),
            "encode_steps": int(encode_steps),
            "encode_lr": float(encode_lr),
            "code_init_std": float(code_init_std),
            "reuse_codes": bool(reuse_codes),
            "encode_method": str(encode_method),
            "encode_ridge": float(encode_ridge),
            "fit_codes": str(fit_codes),
            "latent_basis": str(latent_basis),
            "lr_linear": None if lr_linear is None else float(lr_linear),
            "linear_fit": str(linear_fit),
            "linear_prior": "auto" if auto_prior else float(linear_prior),
            "linear_smoothness": float(linear_smoothness),
        }
        #: with ``linear_prior="auto"``: per channel the chosen weight and the
        #: cross-validation scores of :data:`PRIOR_GRID` (set by the PCA start)
        self.prior_choice: list[dict[str, Any]] | None = None
        # codes learned for the training snapshots, and a sketch to recognise them
        self._train_codes: Tensor | None = None
        self._train_sketch: Tensor | None = None
        lat, lon = self._grid_points()
        self._grid_latlon = torch.stack([lat, lon], dim=-1)  # (P, 2) float64, CPU
        self.region = _resolve_region(region, lat, lon)
        if self.region is None:
            box = _resolve_region("auto", lat, lon)
            span_lat, span_lon = box["lat"][1] - box["lat"][0], box["lon"][1] - box["lon"][0]
            if span_lat < _REGIONAL_SPAN[0] and span_lon < _REGIONAL_SPAN[1]:
                warnings.warn(
                    f"SINR on a limited-area grid ({span_lat:.3g} x {span_lon:.3g} degrees) "
                    "with region=None: across such a box the spherical harmonics are nearly "
                    "linear and the decoder holds little more than its mean gradient; pass "
                    "region='auto' or encoder_options=xlatda.encoders.sinr."
                    "SINR_PRESETS['regional']", RegionalGridWarning, stacklevel=2)
        self.region_stretch = str(region_stretch)
        if self._linear_request == "auto":
            self.linear_degree: int | None = self._auto_linear_degree()
        else:
            self.linear_degree = None if linear_degree is None else int(linear_degree)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._point_cache: dict[tuple, Tensor] = {}
        self._affine_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

        n_sh, h = 2 * self.max_freq + 1, self.hidden
        self.filters = nn.ModuleList(nn.Linear(n_sh, h) for _ in range(self.depth + 1))
        self.layers = nn.ModuleList(nn.Linear(h, h) for _ in range(self.depth))
        self.modulations = nn.ModuleList(
            nn.Linear(self.code_dim, h, bias=False) for _ in range(self.depth)
        )
        self.head_weight = nn.Parameter(torch.empty(self.depth + 1, self.n_channels, h))
        self.head_bias = nn.Parameter(torch.zeros(self.n_channels))
        if self.linear_degree is not None:
            # the linear path phi(p)^T (lin_bias_c + lin_weight_c a_c), set by fit()'s PCA
            n_lin = (self.linear_degree + 1) ** 2
            self.lin_weight = nn.Parameter(torch.zeros(self.n_channels, n_lin, self.code_dim))
            self.lin_bias = nn.Parameter(torch.zeros(self.n_channels, n_lin))
        # 1 once the linear path holds the training PCA (fit's first step)
        self.register_buffer("linear_ready", torch.zeros((), dtype=torch.long))
        self.register_buffer("code_mean", torch.zeros(self.latent_dim))
        self.register_buffer("code_scale", torch.ones(self.latent_dim))
        # raw codes a_c = basis_offset[c] + basis_matrix[c] @ z_c (identity for "codes")
        k = self.code_dim
        self.register_buffer("basis_offset", torch.zeros(self.n_channels, k))
        self.register_buffer(
            "basis_matrix", torch.eye(k).expand(self.n_channels, k, k).clone()
        )
        self._register_load_state_dict_pre_hook(self._fill_missing_buffers)
        self._init_weights()

    def _fill_missing_buffers(self, state_dict, prefix, *args, **kwargs) -> None:
        # models saved before ``code_scale`` existed load with unit scales
        key = prefix + "code_scale"
        if key not in state_dict:
            state_dict[key] = torch.ones_like(self.code_scale)
        # models saved before latent bases existed: the raw codes
        for name in ("basis_offset", "basis_matrix"):
            if prefix + name not in state_dict:
                state_dict[prefix + name] = self._identity_basis()[name == "basis_matrix"]
        # models saved before the linear path existed have none
        if prefix + "linear_ready" not in state_dict:
            state_dict[prefix + "linear_ready"] = torch.zeros((), dtype=torch.long)

    # ------------------------------------------------------------ set-up
    def _grid_points(self) -> tuple[Tensor, Tensor]:
        """Latitude and longitude (degrees, float64) of every training point, flattened."""
        g = self.grid
        kinds = ("latlon", "points")
        if g is None or g.get("kind") not in kinds:
            got = None if g is None else g.get("kind")
            raise ConfigError(
                f"SINR needs grid={{'kind': 'latlon' or 'points', 'lat': [...], "
                f"'lon': [...]}} (degrees), got kind {got!r}; generic (non-spherical) "
                "dimensions are not supported by this encoder"
            )
        lat = torch.as_tensor(g["lat"], dtype=torch.float64).reshape(-1)
        lon = torch.as_tensor(g["lon"], dtype=torch.float64).reshape(-1)
        if g["kind"] == "latlon":
            want = (lat.numel(), lon.numel())
            if self.spatial_shape != want:
                raise ConfigError(
                    f"spatial_shape {self.spatial_shape} does not match the latlon grid "
                    f"(len(lat), len(lon)) = {want}"
                )
            lat, lon = torch.meshgrid(lat, lon, indexing="ij")
            lat, lon = lat.reshape(-1), lon.reshape(-1)
        elif lat.shape != lon.shape or self.spatial_shape != (lat.numel(),):
            raise ConfigError(
                f"a 'points' grid needs lat and lon of equal length S with spatial_shape "
                f"(S,); got {lat.numel()} lat, {lon.numel()} lon, spatial_shape "
                f"{self.spatial_shape}"
            )
        if bool(((lat < -90.0) | (lat > 90.0)).any()):
            raise ConfigError("grid latitudes must lie in [-90, 90] degrees")
        return lat, lon

    def _auto_linear_degree(self) -> int:
        """``linear_degree="auto"``: the degree the training grid resolves.

        For a latitude/longitude grid with (median) latitude spacing
        ``delta`` degrees on the sphere (after :func:`region_to_sphere` for a
        regional grid), ``floor(180 / delta) - 1``: ``nlat - 1`` on a global
        Gauss grid (its exact truncation), 47 for the 0.25-degree UK box
        (stretched 15 times); never more than ``(T + 1)^2 <= 2 P`` harmonics
        for ``P`` grid points (a small box on raw coordinates would otherwise
        ask for thousands). For a ``"points"`` layout, ``floor(sqrt(P)) - 1``
        (``(T + 1)^2 <= P``).

        With ``linear_fit="grid"`` on a regional box the path must interpolate
        the grid, and on a patch covering a fraction ``f`` of the sphere only
        about ``f (T + 1)^2`` harmonics of degree ``<= T`` are independent
        there (the Shannon number of the patch), so the degree is
        ``ceil(sqrt(2 P / f)) - 1``: twice as many concentrated harmonics as
        grid points (86 for the UK box with ``region_stretch="box"``, ``f =
        0.43``; 112 with the conformal map, ``f = 0.25``).
        """
        n_pts = int(self._grid_latlon.shape[0])
        if self.region is not None and self.training_defaults["linear_fit"] == "grid":
            return max(0, math.ceil(math.sqrt(2.0 * n_pts / self._patch_fraction())) - 1)
        if self.grid["kind"] != "latlon":
            return max(0, math.isqrt(n_pts) - 1)
        rows = torch.as_tensor(self.grid["lat"], dtype=torch.float64).reshape(-1)
        if rows.numel() < 2:
            return 0
        if self.region is not None:
            centre = 0.5 * sum(float(v) for v in self.region["lon"])
            rows = region_to_sphere(self.region, rows, torch.full_like(rows, centre),
                                    self.region_stretch)[0]
        spacing = float(rows.diff().abs().median())
        degree = math.floor(180.0 / max(spacing, 1e-9) + 1e-6) - 1
        return max(0, min(degree, math.isqrt(2 * n_pts) - 1))

    def _patch_fraction(self) -> float:
        """Fraction of the sphere covered by the image of the region's box."""
        south, north = (float(v) for v in self.region["lat"])
        west, east = (float(v) for v in self.region["lon"])
        lat = torch.tensor([south, north, 0.5 * (south + north)], dtype=torch.float64)
        lon = torch.tensor([0.5 * (west + east), 0.5 * (west + east), west], dtype=torch.float64)
        la, lo = region_to_sphere(self.region, lat, lon, self.region_stretch)
        band = 0.5 * (math.sin(math.radians(float(la[1]))) - math.sin(math.radians(float(la[0]))))
        return max(1e-6, band * min(1.0, 2.0 * abs(float(lo[2])) / 360.0))

    def _init_weights(self) -> None:
        # Unit-power harmonics and weights of variance 1/fan_in keep the linear
        # layers scale-preserving; the filters start at half that scale, so
        # the product h_l starts at about 2^-l: the low-degree, shallow terms
        # dominate at first, and training is stable at larger learning rates
        # (unit-scale filters diverge at lr_weights=2e-2, see the benchmark).
        gen = torch.Generator().manual_seed(self.seed)

        def uniform_(t: Tensor, var: float) -> None:
            a = math.sqrt(3.0 * var)
            with torch.no_grad():
                t.copy_((torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2 - 1) * a)

        n_sh = 2 * self.max_freq + 1
        for lin in self.filters:
            uniform_(lin.weight, 0.25 / n_sh)
            uniform_(lin.bias, 0.25 / n_sh)
        for lin in self.layers:
            uniform_(lin.weight, 1.0 / self.hidden)
            uniform_(lin.bias, 1.0 / self.hidden)
        for lin in self.modulations:
            uniform_(lin.weight, 1.0 / self.code_dim)
        uniform_(self.head_weight, 1.0 / (self.hidden * (self.depth + 1)))
        if self.linear_degree is not None:
            # the network starts as a zero residual on the linear path's PCA
            with torch.no_grad():
                self.head_weight.zero_()

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        cfg = super().config
        cfg.update(
            hidden=self.hidden,
            depth=self.depth,
            max_freq=self.max_freq,
            seed=self.seed,
            **self.training_defaults,
            region=self.region,
            region_stretch=self.region_stretch,
            linear_degree=self.linear_degree,
        )
        return cfg

    @classmethod
    def from_preset(
        cls,
        name: str,
        n_channels: int,
        spatial_shape: Any,
        latent_dim: int,
        grid: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> SINR:
        """Build a SINR from a named setting of :data:`SINR_PRESETS`.

        Parameters
        ----------
        name : str
            ``"cpu"`` (minutes on a CPU) or ``"paper"`` (LAINR's size, for a GPU).
        n_channels, spatial_shape, latent_dim, grid
            As for :class:`SINR`.
        **overrides
            Constructor keywords that replace the preset's.

        Returns
        -------
        SINR

        Raises
        ------
        ConfigError
            For an unknown preset name (or bad overrides).

        Examples
        --------
        >>> grid = {"kind": "points", "lat": [0.0, 45.0], "lon": [0.0, 90.0]}
        >>> enc = SINR.from_preset("paper", 2, (2,), 400, grid)
        >>> enc.hidden, enc.depth, enc.max_freq, enc.code_dim, enc.max_degree
        (128, 8, 8, 200, 108)
        """
        if name not in SINR_PRESETS:
            raise ConfigError(
                f"unknown SINR preset {name!r}; choose one of {sorted(SINR_PRESETS)}"
            )
        options = {**SINR_PRESETS[name], **overrides}
        return cls(n_channels, spatial_shape, latent_dim, grid, **options)

    @property
    def max_degree(self) -> int:
        """Largest spherical-harmonic degree of a decoded field.

        ``D_max`` of the network, or ``linear_degree`` if that is larger.
        """
        d = sinr_max_degree(self.max_freq, self.depth)
        return d if self.linear_degree is None else max(d, self.linear_degree)

    @property
    def _n_filter_features(self) -> int:
        return (self.depth + 1) * (2 * self.max_freq + 1)

    @property
    def _ref(self) -> Tensor:
        return self.head_bias

    def _features(self, lat: Tensor, lon: Tensor) -> Tensor:
        """Scaled harmonics ``sqrt(4 pi) Y`` at points: ``(P, (L+1)(2F+1) [+ M])``.

        Columns ``l (2F+1) .. (l+1)(2F+1)`` are filter ``l``'s harmonics
        ``Y_{|m|+l}^m``, ``m = -F..F``; with a linear path the last
        ``M = (linear_degree + 1)^2`` columns are all harmonics of degree
        ``<= linear_degree`` (:func:`xlatda.sphere.sph_harm_indices` order).
        Computed in float64 and returned in the module's dtype and device.
        """
        f, d = self.max_freq, self.depth
        order = torch.arange(-f, f + 1).repeat(d + 1)
        degree = order.abs() + torch.arange(d + 1).repeat_interleave(2 * f + 1)
        if self.linear_degree is not None:
            deg_l, ord_l = sphere.sph_harm_indices(self.linear_degree)
            degree, order = torch.cat([degree, deg_l]), torch.cat([order, ord_l])
        lat = lat.detach().to("cpu", torch.float64)
        lon = lon.detach().to("cpu", torch.float64)
        if self.region is not None:
            lat, lon = region_to_sphere(self.region, lat, lon, self.region_stretch)
        colat = torch.deg2rad(90.0 - lat)
        lam = torch.deg2rad(lon)
        y = sphere.real_sph_harm(degree, order, colat, lam) * math.sqrt(4.0 * math.pi)
        return y.to(self._ref.device, self._ref.dtype)

    def _grid_cache(self) -> tuple[Tensor, Tensor]:
        """Harmonics (:meth:`_features`) and cos-lat weights ``(P,)`` of the training points."""
        key = (self._ref.dtype, self._ref.device)
        if key not in self._cache:
            with torch.inference_mode(False):
                self._cache[key] = self._grid_tensors()
        return self._cache[key]

    def _grid_tensors(self) -> tuple[Tensor, Tensor]:
        lat, lon = self._grid_latlon.unbind(-1)
        feats = self._features(lat, lon)
        w = torch.cos(torch.deg2rad(lat)).clamp_min(0.0)
        w = (w / w.mean()).to(self._ref.device, self._ref.dtype)
        return feats, w

    def _point_features(self, points: Tensor) -> Tensor:
        """Harmonics at ``points (P, 2)``, cached for the last few point sets.

        Assimilation decodes at the same observation points many times; the
        key is the points' content (a hash of their float64 bytes), so a new
        tensor with the same values hits the cache.
        """
        pts = points.detach().to("cpu", torch.float64).contiguous()
        digest = hashlib.sha1(pts.numpy().tobytes()).hexdigest()
        key = (digest, self._ref.dtype, self._ref.device)
        feats = self._point_cache.pop(key, None)
        if feats is None:
            with torch.inference_mode(False):
                feats = self._features(pts[:, 0], pts[:, 1])
        self._point_cache[key] = feats  # most recent last
        while len(self._point_cache) > _POINT_CACHE_SIZE:
            self._point_cache.pop(next(iter(self._point_cache)))
        return feats

    # ------------------------------------------------------------ network
    def _filters(self, feats: Tensor) -> list[Tensor]:
        """``[g_l(p)]``, each ``(Q, H)``, from the harmonics of :meth:`_features`.

        With a linear path the list has one more entry, the path's harmonics
        ``(Q, M)``.
        """
        n = 2 * self.max_freq + 1
        filt = [lin(feats[:, l * n : (l + 1) * n]) for l, lin in enumerate(self.filters)]
        if self.linear_degree is not None:
            filt.append(feats[:, self._n_filter_features :])
        return filt

    def _network(self, filt: list[Tensor], codes: Tensor, channel: Tensor | None) -> Tensor:
        """Run the multiplicative filter network.

        ``filt`` from :meth:`_filters` at ``Q`` points; ``codes (B, C, code_dim)``.
        With ``channel=None`` every channel is decoded at every point and the
        result is ``(B, C, Q)``; with ``channel (Q,)`` point ``q`` is decoded
        for channel ``channel[q]`` only and the result is ``(B, Q)``.
        """
        b = codes.shape[0]
        if channel is None:
            shifts = [mod(codes).unsqueeze(-2) for mod in self.modulations]  # (B, C, 1, H)
            heads = self.head_weight.unsqueeze(-1)  # (L+1, C, H, 1)

            def read(l: int, h: Tensor) -> Tensor:
                return (h @ heads[l]).squeeze(-1)

            bias = self.head_bias[:, None]
            shape = (b, self.n_channels, filt[0].shape[0])
        else:
            shifts = [mod(codes)[:, channel] for mod in self.modulations]  # (B, Q, H)
            heads = self.head_weight[:, channel]  # (L+1, Q, H)

            def read(l: int, h: Tensor) -> Tensor:
                return (h * heads[l]).sum(-1)

            bias = self.head_bias[channel]
            shape = (b, channel.shape[0])
        h = filt[0]
        out = read(0, h)
        for l in range(1, self.depth + 1):
            h = self._layer(l, h, shifts[l - 1], filt[l])
            out = out + read(l, h)
        out = (out + bias).expand(shape)
        if self.linear_degree is None:
            return out
        # linear path: phi(p)^T (lin_bias_c + lin_weight_c a_c), (B, C, M) coefficients
        phi = filt[self.depth + 1]
        coef = self.lin_bias + torch.einsum("bck,cmk->bcm", codes, self.lin_weight)
        if channel is None:
            return out + coef @ phi.t()
        parts = torch.zeros(shape, dtype=out.dtype, device=out.device)
        for ci in range(self.n_channels):
            rows = torch.nonzero(channel == ci).reshape(-1)
            if rows.numel():
                parts = parts.index_copy(1, rows, coef[:, ci] @ phi[rows].t())
        return out + parts

    def _layer(self, l: int, h: Tensor, shift: Tensor, filt: Tensor) -> Tensor:
        """``h_l = (W_l h + b_l + shift) * g_l``, the shift add fused into the matmul.

        ``h`` is ``(Q, H)`` (the first layer, shared by all samples) or
        ``(*lead, Q, H)``; ``shift`` broadcasts to ``(*lead, Q, H)`` and has
        ``Q`` or 1 rows; ``filt`` is ``(Q, H)``.
        """
        lin = self.layers[l - 1]
        if h.dim() == 2:
            pre = lin(h) + shift
        else:
            q, width = h.shape[-2:]
            hh = h.reshape(-1, q, width)
            ss = (shift + lin.bias).reshape(hh.shape[0], -1, width)
            pre = torch.baddbmm(ss, hh, lin.weight.t().expand(hh.shape[0], -1, -1))
            pre = pre.reshape(h.shape)
        if torch.is_grad_enabled():
            return pre * filt
        return pre.mul_(filt)

    def _split(self, z: Tensor) -> Tensor:
        """``(B, latent_dim)`` -> ``(B, C, code_dim)`` (the latent coordinates)."""
        return z.reshape(z.shape[0], self.n_channels, self.code_dim)

    def _codes(self, z: Tensor) -> Tensor:
        """The network's raw codes ``a_c = o_c + M_c z_c`` of latents ``z``: ``(B, C, K)``."""
        u = self._split(z)
        m = self.basis_matrix.to(u.dtype)
        return self.basis_offset.to(u.dtype) + torch.einsum("bck,cjk->bcj", u, m)

    def _identity_basis(self) -> tuple[Tensor, Tensor]:
        k, c = self.code_dim, self.n_channels
        dev, dt = self.code_mean.device, self.code_mean.dtype
        eye = torch.eye(k, device=dev, dtype=dt).expand(c, k, k).clone()
        return torch.zeros(c, k, device=dev, dtype=dt), eye

    def _to_latent(self, off: Tensor, jac: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Affine maps of the raw codes -> of the latent: ``d + J o_c``, ``J M_c`` (float64)."""
        o = self.basis_offset.to(jac.device, jac.dtype)
        m = self.basis_matrix.to(jac.device, jac.dtype)
        off = off + (jac * o[channel]).sum(-1)
        out = torch.empty_like(jac)
        for ci in range(self.n_channels):
            rows = torch.nonzero(channel == ci).reshape(-1)
            if rows.numel():
                out[rows] = jac[rows] @ m[ci]
        return off, out

    def _chunk(self, n_points: int, per_point: int) -> int:
        return max(1, _CHUNK_ELEMENTS // max(1, n_points * per_point * self.hidden))

    # ------------------------------------------------------------ affine structure
    def _weights_version(self) -> str:
        """Digest of the content of every parameter and of the latent basis.

        (Keys the affine caches: by content, as version counters and data
        pointers miss an edit through ``.data`` or ``.numpy()``. Costs one read of
        the weights per lookup, small next to building an affine map.)
        """
        h = hashlib.blake2b(digest_size=16)
        for t in (*self.parameters(), self.basis_offset, self.basis_matrix):
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    def _affine(self, feats: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        r"""The exact affine form of the decoder at points: ``D(z; p) = d(p) + J(p) a_c``.

        The network has no activation function: ``h_l`` is multiplied by the
        code-independent filter ``g_l(p)`` only, so every ``h_l`` and the
        output are affine in the code. ``d`` is the output at code zero (one
        forward pass, the same hidden states for every channel) and ``J`` the
        per-point gradient, from the adjoint recursion

        .. math::

            \lambda_L = w_{L,c} \odot g_L, \quad
            \lambda_l = g_l \odot (w_{l,c} + W_{l+1}^\top \lambda_{l+1}), \quad
            J(p) = \sum_{l=1}^{L} S_l^\top \lambda_l(p)

        (one backward pass for all points at once: each point's output
        depends on its own hidden states only).

        With a linear path, its ``phi^T lin_bias_c`` and ``phi^T lin_weight_c``
        are added (it is linear in the code).

        ``feats`` from :meth:`_features`, ``channel (Q,)``; returns ``d (Q,)`` and
        ``J (Q, code_dim)`` in float64 on the module's device (no gradient).
        """
        f64 = torch.float64
        n = feats.shape[0]
        offs, jacs = [], []
        with torch.inference_mode(False), torch.no_grad():
            fw = [(lin.weight.to(f64), lin.bias.to(f64)) for lin in self.filters]
            nf, nh = self._n_filter_features, 2 * self.max_freq + 1
            lw = [(lin.weight.to(f64), lin.bias.to(f64)) for lin in self.layers]
            sw = [mod.weight.to(f64) for mod in self.modulations]  # (H, K) each
            heads_all = self.head_weight.to(f64)  # (L+1, C, H)
            bias_all = self.head_bias.to(f64)
            for i in range(0, n, _AFFINE_CHUNK):
                ft = feats[i : i + _AFFINE_CHUNK].to(f64)
                ch = channel[i : i + _AFFINE_CHUNK]
                g = [torch.addmm(b, ft[:, l * nh : (l + 1) * nh], w.t())
                     for l, (w, b) in enumerate(fw)]
                heads = heads_all[:, ch]  # (L+1, q, H)
                h = g[0]
                off = (h * heads[0]).sum(-1) + bias_all[ch]
                for l in range(1, self.depth + 1):
                    w, b = lw[l - 1]
                    h = torch.addmm(b, h, w.t()) * g[l]
                    off = off + (h * heads[l]).sum(-1)
                jac = ft.new_zeros(ft.shape[0], self.code_dim)
                lam = None
                for l in range(self.depth, 0, -1):
                    back = heads[l] if lam is None else heads[l] + lam @ lw[l][0]
                    lam = g[l] * back
                    jac = jac + lam @ sw[l - 1]
                if self.linear_degree is not None:  # + phi^T lin_bias_c, phi^T lin_weight_c
                    phi = ft[:, nf:]
                    for ci in range(self.n_channels):
                        rows = torch.nonzero(ch == ci).reshape(-1)
                        if rows.numel():
                            off[rows] += phi[rows] @ self.lin_bias[ci].to(f64)
                            jac[rows] += phi[rows] @ self.lin_weight[ci].to(f64)
                offs.append(off)
                jacs.append(jac)
        if not offs:
            z = feats.new_zeros(0, dtype=f64)
            return z, z.reshape(0, 1).expand(0, self.code_dim)
        return torch.cat(offs), torch.cat(jacs)

    def _grid_affine(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Affine maps on the training layout, cached until the weights change.

        Returns ``d (C P,)``, ``J (C P, K)`` (float64), the channel of each
        row ``(C P,)`` and the cos-lat weights ``(C P,)``, channel-major (the
        order of ``x.reshape(B, -1)``).
        """
        key = ("grid", self._ref.dtype, self._ref.device, self._weights_version())
        hit = self._affine_cache.get(key)
        if hit is None:
            feats, w = self._grid_cache()
            p = feats.shape[0]
            channel = torch.arange(self.n_channels, device=feats.device).repeat_interleave(p)
            off, jac = self._affine(feats.repeat(self.n_channels, 1), channel)
            off, jac = self._to_latent(off, jac, channel)
            hit = (off, jac, channel, w.repeat(self.n_channels))
            self._affine_cache = {k: v for k, v in self._affine_cache.items() if k[0] != "grid"}
            self._affine_cache[key] = hit
        return hit

    def _points_affine(self, points: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Affine maps at scattered points, cached for the last few point sets."""
        pts = points.detach().to("cpu", torch.float64).contiguous()
        ch = channel.detach().to("cpu", torch.long).contiguous()
        digest = hashlib.sha1(pts.numpy().tobytes() + ch.numpy().tobytes()).hexdigest()
        key = ("points", digest, self._ref.dtype, self._ref.device, self._weights_version())
        hit = self._affine_cache.pop(key, None)
        if hit is None:
            ch_dev = channel.to(self._ref.device)
            off, jac = self._affine(self._point_features(points), ch_dev)
            hit = self._to_latent(off, jac, ch_dev)
        self._affine_cache[key] = hit
        pts_keys = [k for k in self._affine_cache if k[0] == "points"]
        for k in pts_keys[: max(0, len(pts_keys) - _POINT_CACHE_SIZE)]:
            del self._affine_cache[k]
        return hit

    def _solve_codes(
        self,
        off: Tensor,
        jac: Tensor,
        channel: Tensor,
        target: Tensor,
        weight: Tensor,
        ridge: float,
    ) -> tuple[Tensor, Tensor]:
        r"""Exact minimiser of the weighted misfit plus a ridge towards the mean code.

        Per sample and channel ``c`` (the channels decouple: each has its own
        code), with ``u = (a_c - \bar a_c) / s_c`` (``s`` = ``code_scale``,
        the spread of the training codes):

        .. math::

            \min_u \frac{\sum_p w_p (d_p + J_p (\bar a_c + s_c u) - x_p)^2}{\sum_p w_p}
            + \frac{\rho}{K C} \lVert u \rVert^2,

        a ``K x K`` Cholesky solve per channel (per sample as well when missing
        values make the weights differ between samples). ``off, jac`` from
        :meth:`_affine`; ``target (B, Q)`` with NaN for missing values;
        ``weight (Q,)``. Returns ``z (B, latent_dim)`` in the module's dtype
        and the weighted MSE of each sample ``(B,)`` (without the ridge term).
        """
        f64 = torch.float64
        k, c = self.code_dim, self.n_channels
        with torch.inference_mode(False), torch.no_grad():
            x = target.detach().to(f64)
            finite = torch.isfinite(x)
            x = torch.where(finite, x, torch.zeros_like(x))
            w = weight.detach().to(f64)
            shared = bool(finite.all())
            wb = w.expand_as(x) if shared else w * finite  # (B, Q)
            mean = self.code_mean.detach().to(f64).reshape(c, k)
            scale = self.code_scale.detach().to(f64).reshape(c, k)
            js = jac * scale[channel]  # (Q, K): the Jacobian in scaled units u
            base = off + (jac * mean[channel]).sum(-1)  # decoded at the mean code
            resid = x - base
            wsum = wb.sum(-1).clamp_min(torch.finfo(f64).tiny)  # (B,)
            eye = torch.eye(k, dtype=f64, device=x.device)
            reg = float(ridge) / (k * c)
            u = x.new_zeros(x.shape[0], c, k)
            for ci in range(c):
                rows = torch.nonzero(channel == ci).reshape(-1)
                if rows.numel() == 0:
                    continue
                jc = js[rows]  # (q, K)
                if shared:
                    gram = (jc.t() * w[rows]) @ jc / wsum[0]  # (K, K)
                    rhs = (resid[:, rows] * w[rows]) @ jc / wsum[:, None]  # (B, K)
                    u[:, ci] = self._spd_solve(gram + reg * eye, rhs.t(), ridge).t()
                else:
                    wc = wb[:, rows]  # (B, q)
                    gram = torch.einsum("bq,qk,ql->bkl", wc, jc, jc) / wsum[:, None, None]
                    rhs = (resid[:, rows] * wc) @ jc / wsum[:, None]
                    u[:, ci] = self._spd_solve(gram + reg * eye, rhs[..., None], ridge)[..., 0]
            a = mean + scale * u  # (B, C, K)
            pred = self._affine_decode(off, jac, channel, a)
            loss = (wb * (pred - x) ** 2).sum(-1) / wsum
        return a.reshape(x.shape[0], -1).to(self._ref.dtype), loss.to(self._ref.dtype)

    def _affine_decode(self, off: Tensor, jac: Tensor, channel: Tensor, a: Tensor) -> Tensor:
        """``d + J a_c`` at every row: ``a (B, C, K)`` -> ``(B, Q)``, one matmul per channel.

        Differentiable in ``a`` (not in the weights: ``d`` and ``J`` are constants).
        """
        out = off.to(a.dtype).expand(a.shape[0], -1)
        for ci in range(self.n_channels):
            rows = torch.nonzero(channel == ci).reshape(-1)
            if rows.numel():
                part = out[:, rows] + a[:, ci] @ jac[rows].to(a.dtype).t()
                out = out.index_copy(1, rows, part)
        return out

    def affine_map(
        self, points: Tensor | None = None, channel: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The decoder as the affine map it is: ``D(z) = offset + matrix @ z``.

        SINR's network multiplies hidden states by position-only filters and
        adds the code's shift before each product, with no activation
        function, so every output is affine in the code (exactly, for any
        weights); each value depends on the code of its own channel only.

        Parameters
        ----------
        points, channel : Tensor, optional
            ``(P, 2)`` latitude/longitude in degrees and ``(P,)`` channels;
            default: the training layout (rows ordered as
            ``x.reshape(B, -1)``, i.e. channel-major).

        Returns
        -------
        offset : Tensor
            ``(P,)``, the decoded values at ``z = 0``.
        matrix : Tensor
            ``(P, latent_dim)``, block-sparse: row ``p`` is zero outside the
            code of ``channel[p]``. In the module's dtype and device.

        Examples
        --------
        >>> import torch
        >>> grid = {"kind": "points", "lat": [0.0, 45.0, -45.0], "lon": [0.0, 90.0, 200.0]}
        >>> enc = SINR(1, (3,), latent_dim=2, grid=grid, hidden=4, depth=2, max_freq=1)
        >>> _ = enc.fit(torch.randn(2, 1, 3), epochs=1, progress=False)
        >>> offset, matrix = enc.affine_map()
        >>> z = torch.randn(4, 2)
        >>> torch.allclose(enc.decode(z).reshape(4, -1), offset + z @ matrix.T, atol=1e-5)
        True
        """
        self._require_fitted()
        if points is None:
            off, jac, channel, _ = self._grid_affine()
        else:
            if channel is None:
                raise ShapeError("affine_map(points, channel): channel is required with points")
            points, channel = self._check_points(points, channel)
            off, jac = self._points_affine(points, channel)
        k = self.code_dim
        cols = channel[:, None] * k + torch.arange(k, device=channel.device)
        matrix = jac.new_zeros(jac.shape[0], self.latent_dim).scatter(1, cols, jac)
        return off.to(self._ref.dtype), matrix.to(self._ref.dtype)

    def _projected_codes(self, feats: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """Exact codes of ``target (B, C, q)`` at the points of ``feats`` (no gradient).

        ``weight (q,)``: the cos-lat weights of the points; NaN in ``target``
        marks missing values.

        Variable projection: with the codes at their least-squares optimum for
        the current weights, the gradient of the misfit with respect to the
        weights is that of the projected (code-free) loss (the code gradient
        is zero there), so the weights are trained for the encoder that will
        be used.
        """
        q = feats.shape[0]
        channel = torch.arange(self.n_channels, device=feats.device).repeat_interleave(q)
        off, jac = self._affine(feats.repeat(self.n_channels, 1), channel)
        z, _ = self._solve_codes(off, jac, channel, target.reshape(target.shape[0], -1),
                                 weight.repeat(self.n_channels), 0.0)
        return z

    @staticmethod
    def _spd_solve(gram: Tensor, rhs: Tensor, ridge: float) -> Tensor:
        """Solve ``gram @ u = rhs`` for symmetric positive (semi-)definite ``gram``.

        Cholesky when it succeeds; a singular system (``ridge = 0`` and too
        few points for the code) gets the minimum-norm least-squares solution.
        """
        chol, info = torch.linalg.cholesky_ex(gram)
        if ridge > 0 and not bool((info != 0).any()):
            return torch.cholesky_solve(rhs, chol)
        return torch.linalg.pinv(gram, hermitian=True) @ rhs

    # ------------------------------------------------------------ protocol
    def decode(self, z: Tensor) -> Tensor:
        """Decode latent vectors on the training layout.

        Parameters
        ----------
        z : Tensor
            ``(B, latent_dim)``; any float dtype and device (computed in the
            module's, returned in ``z``'s).

        Returns
        -------
        Tensor
            ``(B, C, *spatial_shape)``, differentiable in ``z``.

        Raises
        ------
        NotFittedError, ShapeError
        """
        self._require_fitted()
        self._check_latent(z)
        zz = z.to(self._ref.device, self._ref.dtype)
        if self.affine_decode:
            off, jac, channel, _ = self._grid_affine()
            out = self._affine_decode(off, jac, channel, self._split(zz))
            return out.reshape(-1, self.n_channels, *self.spatial_shape).to(z.device, z.dtype)
        feats, _ = self._grid_cache()
        filt = self._filters(feats)
        step = self._chunk(feats.shape[0], self.n_channels)
        parts = [
            self._network(filt, self._codes(zz[i : i + step]), None)
            for i in range(0, zz.shape[0], step)
        ]
        out = torch.cat(parts) if parts else zz.new_zeros(0, self.n_channels, feats.shape[0])
        return out.reshape(-1, self.n_channels, *self.spatial_shape).to(z.device, z.dtype)

    def _check_points(self, points: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        points = torch.as_tensor(points)
        channel = torch.as_tensor(channel)
        if points.dim() != 2 or points.shape[-1] != 2:
            raise ShapeError(
                f"points must be (P, 2) latitude/longitude in degrees, got {tuple(points.shape)}"
            )
        if channel.shape != points.shape[:1]:
            raise ShapeError(
                f"channel must be (P,) = ({points.shape[0]},), got {tuple(channel.shape)}"
            )
        if channel.is_floating_point():
            raise ShapeError("channel must be an integer tensor (torch.long)")
        if channel.numel() and (int(channel.min()) < 0 or int(channel.max()) >= self.n_channels):
            raise ShapeError(
                f"channel values must lie in [0, {self.n_channels - 1}], got range "
                f"[{int(channel.min())}, {int(channel.max())}]"
            )
        if points.numel() and bool((points[:, 0].abs() > 90.0).any()):
            raise ShapeError("points[:, 0] are latitudes and must lie in [-90, 90] degrees")
        return points, channel.to(self._ref.device, torch.long)

    def decode_at(self, z: Tensor, points: Tensor, channel: Tensor) -> Tensor:
        """Evaluate the decoded fields at arbitrary points (mesh-free).

        Parameters
        ----------
        z : Tensor
            ``(B, latent_dim)``.
        points : Tensor
            ``(P, 2)`` latitude, longitude in degrees.
        channel : LongTensor
            ``(P,)`` the channel each point asks for; only that channel is
            evaluated there.

        Returns
        -------
        Tensor
            ``(B, P)`` in ``z``'s dtype and device, differentiable in ``z``.

        Raises
        ------
        NotFittedError, ShapeError
        """
        self._require_fitted()
        self._check_latent(z)
        points, channel = self._check_points(points, channel)
        zz = z.to(self._ref.device, self._ref.dtype)
        if self.affine_decode:
            off, jac = self._points_affine(points, channel)
            return self._affine_decode(off, jac, channel, self._split(zz)).to(z.device, z.dtype)
        feats = self._point_features(points)
        filt = self._filters(feats)
        step = self._chunk(feats.shape[0], 1)
        parts = [
            self._network(filt, self._codes(zz[i : i + step]), channel)
            for i in range(0, zz.shape[0], step)
        ]
        out = torch.cat(parts) if parts else zz.new_zeros(0, feats.shape[0])
        return out.to(z.device, z.dtype)

    def _autodecode_batches(
        self,
        target: Tensor,
        weight: Tensor,
        feats: Tensor,
        channel: Tensor | None,
        steps: int | None,
        lr: float | None,
        batch_size: int | None,
        progress: bool | None,
        desc: str,
    ) -> tuple[Tensor, Tensor]:
        """Auto-decode ``target`` in chunks of samples with the decoder frozen.

        ``target (N, C, P)`` with ``channel=None`` (grid layout) or ``(N, Q)``
        with ``channel (Q,)``; ``weight`` broadcastable per chunk (first dim 1
        or ``N``); ``feats`` the harmonics at the points. Runs with gradients
        on even under :func:`torch.inference_mode` (only ``z`` gets them).
        """
        steps = self.training_defaults["encode_steps"] if steps is None else int(steps)
        lr = self.training_defaults["encode_lr"] if lr is None else float(lr)
        progress = get_options()["progress"] if progress is None else bool(progress)
        n = target.shape[0]
        n_pts = feats.shape[0]
        per_point = self.n_channels if channel is None else 1
        step = int(batch_size) if batch_size else self._chunk(n_pts, per_point)
        z_all, loss_all = [], []
        starts = range(0, n, step)
        with torch.inference_mode(False), torch.enable_grad():
            target, weight = target.clone(), weight.clone()
            channel = None if channel is None else channel.clone()
            with torch.no_grad():
                filt = self._filters(feats.clone())
            z0 = self.code_mean.detach().clone()

            def fn(z: Tensor) -> Tensor:
                return self._network(filt, self._codes(z), channel)

            bar = tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False)
            for i in bar:
                t = target[i : i + step]
                w = weight if weight.shape[0] == 1 else weight[i : i + step]
                z, loss = minimise_per_sample(
                    lambda zz, t=t, w=w: _weighted_mse(fn(zz), t, w),
                    z0.expand(t.shape[0], -1), steps=steps, lr=lr,
                )
                z_all.append(z)
                loss_all.append(loss)
        if not z_all:
            return target.new_zeros(0, self.latent_dim), target.new_zeros(0)
        return torch.cat(z_all), torch.cat(loss_all)

    @staticmethod
    def _mask(target: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        finite = torch.isfinite(target)
        if bool(finite.all()):
            return target, weight.unsqueeze(0)
        return torch.where(finite, target, torch.zeros_like(target)), weight * finite

    def _method(self, method: str | None) -> str:
        method = self.training_defaults["encode_method"] if method is None else str(method)
        if method not in _METHODS:
            raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
        return method

    def _ridge(self, ridge: float | None) -> float:
        ridge = self.training_defaults["encode_ridge"] if ridge is None else float(ridge)
        if not ridge >= 0.0:
            raise ConfigError(f"ridge must be >= 0, got {ridge!r}")
        return ridge

    def encode(
        self,
        x: Tensor,
        *,
        method: str | None = None,
        ridge: float | None = None,
        training_index: Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        reuse_codes: bool | None = None,
    ) -> Tensor:
        """Encode fields on the training layout.

        Parameters
        ----------
        x : Tensor
            ``(B, C, *spatial_shape)``; NaN marks missing values (ignored).
        method : {"solve", "adam"}, optional
            ``"solve"`` (default of the config): the exact minimiser of the
            cos-lat weighted misfit (plus ``ridge``), by one ``K x K``
            linear solve per channel; the decoder is affine in the code (see
            :meth:`affine_map`), so this *is* the converged Gauss-Newton
            iterate (Gauss-Newton converges in one step). ``"adam"``: the
            auto-decoding of the paper (Adam on ``z`` from the mean code,
            ``steps``, ``lr``).
        ridge : float, optional
            ``rho`` of the ridge term towards the mean training code in
            units of the training codes' spread (see :meth:`encode_from`);
            default ``encode_ridge`` of the config. ``"solve"`` only.
        training_index : LongTensor, optional
            ``(B,)``: sample ``b`` is the training snapshot
            ``training_index[b]`` of the last :meth:`fit` (``-1``: not a
            training snapshot) and gets its code :attr:`train_codes` from
            training without being encoded. Explicit, by index; the others
            are encoded.
        steps : int, optional
            ``"adam"``: most Adam steps (default ``encode_steps``).
        lr : float, optional
            ``"adam"``: initial learning rate (default ``encode_lr``); halved
            per sample on a 20-step plateau, and a sample stops at ``lr / 100``.
        batch_size : int, optional
            ``"adam"``: samples optimised together (default: as many as fit
            the memory budget, see Notes of the class).
        progress : bool, optional
            ``"adam"``: progress bar over chunks (default from
            :func:`xlatda.get_options`).
        reuse_codes : bool, optional
            Deprecated heuristic kept for compatibility: samples equal (to
            rounding, by a fingerprint) to a training snapshot get its code.
            Prefer ``training_index``. Default ``reuse_codes`` of the config.

        Returns
        -------
        Tensor
            ``(B, latent_dim)`` in ``x``'s dtype and device (no gradient).

        Raises
        ------
        NotFittedError, ShapeError, ConfigError
        """
        self._require_fitted()
        self._check_fields(x)
        method, ridge = self._method(method), self._ridge(ridge)
        target = x.detach().to(self._ref.device, self._ref.dtype).reshape(
            x.shape[0], self.n_channels, -1
        )
        known = None
        if training_index is not None:
            known = self._check_training_index(training_index, x.shape[0])
        else:
            if reuse_codes is None:
                reuse_codes = self.training_defaults["reuse_codes"]
            known = self._training_match(target) if reuse_codes else None

        def run(t: Tensor) -> Tensor:
            if method == "solve":
                off, jac, channel, w = self._grid_affine()
                return self._solve_codes(off, jac, channel, t.reshape(t.shape[0], -1), w,
                                         ridge)[0]
            feats, w = self._grid_cache()
            tt, weight = self._mask(t, w)
            return self._autodecode_batches(
                tt, weight, feats, None, steps, lr, batch_size, progress, "SINR encode"
            )[0]

        if known is None or not bool((known >= 0).any()):
            return run(target).to(x.device, x.dtype)
        z = self._train_codes[known.clamp_min(0)].to(target.device, target.dtype)
        todo = torch.nonzero(known < 0).reshape(-1)
        if todo.numel():
            z = z.index_copy(0, todo, run(target[todo]))
        return z.to(x.device, x.dtype)

    @property
    def train_codes(self) -> Tensor | None:
        """Codes learned by the last :meth:`fit`, ``(N, latent_dim)``, aligned with ``x_train``.

        ``None`` before fitting and after loading a state dict (the codes
        belong to the training run, not to the model).
        """
        return self._train_codes

    def _check_training_index(self, index: Tensor, n: int) -> Tensor:
        if self._train_codes is None:
            raise ConfigError(
                "training_index needs the codes of the last fit(), but this model has none "
                "(not fitted in this session, or loaded from a state dict); encode without "
                "training_index"
            )
        index = torch.as_tensor(index)
        if index.shape != (n,) or index.is_floating_point():
            raise ShapeError(
                f"training_index must be an integer tensor of shape ({n},), got "
                f"{tuple(index.shape)} {index.dtype}"
            )
        m = self._train_codes.shape[0]
        if index.numel() and (int(index.max()) >= m or int(index.min()) < -1):
            raise ShapeError(
                f"training_index values must lie in [-1, {m - 1}] (the fit had {m} "
                f"snapshots; -1 = encode), got range [{int(index.min())}, {int(index.max())}]"
            )
        return index.to(self._train_codes.device, torch.long)

    def _training_match(self, target: Tensor) -> Tensor | None:
        """Index of the training snapshot each sample equals (to rounding), else -1."""
        if self._train_codes is None or self._train_sketch is None:
            return None
        sk = _sketch(torch.nan_to_num(target, nan=0.0))  # (B, K)
        ref = self._train_sketch.to(sk.device)  # (N, K)
        dist = (sk[:, None, :] - ref[None]).abs().amax(-1)  # (B, N)
        best, idx = dist.min(-1)
        scale = 1.0 + ref[idx].abs().amax(-1)
        return torch.where(best <= _SKETCH_TOL * scale, idx, torch.full_like(idx, -1))

    def encode_from(
        self,
        values: Tensor,
        points: Tensor,
        channel: Tensor,
        *,
        method: str | None = None,
        ridge: float | None = None,
        weights: Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> Tensor:
        r"""Encode scattered values at arbitrary points ("zero-shot").

        The misfit is weighted by ``cos(lat)`` of the points (normalised to
        mean 1), like the training loss, or by ``weights``. With
        ``method="solve"`` the code is the exact minimiser of

        .. math::

            \frac{\sum_p w_p (D(z; p) - y_p)^2}{\sum_p w_p}
            + \frac{\rho}{K C} \sum_c \lVert (a_c - \bar a_c) / s_c \rVert^2

        (``\bar a``, ``s``: mean and spread of the training codes; ``rho`` =
        ``ridge``), a MAP estimate with a Gaussian prior on the code. A
        channel with no observed point keeps its mean code (for ``rho > 0``).

        Parameters
        ----------
        values : Tensor
            ``(B, P)``; NaN marks a missing value.
        points : Tensor
            ``(P, 2)`` latitude, longitude in degrees.
        channel : LongTensor
            ``(P,)`` channel of each value.
        method, ridge
            As in :meth:`encode`.
        weights : Tensor, optional
            ``(P,)`` non-negative point weights instead of ``cos(lat)``
            (e.g. inverse observation-error variances).
        steps, lr, batch_size, progress
            As in :meth:`encode` (``"adam"`` only).

        Returns
        -------
        Tensor
            ``(B, latent_dim)`` in ``values``' dtype and device.

        Raises
        ------
        NotFittedError, ShapeError, ConfigError
        """
        self._require_fitted()
        method, ridge = self._method(method), self._ridge(ridge)
        points, channel = self._check_points(points, channel)
        if values.dim() != 2 or values.shape[1] != points.shape[0]:
            raise ShapeError(
                f"values must be (B, P) with P = {points.shape[0]} points, "
                f"got {tuple(values.shape)}"
            )
        if weights is None:
            lat = points[:, 0].to(self._ref.device, self._ref.dtype)
            w = torch.cos(torch.deg2rad(lat)).clamp_min(0.0)
        else:
            w = torch.as_tensor(weights).to(self._ref.device, self._ref.dtype)
            if w.shape != (points.shape[0],) or bool((w < 0).any()):
                raise ShapeError(
                    f"weights must be non-negative of shape ({points.shape[0]},), got "
                    f"{tuple(w.shape)}"
                )
        w = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
        target = values.detach().to(self._ref.device, self._ref.dtype)
        if method == "solve":
            off, jac = self._points_affine(points, channel)
            z, _ = self._solve_codes(off, jac, channel, target, w, ridge)
            return z.to(values.device, values.dtype)
        feats = self._point_features(points)
        target, weight = self._mask(target, w)
        z, _ = self._autodecode_batches(
            target, weight, feats, channel, steps, lr, batch_size, progress, "SINR encode_from"
        )
        return z.to(values.device, values.dtype)

    def _set_pca_basis(self, codes: Tensor) -> None:
        r"""Make the latent the principal components of the training decodes, per channel.

        With the cos-lat Gram matrix :math:`G_c = J_c^\top W J_c / \sum w` of
        channel ``c`` on the training grid and the covariance :math:`S_c` of its
        training codes (mean :math:`\bar a_c`), the eigenvectors
        :math:`G_c^{1/2} S_c G_c^{1/2} = V \Lambda V^\top` (descending) give the
        latent :math:`z_c = V^\top G_c^{1/2} (a_c - \bar a_c)`, so
        :math:`a_c = \bar a_c + G_c^{-1/2} V z_c`. Then the training latents are
        uncorrelated with variances :math:`\Lambda`, and a unit of any latent
        coordinate changes the decoded field by a unit weighted RMS:
        Euclidean distances between latents are distances between decoded
        fields. The decoder's span is unchanged (the map is invertible), so
        reconstructions are the same. ``codes (N, latent_dim)`` raw; updates
        the basis buffers, ``code_mean``, ``code_scale`` and the stored training
        codes (now latents).
        """
        f64 = torch.float64
        k, c = self.code_dim, self.n_channels
        with torch.no_grad():
            _, jac, channel, w = self._grid_affine()  # identity basis: raw codes
            a = codes.detach().to(f64).reshape(-1, c, k)
            mean = a.mean(0)
            offs, mats, lat = [], [], []
            for ci in range(c):
                rows = torch.nonzero(channel == ci).reshape(-1)
                jc, wc = jac[rows], w[rows].to(f64)
                gram = (jc.t() * wc) @ jc / wc.sum()
                g_val, g_vec = torch.linalg.eigh(gram)
                g_val = g_val.clamp_min(1e-12 * float(g_val.max().clamp_min(1e-300)))
                root = (g_vec * g_val.sqrt()) @ g_vec.t()
                inv_root = (g_vec / g_val.sqrt()) @ g_vec.t()
                d = a[:, ci] - mean[ci]
                cov = d.t() @ d / max(1, d.shape[0] - 1)
                _, vec = torch.linalg.eigh(root @ cov @ root)
                vec = vec.flip(-1)  # descending variance
                offs.append(mean[ci])
                mats.append(inv_root @ vec)
                lat.append(d @ root @ vec)
            z = torch.stack(lat, 1).reshape(a.shape[0], -1)
            dt = self.basis_matrix.dtype
            self.basis_offset.copy_(torch.stack(offs).to(dt))
            self.basis_matrix.copy_(torch.stack(mats).to(dt))
            self.code_mean.copy_(z.mean(0).to(dt))
            self.code_scale.copy_(_code_scale(z).to(dt))
            self._train_codes = z.to(codes.dtype)

    def _init_linear(self, x: Tensor) -> Tensor:
        """Set the linear path from the training fields ``x (N, C, P)``; return their codes."""
        if self.training_defaults["linear_fit"] == "grid":
            return self._init_linear_grid(x)
        return self._init_linear_projection(x)

    def _prior_kernel(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        r"""Prior covariance of the path's expansion at points, and the coefficient variances.

        ``phi (P, M)`` the path's harmonics; returns ``K (P, P)`` and ``(M,)``.

        :math:`K = \Phi \Lambda^{-1} \Phi^\top` with independent coefficients of
        variance :math:`\Lambda^{-1}_{lm} = (1 + l (l + 1))^{-s}` (``s`` =
        ``linear_smoothness``): a Sobolev (isotropic, on the stretched sphere)
        covariance of the fields the path can represent.
        """
        deg = sphere.sph_harm_indices(self.linear_degree)[0].to(phi.device, phi.dtype)
        var = (1.0 + deg * (deg + 1.0)) ** (-self.training_defaults["linear_smoothness"])
        return (phi * var) @ phi.t(), var

    def _init_linear_grid(self, x: Tensor) -> Tensor:
        r"""The path from the EOFs of the grid values (``linear_fit="grid"``); return the codes.

        Per channel ``c``, at the points present in every training field with
        a positive weight (cos-lat weights :math:`w`, :math:`\hat w = w / \sum
        w`): the weighted anomaly covariance :math:`S = A^\top A`,
        :math:`A = (X - \bar x)\,\mathrm{diag}(\hat w)^{1/2}`, is shrunk
        towards the path's prior (:meth:`_prior_kernel`),

        .. math::

            S_\gamma = S + \gamma\, \frac{\operatorname{tr} S}{\operatorname{tr} K_w} K_w,
            \qquad K_w = \mathrm{diag}(\hat w)^{1/2} K \mathrm{diag}(\hat w)^{1/2}

        (:math:`\gamma` = ``linear_prior``; 0: the plain weighted PCA), and its
        ``code_dim`` leading eigenvectors :math:`v_k` give the EOFs
        :math:`e_k = v_k / \hat w^{1/2}` (unit weighted mean square) and the
        codes :math:`a_k = (x - \bar x)\,\mathrm{diag}(\hat w)\, e_k` (their
        weighted projection). The mean and every EOF are then written in the
        harmonics as the posterior mean of the prior given the grid values
        (the smoothest expansion that fits them, up to a relative noise of
        1e-9): :math:`c = \Lambda^{-1} \Phi^\top (K + \epsilon\,
        \mathrm{diag}(\bar w / w))^{-1} f`. Where the harmonics resolve the grid
        (``linear_degree="auto"``) the decoder then equals those EOFs at the
        grid points (with :math:`\gamma = 0` the grid PCA), and between the
        points it is the prior's smooth interpolant. Components of zero
        variance (beyond the rank at :math:`\gamma = 0`) are zero. Costs
        :math:`O(P^3 + P^2 M)` per channel (``P`` points, ``M`` harmonics).
        """
        f64 = torch.float64
        k, c = self.code_dim, self.n_channels
        gamma = self.training_defaults["linear_prior"]
        with torch.no_grad():
            feats, w = self._grid_cache()
            phi = feats[:, self._n_filter_features :].to(f64)  # (P, M)
            kern, var = self._prior_kernel(phi)
            xs = x.detach().to(f64)
            n = xs.shape[0]
            codes = xs.new_zeros(n, c, k)
            weights, biases, chosen = [], [], []
            for ci in range(c):
                xc = xs[:, ci]
                rows = torch.nonzero(torch.isfinite(xc).all(0) & (w > 0)).reshape(-1)
                if rows.numel() == 0:
                    raise ShapeError(
                        f"channel {ci} has no point present in every training field; "
                        "drop the fields (or points) that are missing"
                    )
                xr, wr = xc[:, rows], w[rows].to(f64)
                wh = wr / wr.sum()
                kr = kern[rows][:, rows]
                kw = None
                if gamma == "auto" or gamma > 0.0:
                    kw = wh.sqrt()[:, None] * kr * wh.sqrt()[None]
                g = gamma
                if gamma == "auto":  # blocked cross-validation on the training fields
                    g, scores = choose_prior(xr, wh, kw, k)
                    chosen.append({"linear_prior": g, "cv_scores": scores})
                # (P_c, k), unit weighted mean square
                mean, eofs = shrunk_eofs(xr, wh, kw, float(g), k)
                codes[:, ci, : eofs.shape[1]] = ((xr - mean) * wh) @ eofs
                ridge = _GRID_FIT_RIDGE * float(kr.diagonal().mean())
                chol = torch.linalg.cholesky(kr + torch.diag(ridge * wr.mean() / wr))
                fields = torch.cat([mean[:, None], eofs], 1)  # (P_c, 1 + k')
                coef = (phi[rows].t() * var[:, None]) @ torch.cholesky_solve(fields, chol)
                basis = coef.new_zeros(coef.shape[0], k)
                basis[:, : eofs.shape[1]] = coef[:, 1:]
                weights.append(basis)
                biases.append(coef[:, 0])
            self._set_linear_path(weights, biases)
        if chosen:
            self.prior_choice = chosen
        return codes.reshape(n, -1).to(self._ref.dtype)

    def _set_linear_path(self, weights: list[Tensor], biases: list[Tensor]) -> None:
        """Write the linear path's per-channel coefficients and zero the network
        path, so the decoder is exactly that linear path (both PCA starts)."""
        dt = self.lin_weight.dtype
        self.lin_weight.copy_(torch.stack(weights).to(dt))
        self.lin_bias.copy_(torch.stack(biases).to(dt))
        self.head_weight.zero_()
        self.head_bias.zero_()
        self.linear_ready.fill_(1)

    def _init_linear_projection(self, x: Tensor) -> Tensor:
        r"""Set the linear path to the PCA of the training fields; return their codes.

        Per channel ``c``, with the path's harmonics :math:`\Phi` at the
        training points and the cos-lat weights :math:`W` (mean 1): the
        weighted least-squares coefficients of every field,
        :math:`C = X W \Phi (G + \epsilon I)^{-1} / \sum w` with the Gram matrix
        :math:`G = \Phi^\top W \Phi / \sum w` (:math:`\epsilon = 10^{-10}`
        of its mean diagonal: only to keep a near-singular :math:`G`, as on a
        regional patch, solvable), their mean :math:`\bar c` and the thin SVD
        :math:`(C - \bar c) \Phi^\top W^{1/2} / \sqrt{\sum w} = U S V^\top`:
        ``lin_bias_c`` = :math:`\bar c`, column ``k`` of ``lin_weight_c`` =
        :math:`(C - \bar c)^\top U_k / S_k` (EOF ``k``'s coefficients, a field of
        unit weighted mean square), the codes :math:`U_k S_k` (zero beyond the
        rank). The network path is set to zero (read-outs and ``head_bias``),
        so the decoder is then exactly the weighted PCA, with ``code_dim``
        components per channel, of the training fields' projection on the
        harmonics of degree ``<= linear_degree`` (on fields of that band
        limit: their PCA). Points missing in any training field are left out
        of the channel's fit. ``x (N, C, P)``, NaN = missing.
        """
        f64 = torch.float64
        k, c = self.code_dim, self.n_channels
        with torch.no_grad():
            feats, w = self._grid_cache()
            phi = feats[:, self._n_filter_features :].to(f64)  # (P, M)
            xs = x.detach().to(f64)
            codes = xs.new_zeros(xs.shape[0], c, k)
            weights, biases = [], []
            for ci in range(c):
                xc = xs[:, ci]
                ok = torch.isfinite(xc).all(0)
                wc = w.to(f64) * ok
                xc = torch.where(ok, xc, torch.zeros_like(xc))
                wsum = wc.sum().clamp_min(torch.finfo(f64).tiny)
                gram = (phi.t() * wc) @ phi / wsum
                eps = 1e-10 * float(gram.diagonal().mean().clamp_min(torch.finfo(f64).tiny))
                gram = gram + eps * torch.eye(gram.shape[0], dtype=f64, device=gram.device)
                coef = torch.linalg.solve(gram, ((xc * wc) @ phi / wsum).t()).t()  # (N, M)
                mean = coef.mean(0)
                anom = coef - mean
                fields = (anom @ phi.t()) * (wc / wsum).sqrt()  # (N, P)
                u, sv, _ = torch.linalg.svd(fields, full_matrices=False)
                tol = float(sv.max().clamp_min(0.0)) * max(fields.shape) * torch.finfo(f64).eps
                r = min(k, int((sv > tol).sum()))
                basis = anom.new_zeros(anom.shape[1], k)
                basis[:, :r] = anom.t() @ u[:, :r] / sv[:r]
                codes[:, ci, :r] = u[:, :r] * sv[:r]
                weights.append(basis)
                biases.append(mean)
            self._set_linear_path(weights, biases)
        return codes.reshape(xs.shape[0], -1).to(self._ref.dtype)

    def init_pca(
        self,
        x_train: Tensor,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Tensor:
        r"""Start the decoder at the PCA of ``x_train`` (the first step of :meth:`fit`).

        Needs a linear path (``linear_degree``). Sets the path to the cos-lat
        weighted PCA of the training fields' spherical-harmonic projection
        (degree ``<= linear_degree``; ``code_dim`` components per channel) and
        the network path to zero, so that the decoder represents exactly
        those principal components, mesh-free: at any point set
        (:meth:`decode_at`) and in every latent basis. :meth:`fit` then
        trains from there (and with validation data keeps this start if no
        epoch beats it). The model is usable (fitted) afterwards; the codes
        of ``x_train`` are its :attr:`train_codes`.

        Parameters
        ----------
        x_train : Tensor
            ``(N, C, *spatial_shape)``, normalised; NaN marks missing values
            (a point missing in any field is left out of its channel's fit).
        device, dtype : optional
            Where and in which float type the model lives afterwards (defaults
            from :func:`xlatda.get_options`, as for :meth:`fit`); the PCA itself
            is computed in float64.

        Returns
        -------
        Tensor
            The latents of ``x_train``, ``(N, latent_dim)``.

        Raises
        ------
        ConfigError
            Without a linear path.
        ShapeError
            If ``x_train`` does not fit the layout.

        Examples
        --------
        >>> import torch
        >>> from xlatda.sphere import gaussian_grid, longitudes
        >>> lat, _ = gaussian_grid(8)
        >>> grid = {"kind": "latlon", "lat": lat.tolist(), "lon": longitudes(16).tolist()}
        >>> enc = SINR(1, (8, 16), latent_dim=3, grid=grid, hidden=8, depth=1,
        ...            max_freq=1, linear_degree=7)
        >>> x = torch.randn(20, 1, 8, 16, dtype=torch.float64)
        >>> z = enc.init_pca(x)
        >>> z.shape, enc.decode(z).shape
        (torch.Size([20, 3]), torch.Size([20, 1, 8, 16]))
        """
        if self.linear_degree is None:
            raise ConfigError(
                "init_pca needs a linear path: build the SINR with linear_degree=T "
                "(e.g. the grid's truncation, nlat - 1 on a Gauss grid)"
            )
        self._check_fields(x_train)
        if x_train.shape[0] < 1:
            raise ShapeError("x_train holds no samples")
        n = x_train.shape[0]
        self.to(resolve_device(device), resolve_dtype(dtype))
        x = x_train.detach().to(self._ref.device, self._ref.dtype).reshape(
            n, self.n_channels, -1)
        with torch.inference_mode(False):
            with torch.no_grad():
                for buf, value in zip((self.basis_offset, self.basis_matrix),
                                      self._identity_basis()):
                    buf.copy_(value)
            codes = self._init_linear(x)
            self._finish_fit(codes, x)
        self._mark_fitted()
        return self._train_codes.to(x_train.device, x_train.dtype)

    def _finish_fit(self, codes: Tensor, x: Tensor) -> None:
        """Keep the training codes (raw, ``(N, latent_dim)``), their statistics, the basis."""
        with torch.no_grad():
            self.code_mean.copy_(codes.mean(0))
            self.code_scale.copy_(_code_scale(codes))
        self._train_codes = codes
        self._train_sketch = _sketch(torch.nan_to_num(x, nan=0.0))
        if self.training_defaults["latent_basis"] == "pca":
            self._set_pca_basis(codes)

    # ------------------------------------------------------------ training
    def fit(
        self,
        x_train: Tensor,
        x_val: Tensor | None = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr_codes: float | None = None,
        lr_weights: float | None = None,
        points_per_batch: int | None = None,
        patience: int | None = None,
        val_steps: int | None = None,
        fit_codes: str | None = None,
        seed: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool | None = None,
    ) -> dict[str, Any]:
        """Train decoder weights and one code per training snapshot (auto-decoding).

        Every epoch visits the snapshots in a random order in batches of
        ``batch_size``; the loss is the cos-lat weighted MSE (weights mean 1)
        at all training points, or at a fresh random subset of
        ``points_per_batch`` points per batch. Codes (``nn.Embedding``, sparse
        Adam, ``lr_codes``) and weights (Adam, ``lr_weights``) are updated
        together; both rates follow a cosine decay to 1 % over the epochs.
        With ``x_val``, the validation snapshots are auto-decoded
        (``val_steps`` Adam steps, decoder frozen) after each epoch; the
        weights of the best validation epoch are kept and training stops
        after ``patience`` epochs without improvement. Without ``x_val`` the
        training loss plays that role.

        With ``fit_codes="solve"`` (variable projection) there is no code
        table: each batch's codes are the exact least-squares codes of the
        current weights at the batch's points (see :meth:`encode`), so the
        weights are trained for the encoder that is used afterwards (on the
        quick shallow-water benchmark: held-out RMSE 0.428 against 0.452 for
        ``"table"`` at the same epochs, about 2x the time per epoch).

        With a linear path (``linear_degree``) the first fit starts from the
        training PCA (:meth:`init_pca`; the initial codes are its scores);
        with ``x_val`` that start is scored too (``hist["val_loss_start"]``)
        and kept (``best_epoch = -1``) if no epoch beats it. A later fit
        continues from the current weights.

        Parameters
        ----------
        x_train : Tensor
            ``(N, C, *spatial_shape)``, normalised; NaN marks missing values.
        x_val : Tensor, optional
            ``(M, C, *spatial_shape)``.
        epochs, batch_size, lr_codes, lr_weights, points_per_batch, patience, val_steps
            Default to the values given at construction (see ``config``).
        seed : int, optional
            Seed of the codes' initialisation, the shuffling and the point
            sampling (default: the construction ``seed``).
        device, dtype : optional
            Where and in which float type to train (defaults from
            :func:`xlatda.get_options`); the module is moved there.
        progress : bool, optional
            Progress bar over epochs (default from :func:`xlatda.get_options`).

        Returns
        -------
        dict
            ``{"train_loss": [...], "val_loss": [...], "best_epoch": int,
            "epochs_run": int, "time_s": float}`` (losses per epoch; weighted
            MSE in normalised units).

        Raises
        ------
        ShapeError
            If ``x_train`` / ``x_val`` do not fit the layout.
        ConfigError
            For non-positive settings.
        """
        td = self.training_defaults
        epochs = td["epochs"] if epochs is None else int(epochs)
        batch_size = td["batch_size"] if batch_size is None else int(batch_size)
        lr_codes = td["lr_codes"] if lr_codes is None else float(lr_codes)
        lr_weights = td["lr_weights"] if lr_weights is None else float(lr_weights)
        ppb = td["points_per_batch"] if points_per_batch is None else int(points_per_batch)
        patience = td["patience"] if patience is None else int(patience)
        val_steps = td["val_steps"] if val_steps is None else int(val_steps)
        seed = self.seed if seed is None else int(seed)
        progress = get_options()["progress"] if progress is None else bool(progress)
        fit_codes = td["fit_codes"] if fit_codes is None else str(fit_codes)
        if fit_codes not in _FIT_CODES:
            raise ConfigError(f"fit_codes must be one of {_FIT_CODES}, got {fit_codes!r}")
        for name, value in [("epochs", epochs), ("batch_size", batch_size)]:
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not (lr_codes > 0 and lr_weights > 0):
            raise ConfigError(
                f"learning rates must be positive, got lr_codes={lr_codes}, "
                f"lr_weights={lr_weights}"
            )
        self._check_fields(x_train)
        if x_train.shape[0] < 1:
            raise ShapeError("x_train holds no samples")
        if x_val is not None:
            self._check_fields(x_val)
        # gradients are needed even if the caller is in no_grad / inference mode
        with torch.inference_mode(False), torch.enable_grad():
            dev, dt = resolve_device(device), resolve_dtype(dtype)
            self.to(dev, dt)
            with torch.no_grad():  # train (and validate) in the raw codes
                for buf, value in zip((self.basis_offset, self.basis_matrix),
                                      self._identity_basis()):
                    buf.copy_(value)
            feats, w = self._grid_cache()
            n_pts = feats.shape[0]
            if ppb is not None and not 1 <= ppb:
                raise ConfigError(f"points_per_batch must be >= 1 or None, got {ppb}")
            ppb = None if ppb is None or ppb >= n_pts else ppb

            n = x_train.shape[0]
            x = x_train.detach().to(dev, dt).reshape(n, self.n_channels, n_pts)
            finite = torch.isfinite(x)
            x_nan = x
            x = torch.where(finite, x, torch.zeros_like(x))
            wx = w * finite  # (N, C, P)
            xv = wv = None
            if x_val is not None:
                xv = x_val.detach().to(dev, dt).reshape(x_val.shape[0], self.n_channels, n_pts)
                x_val_flat = xv.reshape(xv.shape[0], -1)  # NaN kept: missing values
                xv, wv = self._mask(xv, w)

            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(seed)
            std = self.training_defaults["code_init_std"]
            codes = nn.Embedding(n, self.latent_dim, sparse=True).to(dev, dt)
            with torch.no_grad():
                init = torch.randn(n, self.latent_dim, generator=gen, dtype=torch.float64) * std
                codes.weight.copy_(init)
            pca_start = self.linear_degree is not None and not bool(self.linear_ready)
            if pca_start:  # the linear path starts at the training PCA, the codes at its scores
                with torch.no_grad():
                    codes.weight.copy_(self._init_linear(x_nan))
            lin = [] if self.linear_degree is None else [self.lin_weight, self.lin_bias]
            weights = [p for p in self.parameters() if all(p is not q for q in lin)]
            opt_w = torch.optim.Adam(weights, lr=lr_weights)
            opt_c = torch.optim.SparseAdam(list(codes.parameters()), lr=lr_codes)
            pairs = [(opt_w, lr_weights), (opt_c, lr_codes)]
            lr_lin = self.training_defaults["lr_linear"]
            lr_lin = lr_weights if lr_lin is None else lr_lin
            if lin and lr_lin > 0:
                pairs.append((torch.optim.Adam(lin, lr=lr_lin), lr_lin))
            sched = [
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs, eta_min=lr * 1e-2)
                for o, lr in pairs
            ]
            opt_lin = [o for o, _ in pairs[2:]]

            hist: dict[str, Any] = {"train_loss": [], "val_loss": []}
            best, best_epoch, best_state, stale = math.inf, -1, None, 0

            def checkpoint(epoch: int, train_loss: float) -> float:
                """Codes of the current weights; the validation score; keep the best state."""
                nonlocal best, best_epoch, best_state, stale, best_codes
                if fit_codes == "solve" or epoch < 0:  # the codes of the current weights
                    off, jac, chan, wg = self._grid_affine()
                    with torch.no_grad():
                        codes.weight.copy_(
                            self._solve_codes(off, jac, chan, x_nan.reshape(n, -1), wg, 0.0)[0]
                        )
                if xv is not None:
                    with torch.no_grad():
                        self.code_mean.copy_(codes.weight.mean(0))
                        self.code_scale.copy_(_code_scale(codes.weight))
                    if self.training_defaults["encode_method"] == "solve":
                        off, jac, chan, wg = self._grid_affine()
                        _, vl = self._solve_codes(
                            off, jac, chan, x_val_flat, wg, self.training_defaults["encode_ridge"]
                        )
                    else:
                        _, vl = self._autodecode_batches(
                            xv, wv, feats, None, val_steps, None, None, False, "SINR validate"
                        )
                    score = float(vl.mean())
                    hist["val_loss" if epoch >= 0 else "val_loss_start"] = (
                        [*hist["val_loss"], score] if epoch >= 0 else score
                    )
                else:
                    score = train_loss
                if score < best:
                    best, best_epoch, stale = score, epoch, 0
                    best_state = copy.deepcopy(self.state_dict())
                    best_state["code_mean"] = codes.weight.detach().mean(0).clone()
                    best_state["code_scale"] = _code_scale(codes.weight.detach())
                    best_codes = codes.weight.detach().clone()
                else:
                    stale += 1
                return score

            best_codes = None
            if pca_start and xv is not None:  # the PCA start is a candidate of its own
                self.eval()
                checkpoint(-1, math.inf)
            bar = tqdm(range(epochs), desc="SINR fit", disable=not progress)
            for epoch in bar:
                self.train()
                perm = torch.randperm(n, generator=gen).to(dev)
                total = 0.0
                for i in range(0, n, batch_size):
                    idx = perm[i : i + batch_size]
                    if ppb is None:
                        sel = slice(None)
                    else:
                        sel = torch.randperm(n_pts, generator=gen)[:ppb].to(dev)
                    filt = self._filters(feats[sel])
                    if fit_codes == "solve":
                        batch_codes = self._projected_codes(
                            feats[sel], x_nan[idx][..., sel], w[sel]
                        )
                    else:
                        batch_codes = codes(idx)
                    pred = self._network(filt, self._codes(batch_codes), None)
                    loss = _weighted_mse(pred, x[idx][..., sel], wx[idx][..., sel]).mean()
                    for o in (opt_w, opt_c, *opt_lin):
                        o.zero_grad(set_to_none=True)
                    loss.backward()
                    for o in (opt_w, *opt_lin):
                        o.step()
                    if fit_codes == "table":
                        opt_c.step()
                    total += float(loss.detach()) * idx.numel()
                for s in sched if fit_codes == "table" else [sched[0], *sched[2:]]:
                    s.step()
                train_loss = total / n
                hist["train_loss"].append(train_loss)
                self.eval()
                score = checkpoint(epoch, train_loss)
                bar.set_postfix(
                    loss=f"{train_loss:.3g}", **({"val": f"{score:.3g}"} if xv is not None else {})
                )
                if patience is not None and stale >= patience:
                    break
            bar.close()
            if best_state is not None:
                self.load_state_dict(best_state)
                self._finish_fit(best_codes, x)  # x: the training fields, NaN -> 0
            self._mark_fitted()
            hist["best_epoch"] = best_epoch
            hist["epochs_run"] = len(hist["train_loss"])
            hist["time_s"] = time.perf_counter() - t0
            if pca_start and self.prior_choice is not None:
                hist["linear_prior"] = copy.deepcopy(self.prior_choice)
            return hist
