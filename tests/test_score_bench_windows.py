"""The score benchmark's window protocol (score6): the spread validation set.

``benchmarks/bench_score_fusion.py`` runs its windows through ``window_list``; a
tuple of first hours is applied to every trajectory (the order the benchmark
always used, so its earlier tables stay reproducible), a list gives each
trajectory its own (``--val-spread``: one window per trajectory, the test
windows' first hours in turn).
"""

from __future__ import annotations

import pytest

from benchmarks.bench_score_fusion import parse_seeds, spread_starts, window_list


def test_tuple_of_starts_runs_every_start_on_every_trajectory_in_the_old_order():
    trajs = ["a", "b"]
    got = [(i, tr, s) for i, tr, s in window_list(trajs, (8, 18, 28, 38))]
    old = [(i, tr, s) for i, tr in enumerate(trajs) for s in (8, 18, 28, 38)]
    assert got == old


def test_spread_starts_take_the_first_hours_in_turn_one_window_each():
    starts = spread_starts(6, (8, 18, 28, 38))
    assert starts == [(8,), (18,), (28,), (38,), (8,), (18,)]
    got = window_list(list("abcdef"), starts)
    assert [(i, s) for i, _, s in got] == [(0, 8), (1, 18), (2, 28), (3, 38), (4, 8), (5, 18)]
    assert [tr for _, tr, _ in got] == list("abcdef")


def test_a_list_of_starts_must_match_the_trajectories():
    with pytest.raises(ValueError, match="2 lists of starts for 3 trajectories"):
        window_list(["a", "b", "c"], [(8,), (18,)])


def test_parse_seeds_range_and_list():
    assert parse_seeds("4-11") == tuple(range(4, 12))
    assert parse_seeds("4,5,9") == (4, 5, 9)
    assert parse_seeds("7") == (7,)
