r"""The initial ensemble of a cycle: control vectors and parameter priors.

From a background Dataset (one state, or an ensemble with a ``member``
dimension), in the control space of a state space (:mod:`xlatda.spaces`):

``init="sigma"``
    independent Gaussian perturbations of std ``init_std`` of every control
    value (state units, or latent units in latent space);
``init="jacobian"`` (latent space, LAINR)
    perturbations from :math:`\mathcal N(0, B_z)`,
    :math:`B_z = J^+ \sigma_b^2 J^{+\top}`, :math:`J` the decoder Jacobian
    at the background (built in forward mode), :math:`\sigma_b` =
    ``init_std`` in normalised field units;
``init="climatology"`` (latent space, a model with a latent prior)
    perturbations with the prior's covariance, centred on the background:
    members :math:`z_b + (z_j - \mu)`, :math:`z_j` drawn from
    ``model.prior``. The default when no ``init_std`` is given and the
    model has a prior.

Parameters to estimate (``params=``) get their own prior: ``(mean, std)``
draws, or one value per member. :func:`start_state` checks the background
a cycle starts from (one time, its layout and start time).

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> initial_parameters({"F": (8.0, 1.0)}, ["F"], 4, g).shape
torch.Size([4, 1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ConfigError, VariableNotFoundError
from xlatda.layout import StateLayout, layout
from xlatda.windows import float_times

__all__ = ["INIT_KINDS", "initial_ensemble", "initial_parameters", "jacobian_perturbations",
           "resolve_init", "start_state"]

_F64 = torch.float64
INIT_KINDS = ("sigma", "jacobian", "climatology")


def resolve_init(init: str | None, init_std: Any, space: Any) -> str:
    """The initial-ensemble kind: ``init``, or the default for this space and spread."""
    if init is None:
        has_prior = getattr(getattr(space, "model", None), "prior", None) is not None
        return "climatology" if init_std is None and space.kind == "latent" and has_prior \
            else "sigma"
    if init not in INIT_KINDS:
        raise ConfigError(f"init must be one of {list(INIT_KINDS)}, got {init!r}")
    return init


def jacobian_perturbations(space: Any, z: torch.Tensor, members: int, sigma_b: float,
                           generator: torch.Generator) -> torch.Tensor:
    r"""Draws ``(members, d)`` from :math:`\mathcal N(0, B_z)`, :math:`B_z = J^+ \sigma_b^2
    J^{+\top}`, ``J`` the decoder Jacobian at ``z`` (a :class:`~xlatda.spaces.LatentSpace`).

    :math:`\sigma_b` is in normalised field units (the decoder's output
    space), so a physical background error of :math:`\sigma_b` standard
    deviations maps to the latent perturbations that reproduce it best in
    least squares.
    """
    jac = space.decoder_jacobian(z)  # (CS, d)
    pinv = torch.linalg.pinv(jac)  # (d, CS)
    eps = sigma_b * torch.randn((members, jac.shape[0]), generator=generator, dtype=_F64)
    return eps @ pinv.T


def _climatology(space: Any, base: torch.Tensor, members: int,
                 generator: torch.Generator) -> torch.Tensor:
    prior = getattr(getattr(space, "model", None), "prior", None)
    if prior is None or space.kind != "latent":
        raise ConfigError(
            "init='climatology' draws from the latent prior of the model (model.prior); this "
            f"{space.kind}-space model has none: pass init_std= with init='sigma'"
        )
    draws = torch.as_tensor(prior.sample(members, generator=generator)).to("cpu", _F64)
    mean = torch.as_tensor(prior.mean).to("cpu", _F64)
    return base + (draws - mean)


def initial_ensemble(background: xr.Dataset, layout: StateLayout, space: Any, members: int,
                     init_std: Any, generator: torch.Generator, init: str | None = None
                     ) -> torch.Tensor:
    """Control vectors ``(N, n_state)`` of the initial ensemble (see the module docstring).

    A background with a member dimension is the ensemble itself; else
    ``members`` members are drawn (one: the background itself).

    Raises
    ------
    ConfigError
        For a missing or negative spread, or an ``init`` the space cannot do.
    """
    x = layout.to_tensor(background, dtype=_F64)
    if layout.member_dim in background.dims:
        return space.from_fields(x[0])  # (member, C, *S)
    base = space.from_fields(x[:1])  # (1, n)
    if members < 2:
        return base
    kind = resolve_init(init, init_std, space)
    if kind == "climatology":
        return _climatology(space, base, members, generator)
    if init_std is None:
        raise ConfigError(
            "the background has no member dimension; pass init_std=<spread of the initial "
            "ensemble> (in the control space: state units, or latent units for space='latent')"
        )
    std = np.asarray(init_std, float)
    if not np.all(np.isfinite(std)) or np.any(std < 0):
        raise ConfigError(f"init_std must be non-negative and finite, got {init_std!r}")
    if kind == "jacobian":
        if space.kind != "latent":
            raise ConfigError("init='jacobian' perturbs latents; it needs space='latent'")
        return base + jacobian_perturbations(space, base, members, float(init_std), generator)
    noise = torch.randn((members, base.shape[-1]), generator=generator, dtype=_F64)
    return base + torch.as_tensor(std, dtype=_F64) * noise


def initial_parameters(params: dict[str, Any], names: list[str], members: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Initial parameter ensemble ``(members, P)``: drawn from (mean, std) or given."""
    cols = []
    for p in names:
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
        cols.append(float(spec[0]) + float(spec[1]) * torch.randn(members, generator=generator,
                                                                   dtype=_F64))
    return torch.stack(cols, -1)


