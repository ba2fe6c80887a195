"""Experiment configuration files for ``xlatda run``: schema, reading, validation.

A configuration is a YAML mapping of sections (``version: 1`` first); every
key, its type, default and meaning is in :data:`SCHEMA`, and
``docs/cli.md`` documents them with the configurations shipped in
``examples/configs/``. :func:`load_config` reads a file and reports **every**
problem at once, each with its path in the file::

    assimilate.method: unknown 'etfk' (did you mean 'etkf'?); known: 3dvar, ...
    observations.n: must be int, got 'twenty'

Relative file paths (``system.path``, ``observations.path``) are looked up
in the ``data_dir`` given (``xlatda run --data-dir DIR``) and then next to the
configuration file. This module imports neither torch nor xarray: checking a
configuration is quick.

Examples
--------
>>> import tempfile, pathlib
>>> text = '''
... version: 1
... system: {name: lorenz96, options: {n: 12, steps: 60}}
... observations: {n: 6, error_std: 1.0}
... assimilate: {method: etfk, members: ten}
... output: {path: out.nc}
... '''
>>> path = pathlib.Path(tempfile.mkdtemp()) / "exp.yaml"
>>> _ = path.write_text(text)
>>> try:
...     load_config(path)
... except ConfigError as err:
...     print(err)
2 problems in ...exp.yaml:
  assimilate.members: must be int or null, got 'ten'
  assimilate.method: unknown 'etfk' (did you mean 'etkf'?); known: 3dvar, 4denvar, ...
"""

from __future__ import annotations

import datetime as _dt
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlatda.errors import ConfigError

__all__ = [
    "CONFIG_VERSION",
    "SCHEMA",
    "SYSTEMS",
    "Field",
    "check_config",
    "load_config",
    "resolve_path",
]

CONFIG_VERSION = 1
SYSTEMS = ("file", "lorenz63", "lorenz96", "shallow_water")
_TIME = (str, int, float, _dt.date, _dt.datetime)


@dataclass(frozen=True)
class Field:
    """One configuration key: accepted types, default, meaning, allowed values."""

    types: tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    required: bool = False


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _period(what: str) -> dict[str, Field]:
    return {
        "start": Field(_TIME, None, f"first time of the {what} period (a date such as "
                       "2019-03-01 or 2019-03-01T06:00, or a number for model time)"),
        "end": Field(_TIME, None, f"last time of the {what} period (included)"),
    }


