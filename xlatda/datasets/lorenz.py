"""Lorenz-63 and Lorenz-96 trajectories as CF-annotated xarray Datasets.

The trajectories are integrated by the batched RK4 steppers of
:mod:`xlatda.dynamics.physical` (:class:`~xlatda.dynamics.physical.Lorenz63`,
:class:`~xlatda.dynamics.physical.Lorenz96`) in float64, all members and
trajectories at once in one tensor.

Layout of the returned Datasets
-------------------------------
``time``
    Model time after spin-up, ``0, every*dt, 2*every*dt, ...`` (float). Lorenz
    time is dimensionless, so ``units="1"``; ``standard_name="time"`` and
    ``axis="T"`` let cf-xarray (``ds.cf["T"]``, ``ds.cf["time"]``) and
    :func:`xlatda.layout` find it. xarray does not decode it as a date. For
    Lorenz-96, 0.05 time units are commonly read as 6 hours.
``k`` (Lorenz-96 only)
    Site index ``0 .. n-1`` on a periodic ring (site ``n-1`` neighbours site
    0). It has no CF ``axis``: it is a generic spatial dimension. The state
    variable is called ``x`` after Lorenz's :math:`X_k`, so the dimension
    cannot also be called ``x``.
``member`` (when ``members`` is given)
    Leading dimension of an ensemble whose initial states are the
    unperturbed state plus independent Gaussian noise of standard deviation
    ``perturbation``.
``trajectory`` (when ``trajectories`` is given)
    Independent runs, each from its own random initial state and spin-up.

Lorenz-63 is returned as three data variables ``x``, ``y``, ``z`` (one per
model variable, each with its own ``long_name``) rather than one variable
with a component dimension: each is a physical quantity, they plot and score
by name, and :func:`xlatda.layout` stacks them as channels.

Reproducibility: everything random comes from one ``torch.Generator`` seeded
with ``seed``. The unperturbed initial state is drawn first, so
``lorenz96(seed=s, members=m)`` is an ensemble centred on the initial state
of ``lorenz96(seed=s)``: the usual "truth plus perturbed ensemble" set-up.

Examples
--------
>>> from xlatda.datasets.lorenz import lorenz96
>>> ds = lorenz96(n=8, steps=4, members=3)
>>> dict(ds.x.sizes)
{'member': 3, 'time': 5, 'k': 8}
>>> ds.time.values
array([0.  , 0.05, 0.1 , 0.15, 0.2 ])
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import xarray as xr

from xlatda._version import __version__
from xlatda.dynamics.physical import Lorenz63, Lorenz96, PhysicalModel
from xlatda.errors import ConfigError

__all__ = ["lorenz63", "lorenz96"]

_CONVENTIONS = "CF-1.8"


def _check_int(name: str, value: object, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _check_args(steps, dt, seed, members, spinup, every, trajectories, perturbation) -> None:
    _check_int("steps", steps, 0)
    _check_int("every", every, 1)
    _check_int("seed", seed, 0)
    _check_int("members", members, 1, allow_none=True)
    _check_int("trajectories", trajectories, 1, allow_none=True)
    _check_int("spinup", spinup, 0, allow_none=True)
    if not (isinstance(dt, numbers.Real) and dt > 0 and np.isfinite(dt)):
        raise ConfigError(f"dt must be a positive number, got {dt!r}")
    if not (isinstance(perturbation, numbers.Real) and perturbation >= 0):
        raise ConfigError(f"perturbation must be a number >= 0, got {perturbation!r}")


def _run(
    model: PhysicalModel,
    draw_initial,
    *,
    steps: int,
    dt: float,
    seed: int,
    members: int | None,
    spinup: int,
    every: int,
    trajectories: int | None,
    perturbation: float,
) -> np.ndarray:
    """Draw, spin up, perturb and integrate; ``(member?, trajectory?, time, *state)``."""
    gen = torch.Generator().manual_seed(int(seed))
    shape = model.state_shape
    n_traj = 1 if trajectories is None else trajectories
    with torch.inference_mode():
        x = draw_initial(gen, (n_traj, *shape))
        if spinup > 0:
            x = model.integrate(x, steps=spinup, dt=dt, every=spinup)[:, -1]
        if members is not None:
            noise = torch.randn((members, n_traj, *shape), generator=gen, dtype=torch.float64)
            x = x.unsqueeze(0) + perturbation * noise
        traj = model.integrate(x, steps=steps, dt=dt, every=every)
    out = traj.numpy()
    if trajectories is None:
        out = out.squeeze(axis=1 if members is not None else 0)
    return out


def _time_coord(n_out: int, dt: float, every: int) -> xr.Variable:
    values = np.arange(n_out, dtype=np.float64) * (every * dt)
    attrs = {
        "standard_name": "time",
        "long_name": "model time",
        "units": "1",
        "axis": "T",
        "comment": "dimensionless model time after spin-up",
    }
    return xr.Variable("time", values, attrs)


def _lead_dims(members: int | None, trajectories: int | None) -> tuple[str, ...]:
    return (("member",) if members is not None else ()) + (
        ("trajectory",) if trajectories is not None else ()
    )


def _lead_coords(members: int | None, trajectories: int | None) -> dict[str, xr.Variable]:
    coords = {}
    if members is not None:
        coords["member"] = xr.Variable(
            "member", np.arange(members), {"long_name": "ensemble member"}
        )
    if trajectories is not None:
        coords["trajectory"] = xr.Variable(
            "trajectory", np.arange(trajectories), {"long_name": "independent trajectory"}
        )
    return coords


def lorenz96(
    n: int = 40,
    forcing: float = 8.0,
    dt: float = 0.05,
    steps: int = 1000,
    seed: int = 0,
    members: int | None = None,
    spinup: int | None = None,
    every: int = 1,
    trajectories: int | None = None,
    *,
    perturbation: float = 1e-3,
) -> xr.Dataset:
    """A Lorenz-96 trajectory (or ensemble, or set of trajectories) as a Dataset.

    ``dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F`` on a periodic ring of
    ``n`` sites, integrated with RK4 steps of ``dt``. The initial state is
    ``forcing + N(0, 1)`` noise at every site, run for ``spinup`` steps onto
    the attractor, then for ``steps`` more steps that are returned.

    Parameters
    ----------
    n : int, default 40
        Number of sites (>= 4).
    forcing : float, default 8.0
        Forcing F (8: chaotic, climatological mean about 2.3, std about 3.6).
    dt : float, default 0.05
        RK4 step in model time units (0.05 is "6 hours").
    steps : int, default 1000
        Steps integrated after spin-up; ``steps // every + 1`` states are kept,
        the initial one included.
    seed : int, default 0
        Seed of the ``torch.Generator`` for the initial state and perturbations.
    members : int, optional
        Ensemble size: adds a leading ``member`` dimension; each member starts
        from the spun-up state plus ``N(0, perturbation**2)`` noise.
    spinup : int, optional
        Spin-up steps; default ``round(20 / dt)`` (20 time units, 400 steps at
        ``dt=0.05``, as in the classical experiments).
    every : int, default 1
        Keep every ``every``-th state.
    trajectories : int, optional
        Number of independent trajectories: adds a ``trajectory`` dimension
        (after ``member``).
    perturbation : float, default 1e-3
        Standard deviation of the members' initial perturbations.

    Returns
    -------
    xarray.Dataset
        Variable ``x`` with dims ``([member,] [trajectory,] time, k)``, float64,
        with coordinates ``time`` and ``k`` and CF attributes (see the module
        docstring); Dataset attrs record every setting.

    Raises
    ------
    ConfigError
        For a non-positive ``dt``, negative ``steps``, ``n < 4``, and the like.

    Notes
    -----
    Everything is computed eagerly in memory: ``members * trajectories *
    (steps // every + 1) * n`` float64 values, plus one state per step while
    integrating.

    References
    ----------
    Lorenz, E. N. (1996). Predictability: a problem partly solved. Proc.
    Seminar on Predictability, ECMWF.

    Examples
    --------
    >>> ds = lorenz96(n=40, steps=10, seed=1)
    >>> ds.x.dims
    ('time', 'k')
    >>> ds.attrs["forcing"], ds.attrs["Conventions"]
    (8.0, 'CF-1.8')
    """
    _check_args(steps, dt, seed, members, spinup, every, trajectories, perturbation)
    _check_int("n", n, 4)
    if not (isinstance(forcing, numbers.Real) and np.isfinite(forcing)):
        raise ConfigError(f"forcing must be a finite number, got {forcing!r}")
    if spinup is None:
        spinup = round(20.0 / dt)
    model = Lorenz96(n=n, forcing=forcing, dt=dt)
    forcing = float(forcing)

    def draw(gen, shape):
        return forcing + torch.randn(shape, generator=gen, dtype=torch.float64)

    values = _run(
        model,
        draw,
        steps=steps,
        dt=dt,
        seed=seed,
        members=members,
        spinup=spinup,
        every=every,
        trajectories=trajectories,
        perturbation=perturbation,
    )
    dims = (*_lead_dims(members, trajectories), "time", "k")
    coords = {
        **_lead_coords(members, trajectories),
        "time": _time_coord(values.shape[-2], dt, every),
        "k": xr.Variable(
            "k",
            np.arange(n),
            {"long_name": "site index", "comment": f"periodic: site {n - 1} neighbours site 0"},
        ),
    }
    x = xr.Variable(dims, values, {"long_name": "Lorenz-96 state variable", "units": "1"})
    attrs = {
        "title": f"Lorenz-96 model, {n} sites, forcing {forcing:g}",
        "Conventions": _CONVENTIONS,
        "source": f"xlatda {__version__}: xlatda.datasets.lorenz96, RK4 integration",
        "references": "Lorenz, E. N. (1996). Predictability: a problem partly solved.",
        "model": "lorenz96",
        "n": int(n),
        "forcing": forcing,
        "dt": float(dt),
        "every": int(every),
        "spinup_steps": int(spinup),
        "seed": int(seed),
    }
    if members is not None:
        attrs["perturbation"] = float(perturbation)
    return xr.Dataset({"x": x}, coords=coords, attrs=attrs)


_L63_NAMES = {
    "x": "convection intensity",
    "y": "horizontal temperature difference",
    "z": "vertical temperature difference",
}


def lorenz63(
    steps: int = 1000,
    dt: float = 0.01,
    seed: int = 0,
    members: int | None = None,
    spinup: int | None = None,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    every: int = 1,
    *,
    trajectories: int | None = None,
    perturbation: float = 1e-3,
) -> xr.Dataset:
    """A Lorenz-63 trajectory (or ensemble, or set of trajectories) as a Dataset.

    ``dx/dt = sigma (y - x)``, ``dy/dt = x (rho - z) - y``,
    ``dz/dt = x y - beta z``, integrated with RK4 steps of ``dt``. The initial
    state is ``(0, 0, 25) + N(0, 1)`` noise, run for ``spinup`` steps onto the
    attractor, then for ``steps`` more steps that are returned.

    Parameters
    ----------
    steps : int, default 1000
        Steps integrated after spin-up; ``steps // every + 1`` states are kept.
    dt : float, default 0.01
        RK4 step in model time units.
    seed : int, default 0
        Seed of the ``torch.Generator``.
    members : int, optional
        Ensemble size: adds a leading ``member`` dimension; each member starts
        from the spun-up state plus ``N(0, perturbation**2)`` noise.
    spinup : int, optional
        Spin-up steps; default ``round(10 / dt)`` (10 time units).
    sigma, rho, beta : float
        Model parameters (classical values 10, 28, 8/3).
    every : int, default 1
        Keep every ``every``-th state.
    trajectories : int, optional
        Number of independent trajectories: adds a ``trajectory`` dimension.
    perturbation : float, default 1e-3
        Standard deviation of the members' initial perturbations.

    Returns
    -------
    xarray.Dataset
        Variables ``x``, ``y``, ``z`` with dims ``([member,] [trajectory,]
        time)``, float64, CF attributes (see the module docstring); Dataset
        attrs record every setting.

    Raises
    ------
    ConfigError
        For a non-positive ``dt``, negative ``steps`` and the like.

    References
    ----------
    Lorenz, E. N. (1963). Deterministic nonperiodic flow. J. Atmos. Sci., 20,
    130-141.

    Examples
    --------
    >>> ds = lorenz63(steps=100, members=2)
    >>> sorted(ds.data_vars), dict(ds.sizes)
    (['x', 'y', 'z'], {'member': 2, 'time': 101})
    """
    _check_args(steps, dt, seed, members, spinup, every, trajectories, perturbation)
    for name, value in (("sigma", sigma), ("rho", rho), ("beta", beta)):
        if not (isinstance(value, numbers.Real) and np.isfinite(value)):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if spinup is None:
        spinup = round(10.0 / dt)
    model = Lorenz63(sigma=sigma, rho=rho, beta=beta, dt=dt)
    centre = torch.tensor([0.0, 0.0, 25.0], dtype=torch.float64)

    def draw(gen, shape):
        return centre + torch.randn(shape, generator=gen, dtype=torch.float64)

    values = _run(
        model,
        draw,
        steps=steps,
        dt=dt,
        seed=seed,
        members=members,
        spinup=spinup,
        every=every,
        trajectories=trajectories,
        perturbation=perturbation,
    )
    dims = (*_lead_dims(members, trajectories), "time")
    coords = {
        **_lead_coords(members, trajectories),
        "time": _time_coord(values.shape[-2], dt, every),
    }
    data = {
        name: xr.Variable(dims, values[..., i], {"long_name": long_name, "units": "1"})
        for i, (name, long_name) in enumerate(_L63_NAMES.items())
    }
    attrs = {
        "title": "Lorenz-63 model",
        "Conventions": _CONVENTIONS,
        "source": f"xlatda {__version__}: xlatda.datasets.lorenz63, RK4 integration",
        "references": "Lorenz, E. N. (1963). Deterministic nonperiodic flow.",
        "model": "lorenz63",
        "sigma": float(sigma),
        "rho": float(rho),
        "beta": float(beta),
        "dt": float(dt),
        "every": int(every),
        "spinup_steps": int(spinup),
        "seed": int(seed),
    }
    if members is not None:
        attrs["perturbation"] = float(perturbation)
    return xr.Dataset(data, coords=coords, attrs=attrs)