def _one_time(ds: xr.Dataset, tname: str | None, what: str) -> xr.Dataset:
    if tname is not None and tname in ds.dims:
        if ds.sizes[tname] != 1:
            raise ConfigError(f"{what}; select it with .isel({tname}=i)")
        ds = ds.isel({tname: 0})
    return ds


def start_state(background: Any, model: Any, proto: Any, what: str, need_time: bool):
    """``(background at one time or None, layout, time name, start time or None)``.

    ``proto`` is the method's :class:`~xlatda.methods.protocol.CycleMethod`:
    without ``needs_background`` the layout is the model's and the
    background is optional (it only gives the start time); ``what`` is the
    message for a background at several times; ``need_time`` requires a
    time coordinate on the background.
    """
    if isinstance(background, xr.DataArray):
        background = background.to_dataset(
            name=background.name if background.name is not None else "data")
    if not proto.needs_background:
        L = model.layout
        tname = L.axes.time or "time"
        t0 = None
        if background is not None:
            background = L.align(_one_time(background, tname, what))
            L.check(background)
            if tname in background.coords:
                t0 = float(float_times(np.asarray(background[tname].values)))
        return background, L, tname, t0
    if background is None:
        raise ConfigError("this method starts from a background; pass the state at one time")
    own = getattr(model, "layout", None)
    if isinstance(own, StateLayout):
        # A latent model reads its own grid and variables: the background is taken in its
        # order (latitudes north to south or not, longitudes 0..360 or -180..180, (lon, lat)
        # dims), and other variables (a static mask, another field) are left out.
        missing = [v for v in own.variables if v not in background.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"the background lacks the model's state variables {missing}; the model "
                f"was fitted on {list(own.variables)}: pass a background with them")
        background = own.align(background[list(own.variables)])
        tname = (own.axes.time if own.axes.time in background.coords
                 else layout(background).axes.time)
    else:
        tname = layout(background).axes.time
    if need_time and (tname is None or tname not in background.coords):
        raise ConfigError("the background needs a time coordinate (the time it is valid at)")
    background = _one_time(background, tname, what)
    if isinstance(own, StateLayout):
        own.check(background)
        L = layout(background, variables=list(own.variables))
    else:
        L = layout(background)
    t0 = (float(float_times(np.asarray(background[tname].values)))
          if tname is not None and tname in background.coords else None)
    return background, L, tname, t0
