r"""Spherical harmonic transform in torch: scalar and vector, batched, differentiable.

A real field on an ``nlat x nlon`` grid (latitudes north to south, see
:mod:`xlatda.sphere.grids`) is written

.. math::

    f(\theta, \lambda) = \sum_{m=0}^{M} \sum_{l=m}^{L} {}' \; c_{lm}\,
    \bar P_l^m(\cos\theta)\, e^{im\lambda} + \text{c.c.},

i.e. ``f = irfft_m( sum_l c[l, m] Pbar_l^m )`` with the complex-conjugate
terms of ``m > 0`` implied (``c_{l,-m} = conj(c_{lm})``). The coefficients
are the complex expansion coefficients of the orthonormal harmonics
:math:`Y_l^m = \bar P_l^m e^{im\lambda}` (no Condon-Shortley phase), so
``c[l, m] = integral f conj(Y_l^m) dOmega`` on the unit sphere and
``integral f^2 dOmega = sum_l |c[l, 0]|^2 + 2 sum_{m>0} |c[l, m]|^2``.

Coefficient tensors have shape ``(..., lmax + 1, mmax + 1)`` (degree first);
entries with ``m > l`` are zero.

Forward (analysis): an FFT in longitude (``torch.fft.rfft``), then a
Gauss (or Fejér) quadrature in latitude done as one batched matrix product
per order ``m`` with a precomputed table. Inverse (synthesis): the matrix
products, then ``torch.fft.irfft``. Tables are computed once in float64 and
cast to the dtype/device of the tensors they meet (cached).

Vector fields use ``U = u cos(lat)``, ``V = v cos(lat)`` and the latitude
derivative table ``H = (1 - mu^2) dPbar/dmu`` (:mod:`xlatda.sphere.legendre`):

.. math::

    \psi = \nabla^{-2}\zeta, \quad \chi = \nabla^{-2}\delta, \quad
    U = \tfrac1a\left(\partial_\lambda\chi - (1-\mu^2)\partial_\mu\psi\right), \quad
    V = \tfrac1a\left(\partial_\lambda\psi + (1-\mu^2)\partial_\mu\chi\right),

and, integrating by parts in the analysis,

.. math::

    \zeta_{lm} = \tfrac{2\pi}{a}\sum_j \tfrac{w_j}{1-\mu_j^2}
        \left(im V_m \bar P_l^m + U_m H_l^m\right), \quad
    \delta_{lm} = \tfrac{2\pi}{a}\sum_j \tfrac{w_j}{1-\mu_j^2}
        \left(im U_m \bar P_l^m - V_m H_l^m\right).

References
----------
Hack, J. J. and Jakob, R. (1992). Description of a global shallow water model
based on the spectral transform method. NCAR Tech. Note NCAR/TN-343+STR.

Examples
--------
>>> import torch
>>> from xlatda.sphere import SphericalHarmonicTransform
>>> sht = SphericalHarmonicTransform(16, 32, dtype=torch.float64)
>>> c = torch.zeros(sht.lmax + 1, sht.mmax + 1, dtype=torch.complex128)
>>> c[3, 2] = 1.0 - 0.5j
>>> x = sht.inverse(c)
>>> x.shape
torch.Size([16, 32])
>>> bool(torch.allclose(sht.forward(x), c))
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xlatda.errors import ConfigError, ShapeError
from xlatda.options import resolve_device, resolve_dtype
from xlatda.sphere.grids import latitude_grid, longitudes
from xlatda.sphere.legendre import associated_legendre, legendre_derivative

__all__ = ["SphericalHarmonicTransform"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


class SphericalHarmonicTransform:
    """Forward and inverse spherical harmonic transforms on a latitude-longitude grid.

    Parameters
    ----------
    nlat, nlon : int
        Grid size. Latitudes run north to south (see :mod:`xlatda.sphere.grids`),
        longitudes ``0 .. 360`` exclusive.
    lmax : int, optional
        Largest degree. Default: ``nlat - 1`` on the Gauss grid,
        ``(nlat - 1) // 2`` on the equiangular grid (the largest degrees for
        which the transform of a band-limited field is exact), and never
        more than ``(nlon - 1) // 2``.
    mmax : int, optional
        Largest order; default ``min(lmax, (nlon - 1) // 2)`` (triangular
        truncation). Must satisfy ``mmax <= lmax`` and ``2 mmax < nlon``.
    grid : {"gauss", "equiangular"}
        Latitude grid and quadrature.
    radius : float
        Sphere radius used by the differential operators (Laplacian, winds);
        1 means the unit sphere.
    dtype : torch.dtype or str, optional
        Real dtype of the stored tables (default from :func:`xlatda.set_options`).
        Inputs of another dtype or device get tables cast to theirs.
    device : str or torch.device, optional
        Device of the stored tables.

    Attributes
    ----------
    lat, lon : Tensor
        ``(nlat,)`` and ``(nlon,)`` float64 degrees.
    weights : Tensor
        ``(nlat,)`` float64 quadrature weights in ``mu = sin(lat)`` (sum 2).

    Raises
    ------
    ConfigError
        For truncations outside what the grid supports or an unknown grid.

    Notes
    -----
    The tables hold ``2 (mmax + 1) (lmax + 1) nlat`` numbers each (four tables).
    A transform of ``B`` fields costs ``O(B nlat nlon log nlon)`` for the FFTs
    and ``O(B mmax lmax nlat)`` for the Legendre sums (batched matmuls).
    Everything is built from differentiable torch operations.

    Examples
    --------
    >>> import torch
    >>> sht = SphericalHarmonicTransform(8, 16, grid="equiangular", dtype=torch.float64)
    >>> sht.lmax, sht.mmax
    (3, 3)
    >>> x = sht.inverse(torch.randn(2, 4, 4, dtype=torch.complex128).tril())
    >>> torch.allclose(sht.inverse(sht.forward(x)), x)
    True
    """

    def __init__(
        self,
        nlat: int,
        nlon: int,
        lmax: int | None = None,
        mmax: int | None = None,
        grid: str = "gauss",
        *,
        radius: float = 1.0,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        lat, w = latitude_grid(nlat, grid)
        gauss = str(grid).lower() in ("gauss", "gaussian", "legendre-gauss")
        self.grid = "gauss" if gauss else "equiangular"
        self.nlat, self.nlon = int(nlat), int(nlon)
        self.lon = longitudes(nlon)
        self.lat, self.weights = lat, w
        exact = self.nlat - 1 if self.grid == "gauss" else (self.nlat - 1) // 2
        nyquist = (self.nlon - 1) // 2
        if lmax is None:
            lmax = min(exact, nyquist)
        if int(lmax) != lmax or lmax < 0:
            raise ConfigError(f"lmax must be a non-negative integer, got {lmax!r}")
        if mmax is None:
            mmax = min(int(lmax), nyquist)
        if int(mmax) != mmax or not 0 <= mmax <= lmax:
            raise ConfigError(f"mmax must be an integer in [0, lmax={lmax}], got {mmax!r}")
        if 2 * mmax >= self.nlon:
            raise ConfigError(
                f"mmax={mmax} needs nlon > 2 mmax = {2 * mmax}, got nlon={self.nlon}; "
                "lower mmax or use more longitudes"
            )
        if not radius > 0:
            raise ConfigError(f"radius must be positive, got {radius!r}")
        self.lmax, self.mmax, self.radius = int(lmax), int(mmax), float(radius)
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)

        colat = torch.deg2rad(90.0 - lat)
        p, h = legendre_derivative(self.lmax, self.mmax, colat)  # (J, L, M)
        p, h = p.permute(2, 1, 0).contiguous(), h.permute(2, 1, 0).contiguous()  # (M, L, J)
        quad = 2.0 * math.pi * w
        coslat = torch.sqrt(1.0 - torch.sin(torch.deg2rad(lat)) ** 2)
        self._master = {
            "p": p,  # synthesis tables
            "h": h,
            "pw": p * quad,  # analysis tables (weights folded in)
            "hw": h * quad,
            "coslat": coslat,
            "mu": torch.sin(torch.deg2rad(lat)),
            "ell": torch.arange(self.lmax + 1, dtype=torch.float64),
            "m": torch.arange(self.mmax + 1, dtype=torch.float64),
        }
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}
        self.tables(self.dtype, self.device)

    # ------------------------------------------------------------------ tables
    @property
    def coeff_shape(self) -> tuple[int, int]:
        """Shape ``(lmax + 1, mmax + 1)`` of one field's coefficients."""
        return (self.lmax + 1, self.mmax + 1)

    def tables(self, dtype: torch.dtype, device: torch.device | str) -> dict[str, Tensor]:
        """Precomputed tables cast to ``dtype``/``device`` (cached)."""
        key = (dtype, torch.device(device))
        if key not in self._cache:
            master = self._master.items()
            self._cache[key] = {k: v.to(device=device, dtype=dtype) for k, v in master}
        return self._cache[key]

    def _real_tables(self, t: Tensor) -> dict[str, Tensor]:
        dtype = _REAL.get(t.dtype, t.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = self.dtype
        return self.tables(dtype, t.device)

    def _check_grid(self, x: Tensor, name: str = "x") -> None:
        if x.dim() < 2 or tuple(x.shape[-2:]) != (self.nlat, self.nlon):
            raise ShapeError(
                f"{name} must end in the grid shape (nlat, nlon) = {(self.nlat, self.nlon)}, "
                f"got {tuple(x.shape)}"
            )

    def _check_coeff(self, c: Tensor, name: str = "coefficients") -> None:
        if c.dim() < 2 or tuple(c.shape[-2:]) != self.coeff_shape:
            raise ShapeError(
                f"{name} must end in (lmax + 1, mmax + 1) = {self.coeff_shape}, "
                f"got {tuple(c.shape)}"
            )

    # ------------------------------------------------------------ primitives
    def _as_real(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(self.dtype)
        return x

    def _as_complex(self, c: Tensor) -> Tensor:
        c = torch.as_tensor(c)
        if not c.is_complex():
            c = c.to(_COMPLEX[c.dtype if c.is_floating_point() else self.dtype])
        return c

    def _fourier(self, x: Tensor) -> Tensor:
        """(..., J, nlon) real -> (..., J, M) complex Fourier coefficients."""
        return torch.fft.rfft(x, dim=-1, norm="forward")[..., : self.mmax + 1]

    def _fourier_inverse(self, f: Tensor) -> Tensor:
        """(..., J, M) complex -> (..., J, nlon) real."""
        return torch.fft.irfft(f, n=self.nlon, dim=-1, norm="forward")

    @staticmethod
    def _legendre_synthesis(c: Tensor, table: Tensor) -> Tensor:
        """(..., L, M) complex, table (M, L, J) -> (..., J, M) complex."""
        out = torch.einsum("...lmc,mlj->...jmc", torch.view_as_real(c), table)
        return torch.view_as_complex(out.contiguous())

    @staticmethod
    def _legendre_analysis(f: Tensor, table: Tensor) -> Tensor:
        """(..., J, M) complex, table (M, L, J) -> (..., L, M) complex."""
        out = torch.einsum("...jmc,mlj->...lmc", torch.view_as_real(f), table)
        return torch.view_as_complex(out.contiguous())

    # ---------------------------------------------------------------- scalar
    def forward(self, x: Tensor) -> Tensor:
        """Analysis: grid values to spectral coefficients.

        Parameters
        ----------
        x : Tensor
            ``(..., nlat, nlon)`` real.

        Returns
        -------
        Tensor
            ``(..., lmax + 1, mmax + 1)`` complex (complex64 for float32 input).
        """
        x = self._as_real(x)
        self._check_grid(x)
        t = self._real_tables(x)
        return self._legendre_analysis(self._fourier(x), t["pw"])

    def inverse(self, c: Tensor) -> Tensor:
        """Synthesis: spectral coefficients to grid values.

        Parameters
        ----------
        c : Tensor
            ``(..., lmax + 1, mmax + 1)`` complex (a real tensor is taken as
            complex with zero imaginary part).

        Returns
        -------
        Tensor
            ``(..., nlat, nlon)`` real.
        """
        c = self._as_complex(c)
        self._check_coeff(c)
        t = self._real_tables(c)
        return self._fourier_inverse(self._legendre_synthesis(c, t["p"]))

    __call__ = forward

    # -------------------------------------------------------- spectral helpers
    def laplacian_eigenvalues(self) -> Tensor:
        """Eigenvalues ``-l (l + 1) / radius^2`` of the Laplacian, shape ``(lmax + 1, 1)``.

        The trailing singleton broadcasts against coefficient tensors.

        Examples
        --------
        >>> sht = SphericalHarmonicTransform(4, 8, dtype="float64")
        >>> sht.laplacian_eigenvalues().flatten()
        tensor([ -0.,  -2.,  -6., -12.], dtype=torch.float64)
        """
        ell = self._master["ell"]
        return (-ell * (ell + 1.0) / self.radius**2)[:, None]

    def _eig(self, c: Tensor) -> Tensor:
        t = self._real_tables(c)
        ell = t["ell"]
        return (-ell * (ell + 1.0) / self.radius**2)[:, None]

    def laplacian(self, c: Tensor) -> Tensor:
        """Laplacian of a field given by its coefficients (returns coefficients)."""
        c = self._as_complex(c)
        self._check_coeff(c)
        return c * self._eig(c)

    def inverse_laplacian(self, c: Tensor) -> Tensor:
        """Inverse Laplacian in spectral space; the ``l = 0`` mean is set to 0.

        Examples
        --------
        >>> import torch
        >>> sht = SphericalHarmonicTransform(8, 16, dtype=torch.float64)
        >>> c = torch.randn(sht.coeff_shape, dtype=torch.complex128).tril()
        >>> c[0, 0] = 0
        >>> torch.allclose(sht.laplacian(sht.inverse_laplacian(c)), c)
        True
        """
        c = self._as_complex(c)
        self._check_coeff(c)
        eig = self._eig(c)
        inv = torch.where(eig == 0, torch.zeros_like(eig), 1.0 / torch.where(eig == 0, 1.0, eig))
        return c * inv

    def _uv_from_psichi(self, psi: Tensor, chi: Tensor) -> tuple[Tensor, Tensor]:
        """Grid winds from streamfunction and velocity potential coefficients."""
        t = self._real_tables(psi)
        both = torch.stack((psi, chi), dim=-3)  # (..., 2, L, M)
        pf = self._legendre_synthesis(both, t["p"])  # (..., 2, J, M)
        hf = self._legendre_synthesis(both, t["h"])
        im = 1j * t["m"]
        big_u = im * pf[..., 1, :, :] - hf[..., 0, :, :]
        big_v = im * pf[..., 0, :, :] + hf[..., 1, :, :]
        uv = self._fourier_inverse(torch.stack((big_u, big_v), dim=-3))
        uv = uv / (self.radius * t["coslat"][:, None])
        return uv[..., 0, :, :], uv[..., 1, :, :]

    def uv_from_vrtdiv(self, vrt: Tensor, div: Tensor) -> tuple[Tensor, Tensor]:
        """Eastward and northward wind on the grid from vorticity and divergence.

        Parameters
        ----------
        vrt, div : Tensor
            ``(..., lmax + 1, mmax + 1)`` complex coefficients of relative
            vorticity and divergence (units 1/time).

        Returns
        -------
        u, v : Tensor
            ``(..., nlat, nlon)`` real winds (units radius/time).

        Notes
        -----
        ``psi = inverse_laplacian(vrt)``, ``chi = inverse_laplacian(div)``,
        ``u = (1/(a cos lat)) dchi/dlon - (1/a) dpsi/dlat`` and
        ``v = (1/(a cos lat)) dpsi/dlon + (1/a) dchi/dlat``; the latitude
        derivatives come from the exact table ``H`` of the Legendre
        functions, so the winds are exact for band-limited input.

        Examples
        --------
        >>> import math, torch
        >>> sht = SphericalHarmonicTransform(8, 16, dtype=torch.float64)
        >>> vrt = torch.zeros(sht.coeff_shape, dtype=torch.complex128)
        >>> vrt[1, 0] = 2 * math.sqrt(4 * math.pi / 3)  # zeta = 2 sin(lat): solid body
        >>> u, v = sht.uv_from_vrtdiv(vrt, torch.zeros_like(vrt))
        >>> coslat = torch.cos(torch.deg2rad(sht.lat))[:, None]
        >>> torch.allclose(u, coslat.expand(8, 16)), float(v.abs().max()) < 1e-14
        (True, True)
        """
        vrt, div = self._as_complex(vrt), self._as_complex(div)
        self._check_coeff(vrt, "vrt")
        self._check_coeff(div, "div")
        vrt, div = torch.broadcast_tensors(vrt, div)
        return self._uv_from_psichi(self.inverse_laplacian(vrt), self.inverse_laplacian(div))

    def gradient(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Eastward and northward components of the gradient of a field (on the grid).

        Parameters
        ----------
        c : Tensor
            ``(..., lmax + 1, mmax + 1)`` coefficients of the field.

        Returns
        -------
        dx, dy : Tensor
            ``(..., nlat, nlon)``: ``(1/(a cos lat)) df/dlon`` and ``(1/a) df/dlat``.
        """
        c = self._as_complex(c)
        self._check_coeff(c)
        return self._uv_from_psichi(torch.zeros_like(c), c)

    def vrtdiv_from_uv(self, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Spectral vorticity and divergence of a grid wind field.

        Parameters
        ----------
        u, v : Tensor
            ``(..., nlat, nlon)`` eastward and northward wind.

        Returns
        -------
        vrt, div : Tensor
            ``(..., lmax + 1, mmax + 1)`` complex coefficients of
            ``k . curl(u, v)`` and ``div(u, v)``.

        Notes
        -----
        Computed from ``u / cos(lat)`` and ``v / cos(lat)`` by the
        integration-by-parts formulas of the module docstring; exact (up to
        rounding) for winds derived from band-limited vorticity and
        divergence on the Gauss grid.

        Examples
        --------
        >>> import torch
        >>> sht = SphericalHarmonicTransform(16, 32, dtype=torch.float64)
        >>> vrt = torch.randn(sht.coeff_shape, dtype=torch.complex128).tril()
        >>> div = torch.randn(sht.coeff_shape, dtype=torch.complex128).tril()
        >>> vrt[:, 0] = vrt[:, 0].real; div[:, 0] = div[:, 0].real
        >>> vrt[0, 0] = div[0, 0] = 0
        >>> back = sht.vrtdiv_from_uv(*sht.uv_from_vrtdiv(vrt, div))
        >>> torch.allclose(back[0], vrt) and torch.allclose(back[1], div)
        True
        """
        u, v = self._as_real(u), self._as_real(v)
        self._check_grid(u, "u")
        self._check_grid(v, "v")
        u, v = torch.broadcast_tensors(u, v)
        t = self._real_tables(u)
        scale = 1.0 / (self.radius * t["coslat"][:, None])
        f = self._fourier(torch.stack((u, v), dim=-3) * scale)  # (..., 2, J, M)
        pa = self._legendre_analysis(f, t["pw"])  # (..., 2, L, M)
        ha = self._legendre_analysis(f, t["hw"])
        im = 1j * t["m"]
        vrt = im * pa[..., 1, :, :] + ha[..., 0, :, :]
        div = im * pa[..., 0, :, :] - ha[..., 1, :, :]
        return vrt, div

    # ------------------------------------------------------- off-grid values
    def _point_factors(self, lat: Tensor, lon: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lat = torch.as_tensor(lat, dtype=torch.float64).reshape(-1)
        lon = torch.as_tensor(lon, dtype=torch.float64).reshape(-1)
        if lat.shape != lon.shape:
            raise ShapeError(f"lat and lon must have the same size, got {lat.numel()} and "
                             f"{lon.numel()}")
        if bool(((lat < -90.0) | (lat > 90.0) | ~torch.isfinite(lat) | ~torch.isfinite(lon)).any()):
            raise ShapeError("lat must be finite degrees in [-90, 90] and lon finite degrees")
        p = associated_legendre(self.lmax, self.mmax, torch.deg2rad(90.0 - lat))  # (P, L, M)
        m = torch.arange(self.mmax + 1, dtype=torch.float64)
        weight = torch.full_like(m, 2.0)
        weight[0] = 1.0  # the m > 0 terms carry their complex conjugates
        return p, torch.deg2rad(lon)[:, None] * m, weight

    def evaluate(self, c: Tensor, lat: Tensor, lon: Tensor) -> Tensor:
        r"""The expansion at arbitrary points: :math:`f(\theta_p, \lambda_p)` from ``c``.

        The band-limited field the coefficients describe, read anywhere on
        the sphere (not only at grid nodes): at the grid's own nodes it equals
        :meth:`inverse`. For a field that is band-limited to the transform's
        truncation (as every output of :func:`xlatda.datasets.shallow_water`),
        ``evaluate(forward(x), lat, lon)`` is its exact value between the nodes.

        Parameters
        ----------
        c : Tensor
            ``(..., lmax + 1, mmax + 1)`` complex coefficients.
        lat, lon : Tensor
            ``(P,)`` degrees.

        Returns
        -------
        Tensor
            ``(..., P)`` real (float64, or float32 for complex64 ``c``).

        Examples
        --------
        >>> import torch
        >>> sht = SphericalHarmonicTransform(8, 16, dtype=torch.float64)
        >>> x = sht.inverse(torch.randn(sht.lmax + 1, sht.mmax + 1, dtype=torch.complex128).tril())
        >>> at_nodes = sht.evaluate(sht.forward(x), sht.lat[[2, 5]], sht.lon[[0, 7]])
        >>> bool(torch.allclose(at_nodes, x[[2, 5], [0, 7]]))
        True
        """
        c = self._as_complex(c)
        self._check_coeff(c)
        p, phase, weight = self._point_factors(lat, lon)
        real = _REAL[c.dtype]
        legendre = torch.einsum("...lm,plm->...pm", c, p.to(c))  # (..., P, M)
        rot = torch.polar(weight.expand_as(phase), phase).to(c)
        return (legendre * rot).real.sum(-1).to(real)

    def point_matrix(self, lat: Tensor, lon: Tensor, *, grid_lon: Tensor | None = None) -> Tensor:
        r"""The linear map from grid values to values at points: ``(P, nlat * nlon)``.

        Row ``p`` applied to a flattened ``(nlat, nlon)`` field (row-major,
        latitudes in the transform's north-to-south order) gives
        ``evaluate(forward(x), lat[p], lon[p])``: analysis and point synthesis
        folded into one matrix,

        .. math::

            K_p(j, k) = \frac1{n_\lambda} \sum_{m} w_m\, A_{pjm}
            \cos m(\lambda_p - \lambda_k), \qquad
            A_{pjm} = \sum_l \bar P_l^m(\cos\theta_p)\, 2\pi w_j \bar P_l^m(\mu_j),

        (:math:`w_0 = 1`, :math:`w_{m>0} = 2`), so an observation operator for
        point values of the band-limited field is one matrix product.

        Parameters
        ----------
        lat, lon : Tensor
            ``(P,)`` degrees.
        grid_lon : Tensor, optional
            ``(nlon,)`` the grid's longitudes, if they are the transform's
            shifted by a constant (e.g. ``-180 .. 180``); default
            :attr:`lon`.

        Returns
        -------
        Tensor
            ``(P, nlat * nlon)`` float64 on the CPU. Memory ``8 P nlat nlon`` bytes.

        Examples
        --------
        >>> import torch
        >>> sht = SphericalHarmonicTransform(8, 16, dtype=torch.float64)
        >>> x = sht.inverse(torch.randn(sht.lmax + 1, sht.mmax + 1, dtype=torch.complex128).tril())
        >>> lat, lon = torch.tensor([12.3, -40.0]), torch.tensor([3.0, 200.5])
        >>> k = sht.point_matrix(lat, lon)
        >>> bool(torch.allclose(k @ x.reshape(-1), sht.evaluate(sht.forward(x), lat, lon)))
        True
        """
        p, phase, weight = self._point_factors(lat, lon)
        table = self._master["pw"]  # (M, L, J), quadrature folded in
        a = torch.einsum("plm,mlj->pjm", p, table)
        glon = self.lon if grid_lon is None else torch.as_tensor(grid_lon, dtype=torch.float64)
        if glon.shape != (self.nlon,):
            raise ShapeError(f"grid_lon must have nlon = {self.nlon} values, got "
                             f"{tuple(glon.shape)}")
        m = torch.arange(self.mmax + 1, dtype=torch.float64)
        diff = phase[:, None, :] - torch.deg2rad(glon)[None, :, None] * m  # (P, K, M)
        cos = torch.cos(diff) * (weight / self.nlon)
        return torch.einsum("pjm,pkm->pjk", a, cos).reshape(a.shape[0], -1)

    # ------------------------------------------------------------- integrals
    def integrate(self, x: Tensor) -> Tensor:
        """Integral over the sphere of radius ``radius`` by the grid quadrature.

        Parameters
        ----------
        x : Tensor
            ``(..., nlat, nlon)``.

        Returns
        -------
        Tensor
            ``(...)``; exact for fields band-limited to the transform's limits.

        Examples
        --------
        >>> import math, torch
        >>> sht = SphericalHarmonicTransform(8, 16, dtype=torch.float64)
        >>> round(float(sht.integrate(torch.ones(8, 16))) / (4 * math.pi), 12)
        1.0
        """
        x = self._as_real(x)
        self._check_grid(x)
        w = self.weights.to(device=x.device, dtype=x.dtype)
        return (x.sum(-1) * w).sum(-1) * (2.0 * math.pi / self.nlon) * self.radius**2

    def __repr__(self) -> str:
        return (
            f"SphericalHarmonicTransform(nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, "
            f"mmax={self.mmax}, grid={self.grid!r}, radius={self.radius:g})"
        )
