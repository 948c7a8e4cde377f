"""The channel-selection rules of structured pruning, on hand-made importance tables."""

from __future__ import annotations

import numpy as np
import pytest

from compress.channel_selection import (
    ChannelGroup,
    check_fraction,
    check_round_to,
    select_channels,
    select_keep,
    units_multiple,
)


def _group(name: str, importance, unit_size: int = 1, multiple: int = 1) -> ChannelGroup:
    return ChannelGroup(name, np.asarray(importance, dtype=float), unit_size, multiple)


@pytest.mark.parametrize(
    ("ratio", "expected_keep"),
    [
        (0.0, [4, 4]),
        (0.25, [2, 4]),  # the two least important channels overall are both in A
        (0.5, [1, 3]),  # A would empty: it keeps one unit, B gives the 4th channel instead
        (0.75, [1, 1]),  # 6 of 8 removed
        (0.99, [1, 1]),  # saturates at the floor, never deletes a layer
    ],
)
def test_global_ranking_with_floor(ratio, expected_keep):
    groups = [_group("A", [1, 2, 3, 4]), _group("B", [5, 6, 7, 8])]
    assert select_keep(groups, ratio) == expected_keep


def test_removed_channels_are_the_least_important_of_each_group():
    groups = [_group("A", [4, 1, 3, 2]), _group("B", [8, 5, 7, 6])]
    assert select_channels(groups, 0.5) == {"A": [1, 2, 3], "B": [1]}


def test_groupnorm_units_remove_one_position_per_group():
    # GroupNorm(3) over 6 channels: groups {0,1}, {2,3}, {4,5}; unit j = channel j of each group
    g = _group("gn", [0.1, 0.9], unit_size=3)
    assert g.channels == 6
    assert g.channel_indices([0]) == [0, 2, 4]
    removal = select_channels([g, _group("plain", [5.0] * 6)], 0.25)
    assert removal == {"gn": [0, 2, 4]}  # 3 of 12 channels: one GroupNorm unit


def test_round_to_and_untouched_narrow_layers():
    wide = _group("wide", np.arange(16.0), multiple=8)  # keeps 8 or 16
    narrow = _group("narrow", [100.0, 100.0, 100.0], multiple=8)  # narrower than 8: untouched
    assert select_keep([wide, narrow], 0.3) == [8, 3]
    assert select_keep([wide, narrow], 0.1) == [16, 3]


def test_nothing_selected_leaves_a_non_multiple_width_alone():
    odd = _group("odd", [9.0] * 19, multiple=8)
    cheap = _group("cheap", np.linspace(0.0, 1.0, 40))
    keep = select_keep([odd, cheap], 0.2)
    assert keep[0] == 19 and keep[1] < 40


@pytest.mark.parametrize("multiple", [1, 4])
def test_keep_is_monotone_in_ratio(multiple):
    rng = np.random.default_rng(0)
    groups = [
        _group(f"g{i}", rng.random(n), unit, multiple)
        for i, (n, unit) in enumerate([(8, 1), (16, 1), (6, 3), (32, 1), (5, 2)])
    ]
    previous = None
    for ratio in np.linspace(0.0, 0.95, 40):
        keep = np.array(select_keep(groups, ratio))
        if previous is not None:
            assert (keep <= previous).all(), ratio
        previous = keep


def test_achieved_ratio_is_the_closest_reachable():
    rng = np.random.default_rng(1)
    groups = [_group(f"g{i}", rng.random(n)) for i, n in enumerate([10, 20, 30, 40])]
    total = 100
    for ratio in (0.1, 0.33, 0.5, 0.77):
        keep = select_keep(groups, ratio)
        removed = total - sum(keep)
        assert abs(removed - ratio * total) <= 0.5 + 1e-9, (ratio, keep)


def test_units_multiple():
    assert units_multiple(1, 1) == 1
    assert units_multiple(8, 1) == 8
    assert units_multiple(1, 9) == 1  # GroupNorm(9): widths multiple of 9
    assert units_multiple(8, 9) == 8  # 72 channels = 8 units of 9
    assert units_multiple(8, 4) == 2  # 8 channels = 2 units of 4


@pytest.mark.parametrize("value", [-0.01, 1.0, 2, float("nan"), "x", None])
def test_check_fraction_rejects(value):
    with pytest.raises(ValueError, match="level_ratios"):
        check_fraction(value, "level_ratios")


@pytest.mark.parametrize("value", [0, -3, 1.5, "8", True])
def test_check_round_to_rejects(value):
    with pytest.raises(ValueError, match="round_to must be None or an integer >= 1"):
        check_round_to(value)


def test_check_round_to_accepts():
    assert check_round_to(None) == 1
    assert check_round_to(8) == 8
    assert check_round_to(np.int64(4)) == 4
