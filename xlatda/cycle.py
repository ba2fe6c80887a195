"""Single analyses and forecast-analysis cycles on xarray objects.

One code path serves every method and both spaces:

- ``space="physical"``: the control vector is the state itself (all
  channels and grid points); forecasts come from a physical model
  (:mod:`xlatda.dynamics.physical`: Lorenz-96, shallow water, any callable);
  the observation operator is the sparse interpolation ``H``.
- ``space="latent"``: the control vector is the latent vector of a
  :class:`~xlatda.LatentModel`; forecasts come from its latent dynamics
  (plus model noise from its learned Q); the observation operator is
  ``H' = H o D``, the decoder evaluated at the observation points. The
  analysis is decoded back to the grid.

Methods come from the registry in :mod:`xlatda.methods` ("etkf", "enkf",
"denkf", "ensrf", "letkf", "3dvar", "4denvar", "vaevar", "score").
Observation times are arbitrary: each distinct observation time is an
analysis time (or, for ``"4denvar"`` and ``"score"``, ``window`` consecutive
ones form one window).

``"score"`` (SLAMS, :mod:`xlatda.generative`) samples posteriors from a
trained score prior instead of updating a background: the model is a
LatentModel with a score part (:func:`xlatda.fit_score`) or a
``PixelScoreModel``; no forecast model is used.

Outputs are Datasets on the state layout with a ``member`` dimension, plus
observation-space diagnostics; with ``store=`` they are written to zarr
after every analysis, and a rerun with the same store resumes after the
last analysis written, without losing or duplicating any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ConfigError, ObservationError
from xlatda.layout import StateLayout, layout
from xlatda.methods import (
    EnsembleMethod,
    EnVar4D,
    ScoreDA,
    VAE4DVar,
    VAEVar,
    Var3D,
    get_method,
)
from xlatda.methods.covariance import Covariance, DiagonalCovariance
from xlatda.methods.localization import GreatCircleDistance, IndexDistance
from xlatda.model import LatentModel
from xlatda.obs.contract import ObservationTable, to_tensors, validate
from xlatda.obs.operator import build_operator
from xlatda.options import get_options

__all__ = ["CycleResult", "assimilate", "cycle"]

_F64 = torch.float64


@dataclass(frozen=True)
class CycleResult:
    """What :func:`cycle` returns.

    Attributes
    ----------
    analysis : Dataset
        Analysis ensemble on the state layout, dims ``(time, member, ...)``.
    background : Dataset
        Background (forecast) ensemble at the same times.
    diagnostics : Dataset
        Per analysis time: number of observations, RMS of innovations
        (observation minus background mean) and of residuals (observation
        minus analysis mean), background spread in observation space.
    parameters : Dataset or None
        Estimated parameters ``theta(time, member, parameter)``.
    """

    analysis: xr.Dataset
    background: xr.Dataset
    diagnostics: xr.Dataset
    parameters: xr.Dataset | None = None

    def __repr__(self) -> str:
        n = self.analysis.sizes.get("time", 0)
        m = self.analysis.sizes.get("member", 1)
        extra = ("" if self.parameters is None
                 else f", parameters={list(self.parameters.param.values)}")
        names = list(self.analysis.data_vars)
        return f"CycleResult(analyses={n}, members={m}, variables={names}{extra})"


# -- time helpers -----------------------------------------------------------
def _tfloat(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64).astype(float) / 1e9
    return arr.astype(float)


def _table_key(table: ObservationTable) -> str:
    """Hash of what an observation operator depends on: places and channels."""
    import hashlib

    h = hashlib.sha1()
    for part in (table.lat, table.lon, table.position, table.channel):
        if part is None:
            h.update(b"-")
        else:
            arr = np.ascontiguousarray(np.asarray(part))
            h.update(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes())
    return h.hexdigest()


# -- the two spaces -------------------------------------------------------------
class _Space:
    """Forecast, observe and convert, for one space (tensors ``(N, n)``)."""

    layout: StateLayout
    n_params: int = 0

    def forecast(self, s: torch.Tensor, t0: float, t1: float, gen: torch.Generator,
                 noise: bool) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, s: torch.Tensor, table: ObservationTable) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def to_fields(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover


class _Physical(_Space):
    def __init__(self, L: StateLayout, physical: Any, time_units: str, n_params: int) -> None:
        self.layout = L
        self.model = physical
        self.n_params = n_params
        self.shape = (L.n_channels, *L.spatial_shape)
        self.n_state = int(np.prod(self.shape))
        self.time_units = time_units
        if physical is not None:
            want = int(np.prod(physical.state_shape))
            if want != self.n_state:
                raise ConfigError(
                    f"the physical model's state has {want} values ({physical.state_shape}) but "
                    f"the state layout has {self.n_state} ({self.shape}); give the Dataset "
                    "every prognostic variable of the model (e.g. shallow water needs height, "
                    "vorticity and divergence)"
                )
        self._ops: dict[int, Any] = {}

    def split(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.n_params:
            return s[..., : self.n_state], s[..., self.n_state:]
        return s, None

    def forecast(self, s, t0, t1, gen, noise, grad=False):
        if t1 == t0:
            return s
        if self.model is None:
            raise ConfigError(
                "cycling in physical space needs a forecast model: pass model=a physical "
                "model (e.g. xlatda.dynamics.physical.Lorenz96()) or a LatentModel"
            )
        x, theta = self.split(s)
        dt = self.model.dt
        n_steps = (t1 - t0) / dt
        steps = round(n_steps)
        if steps < 1 or abs(n_steps - steps) > 1e-6 * max(1.0, n_steps):
            raise ObservationError(
                f"the time between analyses ({t1 - t0}) is not a whole number of model steps "
                f"(dt={dt}); use observation times on the model's step or set the model's dt"
            )
        xs = x.reshape(x.shape[0], *self.model.state_shape)
        for _ in range(steps):
            xs = self.model.step(xs, dt, theta)
        out = xs.reshape(x.shape[0], -1)
        return out if theta is None else torch.cat([out, theta], -1)

    def operator(self, table: ObservationTable):
        key = _table_key(table)  # by content: id() of a freed table is reused
        if key not in self._ops:
            self._ops = {key: build_operator(self.layout, table)}
        return self._ops[key]

    def observe(self, s, table):
        x, _ = self.split(s)
        op = self.operator(table)
        return op(x.reshape(x.shape[0], *self.shape))

    def to_fields(self, s):
        x, _ = self.split(s)
        return x.reshape(x.shape[0], *self.shape)

    def from_fields(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).to(_F64)


class _Latent(_Space):
    def __init__(self, model: LatentModel, n_params: int) -> None:
        self.layout = model.layout
        self.model = model
        self.n_params = n_params
        self.d = model.latent_dim

    def split(self, s):
        if self.n_params:
            return s[..., : self.d], s[..., self.d:]
        return s, None

    def forecast(self, s, t0, t1, gen, noise, grad=False):
        if t1 == t0:
            return s
        dyn = self.model.require_dynamics()
        step = (self.model.time_step or {"value": 1.0})["value"]
        tau = (t1 - t0) / step
        z, theta = self.split(s)
        # Networks run on the model's device; the control vector stays on the
        # CPU in float64 (the analysis kernels and CPU generators work there).
        zc = z.to(device=self.model.device, dtype=self.model.dtype)
        times = torch.tensor([0.0, tau], dtype=zc.dtype, device=zc.device)
        takes_theta = theta is not None and getattr(dyn, "n_params", 1) > 0
        with torch.set_grad_enabled(grad):
            out = dyn.evolve(zc, times, theta=theta.to(zc) if takes_theta else None)
        z1 = out[..., -1, :].to("cpu", _F64)
        q = self.model.model_error
        if noise and q is not None:
            eps = q.sample((z1.shape[0],), generator=gen).to(_F64)
            z1 = z1 + math.sqrt(tau) * eps
        return z1 if theta is None else torch.cat([z1, theta], -1)

    def points(self, table: ObservationTable) -> torch.Tensor:
        return self.model.points_tensor(table.lat, table.lon, table.position)

    def observe(self, s, table):
        z, _ = self.split(s)
        pts = self.points(table)
        return self.model.decode_points(z.to(self.model.dtype), pts, table.channel).to(
            "cpu", _F64)

    def to_fields(self, s):
        z, _ = self.split(s)
        with torch.no_grad():
            return self.model.decode_tensor(z.to(self.model.dtype)).to("cpu", _F64)

    def from_fields(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = self.model.encode_tensor(x.to(self.model.dtype))
        return z.detach().to("cpu", _F64)

    def jacobian_perturbations(self, z: torch.Tensor, members: int, sigma_b: float,
                               gen: torch.Generator) -> torch.Tensor:
        """Draws from N(0, B_z), B_z = J⁺ σ_b² J⁺ᵀ, J the decoder Jacobian at ``z``.

        ``σ_b`` is in normalised field units (the decoder's output space), so
        a physical background error of ``σ_b`` standard deviations maps to
        the latent perturbations that reproduce it best in least squares.
        """
        enc = self.model.encoder
        z0 = z.reshape(-1)[: self.d].to(device=self.model.device, dtype=self.model.dtype)

        def dec(v):
            return enc.decode(v[None]).reshape(-1)

        with torch.enable_grad():  # forward mode: d JVPs, vectorised (d << CS outputs)
            jac = torch.autograd.functional.jacobian(
                dec, z0, vectorize=True, strategy="forward-mode").to("cpu", _F64)  # (CS, d)
        pinv = torch.linalg.pinv(jac)  # (d, CS)
        eps = sigma_b * torch.randn((members, jac.shape[0]), generator=gen, dtype=_F64)
        return eps @ pinv.T


# -- pieces shared by assimilate and cycle ----------------------------------
def _method(method: str, settings: dict[str, Any]):
    cls = get_method(method)  # unknown names are refused here, before any work
    return cls, dict(settings)


def _locations(L: StateLayout, table: ObservationTable, space: _Space):
    if isinstance(space, _Latent):
        raise ConfigError(
            "LETKF localises by distance, which latent vectors do not have; use 'etkf', "
            "'enkf', 'denkf' or 'ensrf' in latent space"
        )
    C = L.n_channels
    if L.kind == "generic":
        return IndexDistance(int(np.prod(L.spatial_shape)), table.position, periodic=True,
                             channels=C)
    if L.kind == "latlon":
        glat, glon = np.meshgrid(L.lat, L.lon, indexing="ij")
        if L.spatial_dims[0] != L.axes.lat:
            glat, glon = glat.T, glon.T
        return GreatCircleDistance(glat.ravel(), glon.ravel(), table.lat, table.lon, channels=C)
    return GreatCircleDistance(L.lat, L.lon, table.lat, table.lon, channels=C)


def _analyse(inst: Any, space: _Space, ens: torch.Tensor, table: ObservationTable,
             gen: torch.Generator, settings: dict[str, Any]) -> torch.Tensor:
    y = table.values.to(_F64)
    r = table.error_std.to(_F64)
    if isinstance(inst, EnsembleMethod):
        hx = space.observe(ens, table)
        locations = _locations(space.layout, table, space) if inst.name == "letkf" else None
        return inst.analyse(ens, hx, y, r, generator=gen, locations=locations)
    if isinstance(inst, (Var3D, VAEVar)):
        if isinstance(inst, VAEVar) and not isinstance(space, _Physical):
            raise ConfigError("VAE-Var analyses the physical state; use space='physical'")
        xb = ens.mean(0, keepdim=True)
        if isinstance(space, _Physical):
            op = space.operator(table)
            h = op if space.n_params == 0 else (lambda s: space.observe(s, table))
        else:
            def h(s):
                return space.observe(s, table)
        res = inst.analyse(xb, y[None], r, h)
        return res.mean
    raise ConfigError(f"method {type(inst).__name__} cannot run a single-time analysis")


def _b_cov(settings: dict[str, Any], n: int) -> Covariance:
    if "b" in settings:
        b = settings.pop("b")
        if not isinstance(b, Covariance):
            raise ConfigError("b must be a covariance object from xlatda.methods.covariance")
        settings.pop("b_std", None)
        return b
    b_std = settings.pop("b_std", None)
    if b_std is None:
        raise ConfigError(
            "3dvar needs a background-error covariance: pass b_std=<float or array> "
            "(diagonal B) or b=<Covariance>"
        )
    var = torch.as_tensor(np.broadcast_to(np.asarray(b_std, float) ** 2, (n,)).copy(), dtype=_F64)
    return DiagonalCovariance(var)


def _space_for(L: StateLayout, model: Any, space: str | None, n_params: int,
               time_units: str) -> _Space:
    if space is None:
        space = "latent" if isinstance(model, LatentModel) else "physical"
    if space == "latent":
        if not isinstance(model, LatentModel):
            raise ConfigError(
                "space='latent' needs a LatentModel (xlatda.fit or xlatda.open_model); got "
                f"{type(model).__name__}"
            )
        return _Latent(model, n_params)
    if space != "physical":
        raise ConfigError(f"space must be 'latent' or 'physical', got {space!r}")
    if isinstance(model, LatentModel):
        raise ConfigError(
            "space='physical' forecasts with a physical model; pass one (e.g. "
            "xlatda.dynamics.physical.Lorenz96()) or use space='latent' with this LatentModel"
        )
    return _Physical(L, model, time_units, n_params)


def _initial_ensemble(background: xr.Dataset, L: StateLayout, space: _Space, members: int,
                      init_std: Any, gen: torch.Generator, init: str = "sigma") -> torch.Tensor:
    x = L.to_tensor(background, dtype=_F64)
    if L.member_dim in background.dims:
        x = x[0]  # (member, C, *S)
        return space.from_fields(x)
    x = x[:1]
    base = space.from_fields(x)  # (1, n)
    if members < 2:
        return base
    if init_std is None:
        raise ConfigError(
            "the background has no member dimension; pass init_std=<spread of the initial "
            "ensemble> (in the control space: state units, or latent units for space='latent')"
        )
    if init == "jacobian":
        if not isinstance(space, _Latent):
            raise ConfigError("init='jacobian' perturbs latents; it needs space='latent'")
        return base + space.jacobian_perturbations(base, members, float(init_std), gen)
    if init != "sigma":
        raise ConfigError(f"init must be 'sigma' or 'jacobian', got {init!r}")
    std = torch.as_tensor(np.asarray(init_std, float), dtype=_F64)
    noise = torch.randn((members, base.shape[-1]), generator=gen, dtype=_F64)
    return base + std * noise


def _initial_theta(params: dict[str, Any], pnames: list[str], members: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Initial parameter ensemble ``(members, P)``: drawn from (mean, std) or given."""
    cols = []
    for p in pnames:
        spec = params[p]
        if not isinstance(spec, tuple):  # one value per member
            values = np.asarray(spec, dtype=float)
            if values.shape != (members,):
                raise ConfigError(
                    f"params[{p!r}] has shape {values.shape}: give (prior mean, prior std) as "
                    f"a tuple, or one value per member ({members},) as a list or array"
                )
            cols.append(torch.as_tensor(values, dtype=_F64))
            continue
        if len(spec) != 2 or not float(spec[1]) >= 0:
            raise ConfigError(
                f"params[{p!r}] must be (prior mean, prior std >= 0) or one value per member, "
                f"got {spec!r}"
            )
        cols.append(float(spec[0]) + float(spec[1]) * torch.randn(members, generator=gen,
                                                                   dtype=_F64))
    return torch.stack(cols, -1)


def _fields_dataset(L: StateLayout, x: torch.Tensor, tval: Any, tname: str,
                    member_dim: str = "member") -> xr.Dataset:
    """(N, C, *S) at one time -> Dataset with dims (time, member, ...)."""
    ds = L.to_dataset(x[None], sample_coords={tname: np.atleast_1d(tval)})
    ds = ds.assign_coords({member_dim: np.arange(x.shape[0])})
    return ds


# -- public functions ---------------------------------------------------------
def assimilate(
    state: xr.Dataset | xr.DataArray,
    obs: xr.Dataset,
    model: Any = None,
    *,
    method: str = "etkf",
    space: str | None = None,
    members: int | None = None,
    init_std: Any = None,
    seed: int = 0,
    **settings: Any,
) -> xr.Dataset:
    """One analysis of ``state`` (an ensemble or a background) with ``obs``.

    Parameters
    ----------
    state : Dataset or DataArray or None
        The background at one time: an ensemble (``member`` dim) for the
        ensemble methods, or a single state (then ``members`` and
        ``init_std`` make a perturbed ensemble; 3DVar uses it as is).
        ``method="score"`` uses no background (the score prior is the
        prior): ``state`` then only labels the analysis time and may be
        ``None``.
    obs : Dataset
        Observations at the state's time (or without times). Several kinds
        at once (:func:`xlatda.obs.concat`) are assimilated together.
    model : LatentModel or PixelScoreModel, optional
        Needed for ``space="latent"`` and ``method="score"`` (a LatentModel
        with a score prior from :func:`xlatda.fit_score`, or its pixel-space
        baseline).
    method : str
        A registered method: "etkf", "enkf", "denkf", "ensrf", "letkf",
        "3dvar", "vaevar", "score" (4DEnVar needs times: use :func:`cycle`).
    space : {"latent", "physical"}, optional
        Default: latent with a LatentModel, physical otherwise.
    members, init_std, seed :
        Ensemble size and spread when ``state`` has no member dim (for
        ``"score"``: the number of posterior samples); seed of every random
        draw.
    **settings :
        The method's settings (``inflation=1.05``, ``radius=4``, ``b_std=``;
        for ``"score"``: ``steps``, ``corrections``, ``tau``, ``gamma``,
        ``guide_clip`` (default 1 here; ``None`` for the exact sampler) of
        :class:`~xlatda.methods.score.ScoreDA`).

    Returns
    -------
    Dataset
        The analysis on the state layout (with ``member`` for ensembles and
        score samples).

    Examples
    --------
    Score-based (SLAMS) posterior samples from a latent score prior, given
    observations at 4 of 8 sites:

    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    >>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    >>> model = xlatda.fit_score(ds, model, window=3, epochs=2, hidden=32, progress=False)
    >>> obs = xlatda.obs.sample_points(ds.isel(time=[250]), n=4, error_std=0.5, seed=1)
    >>> post = ds.isel(time=250).lda.assimilate(obs, model, method="score", members=4,
    ...                                         steps=8, gamma=0.1)
    >>> post.x.dims
    ('member', 'k')
    """
    cls, settings = _method(method, settings)
    if cls is ScoreDA:
        from xlatda.generative import assimilate_score

        return assimilate_score(state, obs, model, space=space, members=members, seed=seed,
                                settings=settings)
    if isinstance(state, xr.DataArray):
        state = state.to_dataset(name=state.name if state.name is not None else "data")
    if cls in (EnVar4D, VAE4DVar):
        raise ConfigError(f"{method!r} assimilates a time window; use xlatda.cycle(..., window=k)")
    L = layout(state)
    tname = L.axes.time
    if tname in state.dims:
        if state.sizes[tname] != 1:
            raise ConfigError(
                f"assimilate takes the state at one time; select it with state.isel({tname}=i)"
            )
        state = state.isel({tname: 0})
        L = layout(state)
    extra = [d for d in L.sample_dims if d != tname]
    if extra:
        raise ConfigError(f"assimilate needs one state; select along {extra} first")
    validate(obs, L)
    table = to_tensors(obs, L)
    gen = torch.Generator().manual_seed(int(seed))
    sp = _space_for(L, model, space, 0, "s")
    if cls in (Var3D, VAEVar):
        if cls is Var3D:
            n = sp.d if isinstance(sp, _Latent) else sp.n_state
            inst = cls(b=_b_cov(settings, n), **settings)
        else:
            inst = cls(**settings)
        ens = _initial_ensemble(state, L, sp, 1, None, gen)
        ana = _analyse(inst, sp, ens.mean(0, keepdim=True), table, gen, settings)
    else:
        inst = cls(**settings)
        n_members = members if members is not None else 0
        ens = _initial_ensemble(state, L, sp, n_members, init_std, gen)
        if ens.shape[0] < 2:
            raise ConfigError(
                f"{method!r} needs an ensemble: give the state a 'member' dim or pass members=N "
                "and init_std"
            )
        ana = _analyse(inst, sp, ens, table, gen, settings)
    fields = sp.to_fields(ana)  # (N, C, *S)
    if fields.shape[0] == 1 and cls in (Var3D, VAEVar):
        out = L.to_dataset(fields)
    else:
        out = L.to_dataset(fields[None])
        out = out.assign_coords({L.member_dim: np.arange(out.sizes[L.member_dim])})
    out.attrs["history"] = f"analysis by xlatda {method} in {type(sp).__name__[1:].lower()} space"
    return out


def _group_times(tvals: np.ndarray) -> list[np.ndarray]:
    """Indices of table entries per distinct observation time, in time order."""
    order = np.argsort(tvals, kind="stable")
    uniq, start = np.unique(tvals[order], return_index=True)
    bounds = [*start.tolist(), len(order)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(uniq))]


