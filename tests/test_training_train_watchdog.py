"""The collapse watchdog: its fixed line, drop arithmetic, warm-up, smoothing, state, and the catalog's view of it."""
from __future__ import annotations

import re

from agent_ops.known_issues.diagnose import diagnose
from training.config import WatchConfig, WatchdogConfig
from training.watchdog import CollapseWatchdog

LINE = re.compile(r"^\[watchdog\] COLLAPSE metric=(\w+) value=(\S+) best=(\S+) drop=(\d+\.\d\d) step=(\d+)$")


def test_success_rate_collapse_reads_like_seed_000() -> None:
    dog = CollapseWatchdog([WatchConfig(metric="success_rate", direction="max", threshold=0.5)])
    assert dog.armed_lines() == ["[watchdog] armed: reports COLLAPSE when metric=success_rate drops below 50% of its best"]
    for step, value in enumerate([0.2, 0.45, 0.6, 0.55]):
        assert dog.observe("success_rate", value, step) is None
    report = dog.observe("success_rate", 0.02, 6)
    assert report is not None and dog.healthy is False
    assert report.line() == "[watchdog] COLLAPSE metric=success_rate value=0.02 best=0.6 drop=0.97 step=6"
    assert LINE.match(report.line())
    assert [m.issue_id for m in diagnose(report.line(), tags=["train"]).matches] == ["policy-collapse"]


def test_a_falling_reward_can_drop_more_than_its_best() -> None:
    dog = CollapseWatchdog([WatchConfig(metric="reward_mean", direction="max", threshold=0.5)])
    dog.observe("reward_mean", 0.7, 5)
    report = dog.observe("reward_mean", -0.2, 7)
    assert report is not None and report.line() == \
        "[watchdog] COLLAPSE metric=reward_mean value=-0.2 best=0.7 drop=1.29 step=7"


def test_loss_spike_is_measured_against_the_smoothed_best_after_warmup() -> None:
    dog = CollapseWatchdog([WatchConfig(metric="loss", direction="min", threshold=3.0, ema=0.5, warmup_steps=3)])
    assert dog.armed_lines() == [("[watchdog] armed: reports COLLAPSE when metric=loss rises above 400% of its best "
                                  "(after 3 steps)")]
    for step in range(30):
        assert dog.observe("loss", 0.5, step) is None
    assert dog.observe("loss", 1.5, 30) is None  # one noisy batch: smoothed 1.0, twice the best
    assert dog.observe("loss", 0.5, 31) is None
    report = dog.observe("loss", 9.5, 32)  # smoothed (0.75 + 9.5) / 2 = 5.125: drop 9.25 > 3
    assert report is not None and report.line() == \
        "[watchdog] COLLAPSE metric=loss value=5.125 best=0.5 drop=9.25 step=32"


def test_nothing_is_reported_during_warmup() -> None:
    dog = CollapseWatchdog([WatchConfig(metric="grad_norm", direction="min", threshold=10.0, warmup_steps=5)])
    dog.observe("grad_norm", 1.0, 0)
    assert dog.observe("grad_norm", 1000.0, 4) is None
    assert dog.observe("grad_norm", 1000.0, 5) is not None


def test_unwatched_and_non_finite_values_are_ignored_and_state_round_trips() -> None:
    watches = WatchdogConfig().watch  # loss and grad_norm by default
    dog = CollapseWatchdog(watches)
    assert dog.observe("accuracy", 0.0, 100) is None and dog.observe("loss", float("nan"), 100) is None
    for step in range(25):
        dog.observe("loss", 1.0 - step * 0.01, step)
    again = CollapseWatchdog(watches)
    again.load_state_dict(dog.state_dict())
    assert again.state_dict() == dog.state_dict()
    assert again.observe("loss", 100.0, 26) is not None and dog.observe("loss", 100.0, 26) is not None


def test_last_good_is_the_last_raw_value_within_bounds_and_survives_a_resume() -> None:
    # The EMA reports a spike some steps late; last_good says which steps were still measured healthy.
    dog = CollapseWatchdog([WatchConfig(metric="loss", direction="min", threshold=3.0, ema=0.9, warmup_steps=3)])
    for step in range(10):
        assert dog.observe("loss", 0.5, step) is None
    assert dog.observe("loss", 4.8, 10) is None  # raw 9.6x the best, smoothed 0.93 (1.9x): not reported yet
    again = CollapseWatchdog(dog.watches)
    again.load_state_dict(dog.state_dict())
    report = again.observe("loss", 17.8, 11)
    assert report is not None and report.step == 11 and report.last_good == 9
    assert report.line() == "[watchdog] COLLAPSE metric=loss value=2.617 best=0.5 drop=4.23 step=11"
    old = {m: {k: v for k, v in values.items() if k != "last_good"} for m, values in dog.state_dict().items()}
    legacy = CollapseWatchdog(dog.watches)
    legacy.load_state_dict(old)  # a checkpoint written before last_good existed
    assert legacy.observe("loss", 17.8, 11).last_good is None
