"""Physical forecast models on state tensors, and the interface they share.

A *forecast model* advances a batch of states in time. Every model in xlatda
(Lorenz-63, Lorenz-96, shallow water, a user callable, a latent ODE wrapped
with its decoder) exposes the same two calls:

``model.step(x, dt, theta=None) -> x``
    one step of length ``dt`` (model time units), ``x`` of shape
    ``(*batch, *state_shape)``; ``theta`` optional parameters of shape
    ``(*batch, n_params)`` or ``(n_params,)``.
``model.integrate(x, steps, dt=None, theta=None, every=1) -> trajectory``
    ``(*batch, n_out, *state_shape)`` with the initial state first.

All of them are differentiable with autograd and batched over the leading
dimensions (members, samples), with no Python loop over members.

Examples
--------
>>> import torch
>>> from xlatda.dynamics.physical import Lorenz96
>>> model = Lorenz96(n=40, forcing=8.0)
>>> x0 = torch.full((5, 40), 8.0, dtype=torch.float64)
>>> x0[:, 0] += 0.01
>>> traj = model.integrate(x0, steps=10, dt=0.05)
>>> tuple(traj.shape)
(5, 11, 40)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from xlatda._registry import Registry
from xlatda.errors import ConfigError, ShapeError

__all__ = [
    "CallableModel",
    "ForecastModel",
    "Lorenz63",
    "Lorenz96",
    "PhysicalModel",
    "physical_models",
    "rk4_step",
]

physical_models = Registry("physical model")


@runtime_checkable
class ForecastModel(Protocol):
    """What xlatda needs of any forecast model (see module docstring)."""

    state_shape: tuple[int, ...]

    def step(self, x: Tensor, dt: float, theta: Tensor | None = None) -> Tensor: ...

    def integrate(
        self,
        x: Tensor,
        steps: int,
        dt: float | None = None,
        theta: Tensor | None = None,
        every: int = 1,
    ) -> Tensor: ...


def rk4_step(f: Callable[[Tensor], Tensor], x: Tensor, dt: float) -> Tensor:
    """One classical fourth-order Runge-Kutta step of ``dx/dt = f(x)``."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class PhysicalModel:
    """Base class: subclasses define ``tendency`` or override ``step``.

    Parameters
    ----------
    dt : float
        Default step length used when ``step``/``integrate`` get ``dt=None``.
    """

    state_shape: tuple[int, ...] = ()
    param_names: tuple[str, ...] = ()

    def __init__(self, dt: float) -> None:
        if not dt > 0:
            raise ConfigError(f"dt must be positive, got {dt!r}")
        self.dt = float(dt)

    def tendency(self, x: Tensor, theta: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def step(self, x: Tensor, dt: float | None = None, theta: Tensor | None = None) -> Tensor:
        """Advance ``x`` by one RK4 step of length ``dt``."""
        self._check_state(x)
        return rk4_step(lambda y: self.tendency(y, theta), x, self.dt if dt is None else dt)

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
            ``(*batch, steps // every + 1, *state_shape)``.
        """
        if steps < 0 or every < 1:
            raise ConfigError(f"need steps >= 0 and every >= 1, got {steps=} {every=}")
        self._check_state(x)
        out = [x]
        for k in range(1, steps + 1):
            x = self.step(x, dt, theta)
            if k % every == 0:
                out.append(x)
        nd = len(self.state_shape)
        return torch.stack(out, dim=x.dim() - nd)

    def _check_state(self, x: Tensor) -> None:
        nd = len(self.state_shape)
        if tuple(x.shape[x.dim() - nd :]) != tuple(self.state_shape):
            raise ShapeError(
                f"{type(self).__name__} expects states ending in shape {self.state_shape}, "
                f"got a tensor of shape {tuple(x.shape)}"
            )

    def _param(self, theta: Tensor | None, default: float, x: Tensor) -> Tensor | float:
        """Return the first parameter, broadcast against the batch of ``x``."""
        if theta is None:
            return default
        theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
        value = theta[..., 0]
        # (*batch,) -> (*batch, 1, ...) to broadcast over the state dims.
        return value.reshape(value.shape + (1,) * len(self.state_shape))


@physical_models.register("lorenz96")
class Lorenz96(PhysicalModel):
    """Lorenz-96: ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F``, periodic in i.

    Parameters
    ----------
    n : int
        Number of variables (40 in the classical experiments).
    forcing : float
        Forcing F (8 gives chaos with a leading Lyapunov exponent of about 1.7).
    dt : float
        Default RK4 step (0.05 is "6 hours").

    Notes
    -----
    ``theta[..., 0]`` overrides the forcing per batch element, so the forcing
    can be estimated as an unknown parameter.

    References
    ----------
    Lorenz, E. N. (1996). Predictability: a problem partly solved.
    """

    param_names = ("forcing",)

    def __init__(self, n: int = 40, forcing: float = 8.0, dt: float = 0.05) -> None:
        super().__init__(dt)
        if n < 4:
            raise ConfigError(f"Lorenz96 needs n >= 4 variables, got {n}")
        self.n = int(n)
        self.forcing = float(forcing)
        self.state_shape = (self.n,)

    def tendency(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        f = self._param(theta, self.forcing, x)
        return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + f


@physical_models.register("lorenz63")
class Lorenz63(PhysicalModel):
    """Lorenz-63 with the classical parameters (sigma=10, rho=28, beta=8/3).

    ``theta[..., 0]`` overrides rho per batch element.

    References
    ----------
    Lorenz, E. N. (1963). Deterministic nonperiodic flow. J. Atmos. Sci.
    """

    param_names = ("rho",)
    state_shape = (3,)

    def __init__(
        self, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0, dt: float = 0.01
    ) -> None:
        super().__init__(dt)
        self.sigma, self.rho, self.beta = float(sigma), float(rho), float(beta)

    def tendency(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        rho = self.rho if theta is None else torch.as_tensor(theta, dtype=x.dtype)[..., 0]
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
        return torch.stack(
            (self.sigma * (b - a), a * (rho - c) - b, a * b - self.beta * c), dim=-1
        )


class CallableModel(PhysicalModel):
    """Wrap a user function ``step(x, dt, theta) -> x`` as a forecast model.

    Parameters
    ----------
    step : callable
        Torch function advancing a batch ``(*batch, *state_shape)`` by ``dt``.
    state_shape : tuple of int
        Shape of one state.
    dt : float
        Default step length.

    Examples
    --------
    >>> import torch
    >>> decay = CallableModel(lambda x, dt, theta: x * (1 - dt), state_shape=(2,), dt=0.1)
    >>> decay.integrate(torch.ones(2), steps=2)[-1]
    tensor([0.8100, 0.8100])
    """

    def __init__(
        self,
        step: Callable[[Tensor, float, Tensor | None], Tensor],
        state_shape: tuple[int, ...],
        dt: float,
    ) -> None:
        super().__init__(dt)
        if not callable(step):
            raise ConfigError(f"step must be callable, got {type(step).__name__}")
        self._fn = step
        self.state_shape = tuple(int(s) for s in state_shape)

    def step(self, x: Tensor, dt: float | None = None, theta: Tensor | None = None) -> Tensor:
        self._check_state(x)
        return self._fn(x, self.dt if dt is None else dt, theta)