def cycle(
    background: xr.Dataset | xr.DataArray,
    obs: xr.Dataset,
    model: Any,
    *,
    method: str = "etkf",
    space: str | None = None,
    members: int = 20,
    init_std: Any = None,
    init: str = "sigma",
    window: int = 1,
    params: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    store: str | Path | None = None,
    noise: bool = True,
    **settings: Any,
) -> CycleResult:
    """Forecast-analysis cycles over the span of the observations.

    Parameters
    ----------
    background : Dataset or DataArray or None
        The initial state at one time (an ensemble with ``member``, or a
        single state perturbed with ``init_std``). ``method="score"`` uses
        no background: it may be ``None`` (else it only bounds the
        observation times from below).
    obs : Dataset
        Observations at arbitrary times (and places) after the background.
    model : LatentModel or physical model or PixelScoreModel
        Forecast model: a LatentModel with dynamics (latent space) or a
        physical model with ``step``/``integrate`` (physical space). For
        ``method="score"``: a LatentModel with a score prior
        (:func:`xlatda.fit_score`) or a ``PixelScoreModel``.
    method : str
        "etkf", "enkf", "denkf", "ensrf", "letkf", "3dvar", "4denvar",
        "vaevar", "vae4dvar" or "score". ``"vaevar"`` / ``"vae4dvar"``
        (physical space) take ``decoder=`` (a VAE trained on background
        errors) and ``std=`` (their scale); ``"vae4dvar"`` minimises over
        ``window`` observation times through the (differentiable) physical
        model from the window's first time. ``"score"`` (SLAMS) draws
        ``members`` posterior samples of each window of ``window`` consecutive
        observation times, which must
        be whole multiples of the score prior's time step apart and span at
        most its window; windows are independent (no forecast), and the
        ``background`` of the result holds unconditioned prior draws.
    space : {"latent", "physical"}, optional
        Default from the kind of ``model``.
    members : int
        Ensemble size (ignored when the background has ``member``).
    init_std : float or array, optional
        Spread of the initial ensemble: with ``init="sigma"`` the std of
        independent perturbations of every control variable (state units,
        or latent units in latent space); with ``init="jacobian"`` the
        background-error std ``σ_b`` in normalised field units, mapped to
        latent space through ``B_z = J⁺ σ_b² J⁺ᵀ`` (``J`` the decoder
        Jacobian at the background; LAINR).
    init : {"sigma", "jacobian"}
        How the initial ensemble is drawn (see ``init_std``).
    window : int
        "4denvar", "vae4dvar" and "score": number of consecutive observation times per
        window.
    params : dict, optional
        Unknown parameters to estimate with the state (LEVDA's control
        ``[z0; θ]``): ``{name: (prior mean, prior std)}`` (a tuple) draws θ
        independently of the state; ``{name: values}`` (a list or array) gives
        one value per member of an
        ensemble background drawn jointly with them (e.g. members started from
        initial conditions built from each member's θ, for parameters of the
        initial state). θ is passed to the model as ``theta`` when its
        dynamics take parameters (a LatentODE with ``n_params > 0``, a
        physical model); otherwise it is carried unchanged by the forecast and
        updated only through its ensemble correlation with the state. Needs
        "4denvar" or an ensemble method.
    seed : int
        Seed of every random draw; cycle ``k`` uses a generator seeded from
        ``(seed, k)``, so a resumed run draws the same numbers.
    progress : bool, optional
        Progress bar (default: the ``progress`` option).
    store : path, optional
        Zarr store written after every analysis; if it already holds
        analyses of this experiment, cycling resumes after the last one.
    noise : bool
        Add model noise from the latent model's Q in latent forecasts.
    **settings :
        Method settings (``inflation``, ``rtps``, ``radius``, ``b_std``,
        ``iterations``...).

    Returns
    -------
    CycleResult

    Examples
    --------
    SLAMS over windows of 2 consecutive observation times:

    >>> import xlatda
    >>> ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    >>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    >>> model = xlatda.fit_score(ds, model, window=3, epochs=2, hidden=32, progress=False)
    >>> obs = xlatda.obs.sample_points(ds.isel(time=slice(250, 254)), n=4, error_std=0.5,
    ...                                seed=1)
    >>> res = xlatda.cycle(None, obs, model, method="score", window=2, members=4, steps=8,
    ...                    progress=False)
    >>> dict(res.analysis.x.sizes)
    {'time': 4, 'member': 4, 'k': 8}
    """
    cls, settings = _method(method, settings)
    if cls is ScoreDA:
        from xlatda.generative import cycle_score

        if params:
            raise ConfigError("method='score' does not estimate parameters; drop params=")
        return cycle_score(background, obs, model, space=space, members=members, window=window,
                           seed=seed, progress=progress, store=store, settings=settings)
    if isinstance(background, xr.DataArray):
        background = background.to_dataset(
            name=background.name if background.name is not None else "data")
    if window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    if window > 1 and cls not in (EnVar4D, VAE4DVar):
        raise ConfigError(
            "window > 1 is for method='4denvar', 'vae4dvar' or 'score'; filters and 3D methods "
            "analyse every time")
    L = layout(background)
    tname = L.axes.time
    if tname is None or tname not in background.coords:
        raise ConfigError("the background needs a time coordinate (the time it is valid at)")
    if tname in background.dims:
        if background.sizes[tname] != 1:
            raise ConfigError(f"the background must be at one time; use .isel({tname}=0)")
        background = background.isel({tname: 0})
    t_start = background[tname].values
    L = layout(background)
    validate(obs, L)
    table = to_tensors(obs, L)
    if table.time is None:
        raise ObservationError("cycling needs observation times; add a 'time' coordinate")
    tvals = _tfloat(table.time)
    t0 = float(_tfloat(np.asarray(t_start)))
    if np.any(tvals < t0 - 1e-9):
        raise ObservationError(
            "some observations are earlier than the background; select obs after "
            f"{t_start} (obs.where(obs.time >= t0, drop=True))"
        )
    groups = _group_times(tvals)
    time_values = [table.time[g[0]] for g in groups]
    pnames = list(params or {})
    sp = _space_for(L, model, space, len(pnames), "s")
    if cls is Var3D:
        n = sp.d if isinstance(sp, _Latent) else sp.n_state
        inst = cls(b=_b_cov(settings, n), **settings)
    else:
        inst = cls(**settings)
    single = isinstance(inst, (Var3D, VAEVar, VAE4DVar))
    if isinstance(inst, (VAEVar, VAE4DVar)):
        if not isinstance(sp, _Physical):
            raise ConfigError(f"{method!r} analyses the physical state; use space='physical'")
        if pnames:
            raise ConfigError(f"{method!r} does not estimate parameters; use '4denvar' or an "
                              "ensemble method with params=")

    done, result_state = _resume(store, L, tname, pnames)
    gen0 = torch.Generator().manual_seed(int(seed))
    if result_state is None:
        ens = _initial_ensemble(background, L, sp, 1 if single else members, init_std, gen0,
                                init)
        if pnames:
            ens = torch.cat([ens, _initial_theta(params, pnames, ens.shape[0], gen0)], -1)
        t_cur = t0
    else:
        ens, t_cur = result_state
        ens = sp.from_fields(ens[0]) if not pnames else torch.cat(
            [sp.from_fields(ens[0]), ens[1]], -1)

    step_groups, step_times = _windows(groups, time_values, window)

    def analyse_window(k: int, subs: list[ObservationTable]) -> list[dict[str, Any]]:
        nonlocal ens, t_cur  # the ensemble carried from window to window
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + k + 1)
        times = [float(tvals[g[0]]) for g in step_groups[k]]
        if isinstance(inst, EnVar4D):
            rec, ens, t_cur = _envar_window(inst, sp, ens, t_cur, times, subs, gen, noise)
        elif isinstance(inst, VAE4DVar):
            rec, ens, t_cur = _vae4dvar_window(inst, sp, ens, t_cur, times, subs, gen)
        else:
            ens_b = sp.forecast(ens, t_cur, times[0], gen, noise)
            if single:
                ana = _analyse(inst, sp, ens_b.mean(0, keepdim=True), subs[0], gen, settings)
            else:
                ana = _analyse(inst, sp, ens_b, subs[0], gen, settings)
            rec = [(ens_b, ana)]
            ens, t_cur = ana, times[-1]
        return _records(sp, rec, subs, step_times[k], pnames)

    return _run_windows(analyse_window, table, step_groups, step_times, done, L, tname, pnames,
                        store=store, progress=progress, desc=f"cycle {method}")


