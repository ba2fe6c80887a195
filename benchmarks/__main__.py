"""Run every benchmark of the project and write benchmarks/RESULTS.md.

    python -m benchmarks            # quick sizes (minutes)
    python -m benchmarks --full     # the sizes the issues' targets are stated for
    python -m benchmarks --only operators accessor
    python -m benchmarks --append --collect sw_latent_da   # embed a standalone run's table

Each ``benchmarks/bench_*.py`` module has ``main(quick=True) -> list[dict]``
and writes its own table to ``benchmarks/out/``; this runner collects the
returned rows with the hardware and library versions into one file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _environment() -> list[str]:
    import numpy
    import torch
    import xarray

    import xlatda

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {cpu}, {os.cpu_count()} cores; GPU: {gpu}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"xarray {xarray.__version__}, numpy {numpy.__version__}, xlatda {xlatda.__version__}",
    ]


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (slow)")
    parser.add_argument("--quick", action="store_true", help="quick sizes (default)")
    parser.add_argument("--only", nargs="*", help="benchmark names (file stem without bench_)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--append", action="store_true",
                        help="add sections to an existing results file")
    parser.add_argument("--collect", nargs="*", default=None,
                        help="do not run: embed the tables these benchmarks last wrote to "
                        "benchmarks/out/ (e.g. after a long standalone run)")
    args = parser.parse_args(argv)
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"unknown benchmarks {sorted(unknown)}; known: {names}")
        names = [n for n in names if n in args.only]
    quick = not args.full
    if args.append and args.out.exists():
        lines = [*args.out.read_text().rstrip("\n").splitlines(), ""]
    else:
        lines = [f"# xlatda benchmark results ({'quick' if quick else 'full'} sizes)", "",
                 *_environment(), "",
                 "Rerun with `python -m benchmarks` (`--full` for the issues' sizes). "
                 "Each section is one `benchmarks/bench_*.py`.", ""]
    if args.collect is not None:
        for name in args.collect or names:
            mds = sorted((HERE / "out").glob(f"{name}*.md"))
            if not mds:
                parser.error(f"no benchmarks/out/{name}*.md to collect; run the benchmark first")
            body = []
            for md in mds:
                stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(md.stat().st_mtime))
                body += [f"From `benchmarks/out/{md.name}` (written {stamp}):", "",
                         md.read_text().strip(), ""]
            lines += [f"## {name}", "", *body]
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
        return 0
    failed = 0
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        wall_start = time.time() - 1
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            rows = module.main(quick=quick)
            if isinstance(rows, dict):
                rows = [rows]
            body = _table(rows) if isinstance(rows, list) and rows else []
            if not body:
                # Benchmarks that report richer tables write them to out/: embed those.
                for md in sorted((HERE / "out").glob(f"{name}*.md")):
                    if md.stat().st_mtime >= wall_start:
                        body += [f"From `benchmarks/out/{md.name}`:", "",
                                 md.read_text().strip(), ""]
            body = body or ["(no rows)"]
        except Exception:  # report and go on: one broken benchmark must not hide the rest
            failed += 1
            body = ["```", traceback.format_exc(), "```"]
        secs = time.perf_counter() - start
        doc = (module.__doc__ or "").strip().splitlines()[0] if "module" in locals() else ""
        lines += [f"## {name} ({secs:.0f} s)", "", doc, "", *body, ""]
        args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
