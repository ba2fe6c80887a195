"""Many independent analyses at once, lazily: one dask task per chunk of cases.

:func:`assimilate_cases` runs :func:`xlatda.assimilate` for every *case*
(an independent background and its observations: different dates, regions,
experiments, windows) along a dimension ``dim``. On dask-backed input it
returns a dask-backed result built with :func:`xarray.map_blocks`, one task
per chunk of cases, and computes nothing until asked; on a
dask.distributed cluster the chunks are analysed by the workers. The model
travels as its store path (opened once per worker) or the small state dict
a :class:`~xlatda.LatentModel` pickles to.

Each case draws its random numbers from its own seed, derived from ``seed``
and the case's position along ``dim``, so eager and chunked runs (with any
chunking) give the same analyses.

Observations for all cases are one Dataset with dims ``(dim, obs)``: case
``i``'s observations are ``obs.isel({dim: i})``; cases with fewer
observations are padded with NaN values (and NaN locations), which are
dropped per case. An observation Dataset without ``dim`` is used for every
case.

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> from xlatda.batch import assimilate_cases
>>> ds = xlatda.datasets.lorenz96(n=16, steps=60, seed=0)
>>> model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
>>> cases = ds.isel(time=[10, 20, 30, 40]).rename(time="case")
>>> obs = xr.concat([xlatda.obs.sample_points(ds.isel(time=[t]), n=6, error_std=1.0, seed=t)
...                  for t in (10, 20, 30, 40)], dim="case")
>>> lazy = assimilate_cases(cases.chunk(case=2), obs.chunk(case=2), model, members=8,
...                         init_std=0.5)
>>> lazy.x.dims, lazy.x.data.npartitions
(('case', 'member', 'k'), 2)
>>> eager = assimilate_cases(cases, obs, model, members=8, init_std=0.5)
>>> bool(np.allclose(lazy.x.values, eager.x.values))
True
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from xlatda._bridge import is_lazy
from xlatda.errors import ConfigError
from xlatda.layout import layout
from xlatda.options import get_options

__all__ = ["assimilate_cases", "case_seed", "stack_obs"]



def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a run seeded with ``seed``.

    Examples
    --------
    >>> case_seed(0, 3) == case_seed(0, 3) != case_seed(1, 3)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def stack_obs(sets: list[xr.Dataset], dim: str = "case") -> xr.Dataset:
    """Observation sets (one per case) as one Dataset ``(dim, obs)``, NaN-padded.

    Parameters
    ----------
    sets : list of Dataset
        Observation Datasets (dimension ``obs``), possibly of different sizes.
    dim : str
        Name of the new case dimension.

    Returns
    -------
    Dataset
        Every variable and coordinate along ``obs`` padded with NaN to the
        largest set; :func:`assimilate_cases` drops the padding per case.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.Dataset({"x": ("obs", [1.0, 2.0])}, coords={"k": ("obs", [0.0, 1.0])})
    >>> stack_obs([a, a.isel(obs=[0])]).x.values.tolist()
    [[1.0, 2.0], [1.0, nan]]
    """
    if not sets:
        raise ConfigError("stack_obs needs at least one observation Dataset")
    size = max(o.sizes.get("obs", 0) for o in sets)
    padded = []
    for o in sets:
        o = o.drop_vars("obs", errors="ignore").assign_coords(obs=np.arange(o.sizes["obs"]))
        padded.append(o.reindex(obs=np.arange(size)))
    out = xr.concat(padded, dim=dim, coords="different", compat="equals", join="outer",
                    combine_attrs="override")
    return out.drop_vars("obs")


def _model_ref(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return model


def _resolve_model(ref: Any) -> Any:
    if isinstance(ref, str):
        from xlatda.streaming import model_from

        return model_from(ref)
    return ref


def _drop_padding(obs: xr.Dataset, variables: list[str]) -> xr.Dataset:
    """Observations of one case without the NaN rows that pad cases to one size."""
    names = [v for v in variables if v in obs.data_vars and "obs" in obs[v].dims]
    if not names or "obs" not in obs.dims:
        return obs
    keep = np.zeros(obs.sizes["obs"], dtype=bool)
    for v in names:
        keep |= ~np.isnan(np.asarray(obs[v].values, dtype=float))
    return obs if keep.all() else obs.isel(obs=np.flatnonzero(keep))


def _case_coords(states: xr.Dataset, dim: str) -> dict[str, xr.DataArray]:
    return {k: v for k, v in states.coords.items() if v.dims == (dim,)}


def _analyse_block(
    states: xr.Dataset,
    obs: xr.Dataset,
    index: xr.DataArray,
    *,
    dim: str,
    model: Any,
    method: str,
    space: str | None,
    members: int | None,
    init_std: Any,
    seed: int,
    threads: int | None,
    variables: list[str],
    settings: dict[str, Any],
) -> xr.Dataset:
    """Analyse every case of one block (runs in a dask task, or eagerly)."""
    from xlatda.cycle import assimilate

    m = _resolve_model(model)
    outs = []
    # No set_options here: options are process-global and tasks run in threads,
    # so a context manager in a task could restore another task's value.
    if threads is not None:
        torch.set_num_threads(threads)
    for j in range(states.sizes[dim]):
        state = states.isel({dim: j}).drop_vars(dim, errors="ignore")
        o = obs.isel({dim: j}, drop=True) if dim in obs.dims else obs
        o = _drop_padding(o, variables)
        out = assimilate(state, o, m, method=method, space=space, members=members,
                         init_std=init_std, seed=case_seed(seed, int(index.values[j])),
                         **settings)
        outs.append(out.drop_vars([c for c in out.coords if out[c].ndim == 0]))
    res = xr.concat(outs, dim=dim, coords="minimal", compat="override",
                    combine_attrs="override")
    res.attrs["history"] = _history(method)
    return res.assign_coords(_case_coords(states, dim))


def _history(method: str) -> str:
    return f"analysis by xlatda {method}, one per case (xlatda.batch.assimilate_cases)"


def _template(states: xr.Dataset, dim: str, method: str, members: int | None,
              single: bool) -> xr.Dataset:
    """Structure of the result, built without computing anything."""
    state0 = states.isel({dim: 0}, drop=True)
    L = layout(state0)
    tname = L.axes.time
    if tname in state0.dims:
        state0 = state0.isel({tname: 0})
        L = layout(state0)
    n_member = state0.sizes.get(L.member_dim, members)
    shape = (L.n_channels, *L.spatial_shape)
    if single:
        one = L.to_dataset(torch.zeros((1, *shape), dtype=torch.float64))
    else:
        one = L.to_dataset(torch.zeros((1, int(n_member), *shape), dtype=torch.float64))
        one = one.assign_coords({L.member_dim: np.arange(int(n_member))})
    one = one.drop_vars([c for c in one.coords if one[c].ndim == 0])
    n = states.sizes[dim]
    chunks = states.chunksizes.get(dim, (n,)) if states.chunks else (n,)
    data = {}
    for name, var in one.data_vars.items():
        arr = dsa.zeros((n, *var.shape), chunks=(chunks, *var.shape), dtype=var.dtype)
        data[name] = ((dim, *var.dims), arr, var.attrs)
    out = xr.Dataset(data, coords={k: v for k, v in one.coords.items()},
                     attrs={**one.attrs, "history": _history(method)})
    return out.assign_coords(_case_coords(states, dim))


def assimilate_cases(
    states: xr.Dataset | xr.DataArray,
    obs: xr.Dataset,
    model: Any = None,
    *,
    dim: str = "case",
    method: str = "etkf",
    space: str | None = None,
    members: int | None = None,
    init_std: Any = None,
    seed: int = 0,
    **settings: Any,
) -> xr.Dataset:
    """One analysis per case along ``dim``; lazy (one task per chunk) on dask input.

    Parameters
    ----------
    states : Dataset or DataArray
        Backgrounds, one per case along ``dim``: a single state each (then
        ``members``/``init_std`` make an ensemble), or an ensemble (``member``
        dim). Each case may have its own time (a coordinate along ``dim``).
    obs : Dataset
        Observations with dims ``(dim, obs)`` (NaN-padded where cases have
        fewer), or without ``dim`` (the same for every case).
    model : LatentModel or path or physical model, optional
        As for :func:`xlatda.assimilate`; a model store path is opened once
        per worker.
    dim : str
        The case dimension.
    method, space, members, init_std :
        As for :func:`xlatda.assimilate` ("etkf", "enkf", "denkf", "ensrf",
        "letkf", "3dvar", "vaevar").
    seed : int
        Case ``i`` uses ``case_seed(seed, i)``: results do not depend on
        chunking.
    **settings :
        The method's settings (``inflation=``, ``b_std=``...).

    Returns
    -------
    Dataset
        Analyses with dims ``(dim, [member,] ...)`` on the state layout, with
        the states' coordinates along ``dim``. Dask-backed (chunks of ``dim``
        as in ``states``, or ``obs`` if only it is chunked) when either input
        is; nothing is computed until asked.

    Raises
    ------
    ConfigError
        For inconsistent inputs or unknown methods, before any work.
    """
    import xlatda.methods.adapters  # noqa: F401  (registers the built-in adapters)
    from xlatda.methods import get_method
    from xlatda.methods.protocol import adapter_for

    if isinstance(states, xr.DataArray):
        states = states.to_dataset(name=states.name if states.name is not None else "data")
    if not isinstance(obs, xr.Dataset):
        raise ConfigError(f"obs must be an observation Dataset, got {type(obs).__name__}")
    if dim not in states.dims:
        raise ConfigError(f"states have no case dimension {dim!r} (dims: {dict(states.sizes)})")
    n = states.sizes[dim]
    if dim in obs.dims and obs.sizes[dim] != n:
        raise ConfigError(
            f"obs have {obs.sizes[dim]} cases along {dim!r} but states have {n}; give one "
            "observation set per case"
        )
    proto = adapter_for(get_method(method))  # unknown names are refused here
    if proto is None or not proto.one_time or not proto.needs_background:
        raise ConfigError(
            f"{method!r} does not make single analyses of a background; assimilate_cases takes "
            "etkf, enkf, denkf, ensrf, letkf, 3dvar or vaevar (use xlatda.cycle for windows)"
        )
    single = not proto.ensemble
    if not single and "member" not in states.dims and (
            members is None or members < 2 or init_std is None):
        raise ConfigError(
            f"{method!r} needs an ensemble: give the states a 'member' dim or pass members=N "
            "(N >= 2) and init_std"
        )
    L0 = layout(states.isel({dim: 0}, drop=True))
    variables = list(L0.variables)
    kwargs = dict(dim=dim, model=_model_ref(model), method=method, space=space,
                  members=members, init_std=init_std, seed=int(seed),
                  threads=get_options()["torch_threads"], variables=variables,
                  settings=dict(settings))
    index = xr.DataArray(np.arange(n), dims=dim)
    if not (is_lazy(states) or is_lazy(obs)):
        return _analyse_block(states, obs, index, **kwargs)

    # One chunk layout along `dim` for every input; other dims whole.
    if states.chunks and dim in states.chunksizes:
        chunks = states.chunksizes[dim]
    elif obs.chunks and dim in obs.chunksizes:
        chunks = obs.chunksizes[dim]
    else:
        chunks = (n,)
    states = states.chunk({d: (chunks if d == dim else -1) for d in states.dims})
    if dim not in obs.dims:
        obs = obs.expand_dims({dim: n})
    obs = obs.chunk({d: (chunks if d == dim else -1) for d in obs.dims})
    index = index.chunk({dim: chunks})
    template = _template(states, dim, method, members, single)
    return xr.map_blocks(_analyse_block, states, args=[obs, index], kwargs=kwargs,
                         template=template)
