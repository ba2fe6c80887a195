"""State layout: how a Dataset becomes a tensor and back, losslessly.

A :class:`StateLayout` records everything about a state Dataset that a
tensor does not carry: which data variables are state variables and in what
order, which dimensions are sample, member, vertical and spatial
dimensions, every coordinate, attribute and encoding. With it,

``layout.to_tensor(ds)``
    gives a torch tensor ``(sample, [member,] channel, *spatial)``: all sample
    dimensions (time, trajectory, ...) flattened into one, vertical levels
    folded into channels (variable-major: ``u@200, u@500, v@200, ...``);
``layout.to_dataset(tensor)``
    gives back a Dataset identical to the input (values, coordinates,
    attributes and encodings: ``xr.testing.assert_identical`` holds).

``layout.stack`` / ``layout.unstack`` do the same on xarray objects and stay
lazy on dask-backed data; they are what ``xlatda._bridge`` uses per chunk.

Three spatial kinds are supported:

- ``"latlon"``: a regular grid with 1-D latitude and longitude dimension
  coordinates (found through CF attributes, whatever their names);
- ``"points"``: an unstructured set, one dimension along which 1-D latitude
  and longitude coordinates are given (stations, a mesh);
- ``"generic"``: any other dimensions (Lorenz-96's site index).

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> ds = xr.Dataset(
...     {"t2m": (("time", "lat", "lon"), np.random.default_rng(0).normal(size=(4, 3, 5)))},
...     coords={"time": np.arange(4),
...             "lat": ("lat", [10.0, 20.0, 30.0], {"standard_name": "latitude"}),
...             "lon": ("lon", np.arange(5.0) * 72, {"standard_name": "longitude"})})
>>> layout = xlatda.layout(ds)
>>> layout.kind, layout.sample_dims, layout.spatial_dims
('latlon', ('time',), ('lat', 'lon'))
>>> x = layout.to_tensor(ds)
>>> tuple(x.shape)
(4, 1, 3, 5)
>>> xr.testing.assert_identical(layout.to_dataset(x), ds)
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from xlatda.cf import Axes, find_axes
from xlatda.errors import LayoutError, ShapeError, VariableNotFoundError

if TYPE_CHECKING:  # torch and dask are imported where tensors or dask arrays are made
    import torch

__all__ = ["CHANNEL_DIM", "StateLayout", "layout"]

CHANNEL_DIM = "channel"
_KNOWN_SAMPLE_DIMS = ("trajectory", "sample", "window", "init", "realization", "case")


def coordinates_sharing_indexes(
    coords: dict[Any, tuple[xr.Variable, Any]],
) -> xr.Coordinates | dict:
    """Coordinates for a new Dataset, reusing the indexes their owners already built.

    ``coords`` maps names to ``(variable, owner)``, the owner being the
    Dataset or DataArray the variable comes from (``None``: a new one).

    Building a Dataset from bare variables makes a new pandas index for every
    dimension coordinate (most of the cost of a small ``unstack``); the
    owners' indexes are immutable and can be shared, as xarray itself shares
    them between objects. Index data are read-only; attributes are copied and
    other coordinates copied deeply, so the result shares nothing writable
    with the template. Falls back to plain variables (new indexes) for
    indexes over several coordinates (a pandas MultiIndex) not all kept.
    """
    variables: dict[Any, xr.Variable] = {}
    indexes: dict[Any, Any] = {}
    plain: dict[Any, xr.Variable] = {}
    for name, (var, owner) in coords.items():
        index = None if owner is None else owner.xindexes.get(name)
        if index is None:
            plain[name] = var.copy()
            continue
        group = owner.xindexes.get_all_coords(name)
        if any(coords.get(k, (None, None))[1] is not owner for k in group):
            return {k: v.copy() for k, (v, _) in coords.items()}
        shared = var.copy(deep=False)
        shared.attrs = copy.deepcopy(var.attrs)
        variables[name] = shared
        indexes[name] = index
    if plain:  # new default indexes for those (as a Dataset would build them)
        built = xr.Coordinates(plain)
        variables.update(built.variables)
        indexes.update(built.xindexes)
    return xr.Coordinates(variables, indexes=indexes)


def _ends_with(ds: xr.Dataset, dims: tuple[str, ...]) -> bool:
    """Whether ``ds.transpose(..., *dims, missing_dims="ignore")`` would leave every
    variable's dims as they are (those of ``dims`` it has last, in that order)."""
    for var in ds.variables.values():
        own = tuple(d for d in dims if d in var.dims)
        if own and var.dims[len(var.dims) - len(own):] != own:
            return False
    return True


@dataclass(frozen=True)
class _VarSpec:
    name: str
    dims: tuple[str, ...]
    dtype: str
    attrs: dict[str, Any]
    encoding: dict[str, Any]
    vertical: bool