def _windows(groups: list[np.ndarray], time_values: list[Any], window: int):
    """Observation-time groups and their time labels, ``window`` times per analysis."""
    step_groups = [groups[i:i + window] for i in range(0, len(groups), window)]
    step_times = [time_values[i:i + window] for i in range(0, len(groups), window)]
    return step_groups, step_times


def _run_windows(analyse_window, table: ObservationTable, step_groups, step_times,
                 done: float | None, L: StateLayout, tname: str, pnames, *, store,
                 progress: bool | None, desc: str) -> CycleResult:
    """Drive the analyses: skip the windows a resumed store holds, show progress,
    write each window's records to the store, and assemble the result.

    ``analyse_window(k, subs)`` analyses window ``k`` (its observation tables
    ``subs``) and returns its records (see :func:`_records`).
    """
    n_done = 0 if done is None else sum(
        1 for g in step_times if _tfloat(np.asarray(g[-1])) <= done + 1e-9)
    progress = get_options()["progress"] if progress is None else progress
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(step_groups), initial=n_done, desc=desc, leave=False)
    records: list[dict[str, Any]] = []
    try:
        for k in range(n_done, len(step_groups)):
            recs = analyse_window(k, [table.select(g) for g in step_groups[k]])
            records.extend(recs)
            if store is not None:
                _write(store, recs, L, tname, pnames, first=(k == 0))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if store is not None:
        return _open_result(store)
    return _assemble(records, L, tname, pnames)