SCHEMA: dict[str, dict[str, Field]] = {
    "system": {
        "name": Field((str,), "file", "where the states come from: 'file' (a netCDF or zarr "
                      "dataset) or a built-in system", SYSTEMS),
        "path": Field((str, type(None)), None, "the netCDF (.nc) or zarr (.zarr) file of "
                      "system 'file' (relative: looked up in --data-dir, then next to the "
                      "config)"),
        "variables": Field((list, type(None)), None, "data variables to assimilate (default: "
                           "every variable on the grid)"),
        "options": Field((dict,), {}, "keyword arguments of xlatda.datasets.<name> for a "
                         "built-in system (e.g. n, steps, seed)"),
    },
    "train": _period("training") | {
        "validation": Field((float, int), 0.1, "fraction of the training samples held out to "
                            "check the fit (validation loss)"),
    },
    "model": {
        "path": Field((str, type(None)), None, "an existing model store (xlatda.open_model) "
                      "instead of fitting one on the train period"),
        "encoder": Field((str,), "pca", "encoder to fit", ("pca", "autoencoder", "vae", "sinr")),
        "latent_dim": Field((int,), 16, "size of the latent vector"),
        "dynamics": Field((str, type(None)), "ode", "latent dynamics ('ode': neural ODE; "
                          "'linear': linear model forced by the time of day, the choice for "
                          "a few weeks of reanalysis)", ("ode", "linear", None)),
        "uncertainty": Field((str, type(None)), "diagonal", "model-error covariance of the "
                             "latent forecasts", ("scalar", "diagonal", "cholesky", None)),
        "epochs": Field((int,), 20, "training epochs of the neural parts"),
        "seed": Field((int,), 0, "seed of the training"),
        "encoder_options": Field((dict,), {}, "extra keyword arguments of the encoder"),
        "options": Field((dict,), {}, "extra keyword arguments of the dynamics"),
        "save": Field((str, type(None)), None, "write the fitted model to this zarr store"),
    },
    "observations": {
        "source": Field((str,), "synthetic", "'synthetic': drawn from the verifying data at "
                        "random places; 'file': read from observations.path",
                        ("synthetic", "file")),
        "path": Field((str, type(None)), None, "CSV table (columns time, lat, lon, one column "
                      "per observed variable, error) or netCDF observation set (dimension "
                      "obs); relative paths as for system.path"),
        "n": Field((int,), 20, "synthetic: observation locations per analysis time"),
        "every": Field((int,), 1, "synthetic: observe every this many time steps"),
        "error_std": Field((float, int, dict), 1.0, "synthetic: observation error std (one "
                           "number or one per variable); file: the error where the table has "
                           "no error column"),
        "seed": Field((int,), 0, "synthetic: seed of the locations and errors"),
    },
    "assimilate": _period("assimilation") | {
        "method": Field((str,), "etkf", "assimilation method (xlatda.methods.method_names())",
                        required=True),
        "space": Field((str, type(None)), None, "'latent' or 'physical' (default: latent "
                       "with a latent model, physical with a physical one)",
                       ("latent", "physical", None)),
        "members": Field((int, type(None)), None, "ensemble size (default: xlatda.cycle's, "
                         "20 in physical space, enough to span a latent space)"),
        "init_std": Field((float, int, type(None)), None, "std of the initial perturbations "
                          "(latent units in latent space, state units in physical space; "
                          "default: draws from the latent model's prior)"),
        "initial": Field((str, type(None)), None, "first background: 'climatology' (mean of "
                         "the train period), 'persistence' (the state just before the "
                         "assimilation start) or 'truth' (twin experiments); default "
                         "climatology with a train period, else truth",
                         ("climatology", "persistence", "truth", None)),
        "window": Field((int,), 1, "observation times per analysis (4denvar, score)"),
        "seed": Field((int,), 0, "seed of the ensemble"),
        "settings": Field((dict,), {}, "method settings, e.g. {inflation: 1.05} or "
                          "{b_std: 0.5}"),
        "physical_model": Field((str, type(None)), None, "physical forecast model when there "
                                "is no model section (default: the system's own)",
                                ("lorenz63", "lorenz96", "shallow_water", None)),
    },
    "output": {
        "path": Field((str,), None, "result file: .nc (netCDF4 with groups) or .zarr; "
                      "relative to the current directory", required=True),
        "overwrite": Field((bool,), False, "replace an existing result"),
        "ensemble": Field((bool,), True, "keep every analysis member (false: mean and spread "
                          "only)"),
        "figure": Field((bool,), True, "also draw <output>.png (maps and scores)"),
    },
}
_TOP_LEVEL = ("version", *SCHEMA)


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "str", int: "int", float: "float", bool: "bool", dict: "mapping",
             list: "list", type(None): "null", _dt.date: "date", _dt.datetime: "date"}
    out: list[str] = []
    for t in types:
        name = names.get(t, t.__name__)
        if name not in out:
            out.append(name)
    return " or ".join(out)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def to_time(value: Any) -> Any:
    """A config time as ``numpy.datetime64`` (dates, date strings) or a float (model time).

    Examples
    --------
    >>> import datetime
    >>> str(to_time(datetime.date(2019, 3, 2))), str(to_time("2019-03-02T06:00"))
    ('2019-03-02T00:00:00', '2019-03-02T06:00:00')
    >>> to_time(12)
    12.0
    """
    import numpy as np

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, _dt.datetime):
        value = value.replace(tzinfo=None).isoformat()
    elif isinstance(value, _dt.date):
        value = value.isoformat()
    try:
        return np.datetime64(str(value).strip().replace(" ", "T"), "s")
    except ValueError:
        raise ValueError(f"{value!r} is not a date (write e.g. 2019-03-01 or "
                         "2019-03-01T06:00)") from None


