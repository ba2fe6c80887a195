"""Verification metrics on xarray objects: deterministic and ensemble scores.

Every function takes :class:`xarray.DataArray` or :class:`xarray.Dataset`
inputs (a Dataset is scored variable by variable), reduces over ``dim`` and
returns an object of the same kind. All of them stay lazy on dask-backed
inputs: the result is a dask-backed object and nothing is computed until the
caller asks for it.

Conventions shared by all functions
-----------------------------------
``dim``
    A dimension name or a list of names to reduce over. ``None`` (default)
    means every dimension shared by the inputs except ``member_dim``; ``[]``
    reduces over nothing and returns the pointwise score. A named dimension
    only some Dataset variables have is reduced where present (as
    ``Dataset.mean`` does).
``weights``
    ``None`` (default): if a latitude coordinate is found through cf-xarray
    (``standard_name="latitude"`` or ``units="degrees_north"``, whatever its
    name) and it lies along one of the reduced dimensions, the mean is
    weighted by ``cos(latitude)``; otherwise it is unweighted. ``True``: the
    same, but a missing latitude is an error. ``False``: no weighting. A
    :class:`~xarray.DataArray`: used as-is through
    :meth:`xarray.DataArray.weighted`. A latitude coordinate without those
    attributes is not recognised (add them, or pass weights). The rule also
    weights point sets (latitude along a ``point``/``obs`` dimension), which
    is right for points taken from a regular grid; for points sampled
    uniformly over the sphere pass ``weights=False``.
``skipna``
    Skip missing values in the mean over ``dim`` (weights are renormalised
    over the points that are present).
Alignment
    Inputs must agree on the sizes and coordinate labels of the dimensions
    they share (``xr.align(..., join="exact")``); dimensions held by only one
    input are broadcast.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from xlatda import metrics
>>> lat = xr.DataArray([-45.0, 0.0, 45.0], dims="lat",
...                    attrs={"standard_name": "latitude", "units": "degrees_north"})
>>> a = xr.DataArray(np.ones((2, 3)), dims=("time", "lat"), coords={"lat": lat})
>>> b = a.copy(data=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
>>> float(metrics.rmse(a, b))          # cos(lat)-weighted over time and lat
0.7071...
>>> metrics.rmse(a, b, dim="lat").values
array([1., 0.])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np
import xarray as xr

from xlatda.errors import ConfigError, LayoutError, ShapeError, VariableNotFoundError

__all__ = [
    "bias",
    "crps_ensemble",
    "mae",
    "rank_histogram",
    "rmse",
    "spread",
    "spread_skill_ratio",
]

XArray = xr.DataArray | xr.Dataset
Dim = Hashable | Sequence[Hashable] | None
Weights = xr.DataArray | bool | None


# --------------------------------------------------------------------------
# array kernels (NumPy in, NumPy out; run per dask chunk by apply_ufunc)
# --------------------------------------------------------------------------


def _crps_kernel(ens: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS of ensembles ``ens`` (..., N) against ``truth`` (...).

    Uses CRPS = E|X - y| - 1/2 E|X - X'| with the pair sum written over the
    sorted members, sum_ij |x_i - x_j| = 2 sum_i (2i - m - 1) x_(i), so the cost
    is O(N log N). NaN members are left out (m is the count of valid members).
    """
    ens = np.asarray(ens, dtype=float)
    truth = np.asarray(truth, dtype=float)
    valid = ~np.isnan(ens)
    m = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        skill = np.where(valid, np.abs(ens - truth[..., None]), 0.0).sum(axis=-1) / m
        xs = np.sort(ens, axis=-1)  # NaN sorts last, so the first m are valid
        i = np.arange(1, ens.shape[-1] + 1)
        coef = np.where(i <= m[..., None], 2 * i - m[..., None] - 1, 0)
        pair = (coef * np.where(np.isnan(xs), 0.0, xs)).sum(axis=-1)
        denom = m * (m - 1) if fair else m * m
        out = skill - pair / denom
    return np.where(m > (1 if fair else 0), out, np.nan)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _hash_uniform(index: np.ndarray, key: np.uint64) -> np.ndarray:
    """Uniform numbers in [0, 1) from a SplitMix64 hash of (key, index).

    A counter-based generator: the number drawn for an element depends only
    on the seed and the element's position in the whole array, so results do
    not depend on how the array is split into dask chunks.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) * _GOLDEN + key
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _rank_kernel(ens: np.ndarray, truth: np.ndarray, *index: np.ndarray, key: np.uint64):
    """Rank (1..N+1) of ``truth`` among ``ens`` (..., N); 0 where anything is NaN.

    Ties are broken uniformly at random among the tied positions (Hamill 2001)
    with numbers hashed from the global element position ``sum(index)``.
    """
    ens = np.asarray(ens)
    truth = np.asarray(truth)
    y = truth[..., None]
    n_less = (ens < y).sum(axis=-1)
    n_eq = (ens == y).sum(axis=-1)
    flat = sum((np.asarray(ix, dtype=np.uint64) for ix in index), np.zeros((), np.uint64))
    u = _hash_uniform(flat, key)
    rank = 1 + n_less + np.floor(u * (n_eq + 1)).astype(np.int64)
    bad = np.isnan(truth) | np.isnan(ens).any(axis=-1)
    shape = np.broadcast_shapes(rank.shape, bad.shape, u.shape)
    return np.broadcast_to(np.where(bad, 0, rank), shape).astype(np.int64)


# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------


def _dims_of(obj: XArray) -> tuple[Hashable, ...]:
    return tuple(obj.dims)


def _as_list(dim: Dim) -> list[Hashable] | None:
    if dim is None:
        return None
    if isinstance(dim, str) or not isinstance(dim, Iterable):
        return [dim]
    return list(dim)


def _check_inputs(
    objs: dict[str, XArray], dim: Dim, member_dim: Hashable | None, weights: Weights
) -> None:
    """Refuse bad arguments before any work is done."""
    for name, obj in objs.items():
        if not isinstance(obj, (xr.DataArray, xr.Dataset)):
            raise ConfigError(
                f"{name} must be an xarray DataArray or Dataset, got {type(obj).__name__}; "
                "wrap arrays with xr.DataArray(values, dims=...)"
            )
    datasets = {k: v for k, v in objs.items() if isinstance(v, xr.Dataset)}
    if len(datasets) > 1:
        (n0, d0), *rest = datasets.items()
        for n1, d1 in rest:
            if set(d0.data_vars) != set(d1.data_vars):
                raise VariableNotFoundError(
                    f"{n0} and {n1} must hold the same data variables, got "
                    f"{sorted(map(str, d0.data_vars))} and {sorted(map(str, d1.data_vars))}; "
                    "select the common ones, e.g. b[list(a.data_vars)]"
                )
    if member_dim is not None:
        ens = objs["ens"]
        if member_dim not in ens.dims:
            raise ConfigError(
                f"ens has no member dimension {member_dim!r} (its dims are "
                f"{list(_dims_of(ens))}); pass member_dim='<name of the ensemble dim>'"
            )
        if "truth" in objs and member_dim in objs["truth"].dims:
            raise ShapeError(
                f"truth must not have the member dimension {member_dim!r}; "
                f"select one member or average them first, e.g. truth.mean({member_dim!r})"
            )
        if isinstance(ens, xr.Dataset):
            lacking = [v for v in ens.data_vars if member_dim not in ens[v].dims]
            if lacking:
                raise ShapeError(
                    f"ens variables {lacking} lack the member dimension {member_dim!r}; "
                    "drop them or add the dimension with .expand_dims"
                )
        arrays = ens.data_vars.values() if isinstance(ens, xr.Dataset) else [ens]
        n_chunks = max(len(a.chunksizes.get(member_dim, ())) for a in arrays)
        if n_chunks > 1:
            raise ShapeError(
                f"ens is split into {n_chunks} dask chunks along {member_dim!r}; "
                f"every member must be in one chunk: rechunk with "
                f"ens.chunk({{{member_dim!r}: -1}})"
            )
    dims = _as_list(dim)
    if dims is not None:
        known = set().union(*(_dims_of(o) for o in objs.values()))
        unknown = [d for d in dims if d not in known]
        if unknown:
            raise ConfigError(
                f"dim {unknown} not found in the inputs, whose dims are {sorted(map(str, known))}; "
                "pass dim= with some of those names (or None for all shared dims)"
            )
        if member_dim is not None and member_dim in dims:
            raise ConfigError(
                f"dim must not contain the member dimension {member_dim!r}: the ensemble is "
                "summarised over it by the metric itself; drop it from dim"
            )
    if not (weights is None or isinstance(weights, (bool, xr.DataArray))):
        raise ConfigError(
            f"weights must be None, True, False or an xarray DataArray, got "
            f"{type(weights).__name__}; wrap arrays with xr.DataArray(values, dims=...)"
        )
    if isinstance(weights, xr.DataArray):
        known = set().union(*(_dims_of(o) for o in objs.values()))
        extra = [d for d in weights.dims if d not in known]
        if extra:
            raise ShapeError(
                f"weights has dims {extra} that no input has (inputs: "
                f"{sorted(map(str, known))}); give weights only dims of the inputs"
            )
    # sizes and labels of shared dims must agree
    arrays = [o for o in objs.values()]
    if isinstance(weights, xr.DataArray):
        arrays.append(weights)
    try:
        xr.align(*arrays, join="exact", copy=False)
    except ValueError as err:
        raise ShapeError(
            f"the inputs disagree on a shared dimension ({err}); make them match, e.g. "
            "a, b = xr.align(a, b, join='inner'), or rename differing dims"
        ) from None


def _per_variable(func: Callable[..., xr.DataArray], objs: dict[str, XArray], **kw) -> XArray:
    """Apply ``func`` to DataArrays, or to each data variable of Dataset inputs."""
    datasets = [o for o in objs.values() if isinstance(o, xr.Dataset)]
    if not datasets:
        return func(**objs, **kw)
    out = {}
    for var in datasets[0].data_vars:
        args = {k: (o[var] if isinstance(o, xr.Dataset) else o) for k, o in objs.items()}
        out[var] = func(**args, **kw)
    return xr.Dataset(out)


def _reduce_dims(dim: Dim, arrays: Sequence[xr.DataArray], member_dim: Hashable | None):
    """Dimensions to reduce for one variable (see the module docstring)."""
    dims = _as_list(dim)
    if dims is None:
        shared = [d for d in arrays[0].dims if all(d in a.dims for a in arrays[1:])]
        return [d for d in shared if d != member_dim]
    present = set().union(*(a.dims for a in arrays))
    return [d for d in dims if d in present]


def _latitude(arrays: Sequence[xr.DataArray], dims: Sequence[Hashable]) -> xr.DataArray | None:
    """The CF latitude coordinate lying along the reduced dims, if exactly one."""
    import cf_xarray  # noqa: F401  (registers the .cf accessor)

    found: dict[Hashable, xr.DataArray] = {}
    for arr in arrays:
        for name in arr.cf.coordinates.get("latitude", []):
            coord = arr.coords[name]
            if set(coord.dims) & set(dims) and name not in found:
                found[name] = coord
    if len(found) > 1:
        raise LayoutError(
            f"several latitude coordinates found along the reduced dims: {list(found)}; "
            "pass weights=np.cos(np.deg2rad(ds['<name>'])) or weights=False"
        )
    return next(iter(found.values()), None)


def _weights_for(
    weights: Weights, arrays: Sequence[xr.DataArray], dims: Sequence[Hashable]
) -> xr.DataArray | None:
    if isinstance(weights, xr.DataArray):
        return weights
    if weights is False or not dims:
        return None
    lat = _latitude(arrays, dims)
    if lat is None:
        if weights is True:
            raise LayoutError(
                f"weights=True asks for cos(latitude) weights, but no coordinate along "
                f"{list(dims)} has standard_name='latitude' or units='degrees_north'; "
                "add those attrs to the latitude coordinate or pass weights explicitly"
            )
        return None
    w = np.cos(np.deg2rad(lat.reset_coords(drop=True))).clip(min=0.0)
    return w.rename("cos_lat_weights")


def _mean(
    x: xr.DataArray,
    dims: Sequence[Hashable],
    weights: Weights,
    arrays: Sequence[xr.DataArray],
    skipna: bool,
) -> xr.DataArray:
    """Mean of ``x`` over ``dims``, weighted as ``weights`` says."""
    if not dims:
        return x
    w = _weights_for(weights, arrays, dims)
    if w is None:
        return x.mean(dims, skipna=skipna)
    return x.weighted(w).mean(dims, skipna=skipna)


def _finish(out: xr.DataArray, name: Hashable | None) -> xr.DataArray:
    out = out.copy(deep=False).rename(name)  # a new Variable: attrs are ours to change
    out.attrs = {}
    return out


# --------------------------------------------------------------------------
# deterministic scores
# --------------------------------------------------------------------------


def _error_metric(kind: str):
    def one(a: xr.DataArray, b: xr.DataArray, *, dim, weights, skipna) -> xr.DataArray:
        a, b = xr.align(a, b, join="exact", copy=False)
        dims = _reduce_dims(dim, [a, b], None)
        err = a - b
        if kind == "rmse":
            out = np.sqrt(_mean(err**2, dims, weights, [a, b], skipna))
        elif kind == "mae":
            out = _mean(abs(err), dims, weights, [a, b], skipna)
        else:
            out = _mean(err, dims, weights, [a, b], skipna)
        return _finish(out, a.name if a.name == b.name else None)

    return one


def rmse(a: XArray, b: XArray, dim: Dim = None, weights: Weights = None, skipna: bool = True):
    """Root-mean-square error ``sqrt(mean((a - b) ** 2))`` over ``dim``.

    Parameters
    ----------
    a, b : xarray.DataArray or xarray.Dataset
        Fields to compare (forecast and reference). Shared dims must match.
    dim : str or list of str, optional
        Dimensions to reduce; ``None`` means all dims shared by ``a`` and ``b``.
    weights : None, bool or xarray.DataArray, optional
        ``None``: cos(latitude) weights when a CF latitude lies along ``dim``;
        ``True``: the same but required; ``False``: unweighted; a DataArray:
        used as-is. See the module docstring.
    skipna : bool, default True
        Skip missing values in the mean.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        The RMSE, without the reduced dims (lazy if an input is dask-backed).

    Raises
    ------
    ConfigError
        For an unknown ``dim`` or a ``weights`` of the wrong kind.
    ShapeError
        If the inputs disagree on the size or labels of a shared dimension.
    LayoutError
        If ``weights=True`` and no latitude is found, or several are.

    See Also
    --------
    mae, bias, xskillscore.rmse

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.DataArray([1.0, 2.0, 3.0], dims="time")
    >>> b = xr.DataArray([1.0, 2.0, 5.0], dims="time")
    >>> float(rmse(a, b))
    1.1547...
    """
    objs = {"a": a, "b": b}
    _check_inputs(objs, dim, None, weights)
    return _per_variable(_error_metric("rmse"), objs, dim=dim, weights=weights, skipna=skipna)


def mae(a: XArray, b: XArray, dim: Dim = None, weights: Weights = None, skipna: bool = True):
    """Mean absolute error ``mean(|a - b|)`` over ``dim``.

    Parameters and errors are those of :func:`rmse`.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.DataArray([1.0, 2.0, 3.0], dims="time")
    >>> float(mae(a, a + [0.0, -1.0, 4.0]))
    1.666...
    """
    objs = {"a": a, "b": b}
    _check_inputs(objs, dim, None, weights)
    return _per_variable(_error_metric("mae"), objs, dim=dim, weights=weights, skipna=skipna)


def bias(a: XArray, b: XArray, dim: Dim = None, weights: Weights = None, skipna: bool = True):
    """Mean error ``mean(a - b)`` over ``dim`` (positive when ``a`` is too high).

    The same as ``xskillscore.me``. Parameters and errors are those of
    :func:`rmse`.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.DataArray([1.0, 2.0, 3.0], dims="time")
    >>> float(bias(a + 0.5, a))
    0.5
    """
    objs = {"a": a, "b": b}
    _check_inputs(objs, dim, None, weights)
    return _per_variable(_error_metric("bias"), objs, dim=dim, weights=weights, skipna=skipna)


# --------------------------------------------------------------------------
# ensemble scores
# --------------------------------------------------------------------------


def _spread_one(ens, truth=None, *, member_dim, dim, weights, skipna):
    arrays = [ens] if truth is None else list(xr.align(ens, truth, join="exact", copy=False))
    dims = _reduce_dims(dim, arrays, member_dim)
    var = ens.var(member_dim, ddof=1, skipna=skipna)
    if truth is not None:  # score the same points as the error of the mean
        var = var.where(truth.notnull())
    return np.sqrt(_mean(var, dims, weights, arrays, skipna)), dims


def spread(
    ens: XArray,
    member_dim: Hashable = "member",
    dim: Dim = None,
    weights: Weights = None,
    skipna: bool = True,
):
    """Ensemble spread: the square root of the mean ensemble variance over ``dim``.

    The variance over ``member_dim`` uses ``ddof=1`` (unbiased); it is averaged
    over ``dim`` (with latitude weights, see :func:`rmse`) before the square
    root, so the spread is comparable with an RMSE.

    Parameters
    ----------
    ens : xarray.DataArray or xarray.Dataset
        Ensemble with dimension ``member_dim``.
    member_dim : str, default "member"
        The ensemble dimension.
    dim : str or list of str, optional
        Dims to average over; ``None`` means all dims of ``ens`` but ``member_dim``.
    weights : None, bool or xarray.DataArray, optional
        As in :func:`rmse`.
    skipna : bool, default True
        Skip missing values (members and points).

    Returns
    -------
    xarray.DataArray or xarray.Dataset

    Raises
    ------
    ConfigError
        If ``member_dim`` is missing or listed in ``dim``, or ``dim`` is unknown.
    ShapeError
        If ``ens`` is split into several dask chunks along ``member_dim``.

    Examples
    --------
    >>> import xarray as xr
    >>> ens = xr.DataArray([[0.0, 2.0], [1.0, 3.0]], dims=("time", "member"))
    >>> spread(ens).item()
    1.414...
    """
    objs = {"ens": ens}
    _check_inputs(objs, dim, member_dim, weights)

    def one(ens):
        out, _ = _spread_one(ens, member_dim=member_dim, dim=dim, weights=weights, skipna=skipna)
        return _finish(out, ens.name)

    return _per_variable(one, objs)


def spread_skill_ratio(
    ens: XArray,
    truth: XArray,
    member_dim: Hashable = "member",
    dim: Dim = None,
    weights: Weights = None,
    skipna: bool = True,
    finite_ensemble_correction: bool = True,
):
    """Spread-skill ratio: ensemble spread over the RMSE of the ensemble mean.

    ``ratio = c * spread(ens) / rmse(ens.mean(member_dim), truth)``, both over
    the same ``dim`` and weights; spread is computed only where ``truth`` is
    present. For a statistically consistent ensemble of ``N`` members
    (truth indistinguishable from a member), the expected squared error of
    the ensemble mean is ``(N + 1) / N`` times the expected ensemble variance
    (``ddof=1``); the finite-ensemble correction ``c = sqrt((N + 1) / N)``
    makes the expected ratio 1 for such an ensemble (Fortin et al. 2014). With
    ``finite_ensemble_correction=False``, ``c = 1``. Ratios below 1 mean an
    under-dispersive ensemble.

    Parameters
    ----------
    ens : xarray.DataArray or xarray.Dataset
        Ensemble with dimension ``member_dim``.
    truth : xarray.DataArray or xarray.Dataset
        Verifying truth or analysis, without ``member_dim``.
    member_dim : str, default "member"
    dim : str or list of str, optional
        ``None`` means all dims shared by ``ens`` and ``truth`` but ``member_dim``.
    weights : None, bool or xarray.DataArray, optional
        As in :func:`rmse`.
    skipna : bool, default True
    finite_ensemble_correction : bool, default True
        Multiply by ``sqrt((N + 1) / N)``.

    Returns
    -------
    xarray.DataArray or xarray.Dataset

    Raises
    ------
    ConfigError, ShapeError
        As :func:`spread` and :func:`rmse`.

    References
    ----------
    Fortin, V., Abaza, M., Anctil, F., & Turcotte, R. (2014). Why should
    ensemble spread match the RMSE of the ensemble mean? J. Hydrometeor., 15,
    1708-1713.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> draws = xr.DataArray(rng.normal(size=(20000, 5)), dims=("time", "member"))
    >>> ens, truth = draws.isel(member=slice(0, 4)), draws.isel(member=4, drop=True)
    >>> round(float(spread_skill_ratio(ens, truth)), 1)
    1.0
    """
    objs = {"ens": ens, "truth": truth}
    _check_inputs(objs, dim, member_dim, weights)
    n = ens.sizes[member_dim]
    if finite_ensemble_correction and n < 2:
        raise ConfigError(
            f"the spread needs at least 2 members along {member_dim!r}, got {n}; "
            "use a larger ensemble"
        )
    c = np.sqrt((n + 1) / n) if finite_ensemble_correction else 1.0

    def one(ens, truth):
        sprd, dims = _spread_one(
            ens, truth, member_dim=member_dim, dim=dim, weights=weights, skipna=skipna
        )
        ens, truth = xr.align(ens, truth, join="exact", copy=False)
        err = ens.mean(member_dim, skipna=skipna) - truth
        skill = np.sqrt(_mean(err**2, dims, weights, [ens, truth], skipna))
        return _finish(c * sprd / skill, truth.name)

    return _per_variable(one, objs)


def crps_ensemble(
    ens: XArray,
    truth: XArray,
    member_dim: Hashable = "member",
    dim: Dim = None,
    weights: Weights = None,
    skipna: bool = True,
    fair: bool = False,
):
    """Continuous ranked probability score of an ensemble, averaged over ``dim``.

    At each point ``CRPS = E|X - y| - 1/2 E|X - X'|`` with ``X, X'`` drawn from
    the members. By default the expectations are plain member averages (the
    CRPS of the empirical distribution), which equals
    :func:`properscoring.crps_ensemble` and :func:`xskillscore.crps_ensemble`.
    ``fair=True`` divides the pair term by ``N (N - 1)`` instead of ``N**2``,
    the unbiased ("fair") estimator of the CRPS of the distribution the
    members are drawn from (Ferro 2014); it needs ``N >= 2``. Missing members
    are left out at each point (as properscoring does); a missing truth gives
    a missing score.

    Parameters
    ----------
    ens : xarray.DataArray or xarray.Dataset
        Ensemble with dimension ``member_dim``.
    truth : xarray.DataArray or xarray.Dataset
        Verifying values, without ``member_dim``.
    member_dim : str, default "member"
    dim : str or list of str, optional
        ``None`` means all dims shared by ``ens`` and ``truth`` but
        ``member_dim``; ``[]`` returns the score at every point.
    weights : None, bool or xarray.DataArray, optional
        As in :func:`rmse`.
    skipna : bool, default True
    fair : bool, default False
        Use the fair (unbiased) estimator.

    Returns
    -------
    xarray.DataArray or xarray.Dataset

    Raises
    ------
    ConfigError, ShapeError
        As :func:`spread` and :func:`rmse`.

    Notes
    -----
    The pointwise kernel sorts the members (O(N log N) per point) and runs
    per dask chunk; ``member_dim`` must be a single chunk.

    References
    ----------
    Gneiting, T., & Raftery, A. E. (2007). Strictly proper scoring rules,
    prediction, and estimation. JASA, 102, 359-378.
    Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. QJRMS, 140,
    1917-1923.

    Examples
    --------
    >>> import xarray as xr
    >>> ens = xr.DataArray([[0.0, 1.0, 2.0]], dims=("time", "member"))
    >>> truth = xr.DataArray([1.0], dims="time")
    >>> float(crps_ensemble(ens, truth))
    0.2222...
    >>> float(crps_ensemble(ens, truth, fair=True))
    0.0
    """
    objs = {"ens": ens, "truth": truth}
    _check_inputs(objs, dim, member_dim, weights)

    def one(ens, truth):
        ens, truth = xr.align(ens, truth, join="exact", copy=False)
        dims = _reduce_dims(dim, [ens, truth], member_dim)
        point = xr.apply_ufunc(
            _crps_kernel,
            ens,
            truth,
            input_core_dims=[[member_dim], []],
            kwargs={"fair": fair},
            dask="parallelized",
            output_dtypes=[np.float64],
        )
        return _finish(_mean(point, dims, weights, [ens, truth], skipna), truth.name)

    return _per_variable(one, objs)


def rank_histogram(
    ens: XArray,
    truth: XArray,
    member_dim: Hashable = "member",
    dim: Dim = None,
    seed: int | None = 0,
):
    """Rank histogram (Talagrand diagram): counts of the rank of ``truth`` in ``ens``.

    At each point the rank is ``1 + #(members < truth)``, from 1 to ``N + 1``;
    the counts over ``dim`` are returned along a new dimension ``rank``. Ties
    (truth equal to some members) are broken uniformly at random among the
    tied positions (Hamill 2001), so tied discrete data give a flat histogram
    on average. The random numbers come from a counter-based hash of
    ``seed`` and each point's position in the full array: the result is
    reproducible and the same whether the input is in memory or split into
    any dask chunks. Points where the truth or any member is missing are not
    counted. Counts are not latitude-weighted.

    Parameters
    ----------
    ens : xarray.DataArray or xarray.Dataset
        Ensemble with dimension ``member_dim``.
    truth : xarray.DataArray or xarray.Dataset
        Verifying values, without ``member_dim``.
    member_dim : str, default "member"
    dim : str or list of str, optional
        ``None`` means all dims shared by ``ens`` and ``truth`` but ``member_dim``.
    seed : int or None, default 0
        Seed of the tie-breaking; ``None`` draws a fresh one (not reproducible).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Integer counts with dims (remaining dims..., ``rank``), ``rank = 1..N+1``.

    Raises
    ------
    ConfigError, ShapeError
        As :func:`crps_ensemble`.

    References
    ----------
    Hamill, T. M. (2001). Interpretation of rank histograms for verifying
    ensemble forecasts. Mon. Wea. Rev., 129, 550-560.

    Examples
    --------
    >>> import xarray as xr
    >>> ens = xr.DataArray([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dims=("time", "member"))
    >>> truth = xr.DataArray([-1.0, 0.5, 2.0], dims="time")
    >>> rank_histogram(ens, truth).values
    array([1, 1, 1])
    """
    objs = {"ens": ens, "truth": truth}
    _check_inputs(objs, dim, member_dim, None)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int or None, got {seed!r}")
    key = np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint64)[0]
    ranks_1n = np.arange(1, ens.sizes[member_dim] + 2)
    rank_attrs = {"long_name": "rank of the truth among the members"}
    bins = xr.DataArray(ranks_1n, dims="rank", coords={"rank": ("rank", ranks_1n, rank_attrs)})

    def one(ens, truth):
        ens, truth = xr.align(ens, truth, join="exact", copy=False)
        dims = _reduce_dims(dim, [ens, truth], member_dim)
        # global flat position of each point, as 1-D pieces summed in the kernel
        sizes = {d: s for d, s in {**truth.sizes, **ens.sizes}.items() if d != member_dim}
        index, stride = [], 1
        for d in reversed(list(sizes)):
            pos = np.arange(sizes[d], dtype=np.uint64) * np.uint64(stride)
            index.append(xr.DataArray(pos, dims=d))
            stride *= sizes[d]
        ranks = xr.apply_ufunc(
            _rank_kernel,
            ens,
            truth,
            *index,
            input_core_dims=[[member_dim], [], *([[]] * len(index))],
            kwargs={"key": key},
            dask="parallelized",
            output_dtypes=[np.int64],
        )
        counts = (ranks == bins).sum(dims) if dims else (ranks == bins)
        return _finish(counts.astype(np.int64), truth.name)

    return _per_variable(one, objs)