def _window_obs(sp: _Space, times, subs, gen):
    """Stacked observations of a window and ``forecast_obs(s0) -> (..., P)`` through it."""
    y = torch.cat([s.values for s in subs]).to(_F64)
    r = torch.cat([s.error_std for s in subs]).to(_F64)

    def forecast_obs(s: torch.Tensor) -> torch.Tensor:
        lead = s.shape[:-1]
        flat = s.reshape(-1, s.shape[-1])
        outs, cur, tc = [], flat, times[0]
        for t, sub in zip(times, subs):
            cur = sp.forecast(cur, tc, t, gen, False, grad=torch.is_grad_enabled())
            tc = t
            outs.append(sp.observe(cur, sub))
        return torch.cat(outs, -1).reshape(*lead, -1)

    return y, r, forecast_obs


def _roll(sp: _Space, ens_b, ens_a, times, gen):
    """Background and analysis from the window start through the window's times."""
    rec = []
    cur_b, cur_a, tc = ens_b, ens_a, times[0]
    with torch.no_grad():
        for t in times:
            cur_b = sp.forecast(cur_b, tc, t, gen, False)
            cur_a = sp.forecast(cur_a, tc, t, gen, False)
            tc = t
            rec.append((cur_b, cur_a))
    return rec, cur_a


