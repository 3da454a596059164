"""What rented boxes cost, from the journal alone: running at the offer's rate, stopped at its disk's, destroyed at 0.

A real journal (SQLite); the rentals' times are set where a test needs them (a box stopped an hour after it was created).
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent_ops.front.provider_ops import rentals
from agent_ops.record.bill import bill_of
from agent_ops.record.journal import Journal

T0 = 1_800_000_000.0
HOUR = 3600.0


@pytest.fixture
def journal(tmp_path: Path):
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def _box(journal: Journal, iid: str, *, storage_dph: float | None, created: float = T0, **times: float | str) -> None:
    journal.add_rental("run-b", "vast", iid, offer_id="1", machine_id="11", dph=0.5, storage_dph=storage_dph)
    journal.set_rental("vast", iid, created=created, **times)


def test_a_stopped_box_costs_its_disk_from_the_moment_it_stopped(journal: Journal) -> None:
    _box(journal, "1", storage_dph=0.02, state="stopped", stopped=T0 + HOUR)

    bill = bill_of(journal.rentals("run-b"), budget_usd=2.0, hours=3.0, now=T0 + 2 * HOUR)

    [node] = bill.nodes
    assert (node.dph, node.storage_dph, node.dph_now, node.hours) == (0.5, 0.02, 0.02, 2.0)
    assert node.spent_usd == pytest.approx(0.5 + 0.02)  # an hour running, an hour stopped
    assert node.projected_usd == pytest.approx(0.52 + 0.02)  # the third expected hour, stopped
    assert bill.dph_now == 0.02 and bill.budget_left_usd == pytest.approx(2.0 - 0.52)
    assert bill.budget_reached_in_s == pytest.approx((2.0 - 0.52) / 0.02 * HOUR, rel=1e-3)


def test_a_box_stopped_then_destroyed_costs_nothing_more(journal: Journal) -> None:
    _box(journal, "1", storage_dph=0.02, state="destroyed", stopped=T0 + HOUR, ended=T0 + 3 * HOUR)

    [node] = bill_of(journal.rentals("run-b"), None, 1.0, now=T0 + 10 * HOUR).nodes

    assert node.dph_now == 0.0 and node.hours == 3.0
    assert node.spent_usd == pytest.approx(0.5 + 2 * 0.02) == node.projected_usd


def test_without_the_disks_price_a_stopped_box_counts_at_its_full_rate(journal: Journal) -> None:
    _box(journal, "1", storage_dph=None, state="stopped", stopped=T0 + HOUR)

    [node] = bill_of(journal.rentals("run-b"), None, None, now=T0 + 2 * HOUR).nodes

    assert node.dph_now == 0.5 and node.spent_usd == pytest.approx(1.0)  # an upper bound, as documented


def test_a_running_box_and_the_rentals_listing_agree_with_the_bill(journal: Journal) -> None:
    start = time.time() - 2 * HOUR
    _box(journal, "1", storage_dph=0.02, state="ready", created=start)
    _box(journal, "2", storage_dph=0.02, state="stopped", created=start, stopped=start)

    listed = rentals(journal, "run-b")  # `agentops rentals RUN`: hours and spend as the bill counts them, at now
    bill = bill_of(journal.rentals("run-b"), None, None)

    assert listed.dph_live == bill.dph_now == 0.52 and listed.live == 2
    assert [v.spent_usd for v in listed.rentals] == pytest.approx([n.spent_usd for n in bill.nodes], abs=1e-3)
    assert listed.rentals[1].spent_usd < listed.rentals[0].spent_usd  # stopped from the start: its disk only


def test_a_journal_from_before_stopped_boxes_were_priced_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    with sqlite3.connect(path) as db:  # as an older version left it: no storage_dph / stopped, an older schema id
        db.execute("ALTER TABLE rentals DROP COLUMN storage_dph")
        db.execute("ALTER TABLE rentals DROP COLUMN stopped")
        db.execute("INSERT INTO rentals (run_id, provider, instance_id, state, dph, created) "
                   "VALUES ('old', 'vast', '7', 'ready', 0.4, ?)", (T0,))
        db.execute("PRAGMA user_version = 1")
    journal = Journal(path)
    try:
        [row] = journal.rentals("old")
        assert (row.dph, row.storage_dph, row.stopped) == (0.4, None, None)
        journal.set_rental("vast", "7", state="stopped", stopped=T0 + HOUR)
        assert journal.rentals("old")[0].stopped == T0 + HOUR
    finally:
        journal.close()
