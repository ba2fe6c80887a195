"""The ``xlatda`` command.

``xlatda demo [--out DIR]``
    the shallow-water twin experiment with the shipped latent model;
``xlatda run CONFIG.yaml [--data-dir DIR] [--out FILE] [--dry-run]``
    an experiment described by a configuration file (every problem of the
    file is reported at once; ``--dry-run`` only checks the file and the data
    it points to); see ``docs/cli.md`` and ``examples/configs/``;
``xlatda bench [--system lorenz63|lorenz96|shallow_water] [--cycles N]``
    every method on one built-in system and one observation set.

Nothing heavy (torch, xarray) is imported here at module level: the
commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xlatda._version import __version__
from xlatda.errors import ConfigError, XlatdaError

__all__ = ["bench", "load_config", "main", "run_config"]

def load_config(path: str | Path, *, data_dir: str | Path | None = None,
                check_files: bool = True) -> dict[str, Any]:
    """Read and validate a configuration; see :func:`xlatda.config.load_config`."""
    from xlatda.config import load_config as _load

    return _load(path, data_dir=data_dir, check_files=check_files)


def run_config(path: str | Path, *, data_dir: str | Path | None = None,
               out: str | Path | None = None, dry_run: bool = False,
               progress: bool | None = None, echo: Any = print) -> Path | None:
    """Check, then run, the experiment of a configuration file.

    Parameters
    ----------
    path : path
        The YAML configuration (see ``docs/cli.md``).
    data_dir : path, optional
        Where relative data paths are looked up first.
    out : path, optional
        Result file instead of ``output.path``.
    dry_run : bool
        Only check the configuration and the data it names; run nothing.
    progress : bool, optional
        Progress bars (default: the ``progress`` option, ``"auto"``: in a
        terminal or a Jupyter kernel, not when output goes to a file).
    echo : callable
        Where progress lines go.

    Returns
    -------
    Path or None
        The result file (None for a dry run).

    Raises
    ------
    ConfigError
        Every problem of the file (and, before running, of the data) at once.
    """
    from xlatda.config import load_config as _load
    from xlatda.experiment import check_data, run_experiment

    cfg = _load(path, data_dir=data_dir)
    problems = check_data(cfg)
    if problems:
        head = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise ConfigError(f"{head} with the data of {path}:\n  " + "\n  ".join(problems))
    if dry_run:
        (echo or (lambda *a: None))(f"{path}: configuration and data are valid (dry run: "
                                    "nothing was run)")
        return None
    return run_experiment(cfg, progress=progress, out=out, echo=echo)


def bench(system: str = "lorenz96", cycles: int | None = None, seed: int = 0,
          echo: Any = print) -> list[dict[str, Any]]:
    """Every method on one built-in system; see :func:`xlatda.bench.bench`."""
    from xlatda.bench import bench as _bench

    return _bench(system, cycles, seed, echo=echo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlatda",
        description="Latent data assimilation on xarray: demo, experiments from a "
                    "configuration file, benchmarks.")
    parser.add_argument("--version", action="version", version=f"xlatda {__version__}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the tensors are small, and spinning "
                        "threads slow down on a busy machine)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="shallow-water twin experiment with the shipped model")
    p.add_argument("--out", default="xlatda-demo", help="output folder (default xlatda-demo)")
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--obs", type=int, default=256, help="observation locations per hour")
    p.add_argument("--members", type=int, default=None,
                   help="ensemble size (default: xlatda.cycle's, spanning the control vector)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser(
        "run", help="run an experiment from a YAML configuration",
        description="Run the experiment of a YAML configuration (schema: docs/cli.md; "
                    "examples: examples/configs/). Every problem of the file is reported at "
                    "once. Training progress bars show train (training loss), val "
                    "(validation loss on held-out training states) and, for the dynamics, p "
                    "(re-anchoring probability: 1 = one-step training, falling to 0 = free "
                    "roll-out; validation always scores the free roll-out, so val >> train "
                    "is expected while p > 0, and means overfitting once p = 0).")
    p.add_argument("config", help="the YAML configuration file")
    p.add_argument("--data-dir", default=None,
                   help="folder where relative data paths of the config are looked up first "
                   "(then next to the config)")
    p.add_argument("--out", default=None, help="result file (.nc or .zarr) instead of "
                   "output.path")
    p.add_argument("--dry-run", action="store_true",
                   help="check the configuration and the data it names; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("bench", help="compare every method on one built-in system")
    p.add_argument("--system", default="lorenz96",
                   help="lorenz63, lorenz96 (default) or shallow_water")
    p.add_argument("--cycles", type=int, default=None,
                   help="analysis cycles (default 300; 24 for shallow_water)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xlatda`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        if args.command == "run" and args.dry_run:
            run_config(args.config, data_dir=args.data_dir, dry_run=True)
            return 0
        import torch

        torch.set_num_threads(args.threads)
        if args.command == "demo":
            from xlatda.demo import run_demo

            run_demo(args.out, hours=args.hours, n_obs=args.obs, members=args.members,
                     seed=args.seed, plot=not args.no_plot,
                     progress=False if args.quiet else None)
        elif args.command == "run":
            run_config(args.config, data_dir=args.data_dir, out=args.out,
                       progress=False if args.quiet else None)
        else:
            bench(args.system, args.cycles, args.seed)
    except XlatdaError as err:
        print(f"xlatda: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