def _vae4dvar_window(inst: VAE4DVar, sp: _Space, ens, t_cur, times, subs, gen):
    """4D VAE-Var over one window: the state at its start, through the physical model."""
    xb0 = sp.forecast(ens, t_cur, times[0], gen, False).mean(0, keepdim=True)
    y, r, forecast_obs = _window_obs(sp, times, subs, gen)
    res = inst.analyse(xb0, y[None], r, forecast_obs)
    rec, last = _roll(sp, xb0, res.mean.detach().to(_F64), times, gen)
    return rec, last, times[-1]


def _envar_window(inst: EnVar4D, sp: _Space, ens, t_cur, times, subs, gen, noise):
    # Background ensemble at the window start (first observation time).
    ens0 = sp.forecast(ens, t_cur, times[0], gen, noise)
    y, r, forecast_obs = _window_obs(sp, times, subs, gen)
    res = inst.analyse(ens0, y, r, forecast_obs, generator=gen)
    rec, last = _roll(sp, ens0, res.ensemble, times, gen)
    return rec, last, times[-1]


def _records(sp: _Space, rec, subs, tlabels, pnames) -> list[dict[str, Any]]:
    out = []
    for (ens_b, ens_a), sub, tl in zip(rec, subs, tlabels):
        with torch.no_grad():
            hb_all = sp.observe(ens_b, sub)
            hb = hb_all.mean(0)
            ha = sp.observe(ens_a, sub).mean(0)
            spread = hb_all.std(0) if ens_b.shape[0] > 1 else torch.zeros_like(hb)
        y = sub.values.to(_F64)
        entry = {
            "time": tl,
            "background": sp.to_fields(ens_b).cpu(),
            "analysis": sp.to_fields(ens_a).cpu(),
            "n_obs": len(sub),
            "innovation_rms": float(torch.sqrt(((y - hb) ** 2).mean())),
            "residual_rms": float(torch.sqrt(((y - ha) ** 2).mean())),
            "background_spread_obs": float(torch.sqrt((spread ** 2).mean())),
            "obs_error_rms": float(torch.sqrt((sub.error_std.to(_F64) ** 2).mean())),
        }
        if pnames:
            entry["theta"] = ens_a[..., -len(pnames):].cpu().numpy()
            entry["theta_background"] = ens_b[..., -len(pnames):].cpu().numpy()
        out.append(entry)
    return out


