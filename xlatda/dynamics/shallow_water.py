r"""Spectral shallow-water model on the rotating sphere, and its classical test cases.

Equations (vorticity-divergence form, Williamson et al. 1992, eqs. 2-4 of
Hack and Jakob 1992), with :math:`h` the fluid depth, :math:`\zeta` the
relative vorticity, :math:`\delta` the divergence, :math:`\eta = \zeta + f`,
:math:`f = 2\Omega\sin\varphi`, :math:`\mathbf v = (u, v)` the wind and
:math:`E = |\mathbf v|^2 / 2`:

.. math::

    \partial_t \zeta &= -\nabla\cdot(\eta\mathbf v) \\
    \partial_t \delta &= \mathbf k\cdot\nabla\times(\eta\mathbf v)
                         - \nabla^2 (g h + E) \\
    \partial_t h &= -\nabla\cdot(h\mathbf v)

Space: spectral transform method with triangular truncation (spherical
harmonics up to degree ``lmax``). The wind comes from :math:`\zeta, \delta`
through the streamfunction and velocity potential; products are formed on the
grid and the divergence and curl of the flux vectors are taken back to
spectral space exactly (:class:`xlatda.sphere.SphericalHarmonicTransform`).
The default truncation ``lmax = (nlon - 1) // 3`` (and ``<= (2 nlat - 1) // 3``
on the Gauss grid) makes quadratic terms alias-free: T21 on 32x64, T42 on
64x128, T85 on 128x256.

Time: the classical fourth-order Runge-Kutta scheme (RK4), chosen because

* it is a one-step method, so a model state is a single time level, as the
  forecast-model interface (:mod:`xlatda.dynamics.physical`) requires; a
  leapfrog scheme needs two levels (and a Robert-Asselin filter against its
  computational mode, which also damps the physical modes and lowers the
  accuracy to first order);
* it is fourth-order accurate (the steady Williamson case 2 stays steady to
  round-off), has no computational mode, and its stability interval on the
  imaginary axis (:math:`|\omega\,\Delta t| \le 2\sqrt2`) is wide for the
  oscillatory gravity waves that limit the step;
* it is made of plain tensor operations, so autograd differentiates it.

The explicit step is limited by gravity waves; :func:`stable_time_step` gives
``courant / omega_max`` with ``omega_max = (sqrt(g H) + U) sqrt(L (L + 1)) / a``
(``courant = 1.4``, about half the RK4 limit, leaves room for the jet).

Hyperdiffusion: after each RK4 step every spectral coefficient of degree
``l`` of :math:`\zeta, \delta, h` is multiplied by
``exp(-dt / tau * (l (l + 1) / (L (L + 1)))^(order / 2))``, the exact solution
of :math:`\partial_t q = -\nu (-\nabla^2)^{order/2} q` over one step
(``tau`` = ``diffusion_time`` is the e-folding time of the smallest resolved
scale, degree L). The default is :math:`\nabla^8` (``order = 8``) with
``tau = 3`` hours: degree L/2 then e-folds in about a month, degree 2 at
T42 in millions of years, so the resolved flow is left alone while enstrophy piling
up at the truncation is removed; with it the Galewsky jet rolls up into the
vortices of the published high-resolution solutions by day 6 at T42 and T85.
The mean (``l = 0``) is never damped, so mass is conserved exactly.

Implementation: the coefficients are kept internally in an order-major,
equator-folded layout (symmetric and antisymmetric parts separately), so each
tendency evaluation is one batched matrix product for the synthesis of
(zeta, h, u cos, v cos) and one for the analysis of the five nonlinear
products, each over half the latitudes, plus two FFTs; members of a batch are
extra columns of the same products.

State tensors are grid fields ``(..., 3, nlat, nlon)`` with channels
``[height (m), relative vorticity (1/s), divergence (1/s)]``; model time is in
seconds. Everything is batched over the leading dimensions, differentiable
and runs on the device of the input.

References
----------
Williamson, D. L., Drake, J. B., Hack, J. J., Jakob, R. and Swarztrauber,
P. N. (1992). A standard test set for numerical approximations to the shallow
water equations in spherical geometry. J. Comput. Phys. 102, 211-224.

Galewsky, J., Scott, R. K. and Polvani, L. M. (2004). An initial-value problem
for testing numerical models of the global shallow-water equations. Tellus A
56, 429-440.

Hack, J. J. and Jakob, R. (1992). Description of a global shallow water model
based on the spectral transform method. NCAR Tech. Note NCAR/TN-343+STR.

Examples
--------
>>> import torch
>>> from xlatda.dynamics.shallow_water import ShallowWater, williamson2
>>> model = ShallowWater(32, 64)
>>> x0 = williamson2(32, 64)
>>> x1 = model.integrate(x0, steps=4)
>>> tuple(x1.shape)
(5, 3, 32, 64)
>>> bool((x1[-1, 0] - x0[0]).abs().max() < 1e-6 * x0[0].abs().max())
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from xlatda.dynamics.physical import PhysicalModel, physical_models, rk4_step
from xlatda.errors import ConfigError, ShapeError
from xlatda.sphere.grids import gaussian_grid, latitude_grid, longitudes
from xlatda.sphere.transform import SphericalHarmonicTransform

__all__ = [
    "CHANNELS",
    "EARTH_GRAVITY",
    "EARTH_OMEGA",
    "EARTH_RADIUS",
    "GALEWSKY_RANGES",
    "ShallowWater",
    "default_truncation",
    "galewsky",
    "galewsky_parameters",
    "stable_time_step",
    "williamson2",
]

EARTH_RADIUS = 6.37122e6  # m
EARTH_OMEGA = 7.292e-5  # 1/s
EARTH_GRAVITY = 9.80616  # m/s^2

#: Channels of a grid state tensor ``(..., 3, nlat, nlon)``, in order.
CHANNELS = ("height", "vorticity", "divergence")

#: Uniform ranges from which :func:`galewsky_parameters` draws each parameter.
GALEWSKY_RANGES: dict[str, tuple[float, float]] = {
    "jet_speed": (70.0, 90.0),  # m/s (Galewsky: 80)
    "bump_height": (90.0, 150.0),  # m (Galewsky: 120)
    "bump_lat": (40.0, 50.0),  # degrees north (Galewsky: 45)
    "bump_lon": (0.0, 360.0),  # degrees east (Galewsky: 0, i.e. 180 W .. 180 E centred)
}
_GALEWSKY_DEFAULTS = {"jet_speed": 80.0, "bump_height": 120.0, "bump_lat": 45.0, "bump_lon": 0.0}


def default_truncation(nlat: int, nlon: int, grid: str = "gauss") -> int:
    """Largest degree with alias-free quadratic products on this grid.

    Examples
    --------
    >>> default_truncation(64, 128)
    42
    """
    lim_lat = (2 * nlat - 1) // 3 if str(grid).lower().startswith("gauss") else (nlat - 1) // 3
    return max(1, min((nlon - 1) // 3, lim_lat))


def stable_time_step(
    lmax: int,
    *,
    radius: float = EARTH_RADIUS,
    gravity: float = EARTH_GRAVITY,
    mean_depth: float = 1.0e4,
    max_wind: float = 100.0,
    courant: float = 1.4,
) -> float:
    """Largest RK4 step (seconds) that is safely stable at truncation ``lmax``.

    ``courant / ((sqrt(g H) + U) sqrt(L (L + 1)) / a)``: the fastest resolved
    gravity wave plus advection by a wind ``U``. RK4 is stable for
    ``courant <= 2.83``; the default 1.4 keeps a margin for the nonlinear terms.

    Examples
    --------
    >>> round(stable_time_step(42))
    508
    """
    if lmax < 1:
        raise ConfigError(f"lmax must be >= 1, got {lmax}")
    speed = math.sqrt(gravity * mean_depth) + max_wind
    return courant * radius / (speed * math.sqrt(lmax * (lmax + 1.0)))


def _nice_step(dt_max: float, period: float = 3600.0) -> float:
    """Largest ``period / k`` (k integer) not above ``dt_max``."""
    return period / math.ceil(period / dt_max)


@physical_models.register("shallow_water")
class ShallowWater(PhysicalModel):
    """Global spectral shallow-water model (vorticity-divergence form, RK4).

    Parameters
    ----------
    nlat, nlon : int
        Grid size (Gauss or equiangular latitudes north to south, longitudes
        ``0 .. 360`` exclusive).
    dt : float, optional
        Default time step in seconds. ``None`` picks the largest divisor of
        one hour below :func:`stable_time_step` (e.g. 900 s at T21, 450 s at
        T42, 240 s at T85).
    grid : {"gauss", "equiangular"}
        Latitude grid.
    lmax : int, optional
        Triangular truncation; default alias-free (see the module docstring).
    radius, omega, gravity : float
        Planet radius (m), rotation rate (1/s), gravity (m/s^2); Earth's by default.
    diffusion_order : int
        Even order of the hyperdiffusion (2: Laplacian, 4: del^4, 8: del^8).
        Default 8: scale-selective, so the large scales are barely touched
        (degree L/2 is damped about 240 times more slowly than degree L).
    diffusion_time : float
        e-folding time (s) of the hyperdiffusion at the truncation degree;
        ``inf`` turns it off. Default 3 hours, with which the Galewsky jet
        rolls up into the vortices of the reference solutions by day 6 at
        T42 and T85.
    mean_depth : float
        Typical depth (m), used only to choose the default ``dt``.

    Attributes
    ----------
    state_shape : tuple
        ``(3, nlat, nlon)``: channels height (m), relative vorticity (1/s),
        divergence (1/s).
    sht : SphericalHarmonicTransform
        The transform (radius set to ``radius``).
    lat, lon : Tensor
        Grid coordinates in degrees (float64).

    Notes
    -----
    ``theta[..., 0]``, if given to :meth:`step` / :meth:`integrate`, replaces
    the gravity ``g`` (m/s^2) per batch element, which sets the gravity-wave
    speed and the geostrophic balance; it can be estimated as an unknown
    physical parameter. ``theta`` has shape ``(*batch, 1)`` or ``(1,)``.

    :meth:`step` transforms the grid state to spectral space, takes one RK4
    step and transforms back (so its output is band-limited); :meth:`integrate`
    stays in spectral space between outputs. One RK4 step costs four
    tendency evaluations, each two batched matrix products (Legendre sums
    over half the latitudes, see the module docstring) and two FFTs. At
    64 x 128 (T42) one evaluation takes about 1.5 ms on one CPU core, so a
    model day (192 steps of 450 s) takes about 1.3 s.

    Examples
    --------
    >>> import torch
    >>> model = ShallowWater(32, 64)
    >>> model.dt, model.sht.lmax
    (900.0, 21)
    >>> x = galewsky(32, 64, jet_speed=torch.tensor([70.0, 80.0]))
    >>> tuple(model.step(x).shape)
    (2, 3, 32, 64)
    """

    param_names = ("gravity",)

    def __init__(
        self,
        nlat: int = 64,
        nlon: int = 128,
        dt: float | None = None,
        *,
        grid: str = "gauss",
        lmax: int | None = None,
        radius: float = EARTH_RADIUS,
        omega: float = EARTH_OMEGA,
        gravity: float = EARTH_GRAVITY,
        diffusion_order: int = 8,
        diffusion_time: float = 3 * 3600.0,
        mean_depth: float = 1.0e4,
    ) -> None:
        if lmax is None:
            lmax = default_truncation(nlat, nlon, grid)
        self.sht = SphericalHarmonicTransform(
            nlat, nlon, lmax=lmax, grid=grid, radius=radius, dtype=torch.float64, device="cpu"
        )
        if dt is None:
            dt_max = stable_time_step(
                self.sht.lmax, radius=radius, gravity=gravity, mean_depth=mean_depth
            )
            dt = _nice_step(dt_max)
        super().__init__(dt)
        if int(diffusion_order) != diffusion_order or diffusion_order <= 0 or diffusion_order % 2:
            raise ConfigError(
                f"diffusion_order must be a positive even integer, got {diffusion_order!r}"
            )
        if not diffusion_time > 0:
            raise ConfigError(f"diffusion_time must be positive (inf: off), got {diffusion_time}")
        self.nlat, self.nlon, self.grid = self.sht.nlat, self.sht.nlon, self.sht.grid
        self.radius, self.omega, self.gravity = float(radius), float(omega), float(gravity)
        self.diffusion_order, self.diffusion_time = int(diffusion_order), float(diffusion_time)
        self.state_shape = (3, self.nlat, self.nlon)
        self.lat, self.lon = self.sht.lat, self.sht.lon
        ell = torch.arange(self.sht.lmax + 1, dtype=torch.float64)
        lam = ell * (ell + 1.0)
        self._rate = (lam / lam[-1]) ** (self.diffusion_order // 2) / self.diffusion_time  # 1/s
        self._master = self._build_tables()
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    # ---------------------------------------------------------------- tables
    def _build_tables(self) -> dict[str, Tensor]:
        """Float64 tables in the folded order-major layout (see ``_tendency``).

        Internal coefficients are indexed ``(m, p, k)`` with degree
        ``l = m + 2 k + p``: ``p = 0`` holds the functions symmetric about
        the equator, ``p = 1`` the antisymmetric ones (``Pbar_l^m(-mu) =
        (-1)^(l+m) Pbar_l^m(mu)``; ``H`` has the opposite parity). Entries with
        ``l > lmax`` are kept at zero.
        """
        sht = self.sht
        m_count, big_l, nlat = sht.mmax + 1, sht.lmax, sht.nlat
        base = sht.tables(torch.float64, "cpu")
        n2 = (big_l + 2) // 2  # k = 0 .. n2 - 1 for both parities
        half = (nlat + 1) // 2  # northern rows, equator included when nlat is odd
        m = torch.arange(m_count)[:, None, None]
        p = torch.arange(2)[None, :, None]
        k = torch.arange(n2)[None, None, :]
        ell = m + 2 * k + p  # (M, 2, n2)
        valid = ell <= big_l
        idx = ell.clamp(max=big_l)

        def fold(table: Tensor) -> Tensor:  # (M, L, J) -> (M, 2, n2, half)
            out = torch.gather(table, 1, idx.reshape(m_count, -1, 1).expand(-1, -1, nlat))
            return (out.reshape(m_count, 2, n2, nlat) * valid[..., None])[..., :half]

        p_syn, h_syn = fold(base["p"]), fold(base["h"])
        p_ana, h_ana = fold(base["pw"]), fold(base["hw"])
        # symmetric / antisymmetric output rows of the two bmm batches
        sym_syn = torch.cat((p_syn[:, 0], h_syn[:, 1]), dim=1)  # (M, 2 n2, half)
        asym_syn = torch.cat((p_syn[:, 1], h_syn[:, 0]), dim=1)
        sym_ana = torch.cat((p_ana[:, 0], h_ana[:, 1]), dim=1)
        asym_ana = torch.cat((p_ana[:, 1], h_ana[:, 0]), dim=1)
        ell_f = ell.to(torch.float64)
        lam = ell_f * (ell_f + 1.0) / self.radius**2
        lam = torch.where(valid, lam, torch.zeros_like(lam))
        inv = torch.where(lam > 0, -1.0 / torch.where(lam > 0, lam, 1.0), 0.0)
        rate = torch.where(valid, self._rate[idx], torch.zeros_like(lam))
        expand = (slice(None), slice(None), slice(None), None, None)
        return {
            # synthesis (2M, half, 2 n2): batch = (sym, asym) x M, columns = [P | H]
            "syn": torch.cat((sym_syn, asym_syn)).transpose(1, 2).contiguous(),
            "syn_p": torch.cat((p_syn[:, 0], p_syn[:, 1])).transpose(1, 2).contiguous(),
            # analysis (2M, 2 n2, half): rows = [P quadrature | H quadrature]
            "ana": torch.cat((sym_ana, asym_ana)).contiguous(),
            "ana_p": torch.cat((p_ana[:, 0], p_ana[:, 1])).contiguous(),
            "neg_lap": lam[expand],  # (M, 2, n2, 1, 1): -Laplacian eigenvalues
            "inv_lap": inv[expand],
            "rate": rate[expand],
            "im": (1j * torch.arange(m_count, dtype=torch.float64))[:, None, None, None, None],
            "coriolis": (2.0 * self.omega * base["mu"])[:, None],  # (J, 1)
            "cos_a": (self.radius * base["coslat"])[:, None],  # (J, 1)
        }

    def _tables(self, real: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The folded tables cast to ``real``/``device`` (cached)."""
        key = (real, torch.device(device))
        if key not in self._cache:
            cplx = _complex(real)
            # normal tensors even when first asked for in inference mode (a cycle's
            # window): a later differentiable forecast multiplies by them
            with torch.inference_mode(False):
                self._cache[key] = {
                    k: v.to(device=device, dtype=cplx if v.is_complex() else real)
                    for k, v in self._master.items()
                }
        return self._cache[key]

    # ------------------------------------------------- folded transforms
    # spectral: complex (M, 2, n2, F, B), order-major so that each Legendre sum
    # is one bmm over (parity, order) with all fields and members as columns;
    # grid: real (F, B, J, K), longitude last so that the FFTs run over rows.
    def _synth(self, c: Tensor, table: Tensor, c_h: Tensor | None = None) -> Tensor:
        """Legendre sums to Fourier coefficients on the full grid.

        ``c`` (M, 2, n2, F, B) multiplies ``Pbar``; ``c_h`` (same shape) the
        derivative table ``H`` (``table`` must then be the ``[P | H]`` table).
        Returns (M, J, F, B) complex.
        """
        m, _, _, nf, nb = c.shape
        if c_h is None:
            stacked = torch.stack((c[:, 0], c[:, 1]))  # (2, M, n2, F, B)
        else:  # symmetric rows: P even-parity + H odd; antisymmetric: P odd + H even
            stacked = torch.stack(
                (torch.cat((c[:, 0], c_h[:, 1]), dim=1), torch.cat((c[:, 1], c_h[:, 0]), dim=1))
            )
        r = torch.view_as_real(stacked).reshape(2 * m, stacked.shape[2], -1)
        out = torch.view_as_complex(torch.bmm(table, r).view(2, m, table.shape[1], nf, nb, 2))
        north, south = out[0] + out[1], out[0] - out[1]  # (M, half, F, B)
        if self.nlat % 2:
            south = south[:, :-1]  # drop the repeated equator row
        return torch.cat((north, south.flip(1)), dim=1)

    def _anal(self, f: Tensor, table: Tensor, with_h: bool) -> tuple[Tensor, Tensor | None]:
        """Quadratures of Fourier coefficients (M, J, F, B) -> (M, 2, n2, F, B) each.

        Returns the ``Pbar`` quadrature and, if ``with_h``, the ``H`` one.
        """
        m, nlat, nf, nb = f.shape
        half = (nlat + 1) // 2
        north = f[:, :half]
        south = f[:, nlat - half :].flip(1)
        if nlat % 2:  # the equator row has no mirror image
            south = torch.cat((south[:, :-1], torch.zeros_like(south[:, -1:])), dim=1)
        stacked = torch.stack((north + south, north - south))  # (2, M, half, F, B)
        r = torch.view_as_real(stacked).reshape(2 * m, half, -1)
        out = torch.view_as_complex(torch.bmm(table, r).view(2, m, table.shape[1], nf, nb, 2))
        if not with_h:
            return torch.stack((out[0], out[1]), dim=1), None
        n2 = table.shape[1] // 2
        p = torch.stack((out[0, :, :n2], out[1, :, :n2]), dim=1)
        h = torch.stack((out[1, :, n2:], out[0, :, n2:]), dim=1)
        return p, h

    def _grid_to_fourier(self, g: Tensor) -> Tensor:
        """(F, B, J, K) real -> (M, J, F, B) complex Fourier coefficients."""
        f = torch.fft.rfft(g, dim=-1, norm="forward")[..., : self.sht.mmax + 1]
        return f.permute(3, 2, 0, 1)

    def _fourier_to_grid(self, f: Tensor) -> Tensor:
        """(M, J, F, B) complex -> (F, B, J, K) real."""
        return torch.fft.irfft(f.permute(2, 3, 1, 0), n=self.nlon, dim=-1, norm="forward")

    def _to_internal(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Grid states (*batch, 3, J, K) -> spectral (M, 2, n2, 3, B) [vrt, div, h]."""
        self._check_state(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        batch = tuple(x.shape[:-3])
        g = x.reshape(-1, 3, self.nlat, self.nlon)[:, (1, 2, 0)].transpose(0, 1)  # (3, B, J, K)
        t = self._tables(x.dtype, x.device)
        return self._anal(self._grid_to_fourier(g), t["ana_p"], with_h=False)[0], batch

    def _to_grid(self, s: Tensor, batch: tuple[int, ...]) -> Tensor:
        """Spectral (M, 2, n2, 3, B) [vrt, div, h] -> grid states (*batch, 3, J, K)."""
        t = self._tables(s.real.dtype, s.device)
        g = self._fourier_to_grid(self._synth(s, t["syn_p"]))  # (3, B, J, K)
        g = g.transpose(0, 1)[:, (2, 0, 1)]
        return g.reshape(*batch, 3, self.nlat, self.nlon)

    def _gravity(self, theta: Tensor | None, batch: tuple[int, ...], like: Tensor):
        if theta is None:
            return self.gravity
        theta = torch.as_tensor(theta, dtype=like.real.dtype, device=like.device)
        if theta.dim() == 0 or theta.shape[-1] < 1:
            raise ShapeError(
                f"theta must have shape (*batch, 1) or (1,), got {tuple(theta.shape)}"
            )
        try:
            g = torch.broadcast_to(theta[..., 0], batch)
        except RuntimeError:
            raise ShapeError(
                f"theta of shape {tuple(theta.shape)} does not fit the batch shape {batch}"
            ) from None
        return g.reshape(-1)  # (B,), broadcasts against (..., B)

    def _tendency(self, s: Tensor, g: Tensor | float) -> Tensor:
        """Time derivative of a folded spectral state (M, 2, n2, 3, B), per second.

        Synthesis: one bmm with the ``[P | H]`` tables gives, in Fourier space,
        zeta, h, ``a u cos = sum (im chi) P - psi H`` and
        ``a v cos = sum (im psi) P + chi H``. Analysis: one bmm gives the
        ``P`` and ``H`` quadratures of the five products ``eta u, eta v, h u,
        h v`` (divided by ``a cos``) and ``E``. Both fold the grid about the
        equator, which halves the work of the Legendre sums.
        """
        t = self._tables(s.real.dtype, s.device)
        vrt, div, hgt = s[..., 0, :], s[..., 1, :], s[..., 2, :]
        psi, chi = vrt * t["inv_lap"][..., 0], div * t["inv_lap"][..., 0]
        im = t["im"][..., 0]
        zero = torch.zeros_like(vrt)
        c_p = torch.stack((vrt, hgt, im * chi, im * psi), dim=3)  # (M, 2, n2, 4, B)
        c_h = torch.stack((zero, zero, -psi, chi), dim=3)
        grid = self._fourier_to_grid(self._synth(c_p, t["syn"], c_h))  # (4, B, J, K)
        cos_a = t["cos_a"]
        u = grid[2] / cos_a
        v = grid[3] / cos_a
        eta = (grid[0] + t["coriolis"]) / cos_a
        h = grid[1] / cos_a
        energy = 0.5 * (u * u + v * v)
        f = self._grid_to_fourier(torch.stack((eta * u, eta * v, h * u, h * v, energy)))
        pa, ha = self._anal(f, t["ana"], with_h=True)  # (M, 2, n2, 5, B) each
        curl_eta = im * pa[..., 1, :] + ha[..., 0, :]
        div_eta = im * pa[..., 0, :] - ha[..., 1, :]
        div_h = im * pa[..., 2, :] - ha[..., 3, :]
        d_div = curl_eta + t["neg_lap"][..., 0] * (g * hgt + pa[..., 4, :])
        return torch.stack((-div_eta, d_div, -div_h), dim=3)

    def _step(self, s: Tensor, dt: float, g: Tensor | float) -> Tensor:
        s = rk4_step(lambda y: self._tendency(y, g), s, dt)
        if math.isfinite(self.diffusion_time):
            s = s * torch.exp(-dt * self._tables(s.real.dtype, s.device)["rate"])
        return s

    # -------------------------------------------------------- public interface
    def tendency(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """Time derivative (per second) of grid states ``(..., 3, nlat, nlon)``.

        Hyperdiffusion is not included (it is applied exactly after each step).
        """
        s, batch = self._to_internal(x)
        return self._to_grid(self._tendency(s, self._gravity(theta, batch, s)), batch)

    def step(self, x: Tensor, dt: float | None = None, theta: Tensor | None = None) -> Tensor:
        """Advance grid states ``(..., 3, nlat, nlon)`` by one step of ``dt`` seconds."""
        s, batch = self._to_internal(x)
        g = self._gravity(theta, batch, s)
        return self._to_grid(self._step(s, self.dt if dt is None else float(dt), g), batch)

    def integrate(
        self,
        x: Tensor,
        steps: int,
        dt: float | None = None,
        theta: Tensor | None = None,
        every: int = 1,
    ) -> Tensor:
        """Integrate ``steps`` steps; keep every ``every``-th state (initial included).

        Returns
        -------
        Tensor
            ``(*batch, steps // every + 1, 3, nlat, nlon)``; the first entry is
            ``x`` itself, the others are band-limited model states.

        Notes
        -----
        The state stays in spectral space between outputs; all kept states
        are synthesised together at the end (memory: the kept coefficients).
        """
        if int(steps) != steps or steps < 0 or int(every) != every or every < 1:
            raise ConfigError(f"need integers steps >= 0 and every >= 1, got {steps=} {every=}")
        s, batch = self._to_internal(x)
        g = self._gravity(theta, batch, s)
        dt = self.dt if dt is None else float(dt)
        kept = []
        for k in range(1, int(steps) + 1):
            s = self._step(s, dt, g)
            if k % every == 0:
                kept.append(s)
        nb = len(batch)
        if not kept:
            return x.unsqueeze(nb)
        n_out = len(kept)
        stacked = torch.stack(kept, dim=-1).reshape(*s.shape[:-1], -1)  # (..., 3, B * T)
        out = self._to_grid(stacked, (*batch, n_out))
        return torch.cat((x.unsqueeze(nb).to(out.dtype), out), dim=nb)

    def to_spectral(self, x: Tensor) -> Tensor:
        """Grid states ``(..., 3, nlat, nlon)`` -> coefficients ``(..., 3, L, M)``.

        Channels of the result: vorticity, divergence, height (the
        :class:`SphericalHarmonicTransform` layout).
        """
        self._check_state(x)
        c = self.sht.forward(x)
        return torch.stack((c[..., 1, :, :], c[..., 2, :, :], c[..., 0, :, :]), dim=-3)

    def to_grid(self, c: Tensor) -> Tensor:
        """Coefficients ``(..., 3, L, M)`` [vrt, div, h] -> grid states ``(..., 3, nlat, nlon)``."""
        g = self.sht.inverse(c)
        return torch.stack((g[..., 2, :, :], g[..., 0, :, :], g[..., 1, :, :]), dim=-3)

    # ------------------------------------------------------------ diagnostics
    def wind(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Eastward and northward wind (m/s) of grid states, each ``(..., nlat, nlon)``."""
        c = self.to_spectral(x)
        return self.sht.uv_from_vrtdiv(c[..., 0, :, :], c[..., 1, :, :])

    def mass(self, x: Tensor) -> Tensor:
        """Total volume of fluid ``integral h dA`` (m^3), shape ``(...)``."""
        self._check_state(x)
        return self.sht.integrate(x[..., 0, :, :])

    def energy(self, x: Tensor, gravity: float | Tensor | None = None) -> Tensor:
        """Total energy ``integral (h |v|^2 / 2 + g h^2 / 2) dA`` (m^5/s^2), shape ``(...)``.

        ``gravity`` (default the model's) may be a tensor of the batch shape.
        """
        u, v = self.wind(x)
        h = x[..., 0, :, :]
        g = self.gravity if gravity is None else torch.as_tensor(gravity)[..., None, None]
        return self.sht.integrate(0.5 * h * (u * u + v * v) + 0.5 * g * h * h)

    def __repr__(self) -> str:
        return (
            f"ShallowWater(nlat={self.nlat}, nlon={self.nlon}, dt={self.dt:g}, "
            f"grid={self.grid!r}, lmax={self.sht.lmax})"
        )


def _complex(real: torch.dtype) -> torch.dtype:
    return torch.complex64 if real == torch.float32 else torch.complex128


# --------------------------------------------------------------------- cases
def _grid_angles(nlat: int, nlon: int, grid: str) -> tuple[Tensor, Tensor]:
    lat, _ = latitude_grid(nlat, grid)
    return torch.deg2rad(lat), torch.deg2rad(longitudes(nlon))


def williamson2(
    nlat: int,
    nlon: int,
    *,
    grid: str = "gauss",
    u0: float | None = None,
    h0: float | None = None,
    radius: float = EARTH_RADIUS,
    omega: float = EARTH_OMEGA,
    gravity: float = EARTH_GRAVITY,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> Tensor:
    """Williamson et al. (1992) test case 2: steady zonal geostrophic flow (alpha = 0).

    ``u = u0 cos(lat)``, ``v = 0``, ``g h = g h0 - (a Omega u0 + u0^2 / 2) sin(lat)^2``,
    so ``zeta = 2 u0 sin(lat) / a`` and ``delta = 0``. The exact solution does
    not change in time.

    Parameters
    ----------
    nlat, nlon : int
        Grid size.
    grid : {"gauss", "equiangular"}
        Latitude grid.
    u0 : float, optional
        Wind speed at the equator, default ``2 pi a / 12 days`` (38.6 m/s).
    h0 : float, optional
        Depth at the equator (m); default ``2.94e4 / g`` (2998 m).
    radius, omega, gravity : float
        Planet constants.
    dtype, device
        Of the returned tensor.

    Returns
    -------
    Tensor
        ``(3, nlat, nlon)`` grid state [height, vorticity, divergence].

    References
    ----------
    Williamson et al. (1992), section 3.2.

    Examples
    --------
    >>> x = williamson2(8, 16)
    >>> x.shape
    torch.Size([3, 8, 16])
    >>> round(float(x[0].max()))  # the depth is largest at the equator
    2934
    """
    if u0 is None:
        u0 = 2.0 * math.pi * radius / (12.0 * 86400.0)
    if h0 is None:
        h0 = 2.94e4 / gravity
    lat, _ = _grid_angles(nlat, nlon, grid)
    mu = torch.sin(lat)[:, None].expand(nlat, nlon)
    h = h0 - (radius * omega * u0 + 0.5 * u0 * u0) * mu**2 / gravity
    zeta = 2.0 * u0 * mu / radius
    x = torch.stack((h, zeta, torch.zeros_like(h)))
    return x.to(dtype=dtype, device=device)


def _jet_profile(lat: Tensor) -> Tensor:
    """Galewsky jet shape u(lat) / u_max (float64)."""
    phi0, phi1 = math.pi / 7.0, math.pi / 2.0 - math.pi / 7.0
    e_n = math.exp(-4.0 / (phi1 - phi0) ** 2)
    inside = (lat > phi0) & (lat < phi1)
    safe = torch.where(inside, lat, torch.full_like(lat, 0.5 * (phi0 + phi1)))
    prof = torch.exp(1.0 / ((safe - phi0) * (safe - phi1))) / e_n
    return torch.where(inside, prof, torch.zeros_like(lat))


def _jet_vorticity_profile(lat: Tensor, radius: float) -> Tensor:
    """Relative vorticity of the jet per unit u_max: -(1/a)(du/dlat - u tan(lat))."""
    phi0, phi1 = math.pi / 7.0, math.pi / 2.0 - math.pi / 7.0
    u = _jet_profile(lat)
    inside = u > 0
    safe = torch.where(inside, lat, torch.full_like(lat, 0.5 * (phi0 + phi1)))
    q = (safe - phi0) * (safe - phi1)
    dudphi = torch.where(inside, -u * (2.0 * safe - phi0 - phi1) / (q * q), torch.zeros_like(u))
    return -(dudphi - u * torch.tan(lat)) / radius


def _balance_integrals(lat: Tensor, radius: float, omega: float, nodes: int = 96) -> Tensor:
    """``I1 = int a f u~ dlat`` and ``I2 = int u~^2 tan(lat) dlat`` from the south pole to ``lat``.

    Gauss-Legendre quadrature on ``[phi0, clip(lat, phi0, phi1)]`` (the jet is
    zero outside ``(phi0, phi1)`` and infinitely smooth); returns ``(2, *lat.shape)``.
    """
    phi0, phi1 = math.pi / 7.0, math.pi / 2.0 - math.pi / 7.0
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    top = lat.clamp(phi0, phi1)[..., None]
    half = 0.5 * (top - phi0)
    pts = phi0 + half * (x + 1.0)
    prof = _jet_profile(pts)
    i1 = (w * radius * 2.0 * omega * torch.sin(pts) * prof).sum(-1) * half[..., 0]
    i2 = (w * prof**2 * torch.tan(pts)).sum(-1) * half[..., 0]
    return torch.stack((i1, i2))


def galewsky_parameters(
    n: int,
    generator: torch.Generator | int | None = None,
    *,
    jet_speed: float | Sequence[float] | Tensor | None = None,
    bump_height: float | Sequence[float] | Tensor | None = None,
    bump_lat: float | Sequence[float] | Tensor | None = None,
    bump_lon: float | Sequence[float] | Tensor | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> dict[str, Tensor]:
    """Per-trajectory parameters of the Galewsky test case.

    Parameters
    ----------
    n : int
        Number of parameter sets.
    generator : torch.Generator or int, optional
        Source of the random draws (an int seeds a new CPU generator). With
        ``None``, unspecified parameters take Galewsky's standard values
        (80 m/s, 120 m, 45 N, 0 E) instead of random ones.
    jet_speed, bump_height, bump_lat, bump_lon : float, sequence or Tensor, optional
        Fixed values (a scalar for all, or ``n`` values) that are not drawn.
        Units: m/s, m, degrees north, degrees east.
    ranges : dict, optional
        Uniform ranges overriding :data:`GALEWSKY_RANGES`.

    Returns
    -------
    dict of str to Tensor
        Keys ``jet_speed``, ``bump_height``, ``bump_lat``, ``bump_lon``; each
        ``(n,)`` float64. The draws are made in this key order, one batch of
        ``n`` per key, so a seed fixes all of them.

    Raises
    ------
    ConfigError
        If a given value does not have ``n`` entries or a range is empty.

    Examples
    --------
    >>> p = galewsky_parameters(3, generator=0)
    >>> sorted(p), tuple(p["jet_speed"].shape)
    (['bump_height', 'bump_lat', 'bump_lon', 'jet_speed'], (3,))
    >>> galewsky_parameters(1)["jet_speed"]
    tensor([80.], dtype=torch.float64)
    """
    if int(n) != n or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    lims = dict(GALEWSKY_RANGES)
    lims.update(ranges or {})
    given = {"jet_speed": jet_speed, "bump_height": bump_height, "bump_lat": bump_lat,
             "bump_lon": bump_lon}
    out = {}
    for key in ("jet_speed", "bump_height", "bump_lat", "bump_lon"):
        lo, hi = lims[key]
        if not hi >= lo:
            raise ConfigError(f"range of {key} must have low <= high, got {(lo, hi)}")
        # draw for every key, so fixing one parameter does not change the others
        draw = None
        if generator is not None:
            draw = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        value = given[key]
        if value is None:
            value = draw if draw is not None else torch.full((n,), _GALEWSKY_DEFAULTS[key])
        value = torch.as_tensor(value, dtype=torch.float64).flatten()
        if value.numel() == 1:
            value = value.expand(n)
        if value.numel() != n:
            raise ConfigError(f"{key} must be a scalar or have {n} values, got {value.numel()}")
        out[key] = value.to(torch.float64).clone()
    return out


def galewsky(
    nlat: int,
    nlon: int,
    *,
    jet_speed: float | Tensor = 80.0,
    bump_height: float | Tensor = 120.0,
    bump_lat: float | Tensor = 45.0,
    bump_lon: float | Tensor = 0.0,
    grid: str = "gauss",
    mean_depth: float = 1.0e4,
    radius: float = EARTH_RADIUS,
    omega: float = EARTH_OMEGA,
    gravity: float = EARTH_GRAVITY,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> Tensor:
    """Galewsky et al. (2004) barotropically unstable jet with a height bump.

    The zonal jet ``u = u_max / e_n exp(1 / ((lat - phi0)(lat - phi1)))`` for
    ``phi0 = pi/7 < lat < phi1 = pi/2 - pi/7`` (zero elsewhere) is balanced by
    the depth ``g h(lat) = g h0 - int_{-pi/2}^{lat} a u (f + u tan(lat') / a) dlat'``
    (gradient-wind balance, integrated by Gauss-Legendre quadrature); ``h0``
    makes the global mean of the balanced depth ``mean_depth``. The
    perturbation ``h' = bump_height cos(lat) exp(-(dlon/alpha)^2) exp(-((lat2 - lat)/beta)^2)``
    (``alpha = 1/3``, ``beta = 1/15``, ``dlon`` wrapped to ``(-pi, pi]``)
    starts the instability.

    Parameters
    ----------
    nlat, nlon : int
        Grid size.
    jet_speed, bump_height, bump_lat, bump_lon : float or Tensor
        Jet maximum speed (m/s), bump amplitude (m), bump centre (degrees
        north / east). Tensors of one shape ``batch`` give a batch of states
        (e.g. from :func:`galewsky_parameters`).
    grid : {"gauss", "equiangular"}
        Latitude grid.
    mean_depth : float
        Global mean depth of the balanced state (m), 10 km in the paper.
    radius, omega, gravity : float
        Planet constants.
    dtype, device
        Of the returned tensor (computed in float64).

    Returns
    -------
    Tensor
        ``(*batch, 3, nlat, nlon)`` grid states [height, vorticity, divergence];
        the vorticity is the analytic ``-(1/a cos) d(u cos)/dlat`` of the jet,
        the divergence is 0.

    References
    ----------
    Galewsky, Scott and Polvani (2004), Tellus A 56, 429-440.

    Examples
    --------
    >>> x = galewsky(32, 64)
    >>> x.shape
    torch.Size([3, 32, 64])
    >>> x = galewsky(32, 64, jet_speed=torch.tensor([[70.0, 90.0]]))
    >>> x.shape
    torch.Size([1, 2, 3, 32, 64])
    """
    f64 = torch.float64
    params = [torch.as_tensor(p, dtype=f64) for p in (jet_speed, bump_height, bump_lat, bump_lon)]
    params = torch.broadcast_tensors(*params)
    umax, bh, blat, blon = (p[..., None, None] for p in params)
    lat, lon = _grid_angles(nlat, nlon, grid)
    lat2d = lat[:, None].expand(nlat, nlon)

    ints = _balance_integrals(lat, radius, omega)  # (2, nlat)
    qlat, qw = gaussian_grid(192)
    qlat = torch.deg2rad(qlat)
    means = 0.5 * (_balance_integrals(qlat, radius, omega) * qw).sum(-1)  # global means
    i1 = (ints[0] - means[0])[:, None]
    i2 = (ints[1] - means[1])[:, None]
    h = mean_depth - (umax * i1 + umax**2 * i2) / gravity

    dlon = torch.remainder(lon[None, :] - torch.deg2rad(blon) + math.pi, 2.0 * math.pi) - math.pi
    alpha, beta = 1.0 / 3.0, 1.0 / 15.0
    bump = bh * torch.cos(lat2d) * torch.exp(-((dlon / alpha) ** 2))
    bump = bump * torch.exp(-(((torch.deg2rad(blat) - lat2d) / beta) ** 2))
    h = h + bump
    zeta = umax * _jet_vorticity_profile(lat, radius)[:, None]
    h, zeta = torch.broadcast_tensors(h, zeta)
    x = torch.stack((h, zeta, torch.zeros_like(h)), dim=-3)
    return x.to(dtype=dtype, device=device)
