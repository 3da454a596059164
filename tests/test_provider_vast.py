"""The vast.ai provider end to end: the real `vastai` SDK against a loopback stand-in whose boxes are real sshd servers.

Every test ends with the stand-in holding no instance (the fixture checks), and the API key is
looked for in every file, log line and request the test can reach.
"""
from __future__ import annotations

import getpass
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vastai")

from agent_ops.provider.base import OfferRequest
from agent_ops.provider.lifecycle import (
    FleetRequest,
    RentError,
    destroy_all,
    find_offers,
    rank,
    rent,
    run_label,
)
from agent_ops.provider.qualify import QualifySpec
from agent_ops.provider.reputation import Reputation
from agent_ops.provider.vast import VastProvider
from agent_ops.record.journal import Journal
from agent_ops.transport.ssh import SSHTransport
from tests.sshd import sshd_available
from tests.standins.vast_api import BoxPlan, VastStandIn

pytestmark = [pytest.mark.ssh, pytest.mark.skipif(not sshd_available(), reason="OpenSSH server not installed")]

# Qualification without the burn-in (no GPU here; the burn-in has tests of its own) and with small, real checks.
FAST_QUALIFY = QualifySpec(burn_in_s=0, min_disk_free_gb=0.001, min_download_mbps=0.001)
DEADLINE_S = 30.0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "agentops-home"
    monkeypatch.setenv("AGENTOPS_HOME", str(path))
    return path


@pytest.fixture
def journal(home: Path) -> Iterator[Journal]:
    j = Journal(home / "journal.db")
    yield j
    j.close()


@pytest.fixture
def provider(standin: VastStandIn, api_key: str) -> VastProvider:
    return VastProvider(api_key, standin.url, ssh_user=getpass.getuser())


@pytest.fixture
def reputation(home: Path) -> Reputation:
    return Reputation.under(home)


def _fleet(identity: str, standin: VastStandIn, nodes: int = 1, **overrides) -> FleetRequest:
    qualify = FAST_QUALIFY.model_copy(update={"download_url": f"{standin.url}/standin/blob?bytes=2000000"})
    fields = {"offer": OfferRequest(gpu_name="RTX_4090", disk_gb=20), "nodes": nodes, "identity": identity,
              "provision_deadline_s": DEADLINE_S, "qualify": qualify, **overrides}
    return FleetRequest(**fields)