def _datasets(records, L: StateLayout, tname: str, pnames) -> dict[str, xr.Dataset]:
    times = np.array([r["time"] for r in records])
    analysis = L.to_dataset(torch.stack([r["analysis"] for r in records]),
                            sample_coords={tname: times})
    background = L.to_dataset(torch.stack([r["background"] for r in records]),
                              sample_coords={tname: times})
    for ds in (analysis, background):
        ds.coords["member"] = np.arange(ds.sizes["member"])
    diag = xr.Dataset(
        {k: (tname, np.array([r[k] for r in records]))
         for k in ("n_obs", "innovation_rms", "residual_rms", "background_spread_obs",
                   "obs_error_rms")},
        coords={tname: times},
    )
    out = {"analysis": analysis, "background": background, "diagnostics": diag}
    if pnames:
        theta = np.stack([r["theta"] for r in records])
        theta_b = np.stack([r["theta_background"] for r in records])
        out["parameters"] = xr.Dataset(
            {"theta": ((tname, "member", "param"), theta),
             "theta_background": ((tname, "member", "param"), theta_b)},
            coords={tname: times, "member": np.arange(theta.shape[1]), "param": pnames},
        )
    return out


def _assemble(records, L, tname, pnames) -> CycleResult:
    if not records:
        raise ObservationError("no analysis was made: no observation times after the background")
    parts = _datasets(records, L, tname, pnames)
    return CycleResult(parts["analysis"], parts["background"], parts["diagnostics"],
                       parts.get("parameters"))


