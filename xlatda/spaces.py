"""State spaces of assimilation: where the control vector lives and how it moves.

A state space turns the control vectors of an assimilation (tensors
``(N, n)``: ``N`` members, ``n`` control values, float64 on the CPU) into
forecasts, predicted observations and fields on the state layout:

- :class:`PhysicalSpace`: the control vector is the state itself (all
  channels and grid points, flattened channel first); forecasts come from a
  physical model (:mod:`xlatda.dynamics.physical`: Lorenz-96, shallow water,
  anything with ``dt``, ``state_shape`` and ``step``); the observation
  operator is the sparse interpolation ``H`` of the layout at the
  observation places.
- :class:`LatentSpace`: the control vector is the latent vector of a
  :class:`~xlatda.LatentModel`; forecasts come from its latent dynamics
  (plus model noise from its learned Q); the observation operator is
  ``H' = H o D``, the decoder evaluated at the observation points.

Unknown parameters estimated with the state ride at the end of the control
vector (``[x; θ]`` or ``[z; θ]``, ``n_params`` values): forecasts pass them
to the model as ``theta`` and carry them unchanged.

Every method of :func:`xlatda.cycle` and :func:`xlatda.assimilate` sees the
state only through this interface (``forecast``, ``observe``, ``to_fields``,
``from_fields``), so a method written for one space runs in the other.

Examples
--------
>>> import torch, xlatda
>>> from xlatda.dynamics.physical import Lorenz96
>>> ds = xlatda.datasets.lorenz96(n=8, steps=2, seed=0).isel(time=0)
>>> space = PhysicalSpace(xlatda.layout(ds), Lorenz96(n=8))
>>> s = space.from_fields(space.layout.to_tensor(ds, dtype=torch.float64)[None])
>>> s.shape
torch.Size([1, 8])
>>> g = torch.Generator().manual_seed(0)
>>> space.forecast(s, 0.0, 0.1, generator=g, noise=False).shape   # two model steps
torch.Size([1, 8])
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch

from xlatda.errors import ConfigError, ObservationError
from xlatda.layout import StateLayout
from xlatda.methods.covariance import Covariance
from xlatda.methods.localization import GreatCircleDistance, IndexDistance
from xlatda.methods.model_noise import add_model_error, gaussian_draws
from xlatda.model import LatentModel
from xlatda.obs.contract import ObservationTable
from xlatda.obs.observation_table import OPERATOR_COLUMNS
from xlatda.obs.operator import build_operator

__all__ = ["LatentSpace", "PhysicalSpace", "StateSpace", "space_for", "table_key"]

_F64 = torch.float64


def table_key(table: ObservationTable) -> tuple:
    """Content key of what an observation operator depends on: places and channels.

    A tuple of the arrays' dtypes, shapes and bytes (hashable, cheap to make:
    no hashing library). Two tables with equal keys have the same operator;
    the key never depends on object identity (``id()`` of a freed table is
    reused by Python).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from xlatda.obs.observation_table import ObservationTable
    >>> def at(pos, value):
    ...     return ObservationTable(values=torch.tensor([value]), error_std=torch.ones(1),
    ...                             channel=torch.zeros(1, dtype=torch.long),
    ...                             variable=np.array(["x"]), lat=None, lon=None,
    ...                             position=np.array([pos]), time=None,
    ...                             obs_index=np.array([0]), kind=None)
    >>> table_key(at(3.0, 1.0)) == table_key(at(3.0, 5.0))   # other values, same place
    True
    >>> table_key(at(3.0, 1.0)) == table_key(at(4.0, 1.0))
    False
    >>> import dataclasses
    >>> block = dataclasses.replace(at(3.0, 1.0), footprint_weight=np.array([[0.5, 0.5]]),
    ...                             footprint_position=np.array([[2.0, 4.0]]))
    >>> table_key(block) == table_key(at(3.0, 1.0))   # a block mean is not a point value
    False
    """
    key = []
    # Block-mean observations average their footprint: its points and weights
    # are part of the operator (two tables with the same centres but other
    # NaN-free cells must not share one).
    for part in (getattr(table, name) for name in OPERATOR_COLUMNS):
        if part is None:
            key.append(None)
        else:
            arr = part.numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
            key.append((arr.dtype.str, arr.shape, arr.tobytes()))
    return tuple(key)


class StateSpace:
    """Forecast, observe and convert control vectors ``(N, n)`` of one space.

    Attributes
    ----------
    kind : str
        ``"physical"`` or ``"latent"``.
    layout : StateLayout
        The layout of the fields.
    n_params : int
        Parameters at the end of the control vector.
    n_state : int
        Control values before the parameters.
    """

    kind: str = ""
    layout: StateLayout
    n_params: int = 0
    n_state: int = 0
    #: The last table :meth:`_key` saw, with its key.
    _last: tuple = (None, ())
    #: Entries of a regime shift between the state and the parameters (latent only).
    n_regime: int = 0
    #: The cycle's ``noise`` setting (model error in forecasts), set by the driver.
    noise: bool | str = True

    def has_model_error(self) -> bool:
        """Whether forecasts carry a model-error covariance (with ``noise`` on)."""
        return False

    def split(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(state part, parameters or None)`` of control vectors ``s``."""
        if self.n_params:
            return s[..., : self.n_state], s[..., self.n_state:]
        return s, None

    def forecast(self, s: torch.Tensor, t0: float, t1: float, *, generator: torch.Generator,
                 noise: bool, grad: bool = False) -> torch.Tensor:
        """Control vectors at ``t1`` from ``s`` at ``t0`` (times as floats).

        ``noise`` adds the model's stochastic error where it has one
        (``generator`` draws it); ``grad`` keeps the autograd graph so a cost
        can be differentiated through the dynamics.
        """
        raise NotImplementedError  # pragma: no cover

    def forecast_pair(self, s: torch.Tensor, t0: float, t1: float, *,
                      generator: torch.Generator, noise: bool | str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forecast without model error, forecast with it)`` of ``s``: the second
        is :meth:`forecast`'s (same numbers, same draws from ``generator``). Spaces
        that can, evolve once; this default forecasts twice."""
        free = self.forecast(s, t0, t1, generator=torch.Generator(), noise=False)
        return free, self.forecast(s, t0, t1, generator=generator, noise=noise)

    def observe(self, s: torch.Tensor, table: ObservationTable) -> torch.Tensor:
        """Predicted observations ``(N, P)`` of control vectors ``(N, n)``."""
        raise NotImplementedError  # pragma: no cover

    def observe_mean(self, s: torch.Tensor, table: ObservationTable) -> torch.Tensor:
        """Mean over members of the predicted observations, ``(P,)``.

        Spaces with a linear observation operator observe the ensemble mean
        instead (one state instead of ``N``).
        """
        return self.observe(s, table).mean(0)

    def observe_means(self, states: list[torch.Tensor], tables: list[ObservationTable],
                      keys: list[Any] | None = None) -> list[torch.Tensor]:
        """:meth:`observe_mean` of many ensembles, each with its table (same numbers).

        ``keys`` are the tables' :func:`table_key` where the caller has them
        (rows with equal keys share an operator). This default observes them
        one by one; spaces whose operator gives the same numbers applied to a
        batch apply it once per place set.
        """
        return [self.observe_mean(s, t) for s, t in zip(states, tables)]

    def to_fields(self, s: torch.Tensor) -> torch.Tensor:
        """Fields ``(N, C, *spatial)`` of control vectors (parameters dropped), on the
        CPU, float64 or the model's dtype."""
        raise NotImplementedError  # pragma: no cover

    def from_fields(self, x: torch.Tensor) -> torch.Tensor:
        """Control vectors ``(N, n_state)`` (float64, CPU) of fields ``(N, C, *spatial)``."""
        raise NotImplementedError  # pragma: no cover

    def linear_operator(self, table: ObservationTable) -> Any:
        """The observation operator as a linear map (with ``.matrix``), or None."""
        return None

    def locations(self, table: ObservationTable) -> Any:
        """Distances between state and observation places (for localisation)."""
        raise ConfigError(
            f"localisation by distance needs places, which the {self.kind} control vector "
            "does not have; use a global filter ('etkf', 'enkf', 'denkf', 'ensrf') here"
        )

    def prior_covariance(self) -> Covariance | None:
        """A climatological covariance of the control vector, if the model has one."""
        return None

    def has_tendency(self) -> bool:
        """Whether :meth:`tendency_covariance` has statistics to give."""
        return False

    def tendency_covariance(self, t0: float, t1: float) -> torch.Tensor | None:
        """``(n_state, n_state)`` covariance of the state's change from ``t0`` to ``t1``
        in the training data, if the model keeps one (the shape of adaptive
        additive inflation, :mod:`xlatda.methods.additive`)."""
        return None

    def default_members(self) -> int:
        """Ensemble size when the user gives none."""
        return 20

    def units(self) -> str:
        """What the control vector's units are, for messages."""
        return "the state's physical units"

    # -- windows ---------------------------------------------------------------
    def forecast_observe(self, times: list[float], tables: list[ObservationTable],
                         generator: torch.Generator):
        """``h(s0) -> (..., P)``: roll controls from ``times[0]`` through the window
        (no model noise) and stack the predicted observations over its times.

        Differentiable when called with autograd enabled (the forecast keeps
        the graph then).
        """

        def forecast_obs(s: torch.Tensor) -> torch.Tensor:
            lead = s.shape[:-1]
            cur, tc, outs = s.reshape(-1, s.shape[-1]), times[0], []
            grad = torch.is_grad_enabled()
            for t, sub in zip(times, tables):
                cur = self.forecast(cur, tc, t, generator=generator, noise=False, grad=grad)
                tc = t
                outs.append(self.observe(cur, sub))
            return torch.cat(outs, -1).reshape(*lead, -1)

        return forecast_obs

    def roll(self, ens_b: torch.Tensor, ens_a: torch.Tensor, times: list[float],
             generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Background and analysis from the window start at each of its times."""
        out, cur_b, cur_a, tc = [], ens_b, ens_a, times[0]
        with torch.no_grad():
            for t in times:
                cur_b = self.forecast(cur_b, tc, t, generator=generator, noise=False)
                cur_a = self.forecast(cur_a, tc, t, generator=generator, noise=False)
                tc = t
                out.append((cur_b, cur_a))
        return out

    def _key(self, table: ObservationTable) -> tuple:
        """:func:`table_key`, made once for consecutive calls with the same table
        (the analysis observes, localises and records with one table; the
        table itself is held, so this is no identity-keyed cache)."""
        last, key = self._last
        if table is not last:
            key = table_key(table)
            self._last = (table, key)
        return key


class PhysicalSpace(StateSpace):
    """The state itself is the control vector (see the module docstring).

    Parameters
    ----------
    layout : StateLayout
        Layout of the state.
    model : physical model, optional
        Forecast model with ``dt``, ``state_shape`` and ``step(x, dt, theta)``;
        ``None`` for methods that do not forecast.
    n_params : int
        Parameters appended to the control vector.
    """

    kind = "physical"

    def __init__(self, layout: StateLayout, model: Any = None, n_params: int = 0) -> None:
        self.layout = layout
        self.model = model
        self.n_params = int(n_params)
        self.shape = (layout.n_channels, *layout.spatial_shape)
        self.n_state = int(np.prod(self.shape))
        want_shape = getattr(model, "state_shape", None)
        if want_shape is not None and int(np.prod(want_shape)) != self.n_state:
            raise ConfigError(
                f"the physical model's state has {int(np.prod(want_shape))} values "
                f"({want_shape}) but the state layout has {self.n_state} ({self.shape}); give "
                "the Dataset every prognostic variable of the model (e.g. shallow water needs "
                "height, vorticity and divergence)"
            )
        self._ops: dict[tuple, Any] = {}
        self._locations: dict[tuple, Any] = {}
        self._last: tuple[ObservationTable | None, tuple] = (None, ())

    def forecast(self, s, t0, t1, *, generator, noise, grad=False):
        if t1 == t0:
            return s
        if self.model is None or not callable(getattr(self.model, "step", None)):
            wrap = (" A plain function is not one: wrap it as xlatda.dynamics.CallableModel("
                    "step, state_shape=..., dt=...)" if callable(self.model) else "")
            raise ConfigError(
                "cycling in physical space needs a forecast model: pass model=a physical "
                "model (e.g. xlatda.dynamics.physical.Lorenz96(), or your own step function "
                "as xlatda.dynamics.CallableModel) or a LatentModel." + wrap
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
        keep = grad or torch.is_grad_enabled()
        with torch.enable_grad() if keep else contextlib.nullcontext():
            xs = x.reshape(x.shape[0], *self.model.state_shape)
            for _ in range(steps):
                xs = self.model.step(xs, dt, theta)
        out = xs.reshape(x.shape[0], -1)
        return out if theta is None else torch.cat([out, theta], -1)

    def forecast_pair(self, s, t0, t1, *, generator, noise):
        out = self.forecast(s, t0, t1, generator=generator, noise=noise)
        return out, out  # a physical model's forecast carries no added model error

    def operator(self, table: ObservationTable) -> Any:
        """The interpolation operator at the table's places (built once per place set,
        keyed by content: :func:`table_key`)."""
        key = self._key(table)
        op = self._ops.get(key)
        if op is None:
            if len(self._ops) >= 64:
                self._ops.clear()
            op = self._ops[key] = build_operator(self.layout, table)
        return op

    def observe(self, s, table):
        x, _ = self.split(s)
        return self.operator(table)(x.reshape(x.shape[0], *self.shape))

    def observer(self, table: ObservationTable, like: torch.Tensor) -> Any:
        """``s -> H(s)`` for ensembles ``(N, n)`` shaped and typed like ``like``, at the
        table's places: the numbers of :meth:`observe` (a gather where every row
        of ``H`` has one or two weights, applied to the control vectors as they
        are, without the reshapes and checks of a call), for loops that apply
        one operator many times (:func:`xlatda.cycle._drive_fused`)."""
        op = self.operator(table)
        if self.n_params == 0 and like.dim() == 2:
            compiled = op._compiled(like)
            if compiled.pairs is not None:
                return compiled.gather
        return lambda s: self.observe(s, table)

    def observe_mean(self, s, table):
        # H is linear in the state (parameters do not enter it): H(mean) = mean(H).
        return self.observe(s.mean(0, keepdim=True), table)[0]

    def observe_means(self, states, tables, keys=None):
        # Ensembles of one shape observed at one place set: their means in one
        # stack and one application of H, where H is a gather (one or two
        # weights a row: element-wise, so a batch gives each row's numbers; the
        # mean over the members axis of a stack rounds as each slice's, the stack
        # laid out as the ensembles are: members apart, or members contiguous as
        # the LETKF's analyses). A sparse product (more weights a row) rounds by
        # batch size: row by row, as other layouts.
        keys = [self._key(t) for t in tables] if keys is None else keys
        out: list[Any] = [None] * len(states)
        groups: dict[tuple, list[int]] = {}
        for j, (s, k) in enumerate(zip(states, keys)):
            layout = "rows" if s.is_contiguous() else "columns" if s.mT.is_contiguous() else ""
            groups.setdefault((k, tuple(s.shape), s.dtype, s.device, layout), []).append(j)
        for (_, _, _, _, layout), idx in groups.items():
            op = self.operator(tables[idx[0]])
            like = states[idx[0]]
            if (len(idx) == 1 or not layout
                    or getattr(op._compiled(like), "pairs", None) is None):
                for j in idx:
                    out[j] = self.observe_mean(states[j], tables[j])
                continue
            if layout == "rows":
                stack = torch.stack([states[j] for j in idx])  # (G, N, n)
            else:  # members contiguous (the LETKF's analyses): reduce the inner axis
                stack = torch.stack([states[j].mT for j in idx])  # (G, n, N)
            values = self.observe_stacked_means(stack, layout, tables[idx[0]])  # (G, P)
            for k, j in enumerate(idx):
                out[j] = values[k]
        return out

    def observe_stacked_means(self, stack: torch.Tensor, layout: str,
                              table: ObservationTable) -> torch.Tensor:
        """``H`` of the member means of a contiguous stack of ensembles at one place
        set: ``(G, N, n)`` (``layout="rows"``) or their transposes ``(G, n, N)``
        (``"columns"``), ``(G, P)``; :meth:`observe_means` of one group (the cycle's
        fused loop hands its preallocated stack here directly)."""
        means = stack.mean(1) if layout == "rows" else stack.mean(-1)  # (G, n)
        x, _ = self.split(means)
        return self.operator(table)(x.reshape(stack.shape[0], *self.shape))

    def linear_operator(self, table):
        return self.operator(table) if self.n_params == 0 else None

    def to_fields(self, s):
        x, _ = self.split(s)
        return x.reshape(x.shape[0], *self.shape)

    def from_fields(self, x):
        return x.reshape(x.shape[0], -1).to(_F64)

    def locations(self, table):
        # Built once per place set (keyed by content); the localisation object
        # also keeps its local observation lists, so later analyses reuse them.
        key = self._key(table)
        loc = self._locations.get(key)
        if loc is None:
            if len(self._locations) >= 16:
                self._locations.clear()
            loc = self._locations[key] = self._build_locations(table)
        return loc

    def _build_locations(self, table):
        L, C = self.layout, self.layout.n_channels
        if L.kind == "generic":
            return IndexDistance(int(np.prod(L.spatial_shape)), table.position, periodic=True,
                                 channels=C)
        if L.kind == "latlon":
            glat, glon = np.meshgrid(L.lat, L.lon, indexing="ij")
            if L.spatial_dims[0] != L.axes.lat:
                glat, glon = glat.T, glon.T
            return GreatCircleDistance(glat.ravel(), glon.ravel(), table.lat, table.lon,
                                       channels=C)
        return GreatCircleDistance(L.lat, L.lon, table.lat, table.lon, channels=C)


class LatentSpace(StateSpace):
    """The latent vector of a LatentModel is the control vector (see the module docstring).

    Parameters
    ----------
    model : LatentModel
        The latent model (its dynamics are needed only to forecast).
    n_params : int
        Parameters appended to the control vector.
    """

    kind = "latent"

    def __init__(self, model: LatentModel, n_params: int = 0) -> None:
        self.layout = model.layout
        self.model = model
        self.n_params = int(n_params)
        self.n_state = self.d = model.latent_dim
        self._affines: dict[tuple, tuple] = {}
        self._points: dict[tuple, tuple] = {}
        self._last: tuple[ObservationTable | None, tuple] = (None, ())
        #: Size of the regime shift block ``m`` after the state (0: none).
        self.n_regime = 0
        self.regime_cov: torch.Tensor | None = None
        self.regime_timescale = math.inf

    def enable_regime(self, covariance: torch.Tensor, timescale: float) -> None:
        """Carry a regime shift ``m`` of the latent mean after the state
        (:mod:`xlatda.methods.regime`): the control becomes ``[z; m; θ]``, and
        ``m`` counts with the parameters (``n_params``) for the analysis."""
        if self.n_regime:
            raise ConfigError("the regime shift is already enabled on this space")
        self.n_regime = self.d
        self.n_params += self.d
        self.regime_cov = covariance.detach().to("cpu", _F64)
        self.regime_timescale = float(timescale)

    def split_regime(self, s: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(z, regime shift m or None, parameters θ or None)`` of control vectors."""
        z, tail = self.split(s)
        if not self.n_regime:
            return z, None, tail
        m, theta = tail[..., : self.n_regime], tail[..., self.n_regime:]
        return z, m, (theta if theta.shape[-1] else None)

    def forecast(self, s, t0, t1, *, generator, noise, grad=False):
        if t1 == t0:
            return s
        return self._with_error(*self._evolved(s, t0, t1, grad), t0, t1, generator, noise)

    def forecast_pair(self, s, t0, t1, *, generator, noise):
        if t1 == t0:
            return s, s
        evolved = self._evolved(s, t0, t1, False)
        return (self._with_error(*evolved, t0, t1, torch.Generator(), False),
                self._with_error(*evolved, t0, t1, generator, noise))

    def _evolved(self, s, t0, t1, grad):
        """``(z1, m, theta, tau)``: the dynamics' forecast of the state part (of the
        anomaly about the regime shift ``m``), before any model error."""
        dyn = self.model.require_dynamics()
        step = (self.model.time_step or {"value": 1.0})["value"]
        tau = (t1 - t0) / step
        z, m, theta = self.split_regime(s)
        # Networks run on the model's device; the control vector stays on the
        # CPU in float64 (the analysis kernels and CPU generators work there).
        # With a regime shift m the anomaly about the shifted mean is evolved.
        zc = (z if m is None else z - m).to(device=self.model.device, dtype=self.model.dtype)
        times = torch.tensor([0.0, tau], dtype=zc.dtype, device=zc.device)
        takes_theta = theta is not None and getattr(dyn, "n_params", 1) > 0
        # Dynamics forced by the time of day/year get the absolute start time
        # (seconds since 1970 for datetime data, as the cycle's float times).
        kw = {"start": float(t0)} if getattr(dyn, "uses_clock", False) else {}
        with torch.set_grad_enabled(grad):
            out = dyn.evolve(zc, times, theta=theta.to(zc) if takes_theta else None, **kw)
        return out[..., -1, :].to("cpu", _F64), m, theta, tau

    def _with_error(self, z1, m, theta, tau, t0, t1, generator, noise):
        """Control vectors at ``t1`` from the evolved state ``z1`` (:meth:`_evolved`):
        the regime shift's decay, and the model error where ``noise`` asks."""
        dyn = self.model.require_dynamics()
        if m is not None:
            return self._regime_forecast(z1 + m, m, theta, t0, t1, tau, generator, noise)
        q = self.model.model_error
        if noise and q is not None:
            # Linear dynamics know how per-step errors accumulate over the lead;
            # otherwise Q grows like a random walk (tau Q).
            acc = getattr(dyn, "noise_covariance", None)
            if (noise == "stochastic" or z1.shape[0] < 2) and acc is None:
                eps = q.sample((z1.shape[0],), generator=generator).to(_F64)
                z1 = z1 + math.sqrt(tau) * eps
            else:
                cov = q.covariance().detach().to("cpu", _F64)
                cov = acc(cov, tau).to("cpu", _F64) if acc is not None else tau * cov
                if noise == "stochastic" or z1.shape[0] < 2:
                    z1 = z1 + gaussian_draws(cov, z1.shape[0], generator=generator)
                else:  # the default: Q added by a square root (Raanes et al. 2015)
                    z1 = add_model_error(z1, cov, generator=generator)
        return z1 if theta is None else torch.cat([z1, theta], -1)

    def _forecast_error(self, tau: float) -> torch.Tensor | None:
        """The model error ``Q`` accumulated over ``tau`` data steps, or None."""
        q = self.model.model_error
        if q is None:
            return None
        cov = q.covariance().detach().to("cpu", _F64)
        acc = getattr(self.model.require_dynamics(), "noise_covariance", None)
        return acc(cov, tau).to("cpu", _F64) if acc is not None else tau * cov

    def _regime_forecast(self, z1, m, theta, t0, t1, tau, generator, noise):
        """``[z; m; θ]`` at ``t1``: the shift decays (Ornstein-Uhlenbeck) and, with
        ``noise``, gets its innovation ``(1 - ρ²) C_m`` beside ``Q`` (one square
        root of the joint ensemble, or one joint draw; :mod:`xlatda.methods.regime`)."""
        from xlatda.methods.regime import regime_decay

        rho = regime_decay(t0, t1, self.regime_timescale)
        out = torch.cat([z1, rho * m], -1)
        if noise:
            d, k = self.d, self.n_regime
            joint = torch.zeros(d + k, d + k, dtype=_F64)
            qz = self._forecast_error(tau)
            if qz is not None:
                joint[:d, :d] = qz
            joint[d:, d:] = (1.0 - rho * rho) * self.regime_cov
            if noise == "stochastic" or out.shape[0] < 2:
                out = out + gaussian_draws(joint, out.shape[0], generator=generator)
            else:
                out = add_model_error(out, joint, generator=generator)
        return out if theta is None else torch.cat([out, theta], -1)

    def points(self, table: ObservationTable) -> torch.Tensor:
        """The table's places as the encoder's point tensor."""
        return self.model.points_tensor(table.lat, table.lon, table.position)

    def _observation_points(self, table: ObservationTable) -> tuple:
        """:meth:`~xlatda.model.LatentModel.observation_points` of the table, made
        once per place set (keyed by content, :func:`table_key`)."""
        key = self._key(table)
        hit = self._points.get(key)
        if hit is None:
            if len(self._points) >= 64:
                self._points.clear()
            hit = self._points[key] = self.model.observation_points(table)
        return hit

    def observe(self, s, table):
        z, _ = self.split(s)
        affine = self._affine(table)
        if affine is None:
            # decode at the places (every footprint point of block means), then pool
            pts, channel, pool = self._observation_points(table)
            v = self.model.decode_points(z.to(self.model.dtype), pts, channel)
            return self.model.pool_points(v.to("cpu", _F64), pool)
        matrix, offset, std, mean = affine
        # decode_points of an affine decoder, with its map at these places made once
        zc = z.to(self.model.dtype).to(device=self.model.device, dtype=self.model.dtype)
        values = offset + zc.to(matrix) @ matrix.T
        return (values * std + mean).to("cpu", _F64)

    def observe_mean(self, s, table):
        if self._affine(table) is None:
            return super().observe_mean(s, table)
        return self.observe(s.mean(0, keepdim=True), table)[0]

    def _affine(self, table: ObservationTable) -> tuple | None:
        """``(matrix, offset, std, mean)`` of an affine decoder at the table's places
        (encoders with ``linear_map``, e.g. PCA), built once per place set; None
        for other decoders."""
        linear_map = getattr(self.model.encoder, "linear_map", None)
        if linear_map is None:
            return None
        key = self._key(table)
        hit = self._affines.get(key)
        if hit is None:
            if len(self._affines) >= 64:
                self._affines.clear()
            channel = torch.as_tensor(table.channel, dtype=torch.long, device=self.model.device)
            pts, at_channel, pool = self._observation_points(table)
            with torch.no_grad():
                matrix, offset = linear_map(pts, at_channel.to(self.model.device))
                # block means: the rows pooled over each footprint (one channel per
                # entry, so the normalisation below applies to the mean as to a point)
                matrix = self.model.pool_points(matrix.T, pool).T
                offset = self.model.pool_points(offset, pool)
            mean, std = self.model.normalizer.select(channel.cpu())
            hit = self._affines[key] = (matrix, offset, std.to(matrix), mean.to(matrix))
        return hit

    def to_fields(self, s):
        # In the model's dtype: the fields become the layout's dtype once, at the end
        # (a float64 copy here would be cast back then, for the same values).
        z, _ = self.split(s)
        with torch.no_grad():
            x = self.model.decode_tensor(z.to(self.model.dtype)).to("cpu")
        if self.model.missing is not None:  # NaN on the fixed mask, as xlatda.decode gives
            x = x.masked_fill(torch.as_tensor(np.asarray(self.model.missing, bool)), float("nan"))
        return x

    def from_fields(self, x):
        with torch.enable_grad():
            z = self.model.encode_tensor(x.to(self.model.dtype))
        return z.detach().to("cpu", _F64)

    def has_model_error(self) -> bool:
        return bool(self.noise) and self.model.model_error is not None

    def default_members(self) -> int:
        # The latent space is small: span all of it (Q then enters exactly).
        return max(20, self.d + self.n_params + 1)

    def prior_covariance(self):
        prior = getattr(self.model, "prior", None)
        return None if prior is None else prior.covariance()

    def has_tendency(self):
        return bool(getattr(self.model.model_error, "tendency_lags", ()))

    def tendency_covariance(self, t0, t1):
        fn = getattr(self.model.model_error, "tendency_covariance", None)
        if fn is None or t1 == t0:
            return None
        step = (self.model.time_step or {"value": 1.0})["value"]
        cov = fn(abs(float(t1) - float(t0)) / step)
        return None if cov is None else cov.detach().to("cpu", _F64)

    def units(self):
        return ("latent units (the scale of the model's latent vectors z, e.g. "
                "ds.lda.encode(model).z.std('time'))")

    def decoder_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """Jacobian ``(C*S, d)`` of the (normalised) decoder at one latent ``z``.

        Built in forward mode, ``d`` vectorised JVPs (``d`` is much smaller
        than the number of outputs); reverse mode if the decoder has no
        forward-mode derivative.
        """
        enc = self.model.encoder
        z0 = z.reshape(-1)[: self.d].to(device=self.model.device, dtype=self.model.dtype)

        def dec(v):
            return enc.decode(v[None]).reshape(-1)

        jacobian = torch.autograd.functional.jacobian
        with torch.enable_grad():
            try:
                jac = jacobian(dec, z0, vectorize=True, strategy="forward-mode")
            except (NotImplementedError, RuntimeError):
                jac = jacobian(dec, z0, vectorize=True)
        return jac.to("cpu", _F64)


def space_for(layout: StateLayout, model: Any, space: str | None, n_params: int = 0
              ) -> StateSpace:
    """The state space for ``model``: latent for a LatentModel, else physical.

    Raises
    ------
    ConfigError
        For an unknown ``space`` or a model that does not fit it.
    """
    if space is None:
        space = "latent" if isinstance(model, LatentModel) else "physical"
    if space == "latent":
        if not isinstance(model, LatentModel):
            raise ConfigError(
                "space='latent' needs a LatentModel (xlatda.fit or xlatda.open_model); got "
                f"{type(model).__name__}"
            )
        return LatentSpace(model, n_params)
    if space != "physical":
        raise ConfigError(f"space must be 'latent' or 'physical', got {space!r}")
    if isinstance(model, LatentModel):
        raise ConfigError(
            "space='physical' forecasts with a physical model; pass one (e.g. "
            "xlatda.dynamics.physical.Lorenz96()) or use space='latent' with this LatentModel"
        )
    return PhysicalSpace(layout, model, n_params)