def _assert_key_nowhere(api_key: str, standin: VastStandIn, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only the Authorization header ever carried the key: not a URL, body, file, log line or argv."""
    assert standin.requests(), "the stand-in saw no requests"
    places = {"access.log (paths and bodies)": standin.access_log.read_bytes(), "log records": caplog.text.encode()}
    for root in (home, standin.root):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                places[str(path)] = path.read_bytes()
    places["this process's argv"] = Path("/proc/self/cmdline").read_bytes()
    leaked = [where for where, data in places.items() if api_key.encode() in data]
    assert leaked == []


# --- offers ------------------------------------------------------------------------------------


def test_offers_are_filtered_and_ranked_by_what_the_work_costs(standin: VastStandIn, provider: VastProvider,
                                                                reputation: Reputation) -> None:
    # Cheapest per hour, but downloads cost: for 100 GB it loses to a dearer box with free downloads.
    standin.add_offer(1, machine_id=11, dph_total=0.30, inet_down_cost=0.02)
    standin.add_offer(2, machine_id=12, dph_total=0.45, inet_down_cost=0.0)
    standin.add_offer(3, machine_id=13, dph_total=0.60, inet_down_cost=0.0, reliability2=0.999)
    standin.add_offer(4, machine_id=14, dph_total=9.00)  # over max_dph
    standin.add_offer(5, machine_id=15, num_gpus=2)  # not the GPU count asked for
    standin.add_offer(6, machine_id=16, reliability=0.5, reliability2=0.5)  # unreliable
    standin.add_offer(7, machine_id=17, geolocation="Bavaria, DE")  # elsewhere
    request = OfferRequest(gpu_name="RTX_4090", gpus=1, max_dph=3, location="US", hours=2, download_gb=100)

    found = find_offers(provider, request, reputation)

    offers = {o.id: o for o in found.offers}
    assert set(offers) == {"1", "2", "3"}
    by_cost = sorted(offers.values(), key=lambda o: o.dph * 2 + o.download_usd_per_gb * 100)
    assert [o.id for o in found.offers] == [o.id for o in by_cost]
    assert found.offers[0].id == "2"  # the per-hour cheapest is not the cheapest for this work
    assert found.costs == [round(o.cost(request), 4) for o in found.offers]
    search = [r for r in standin.requests() if r["path"] == "/api/v0/bundles/"]
    assert search and search[-1]["body"]["num_gpus"] == {"eq": 1} and search[-1]["body"]["gpu_name"] == {"eq": "RTX 4090"}

    reputation.mark_bad("vast", "12", "burn-in too slow")
    again = find_offers(provider, request, reputation)
    assert [o.id for o in again.offers] == [o.id for o in by_cost if o.id != "2"] and again.skipped_bad_machines == 1


def test_rank_breaks_price_ties_by_reliability(standin: VastStandIn, provider: VastProvider) -> None:
    standin.add_offer(1, machine_id=11, reliability2=0.97)
    standin.add_offer(2, machine_id=12, reliability2=0.999)
    request = OfferRequest()
    assert [o.id for o in rank(provider.search(request), request)] == ["2", "1"]


# --- renting -----------------------------------------------------------------------------------


def test_rent_two_boxes_both_answer_ssh_and_their_host_keys_are_recorded(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str,
        home: Path, api_key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    standin.add_offer(1, machine_id=11, plan=BoxPlan(direct=True, loading_s=1.0))
    standin.add_offer(2, machine_id=12, plan=BoxPlan(provisioning_s=0.5, loading_s=0.3), dph_total=0.5)

    boxes = rent(provider, _fleet(identity, standin, nodes=2), journal, "run-a", reputation)

    assert sorted(b.offer.id for b in boxes) == ["1", "2"]
    assert {b.offer.id: b.endpoint.kind for b in boxes} == {"1": "direct", "2": "proxy"}
    rows = {r.instance_id: r for r in journal.rentals("run-a")}
    for box in boxes:
        stand = standin.boxes[int(box.instance_id)]
        assert box.host_key == rows[box.instance_id].host_key == stand.sshd.host_public_key()
        assert rows[box.instance_id].state == "ready" and rows[box.instance_id].target["url"] == box.target.url
        assert stand.body["label"] == run_label("run-a")
        assert {c.name for c in box.report.checks} == {"gpus", "driver", "disk", "download"} and box.report.ok
        # The recorded key is now the only one trusted: a fresh connection checks against it, no TOFU.
        assert not box.target.accept_new_host_key
        transport = SSHTransport(box.target.ssh_config())
        try:
            assert transport.exec("cat ~/.agentops/onstart.done").text().strip() == "0"
        finally:
            transport.close()

    result = destroy_all(provider, journal, "run-a")
    assert sorted(result.done) == sorted(b.instance_id for b in boxes) and result.failed == []
    assert standin.live() == []
    assert {r.state for r in journal.rentals("run-a")} == {"destroyed"}
    _assert_key_nowhere(api_key, standin, home, caplog)


def test_offer_gone_at_create_the_next_offer_is_rented(standin: VastStandIn, provider: VastProvider, journal: Journal,
                                                        reputation: Reputation, identity: str) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.2)
    standin.add_offer(2, machine_id=12, dph_total=0.3)
    standin.gone_at_create.add(1)

    [box] = rent(provider, _fleet(identity, standin), journal, "run-b", reputation)

    assert box.offer.id == "2"
    assert [e.kind for e in journal.events("run-b")] == ["offer_gone"]
    assert not reputation.is_bad("vast", "11")  # a taken offer says nothing about its machine
    destroy_all(provider, journal, "run-b")


def test_box_stuck_loading_past_its_deadline_is_destroyed_and_the_next_offer_used(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.2, plan=BoxPlan(stuck_loading=True))
    standin.add_offer(2, machine_id=12, dph_total=0.3)

    [box] = rent(provider, _fleet(identity, standin, provision_deadline_s=4.0), journal, "run-c", reputation)

    assert box.offer.id == "2"
    stuck = [r for r in journal.rentals("run-c") if r.offer_id == "1"]
    assert len(stuck) == 1 and stuck[0].state == "destroyed" and "deadline" in (stuck[0].message or "")
    assert int(stuck[0].instance_id) in standin.destroyed
    destroy_all(provider, journal, "run-c")


def test_wrong_gpu_count_fails_qualification_and_the_machine_is_remembered(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.2, num_gpus=2, plan=BoxPlan(gpus=1))
    standin.add_offer(2, machine_id=12, dph_total=0.3, num_gpus=2)
    fleet = _fleet(identity, standin).model_copy(update={"offer": OfferRequest(gpus=2, disk_gb=20)})

    [box] = rent(provider, fleet, journal, "run-d", reputation)

    assert box.offer.id == "2"
    bad = reputation.bad_machines("vast")
    assert list(bad) == ["11"] and "1 GPUs, ordered 2" in bad["11"]["reason"]
    failed = [r for r in journal.rentals("run-d") if r.machine_id == "11"]
    assert failed[0].state == "destroyed" and "qualification failed" in (failed[0].message or "")
    destroy_all(provider, journal, "run-d")

    # Next time the bad machine's offers are skipped before anything is created on it.
    standin.add_offer(3, machine_id=11, dph_total=0.1, num_gpus=2)
    standin.add_offer(4, machine_id=14, dph_total=0.4, num_gpus=2)
    [again] = rent(provider, fleet, journal, "run-e", reputation)
    assert again.offer.id == "4"
    assert [r.offer_id for r in journal.rentals("run-e")] == ["4"]
    destroy_all(provider, journal, "run-e")


def test_when_offers_run_out_the_rental_fails_and_nothing_is_left_running(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str) -> None:
    standin.add_offer(1, machine_id=11, dph_total=0.2)  # fine: rented, then given back when its partner fails
    standin.add_offer(2, machine_id=12, dph_total=0.3, plan=BoxPlan(stuck_loading=True))

    with pytest.raises(RentError, match="2 boxes"):
        rent(provider, _fleet(identity, standin, nodes=2, provision_deadline_s=4.0), journal, "run-f", reputation)

    assert standin.live() == []
    assert {r.state for r in journal.rentals("run-f")} == {"destroyed"}


def test_a_box_that_dies_shows_offline_and_down_still_destroys_it(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str) -> None:
    standin.add_offer(1, machine_id=11)
    [box] = rent(provider, _fleet(identity, standin), journal, "run-g", reputation)

    standin.kill(int(box.instance_id))

    assert provider.show(box.instance_id).state == "offline"
    assert destroy_all(provider, journal, "run-g").done == [box.instance_id]
    assert provider.show(box.instance_id).state == "gone"


def test_down_finds_a_box_the_journal_never_heard_of_by_its_label(
        standin: VastStandIn, provider: VastProvider, journal: Journal, identity: str) -> None:
    """A controller killed between create and the journal write: the label still names the run."""
    from agent_ops.provider.base import CreateSpec

    standin.add_offer(1, machine_id=11)
    [offer] = provider.search(OfferRequest())
    spec = CreateSpec(image="img", disk_gb=10, label=run_label("run-h"), public_key=Path(identity + ".pub").read_text())
    orphan = provider.create(offer, spec)
    assert journal.rentals("run-h") == []

    result = destroy_all(provider, journal, "run-h")

    assert result.done == [orphan] and standin.live() == []
    assert [(r.instance_id, r.state) for r in journal.rentals("run-h")] == [(orphan, "destroyed")]


def test_a_wrong_api_key_is_a_clear_error_that_does_not_show_the_key(standin: VastStandIn) -> None:
    from agent_ops.provider.base import ProviderAuthError

    wrong = f"wrong-key-{uuid.uuid4().hex}"
    with pytest.raises(ProviderAuthError, match="refused the API key") as info:
        VastProvider(wrong, standin.url).search(OfferRequest())
    assert wrong not in str(info.value)


def test_an_interrupted_rental_destroys_what_it_created(standin: VastStandIn, provider: VastProvider, journal: Journal,
                                                        reputation: Reputation, identity: str) -> None:
    """Ctrl-C while a box is still loading: the rental stops waiting and gives the box back before it returns."""
    import _thread
    import threading

    standin.add_offer(1, machine_id=11, plan=BoxPlan(stuck_loading=True))
    created = threading.Event()

    def interrupt_once_created() -> None:
        while not standin.live():
            if created.wait(0.05):
                return
        _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_once_created, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            rent(provider, _fleet(identity, standin), journal, "run-i", reputation)
    finally:
        created.set()
        watcher.join()
    assert standin.live() == []
    assert [r.state for r in journal.rentals("run-i")] == ["destroyed"]


def test_teardown_stop_keeps_the_disk_and_down_still_finds_the_stopped_box(
        standin: VastStandIn, provider: VastProvider, journal: Journal, reputation: Reputation, identity: str) -> None:
    from agent_ops.provider.lifecycle import teardown
    from agent_ops.record.bill import run_bill

    standin.add_offer(1, machine_id=11)
    [box] = rent(provider, _fleet(identity, standin), journal, "run-j", reputation)

    stopped = teardown(provider, journal, "run-j", "stop")

    assert stopped.done == [box.instance_id] and provider.show(box.instance_id).state == "stopped"
    [row] = journal.rentals("run-j")
    assert row.state == "stopped" and row.stopped is not None and row.storage_dph == 0.02  # the offer's storage_total_cost
    assert run_bill(journal, "run-j").dph_now == 0.02  # a stopped box bills its disk, not its GPU
    assert teardown(provider, journal, "run-j", "keep").done == []
    assert destroy_all(provider, journal, "run-j").done == [box.instance_id] and standin.live() == []