@dataclass(frozen=True, eq=False)
class StateLayout:
    """Structure of a state Dataset; build it with :func:`layout`.

    Attributes
    ----------
    kind : {"latlon", "points", "generic"}
        Spatial layout kind.
    variables : tuple of str
        State variables, in channel order.
    sample_dims : tuple of str
        Dimensions flattened into the tensor's sample axis, in order.
    member_dim : str or None
        Ensemble dimension, kept as its own tensor axis after the samples.
    vertical_dim : str or None
        Vertical dimension folded into channels.
    spatial_dims : tuple of str
        Spatial dimensions, the trailing tensor axes.
    axes : Axes
        Names of the time, latitude, longitude and vertical coordinates.
    """

    kind: str
    variables: tuple[str, ...]
    sample_dims: tuple[str, ...]
    member_dim: str | None
    vertical_dim: str | None
    spatial_dims: tuple[str, ...]
    axes: Axes
    specs: tuple[_VarSpec, ...] = field(repr=False)
    template: xr.Dataset = field(repr=False)
    sizes: dict[str, int] = field(default_factory=dict, repr=False)

    # -- sizes ---------------------------------------------------------
    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Sizes of the spatial dimensions."""
        return tuple(int(self.sizes[d]) for d in self.spatial_dims)

    @property
    def n_levels(self) -> int:
        """Number of vertical levels (1 without a vertical dimension)."""
        return int(self.sizes[self.vertical_dim]) if self.vertical_dim else 1

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel labels: ``var`` or ``var@level`` for 3-D variables."""
        out: list[str] = []
        for spec in self.specs:
            if spec.vertical:
                levels = self.template[self.vertical_dim].values
                out.extend(f"{spec.name}@{lev}" for lev in levels)
            else:
                out.append(spec.name)
        return tuple(out)

    @property
    def n_channels(self) -> int:
        """Number of tensor channels (variables x levels)."""
        return len(self.channels)

    @property
    def channel_variable(self) -> tuple[str, ...]:
        """For each channel, the variable it belongs to."""
        return tuple(c.split("@")[0] for c in self.channels)

    def channels_of(self, name: str) -> list[int]:
        """Channel indices of variable ``name``."""
        if name not in self.variables:
            raise VariableNotFoundError(
                f"variable {name!r} is not part of this state; state variables: "
                f"{list(self.variables)}"
            )
        return [i for i, v in enumerate(self.channel_variable) if v == name]

    @property
    def lat(self) -> np.ndarray | None:
        """Latitudes of the spatial layout in degrees (grid rows or points)."""
        name = self.axes.lat
        return None if name is None else np.asarray(self.template[name].values, dtype=float)

    @property
    def lon(self) -> np.ndarray | None:
        """Longitudes of the spatial layout in degrees."""
        name = self.axes.lon
        return None if name is None else np.asarray(self.template[name].values, dtype=float)

    def area_weights(self) -> np.ndarray:
        """cos-latitude weights over the spatial shape, normalised to mean 1.

        Uniform weights for generic layouts.
        """
        shape = self.spatial_shape
        if self.kind == "latlon":
            w = np.cos(np.deg2rad(self.lat))[:, None] * np.ones(len(self.lon))[None, :]
            if self.spatial_dims[0] != self.axes.lat:
                w = w.T  # (lon, lat) grids: the rows are longitudes
        elif self.kind == "points":
            w = np.cos(np.deg2rad(self.lat))
        else:
            w = np.ones(shape)
        w = np.clip(w, 0.0, None)
        return w / w.mean()

    def grid_spec(self) -> dict[str, Any]:
        """The JSON grid description encoders use (see ``xlatda.encoders.base``)."""
        if self.kind in ("latlon", "points"):
            lat, lon = self.lat, self.lon
            return {"kind": self.kind, "lat": lat.tolist(), "lon": lon.tolist(),
                    "lat_first": self.kind == "points" or self.spatial_dims[0] == self.axes.lat}
        return {"kind": "generic", "n": int(np.prod(self.spatial_shape)),
                "shape": list(self.spatial_shape), "periodic": True}

    # -- xarray <-> stacked DataArray -----------------------------------
    def align(self, ds: xr.Dataset) -> xr.Dataset:
        """``ds`` on this layout's grid order, when it holds the same grid in another order.

        The same latitudes south to north instead of north to south, the same
        longitudes as 0..360 instead of -180..180 (or rolled), the grid dims
        in the other order (``(lon, lat)``), a single level squeezed away
        (``ds.squeeze("pressure")``: the same level), the same stations (labels of a
        point dimension) in another order: the fields are reordered (lazily
        on dask input) and given the layout's coordinates, so that a model
        reads each value at its own grid cell. Anything else is returned as
        it is, for :meth:`check` to refuse.

        Examples
        --------
        >>> import numpy as np, xarray as xr, xlatda
        >>> ds = xr.Dataset({"t": (("lat", "lon"), np.arange(6.0).reshape(2, 3))},
        ...                 coords={"lat": [10.0, 20.0], "lon": [-10.0, 0.0, 10.0]})
        >>> L = xlatda.layout(ds)
        >>> other = ds.isel(lat=[1, 0]).assign_coords(lon=ds.lon % 360).sortby("lon")
        >>> L.align(other.transpose("lon", "lat")).t.values.tolist() == ds.t.values.tolist()
        True
        """
        vdim = self.vertical_dim
        if vdim is not None and self.sizes.get(vdim) == 1 and vdim not in ds.dims:
            # one level, squeezed away (ds.squeeze() or .sel(level=500)): put it back
            level = self.template[vdim] if vdim in self.template.coords else None
            scalar = ds[vdim] if vdim in ds.coords else None
            if scalar is None or level is None or (
                    scalar.ndim == 0 and np.array_equal(np.ravel(scalar.values), level.values)):
                ds = ds.drop_vars([vdim]) if scalar is not None else ds
                for spec in self.specs:
                    if spec.vertical and spec.name in ds.data_vars:
                        ds[spec.name] = ds[spec.name].expand_dims(
                            {vdim: level.values if level is not None else 1}, axis=-1)
                if level is not None:
                    ds = ds.assign_coords({vdim: level.variable})
        dims = (*self.spatial_dims, *((vdim,) if vdim else ()))
        order: dict[str, np.ndarray] = {}
        for dim in dims:
            if (dim not in ds.dims or ds.sizes[dim] != self.sizes.get(dim)
                    or dim not in ds.indexes or dim not in self.template.indexes):
                continue
            a = np.asarray(ds.variables[dim].values)
            b = np.asarray(self.template.variables[dim].values)
            if a.dtype.kind in "OUS" and b.dtype.kind in "OUS":
                # labels (station names): the same stations in another order
                where = {v: i for i, v in enumerate(a.tolist())}
                if (len(where) == a.size and not np.array_equal(a, b)
                        and set(where) == set(b.tolist())):
                    order[dim] = np.array([where[v] for v in b.tolist()])
                continue
            if a.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
                continue
            a, b = a.astype(float), b.astype(float)
            if np.array_equal(a, b) or np.allclose(a, b):
                continue
            if dim == self.axes.lon:
                a, b = np.mod(a, 360.0), np.mod(b, 360.0)
            ia, ib = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
            if not np.allclose(a[ia], b[ib]):
                continue  # another grid: check() says so
            perm = np.empty_like(ia)
            perm[ib] = ia  # ds position of each layout position
            order[dim] = perm
        if order:
            ds = ds.isel(order).assign_coords({d: self.template[d].variable for d in order})
        if self.kind == "latlon" and not _ends_with(ds, self.spatial_dims):
            ds = ds.transpose(..., *self.spatial_dims, missing_dims="ignore")
        return ds

    def check(self, ds: xr.Dataset) -> None:
        """Refuse a Dataset whose state variables do not fit this layout.

        Raises
        ------
        VariableNotFoundError
            If a state variable is missing.
        LayoutError
            If spatial or vertical sizes or coordinates differ.
        """
        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"state variables {missing} are missing; the layout needs {list(self.variables)}"
            )
        for dim in (*self.spatial_dims, *((self.vertical_dim,) if self.vertical_dim else ())):
            if dim not in ds.dims:
                raise LayoutError(
                    f"dimension {dim!r} (size {self.sizes[dim]}) is missing; the state needs "
                    f"it: add it back (e.g. ds.expand_dims({dim}=...)) or select the variables "
                    f"{list(self.variables)} from a Dataset that has it"
                )
            if ds.sizes[dim] != self.sizes[dim]:
                raise LayoutError(
                    f"dimension {dim!r} has size {ds.sizes.get(dim)} but the layout expects "
                    f"{self.sizes[dim]}; regrid or interpolate to the layout first"
                )
            if dim in ds.coords and dim in self.template.coords:
                index, own = ds.xindexes.get(dim), self.template.xindexes.get(dim)
                if index is not None and (index is own or (
                        own is not None and index.equals(own))):
                    continue  # the template's own index, or one with equal values
                a, b = ds.variables[dim].values, self.template.variables[dim].values
                if a.dtype.kind == "f" and not (np.array_equal(a, b) or np.allclose(a, b)):
                    raise LayoutError(
                        f"coordinate {dim!r} differs from the layout's; "
                        "use ds.interp or ds.reindex to put the data on the layout's grid"
                    )
                if a.dtype.kind in "OUS" and not np.array_equal(a, b):
                    raise LayoutError(
                        f"coordinate {dim!r} holds other labels than the layout's (first "
                        f"{a[:3].tolist()}, the layout's {b[:3].tolist()}); select the "
                        f"layout's: ds.sel({dim}=<its {b.size} labels>)"
                    )
        if self.kind == "points":
            for name in (self.axes.lat, self.axes.lon):
                if name in ds.coords and name in self.template.coords:
                    a = np.asarray(ds[name].values, float)
                    b = np.asarray(self.template[name].values, float)
                    if a.shape == b.shape and not np.allclose(a, b):
                        raise LayoutError(
                            f"the points' {name!r} differ from the layout's: these are other "
                            "places, or the same in another order; put the points in the "
                            "layout's order (ds.isel or ds.sel on the point dimension)"
                        )

    def stack(self, ds: xr.Dataset, dtype: Any = None) -> xr.DataArray:
        """Stack state variables into ``(*sample, [member,] channel, *spatial)``.

        Lazy on dask-backed input. Sample dimensions are kept (not flattened).
        """
        self.check(ds)
        lead = self.lead_dims(ds)
        arrays = []
        for spec in self.specs:
            var = ds[spec.name].variable
            order = (*lead, *((self.vertical_dim,) if spec.vertical else ()), *self.spatial_dims)
            if set(var.dims) != set(order):
                raise LayoutError(
                    f"variable {spec.name!r} has dims {var.dims}, expected {order}; "
                    "all state variables must share sample and spatial dimensions"
                )
            data = var.transpose(*order).data
            if not spec.vertical:
                data = data[(slice(None),) * len(lead) + (None,)]
            arrays.append(data)
        out_dtype = np.dtype(dtype) if dtype is not None else np.result_type(
            np.float32, *[a.dtype for a in arrays]
        )
        arrays = [a.astype(out_dtype, copy=False) for a in arrays]
        dsa = sys.modules.get("dask.array")  # a dask array exists only once dask is imported
        if dsa is not None and any(isinstance(a, dsa.Array) for a in arrays):
            data = dsa.concatenate(arrays, axis=len(lead))
        else:
            data = np.concatenate(arrays, axis=len(lead))
        coords = {d: ds[d].variable for d in lead if d in ds.coords}
        return xr.DataArray(data, dims=(*lead, CHANNEL_DIM, *self.spatial_dims), coords=coords)

    def unstack(self, stacked: xr.DataArray, *, like: xr.Dataset | None = None) -> xr.Dataset:
        """Turn a stacked DataArray back into a Dataset with the layout's metadata.

        Parameters
        ----------
        stacked : DataArray
            Dims ``(*lead, channel, *spatial)``; lead dims are kept as given.
        like : Dataset, optional
            Where to take sample coordinates and sample-dependent auxiliary
            variables from (default: the layout's template, where sizes match).
        """
        if stacked.sizes.get(CHANNEL_DIM) != self.n_channels:
            raise ShapeError(
                f"expected {self.n_channels} channels ({list(self.channels)}), "
                f"got {stacked.sizes.get(CHANNEL_DIM)}"
            )
        lead = tuple(d for d in stacked.dims if d != CHANNEL_DIM and d not in self.spatial_dims)
        variables: dict[str, xr.Variable] = {}
        start = 0
        for spec in self.specs:
            n = self.n_levels if spec.vertical else 1
            if spec.vertical:
                piece = stacked.variable.isel({CHANNEL_DIM: slice(start, start + n)})
                piece = xr.Variable(
                    tuple(self.vertical_dim if d == CHANNEL_DIM else d for d in piece.dims),
                    piece.data,
                )
            else:  # one index drops the channel dim (one dask layer, no squeeze after)
                piece = stacked.variable.isel({CHANNEL_DIM: start})
            start += n
            if set(piece.dims) <= set(spec.dims):
                # The variable's own dims: restore its order exactly.
                order = [d for d in spec.dims if d in piece.dims]
            else:
                # New dims (member, lead): leading dims in the order given,
                # then the variable's remaining dims in its own order.
                order = [d for d in lead if d in piece.dims] + [
                    d for d in spec.dims if d in piece.dims and d not in lead
                ]
            piece = piece.transpose(*order)
            if piece.dtype != np.dtype(spec.dtype):
                piece = piece.astype(spec.dtype)
            piece.attrs = copy.deepcopy(spec.attrs)
            piece.encoding = copy.deepcopy(spec.encoding)
            variables[spec.name] = piece
        base = self.template if like is None else like
        # Build coordinates and variables as plain dicts, then one Dataset: each
        # assign_coords or __setitem__ would realign every index (milliseconds).
        sizes = {**self.sizes, **dict(stacked.sizes)}
        coords: dict[Any, tuple[xr.Variable, Any]] = {}  # name: (variable, its owner)
        # (Variables, not DataArrays: .coords.items() would build a DataArray for each.)
        for name, coord in base.coords.variables.items():
            if name in lead and coord.ndim == 0:
                continue  # a scalar coordinate that is now a dimension of the data
            if all(d not in lead or base.sizes[d] == stacked.sizes[d] for d in coord.dims):
                if all(d in lead or d in self.template.dims or d in self.sizes
                       for d in coord.dims):
                    coords[name] = (base.variables[name], base)
        for name, coord in stacked.coords.variables.items():
            if coord.dims and set(coord.dims) <= set(lead):
                coords[name] = (stacked.coords.variables[name], stacked)
        data_vars: dict[Any, xr.Variable] = dict(variables)
        # Auxiliary data variables (bounds, masks) and the template's order.
        for name in base.data_vars:
            if name in self.variables:
                continue
            aux = base.variables[name]
            fits = all(sizes.get(d) == base.sizes[d] for d in aux.dims if d in lead)
            known = all(d in lead or d in self.template.dims for d in aux.dims)
            if fits and known:
                data_vars[name] = aux.copy()
        order = [n for n in base.data_vars if n in data_vars]
        order += [n for n in data_vars if n not in order]
        return xr.Dataset({n: data_vars[n] for n in order},
                          coords=coordinates_sharing_indexes(coords),
                          attrs=copy.deepcopy(self.template.attrs))

    def lead_dims(self, ds: xr.Dataset) -> tuple[str, ...]:
        """The leading dims of :meth:`stack`'s output: sample dims, then ``member``."""
        sample = tuple(d for d in self.sample_dims if d in ds.variables[self.variables[0]].dims)
        return (*sample, *((self.member_dim,) if self._has_member(ds) else ()))

    def _has_member(self, ds: xr.Dataset) -> bool:
        return (self.member_dim is not None
                and self.member_dim in ds.variables[self.variables[0]].dims)

    # -- tensors -------------------------------------------------------
    def to_tensor(
        self, ds: xr.Dataset, *, dtype: Any = None, device: Any = None
    ) -> torch.Tensor:
        """Dataset -> tensor ``(sample, [member,] channel, *spatial)``.

        Notes
        -----
        This returns an in-memory tensor, so dask-backed data are computed
        here, once. For lazy work use the accessor (``ds.lda.encode``), which
        goes chunk by chunk through ``xlatda._bridge``.
        """
        stacked = self.stack(ds)
        lead = [d for d in stacked.dims if d in self.sample_dims]
        n_sample = int(np.prod([stacked.sizes[d] for d in lead])) if lead else 1
        values = np.asarray(stacked.values)
        values = values.reshape((n_sample, *values.shape[len(lead):]))
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(values))
        return tensor.to(device=device, dtype=dtype)

    def to_dataset(
        self,
        tensor: torch.Tensor,
        *,
        sample_coords: dict[str, Any] | None = None,
        like: xr.Dataset | None = None,
    ) -> xr.Dataset:
        """Tensor ``(sample, [member,] channel, *spatial)`` -> Dataset.

        Parameters
        ----------
        tensor : torch.Tensor
            Output of :meth:`to_tensor` or any tensor of that shape.
        sample_coords : dict, optional
            Coordinates of the sample dimensions, ``{dim: values}``, when
            they differ from the layout's (a forecast, a subset). Their sizes
            must multiply to the tensor's sample size.
        like : Dataset, optional
            Take sample coordinates from this Dataset.

        Raises
        ------
        ShapeError
            If the tensor does not fit the layout or the sample coordinates.
        """
        arr = tensor.detach().cpu().numpy()
        has_member = arr.ndim == 3 + len(self.spatial_dims)
        trailing = arr.shape[2 if has_member else 1:]
        if tuple(trailing) != (self.n_channels, *self.spatial_shape):
            raise ShapeError(
                f"tensor of shape {tuple(tensor.shape)} does not fit the layout: expected "
                f"(sample, [member,] {self.n_channels}, "
                f"{', '.join(map(str, self.spatial_shape))})"
            )
        source = like if like is not None else self.template
        if sample_coords is None:
            sample_coords = {d: source[d] for d in self.sample_dims if d in source.dims}
            sizes = {d: source.sizes[d] for d in self.sample_dims if d in source.dims}
        else:
            sizes = {d: len(np.atleast_1d(np.asarray(v))) for d, v in sample_coords.items()}
        n = int(np.prod(list(sizes.values()))) if sizes else 1
        if n != arr.shape[0]:
            raise ShapeError(
                f"the tensor has {arr.shape[0]} samples but the sample coordinates "
                f"{dict(sizes)} give {n}; pass sample_coords={{dim: values}} that fit"
            )
        arr = arr.reshape((*sizes.values(), *arr.shape[1:]))
        dims = (*sizes, *((self.member_dim or "member",) if has_member else ()),
                CHANNEL_DIM, *self.spatial_dims)
        coords = {d: (v if isinstance(v, xr.DataArray) else (d, np.asarray(v)))
                  for d, v in sample_coords.items()}
        stacked = xr.DataArray(arr, dims=dims, coords=coords)
        return self.unstack(stacked, like=like)

    # -- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (spatial and vertical coords, attrs).

        Sample coordinates and sample-dependent auxiliary variables are not
        kept: a model knows its grid, not the times it was trained on.
        """
        keep_dims = set(self.spatial_dims) | ({self.vertical_dim} if self.vertical_dim else set())
        coords = {}
        for name, coord in self.template.coords.items():
            if set(coord.dims) <= keep_dims:
                coords[str(name)] = _var_to_json(coord.variable)
        return {
            "kind": self.kind,
            "variables": list(self.variables),
            "sample_dims": list(self.sample_dims),
            "member_dim": self.member_dim,
            "vertical_dim": self.vertical_dim,
            "spatial_dims": list(self.spatial_dims),
            "axes": {"time": self.axes.time, "lat": self.axes.lat, "lon": self.axes.lon,
                     "vertical": self.axes.vertical},
            "specs": [
                {"name": s.name, "dims": list(s.dims), "dtype": s.dtype,
                 "attrs": _to_json(s.attrs), "encoding": _to_json(_clean_encoding(s.encoding)),
                 "vertical": s.vertical}
                for s in self.specs
            ],
            "coords": coords,
            "coord_order": [c for c in self.template.coords if c in coords],
            "attrs": _to_json(self.template.attrs),
            "sizes": dict(self.sizes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateLayout:
        """Rebuild a layout written by :meth:`to_dict`."""
        coords = {name: _var_from_json(v) for name, v in d["coords"].items()}
        template = xr.Dataset(coords={n: coords[n] for n in d["coord_order"]},
                              attrs=_from_json(d["attrs"]))
        specs = tuple(
            _VarSpec(s["name"], tuple(s["dims"]), s["dtype"], _from_json(s["attrs"]),
                     _from_json(s["encoding"]), s["vertical"])
            for s in d["specs"]
        )
        return cls(
            kind=d["kind"], variables=tuple(d["variables"]), sample_dims=tuple(d["sample_dims"]),
            member_dim=d["member_dim"], vertical_dim=d["vertical_dim"],
            spatial_dims=tuple(d["spatial_dims"]), axes=Axes(**d["axes"]), specs=specs,
            template=template, sizes={k: int(v) for k, v in d["sizes"].items()},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateLayout):
            return NotImplemented
        return json.dumps(self.to_dict(), sort_keys=True) == json.dumps(
            other.to_dict(), sort_keys=True
        )

    __hash__ = None  # type: ignore[assignment]


# -- construction ----------------------------------------------------------
def layout(
    ds: xr.Dataset | xr.DataArray,
    *,
    variables: list[str] | tuple[str, ...] | None = None,
    time: str | None = None,
    lat: str | None = None,
    lon: str | None = None,
    vertical: str | None = None,
    spatial_dims: list[str] | tuple[str, ...] | None = None,
    sample_dims: list[str] | tuple[str, ...] | None = None,
    member_dim: str = "member",
) -> StateLayout:
    """Describe the state in ``ds``: variables, dims, coordinates, attributes.

    Parameters
    ----------
    ds : Dataset or DataArray
        State fields (a DataArray is treated as a one-variable Dataset).
    variables : list of str, optional
        State variables, in channel order. Default: every data variable that
        has all spatial dimensions (bounds and other auxiliary variables are
        kept as metadata, not state).
    time, lat, lon, vertical : str, optional
        Coordinate names, when CF discovery is not enough.
    spatial_dims : list of str, optional
        Spatial dimensions for generic layouts (default: all dimensions that
        are not time, member, vertical or a known sample dimension).
    sample_dims : list of str, optional
        Extra dimensions to treat as samples (time and trajectory are found).
    member_dim : str
        Name of the ensemble dimension if present.

    Returns
    -------
    StateLayout

    Raises
    ------
    LayoutError
        No state variable, coordinates that are not strictly monotonic,
        unsortable or duplicate times, curvilinear grids, inconsistent dims.
    VariableNotFoundError
        A requested variable does not exist.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    if not isinstance(ds, xr.Dataset):
        raise LayoutError(f"expected an xarray Dataset or DataArray, got {type(ds).__name__}")
    if variables is not None:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"variables {missing} not found; data variables are {list(map(str, ds.data_vars))}"
            )
    axes = find_axes(ds, time=time, lat=lat, lon=lon, vertical=vertical)
    kind, spatial = _spatial(ds, axes, spatial_dims, member_dim, sample_dims)
    if axes.lat is not None and kind == "generic":
        axes = Axes(axes.time, None, None, axes.vertical)
    vertical_dim = axes.vertical if axes.vertical in ds.dims else None

    found = variables is None
    if variables is None:
        variables = [str(v) for v, da in ds.data_vars.items() if set(spatial) <= set(da.dims)]
        if not variables:
            raise LayoutError(
                f"no data variable has all spatial dimensions {spatial}; "
                "pass variables=[...] or spatial_dims=[...]"
            )
    first = ds[variables[0]]
    lead = [d for d in first.dims if d not in spatial and d != vertical_dim and d != member_dim]
    for v in variables[1:]:
        other = [d for d in ds[v].dims
                 if d not in spatial and d != vertical_dim and d != member_dim]
        if set(other) != set(lead):
            hint = "select or broadcast them to the same dims first"
            if found:
                dims = {n: {d for d in ds[n].dims if d not in spatial and d != vertical_dim
                            and d != member_dim} for n in variables}
                most = max(dims.values(), key=len)
                keep = [n for n in variables if dims[n] == most]
                hint = (f"a static field (a land-sea mask, orography)? pass variables={keep} "
                        "to keep only the state variables, or " + hint)
            raise LayoutError(
                f"state variables {variables[0]!r} and {v!r} have different sample dims "
                f"({lead} vs {other}); {hint}"
            )
    for v in variables:
        if not np.issubdtype(ds[v].dtype, np.number):
            raise LayoutError(
                f"state variable {v!r} is not numeric (dtype {ds[v].dtype}); "
                "pass variables=[...] with numeric variables only"
            )
    _check_coords(ds, axes, kind, lead)
    if vertical_dim is not None and not any(vertical_dim in ds[v].dims for v in variables):
        vertical_dim = None

    specs = tuple(
        _VarSpec(
            name=v, dims=tuple(map(str, ds[v].dims)), dtype=str(ds[v].dtype),
            attrs=copy.deepcopy(dict(ds[v].attrs)), encoding=copy.deepcopy(dict(ds[v].encoding)),
            vertical=vertical_dim is not None and vertical_dim in ds[v].dims,
        )
        for v in variables
    )
    template = ds.drop_vars(list(variables))
    keep = (*spatial, *((vertical_dim,) if vertical_dim else ()))
    return StateLayout(
        kind=kind, variables=tuple(variables), sample_dims=tuple(map(str, lead)),
        member_dim=member_dim, vertical_dim=vertical_dim, spatial_dims=tuple(spatial),
        axes=axes, specs=specs, template=template,
        sizes={str(d): int(ds.sizes[d]) for d in keep},
    )


