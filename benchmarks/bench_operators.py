"""Benchmark the observation operator: build and apply on a 0.25° global grid.

The case the operator is sized for: 10^5 scattered observations of a field on
a 721 x 1440 latitude/longitude grid (ERA5's 0.25°, latitudes descending),
with torch limited to 2 threads. The target is under 1 s for building the
matrix and the operator plus one application to a single field.

Run ``python benchmarks/bench_operators.py`` (add ``--full`` for more repeats
and the extra cases). The results go to ``benchmarks/out/operators.md``.

Examples
--------
>>> from benchmarks.bench_operators import main  # doctest: +SKIP
>>> rows = main(quick=True)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlatda.operators import ObservationOperator, grid_interpolation_matrix, nearest_point_matrix

OUT = Path(__file__).resolve().parent / "out" / "operators.md"


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def _row(case: str, times: list[float], **extra: Any) -> dict:
    return {
        "case": case,
        "best_s": min(times),
        "median_s": statistics.median(times),
        "repeats": len(times),
        **extra,
    }


def main(
    quick: bool = True,
    *,
    n_points: int = 100_000,
    nlat: int = 721,
    nlon: int = 1440,
    members: int = 32,
    threads: int = 2,
    seed: int = 0,
    out: Path | str | None = OUT,
) -> list[dict]:
    """Time building and applying the operator; write a markdown table.

    Parameters
    ----------
    quick : bool, default True
        Three repeats of the core cases; ``False``: seven repeats plus the
        backward pass, float32 and the point-set builder.
    n_points, nlat, nlon, members : int
        Problem size (defaults: 10^5 points, 0.25° grid, 32 members).
    threads : int, default 2
        ``torch.set_num_threads``.
    seed : int, default 0
        Seed of the random points and fields.
    out : path or None
        Markdown file to write (``None``: do not write).

    Returns
    -------
    list of dict
        One row per case: ``case``, ``best_s``, ``median_s``, ``repeats``.
    """
    torch.set_num_threads(threads)
    repeats = 3 if quick else 7
    rng = np.random.default_rng(seed)
    glat = np.linspace(90.0, -90.0, nlat)
    glon = np.arange(nlon) * (360.0 / nlon)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n_points)))  # uniform on the sphere
    lon = rng.uniform(-180.0, 180.0, n_points)
    gen = torch.Generator().manual_seed(seed)
    field = torch.randn(1, nlat, nlon, dtype=torch.float64, generator=gen)
    batch = torch.randn(members, 1, nlat, nlon, dtype=torch.float64, generator=gen)
    rows: list[dict] = []

    def build_matrix() -> torch.Tensor:
        return grid_interpolation_matrix(glat, glon, lat, lon)

    def build_all() -> torch.Tensor:
        h = grid_interpolation_matrix(glat, glon, lat, lon)
        op = ObservationOperator(h, spatial_shape=(nlat, nlon))
        return op(field)

    # warm up torch and NumPy code paths once
    build_all()
    times, h = _time(build_matrix, repeats)
    rows.append(_row("build matrix (grid_interpolation_matrix)", times))
    times, op = _time(lambda: ObservationOperator(h, spatial_shape=(nlat, nlon)), repeats)
    rows.append(_row("wrap in ObservationOperator", times))

    def first_apply() -> torch.Tensor:
        op._cache.clear()
        return op(field)

    times, _ = _time(first_apply, repeats)
    rows.append(_row("first apply, 1 field (prepares the cached kernel)", times))
    times, _ = _time(lambda: op(field), repeats)
    rows.append(_row("apply, 1 field (float64)", times))
    times, _ = _time(build_all, repeats)
    rows.append(_row("**total: build + operator + first apply, 1 field**", times))
    times, _ = _time(lambda: op(batch), repeats)
    rows.append(_row(f"apply, {members} members (float64)", times))

    if not quick:
        batch32 = batch.float()
        op(batch32)
        times, _ = _time(lambda: op(batch32), repeats)
        rows.append(_row(f"apply, {members} members (float32)", times))
        y = torch.randn(members, n_points, dtype=torch.float64, generator=gen)
        op.transpose_apply(y)
        times, _ = _time(lambda: op.transpose_apply(y), repeats)
        rows.append(_row(f"transpose_apply (H^T y), {members} members", times))
        xg = batch[:4].clone().requires_grad_(True)

        def forward_backward() -> None:
            xg.grad = None
            (op(xg) ** 2).sum().backward()

        times, _ = _time(forward_backward, repeats)
        rows.append(_row("forward + backward, 4 members", times))
        times, _ = _time(
            lambda: nearest_point_matrix(lat, lon, lat[::-1] + 0.01, lon[::-1], k=4), repeats
        )
        rows.append(_row(f"nearest_point_matrix k=4, {n_points} sources and points", times))

    if out is not None:
        _write_markdown(Path(out), rows, n_points=n_points, nlat=nlat, nlon=nlon, threads=threads)
    return rows


def _write_markdown(path: Path, rows: list[dict], **setup: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Observation operator benchmark",
        "",
        f"{setup['n_points']} random points (uniform on the sphere) on a "
        f"{setup['nlat']} x {setup['nlon']} global grid; torch {torch.__version__}, "
        f"{setup['threads']} torch threads, {os.cpu_count()} CPUs "
        f"({platform.machine()}), 1-minute load average {load:.1f} at the end.",
        "",
        "| case | best (ms) | median (ms) | repeats |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['best_s'] * 1e3:.1f} | {r['median_s'] * 1e3:.1f} "
            f"| {r['repeats']} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more repeats and cases")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    for r in main(quick=not args.full, threads=args.threads):
        print(f"{r['case']:<60s} best {r['best_s'] * 1e3:8.1f} ms")
    print(f"wrote {OUT}")