def _strip_encoding(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for v in ds.variables:
        ds[v].encoding = {}
    return ds


def _write(store, recs, L, tname, pnames, first: bool) -> None:
    parts = _datasets(recs, L, tname, pnames)
    path = str(store)
    exists = Path(path).exists()
    for name, ds in parts.items():
        ds = _strip_encoding(ds)
        if not exists:
            ds.to_zarr(path, group=name, mode="w" if name == "analysis" else "a",
                       zarr_format=3, consolidated=False)
        else:
            ds.to_zarr(path, group=name, append_dim=tname, mode="a", consolidated=False)
    if not exists:
        import zarr

        root = zarr.open_group(path, mode="a")
        root.attrs["xlatda_cycle"] = {"state_variables": list(L.variables),
                                      "parameters": list(pnames)}


def _open_result(store) -> CycleResult:
    path = str(store)
    opened = {n: xr.open_zarr(path, group=n, consolidated=False)
              for n in ("analysis", "background", "diagnostics")}
    params = None
    try:
        params = xr.open_zarr(path, group="parameters", consolidated=False)
    except (FileNotFoundError, KeyError, OSError, ValueError):
        params = None
    return CycleResult(opened["analysis"], opened["background"], opened["diagnostics"], params)


def _resume(store, L, tname, pnames) -> tuple[float | None, Any]:
    """Last complete analysis in ``store``: ``(time, ((ensemble[, theta]), time))``.

    A cycle writes its groups in order (analysis, background, diagnostics,
    parameters); a run killed in between leaves some groups one entry longer
    than others. Those extra entries are cut, so the resumed run writes each
    analysis exactly once.
    """
    if store is None or not Path(str(store)).exists():
        return None, None
    import zarr

    try:
        root = zarr.open_group(str(store), mode="a")
        meta = dict(root.attrs).get("xlatda_cycle")
        groups = [g for g in ("analysis", "background", "diagnostics", "parameters")
                  if g in root]
        lengths = {g: root[g][tname].shape[0] for g in groups}
    except Exception:  # anything unreadable is not resumable
        raise ConfigError(
            f"{str(store)!r} exists but is not a readable cycling store; remove it or pass "
            "another store path"
        ) from None
    if meta is None or meta.get("state_variables") != list(L.variables) or \
            meta.get("parameters") != list(pnames):
        raise ConfigError(
            f"{str(store)!r} holds another experiment (variables/parameters differ); remove it "
            "or pass another store path"
        )
    needed = ["analysis", "background", "diagnostics"] + (["parameters"] if pnames else [])
    n = min(lengths.get(g, 0) for g in needed)
    for g in groups:
        if lengths[g] > n:
            for _, arr in root[g].arrays():
                dims = list(arr.metadata.dimension_names or ())
                if tname in dims:
                    shape = list(arr.shape)
                    shape[dims.index(tname)] = n
                    arr.resize(tuple(shape))
    if n == 0:
        return None, None
    ana = xr.open_zarr(str(store), group="analysis", consolidated=False)
    last = ana.isel({tname: n - 1})
    x = L.to_tensor(last[list(L.variables)], dtype=_F64)[0]
    t_last = float(_tfloat(np.asarray(last[tname].values)))
    if pnames:
        par = xr.open_zarr(str(store), group="parameters", consolidated=False)
        theta = torch.as_tensor(par.theta.isel({tname: n - 1}).values, dtype=_F64)
        return t_last, ((x, theta), t_last)
    return t_last, ((x,), t_last)