def _spatial(ds, axes, spatial_dims, member_dim, sample_dims):
    extra_sample = set(sample_dims or ())
    if spatial_dims is not None:
        missing = [d for d in spatial_dims if d not in ds.dims]
        if missing:
            raise LayoutError(f"spatial_dims {missing} are not dimensions of the Dataset")
        spatial = tuple(spatial_dims)
        if axes.lat is not None and set(ds[axes.lat].dims) <= set(spatial):
            if ds[axes.lat].ndim == 1 and ds[axes.lon].ndim == 1:
                if len(spatial) == 2 and ds[axes.lat].dims != ds[axes.lon].dims:
                    return "latlon", spatial
                if len(spatial) == 1:
                    return "points", spatial
        return "generic", spatial
    if axes.lat is not None:
        lat, lon = ds[axes.lat], ds[axes.lon]
        if lat.ndim == 1 and lon.ndim == 1:
            if lat.dims == lon.dims:
                return "points", lat.dims
            # Order the two grid dims as the data variables have them.
            pair = {lat.dims[0], lon.dims[0]}
            for da in ds.data_vars.values():
                if pair <= set(da.dims):
                    return "latlon", tuple(d for d in da.dims if d in pair)
            return "latlon", (lat.dims[0], lon.dims[0])
        raise LayoutError(
            f"latitude {axes.lat!r} has dims {lat.dims}: curvilinear grids are not supported "
            f"directly; stack them into points with ds.stack(point={lat.dims!r}) "
            "(or regrid to a regular grid)"
        )
    skip = {axes.time, member_dim, axes.vertical, *_KNOWN_SAMPLE_DIMS, *extra_sample}
    dims = []
    for da in ds.data_vars.values():
        for d in da.dims:
            if d not in skip and d not in dims:
                dims.append(d)
    if not dims:
        raise LayoutError(
            "could not find any spatial dimension; pass spatial_dims=[...] "
            "or give the grid latitude/longitude coordinates"
        )
    # Generic data: only dims shared by every data variable that has the most dims.
    return "generic", tuple(dims)