def resolve_path(value: str, config_dir: Path, data_dir: str | Path | None = None) -> Path:
    """Where a relative file path of a config points: ``data_dir`` first, then ``config_dir``.

    Absolute paths (and ``~``) are kept. When the file exists in neither place,
    the path under ``data_dir`` (if given, else ``config_dir``) is returned, so
    that the error names where it was expected.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    candidates = ([Path(data_dir).expanduser() / path] if data_dir is not None else [])
    candidates.append(Path(config_dir) / path)
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def _check_section(section: str, body: Any, problems: _Problems) -> None:
    if not isinstance(body, dict):
        problems.add(section, f"must be a mapping of keys {sorted(SCHEMA[section])}, got "
                     f"{body!r}")
        return
    for key, value in body.items():
        spec = SCHEMA[section].get(key)
        path = f"{section}.{key}"
        if spec is None:
            problems.add(path, f"unknown key{_suggest(key, SCHEMA[section])}; known keys: "
                         f"{', '.join(SCHEMA[section])}")
            continue
        if not _type_ok(value, spec.types):
            problems.add(path, f"must be {_type_names(spec.types)}, got {value!r}")
            continue
        if spec.choices is not None and value not in spec.choices:
            shown = ", ".join(repr(c) if c is not None else "null" for c in spec.choices)
            problems.add(path, f"unknown {value!r}{_suggest(value, [c for c in spec.choices if c])}"
                         f"; choose one of {shown}")
    for key, spec in SCHEMA[section].items():
        if spec.required and key not in body:
            problems.add(f"{section}.{key}", "missing (required)")


def _check_period(cfg: dict[str, Any], section: str, problems: _Problems) -> tuple | None:
    body = cfg.get(section)
    if not isinstance(body, dict):
        return None
    times = {}
    for key in ("start", "end"):
        if key in body and _type_ok(body[key], _TIME):
            try:
                times[key] = to_time(body[key])
            except ValueError as err:
                problems.add(f"{section}.{key}", str(err))
    if len(times) == 2:
        a, b = times["start"], times["end"]
        if type(a) is not type(b):
            problems.add(section, f"start {body['start']!r} and end {body['end']!r} must both "
                         "be dates or both numbers")
            return None
        if b < a:
            problems.add(f"{section}.end", f"{body['end']!r} is before {section}.start "
                         f"{body['start']!r}")
            return None
        return a, b
    return None


def check_config(cfg: Any, *, methods: list[str] | None = None) -> list[str]:
    """Every problem of a parsed configuration, as ``"path: message"`` lines.

    Parameters
    ----------
    cfg : Any
        The parsed YAML (a mapping of sections).
    methods : list of str, optional
        Known assimilation methods (default: the registry's,
        :func:`xlatda.methods.method_names`).

    Returns
    -------
    list of str
        Empty when the configuration is valid. File existence is not checked
        here (see :func:`load_config`).

    Examples
    --------
    >>> check_config({"version": 1, "system": {"name": "lorenz69"},
    ...               "assimilate": {"method": "etkf"}, "output": {"path": "x.nc"}})
    ["system.name: unknown 'lorenz69' (did you mean 'lorenz96'?); choose one of 'file', \
'lorenz63', 'lorenz96', 'shallow_water'"]
    """
    problems = _Problems()
    if not isinstance(cfg, dict):
        return [f"(top level): must be a mapping of sections {', '.join(_TOP_LEVEL)}, got "
                f"{type(cfg).__name__}"]
    if "version" not in cfg:
        problems.add("version", f"missing: put `version: {CONFIG_VERSION}` at the top of the "
                     "file")
    elif cfg["version"] != CONFIG_VERSION:
        problems.add("version", f"unsupported {cfg['version']!r}: this xlatda reads version "
                     f"{CONFIG_VERSION}")
    for section, body in cfg.items():
        if section == "version":
            continue
        if section not in SCHEMA:
            problems.add(str(section), f"unknown section{_suggest(section, SCHEMA)}; known "
                         f"sections: {', '.join(_TOP_LEVEL)}")
            continue
        _check_section(section, body, problems)
    for section in ("system", "assimilate", "output"):
        if section not in cfg:
            problems.add(section, "missing section (required)")
    system = cfg.get("system") if isinstance(cfg.get("system"), dict) else {}
    name = system.get("name", "file")
    if name == "file" and not system.get("path") and "system" in cfg:
        problems.add("system.path", "missing: system 'file' needs the netCDF or zarr file")
    variables = system.get("variables")
    if isinstance(variables, list) and not all(isinstance(v, str) for v in variables):
        problems.add("system.variables", f"must be a list of names, got {variables!r}")
    assim = cfg.get("assimilate") if isinstance(cfg.get("assimilate"), dict) else {}
    method = assim.get("method")
    if isinstance(method, str):
        if methods is None:
            from xlatda.methods.registry import method_names

            methods = method_names()
        if method.lower() not in methods:
            problems.add("assimilate.method", f"unknown {method!r}{_suggest(method, methods)}; "
                         f"known: {', '.join(methods)}")
    for key in ("members", "window"):
        value = assim.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            problems.add(f"assimilate.{key}", f"must be at least 1, got {value}")
    obs = cfg.get("observations") if isinstance(cfg.get("observations"), dict) else {}
    if obs.get("source") == "file" and not obs.get("path"):
        problems.add("observations.path", "missing: observations.source 'file' needs a CSV "
                     "or netCDF file")
    if obs.get("path") and obs.get("source", "synthetic") == "synthetic":
        problems.add("observations.source", "observations.path is given but source is "
                     "'synthetic': set `source: file` to read it")
    for key in ("n", "every"):
        value = obs.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            problems.add(f"observations.{key}", f"must be at least 1, got {value}")
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    has_model = "model" in cfg
    train = _check_period(cfg, "train", problems)
    assim_period = _check_period(cfg, "assimilate", problems)
    if has_model and not (model or {}).get("path") and "train" not in cfg and name == "file":
        problems.add("train", "missing: a model is fitted on the train period; give "
                     "train: {start: ..., end: ...} or model.path")
    if "train" in cfg and not has_model:
        problems.add("train", "a train period needs a model section (without one, the "
                     "system's physical model forecasts)")
    if not has_model and name == "file":
        problems.add("model", "missing: a file system has no physical model; add a model "
                     "section (fitted on the train period) or model.path")
    if train is not None and assim_period is not None:
        if type(train[0]) is type(assim_period[0]):
            if train[0] <= assim_period[1] and assim_period[0] <= train[1]:
                problems.add("assimilate", "the assimilation period overlaps the train period; "
                             "scores would not be on held-out data: choose disjoint periods")
        else:
            problems.add("assimilate", "train and assimilate periods must both be dates or "
                         "both numbers")
    return problems.items


def _raise(problems: list[str], where: Any) -> None:
    if problems:
        head = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise ConfigError(f"{head} in {where}:\n  " + "\n  ".join(problems))


def load_config(
    path: str | Path, *, data_dir: str | Path | None = None, check_files: bool = True
) -> dict[str, Any]:
    """Read and validate an experiment configuration (YAML).

    Parameters
    ----------
    path : path
        The YAML file.
    data_dir : path, optional
        Folder where relative data paths are looked up first (``--data-dir``).
    check_files : bool, default True
        Also check that the data and observation files exist.

    Returns
    -------
    dict
        The configuration with every default filled in, dates as
        ``numpy.datetime64``, file paths resolved (``system.path``,
        ``observations.path``), and the original text under ``"_text"``
        and its location under ``"_path"``.

    Raises
    ------
    ConfigError
        Listing every problem at once, each as ``section.key: what is wrong``
        (unknown sections or keys with the closest known name, wrong types,
        unknown values, missing required keys, periods out of order or
        overlapping, missing files).
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    raw = {} if raw is None else raw
    problems = check_config(raw)
    cfg: dict[str, Any] = {}
    if not problems:
        cfg = {"version": raw["version"]}
        for section, fields in SCHEMA.items():
            if section not in raw and section in ("train", "model", "observations"):
                cfg[section] = None if section != "observations" else {}
                if section == "observations":
                    cfg[section] = {k: f.default for k, f in fields.items()}
                continue
            body = raw.get(section, {})
            cfg[section] = {k: body.get(k, f.default) for k, f in fields.items()}
        for section in ("train", "assimilate"):
            if cfg[section] is not None:
                for key in ("start", "end"):
                    if cfg[section][key] is not None:
                        cfg[section][key] = to_time(cfg[section][key])
        for section in ("system", "observations"):
            p = cfg[section].get("path")
            if p:
                resolved = resolve_path(p, path.parent, data_dir)
                cfg[section]["path"] = str(resolved)
                if check_files and not resolved.exists():
                    hint = ("" if data_dir is not None else
                            "; pass --data-dir DIR (the folder that holds it) or an absolute "
                            "path")
                    problems.append(f"{section}.path: file {p!r} not found (looked for "
                                    f"{resolved}){hint}")
        mpath = (cfg["model"] or {}).get("path")
        if mpath:
            cfg["model"]["path"] = str(resolve_path(mpath, path.parent, data_dir))
        cfg["_text"], cfg["_path"] = text, str(path)
    _raise(problems, path)
    return cfg