def _check_coords(ds: xr.Dataset, axes: Axes, kind: str, lead: list[str]) -> None:
    def strictly_monotonic(values: np.ndarray) -> bool:
        if values.size < 2:
            return True
        d = np.diff(values.astype(float))
        return bool(np.all(d > 0) or np.all(d < 0))

    if kind == "latlon":
        for name, what in ((axes.lat, "latitude"), (axes.lon, "longitude")):
            values = np.asarray(ds[name].values)
            if not np.all(np.isfinite(values)):
                raise LayoutError(f"{what} {name!r} has non-finite values")
            if not strictly_monotonic(values) and what == "longitude" and strictly_monotonic(
                    (values.astype(float) + 180.0) % 360.0 - 180.0):
                raise LayoutError(
                    f"longitude {name!r} runs across 0 E in 0..360 degrees (first values "
                    f"{values[:3].tolist()}..., then {values[-3:].tolist()}); number it "
                    f"-180..180 instead: ds.assign_coords({name}=(ds[{name!r}] + 180) % 360 "
                    f"- 180).sortby({name!r}) (sorting the 0..360 values alone leaves a hole)"
                )
            if not strictly_monotonic(values):
                raise LayoutError(
                    f"{what} {name!r} is not strictly monotonic (first values "
                    f"{values[:5].tolist()}...); sort it with ds.sortby({name!r}) "
                    "and drop duplicate values"
                )
        lat = np.asarray(ds[axes.lat].values, dtype=float)
        if np.any(np.abs(lat) > 90):
            raise LayoutError(f"latitude {axes.lat!r} has values outside [-90, 90]")
    if kind == "points":
        lat = np.asarray(ds[axes.lat].values, dtype=float)
        if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90):
            raise LayoutError(f"latitude {axes.lat!r} has values outside [-90, 90] or NaN")
    time = axes.time
    if time is not None and time in lead and time in ds.coords:
        values = np.asarray(ds[time].values)
        try:
            order = np.argsort(values, kind="stable")
        except TypeError as err:
            raise LayoutError(
                f"time coordinate {time!r} cannot be sorted ({err}); decode it to one "
                "datetime type with xr.decode_cf or give it numeric values"
            ) from None
        if values.size > 1:
            sorted_vals = values[order]
            same = bool(np.any(np.asarray(sorted_vals[1:] == sorted_vals[:-1])))
            if same:
                raise LayoutError(
                    f"time coordinate {time!r} has duplicate values; drop them with "
                    f"ds.drop_duplicates({time!r})"
                )
            if not np.array_equal(order, np.arange(values.size)):
                raise LayoutError(
                    f"time coordinate {time!r} is not increasing; sort it with "
                    f"ds.sortby({time!r})"
                )


# -- JSON helpers (attrs and encodings with numpy values) --------------------
def _to_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__": [_to_json(v) for v in obj]} if isinstance(obj, tuple) else [
            _to_json(v) for v in obj
        ]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "Mm":
            return {"__ndarray__": obj.astype(str).tolist(), "dtype": str(obj.dtype)}
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.item() if obj.dtype.kind not in "Mm" else str(obj),
                "dtype": str(obj.dtype)}
    if isinstance(obj, np.dtype):
        return {"__dtype__": str(obj)}
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return {"__str__": str(obj)}


def _from_json(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__npscalar__" in obj:
        return np.array(obj["__npscalar__"], dtype=obj["dtype"])[()]
    if "__dtype__" in obj:
        return np.dtype(obj["__dtype__"])
    if "__tuple__" in obj:
        return tuple(_from_json(v) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__str__" in obj:
        return obj["__str__"]
    return {k: _from_json(v) for k, v in obj.items()}


def _clean_encoding(enc: dict[str, Any]) -> dict[str, Any]:
    # Backend-specific keys that make no sense outside the file they came from.
    return {k: v for k, v in enc.items() if k not in ("source", "preferred_chunks")}


def _var_to_json(var: xr.Variable) -> dict[str, Any]:
    values = np.asarray(var.values)
    return {"dims": list(var.dims), "values": _to_json(values), "attrs": _to_json(var.attrs),
            "encoding": _to_json(_clean_encoding(var.encoding))}


def _var_from_json(d: dict[str, Any]) -> xr.Variable:
    values = _from_json(d["values"])
    var = xr.Variable(tuple(d["dims"]), values, attrs=_from_json(d["attrs"]))
    var.encoding = _from_json(d["encoding"])
    return var
