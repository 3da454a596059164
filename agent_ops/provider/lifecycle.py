"""Rent N boxes, wait until each runs and answers SSH, qualify it, and give every box back: nothing left running.

The invariant: a box exists at the provider only while the journal has a live row for it.
`rent` records each instance the moment `create` returns (before any waiting), and every way
out of `rent` that does not hand a box to the caller destroys it. Each box has a provisioning
deadline; one that misses it, dies, or fails qualification is destroyed and the next offer is
tried, up to `max_boxes` created in all. `destroy_all` finds a run's boxes from the journal and,
for the moment between create and record, by the label the run put on them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_ops.errors import HostKeyError, TransportError
from agent_ops.provider.base import (
    FAILED_STATES,
    CreateSpec,
    Instance,
    Offer,
    OfferRequest,
    OfferUnavailable,
    Provider,
    ProviderAuthError,
    ProviderError,
    SSHEndpoint,
)
from agent_ops.provider.qualify import QualifyReport, QualifySpec, qualify, version_tuple
from agent_ops.provider.reputation import Reputation
from agent_ops.record.journal import LIVE_RENTAL_STATES, Journal
from agent_ops.transport.ssh import SSHConfig, SSHTransport
from agent_ops.transport.target import TargetSpec

log = logging.getLogger(__name__)

# Polling the provider and the box: fast at first (a box can be up in seconds), then at most every POLL_CAP_S.
POLL_FIRST_S = 0.25
POLL_FACTOR = 1.5
POLL_CAP_S = 10.0
ONSTART_DONE = "~/.agentops/onstart.done"
# What every box runs first: tmux for the jobs, then the user's own onstart; the marker holds its exit code.
ONSTART_PRELUDE = """mkdir -p ~/.agentops
{ command -v tmux >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; }; } \\
  >> ~/.agentops/onstart.log 2>&1
"""
TeardownPolicy = Literal["keep", "stop", "destroy"]


class RentError(ProviderError):
    """Not every box of the request could be rented; every box that was created has been destroyed."""

    code = "rent_failed"


class FleetRequest(BaseModel):
    """N boxes of one kind, with our key, image and onstart, each ready and qualified within its deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer: OfferRequest = Field(default_factory=OfferRequest)
    nodes: int = Field(1, ge=1)
    image: str = Field("vastai/base-image:@vastai-automatic-tag", min_length=1)
    identity: str = Field(description="private key file; IDENTITY.pub is authorised on every box")
    onstart: str | None = Field(None, description="bash run on each box at start, after agentops' own preparation")
    provision_deadline_s: float = Field(900.0, gt=0, description="from create to a qualified box, per box")
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_timeout_s: float = Field(120.0, ge=0, description="how long a run keeps re-trying a lost box's SSH "
                                       "before it counts the box as lost")
    max_boxes: int | None = Field(None, ge=1, description="boxes created in all, failures included (default 3 per node)")
    qualify: QualifySpec = Field(default_factory=QualifySpec)

    def box_budget(self) -> int:
        return self.max_boxes or 3 * self.nodes


class RentedBox(BaseModel):
    """A box ready for work: how to reach it, what it costs, what qualification saw."""

    provider: str
    instance_id: str
    offer: Offer
    endpoint: SSHEndpoint
    target: TargetSpec
    host_key: str
    report: QualifyReport


class TeardownResult(BaseModel):
    """What `down` did: boxes destroyed (or stopped, or kept) and those it could not give back."""

    run_id: str
    policy: TeardownPolicy
    done: list[str] = []
    failed: list[str] = []


def run_label(run_id: str) -> str:
    """The label every box of a run carries at the provider."""
    return f"agentops-{run_id}"


# --- offers --------------------------------------------------------------------------------------


def matches(offer: Offer, request: OfferRequest) -> bool:
    """Whether an offer meets the request (checked here too: a provider's filter is not our contract)."""
    checks = (
        offer.gpus == request.gpus,
        request.gpu_name is None or offer.gpu_name.lower() == request.gpu_name.lower(),
        request.min_gpu_ram_gb is None or offer.gpu_ram_gb >= request.min_gpu_ram_gb,
        offer.disk_gb >= request.disk_gb,
        request.min_cuda is None or (offer.cuda or 0) >= request.min_cuda,
        request.min_driver is None or version_tuple(offer.driver or "0") >= version_tuple(request.min_driver),
        request.min_reliability is None or (offer.reliability or 0) >= request.min_reliability,
        request.max_dph is None or offer.dph <= request.max_dph,
        request.location is None or request.location.lower() in (offer.location or "").lower(),
        request.min_inet_down_mbps is None or (offer.inet_down_mbps or 0) >= request.min_inet_down_mbps,
    )
    return all(checks)


def rank(offers: list[Offer], request: OfferRequest) -> list[Offer]:
    """Matching offers, cheapest for the requested work first; more reliable, then faster download, on ties."""
    fit = [o for o in offers if matches(o, request)]
    return sorted(fit, key=lambda o: (o.cost(request), -(o.reliability or 0), -(o.inet_down_mbps or 0), o.id))


class OfferList(BaseModel):
    """Offers for a request, ranked, and how many were left out because their machine failed us before."""

    request: OfferRequest
    offers: list[Offer]
    costs: list[float] = Field(description="what the requested work costs on each offer, $")
    skipped_bad_machines: int = 0


def find_offers(provider: Provider, request: OfferRequest, reputation: Reputation) -> OfferList:
    """Search, re-check, drop machines remembered as bad, rank by cost of the work."""
    ranked = rank(provider.search(request), request)
    good = [o for o in ranked if not reputation.is_bad(provider.name, o.machine_id)]
    shown = good[: request.limit]
    return OfferList(request=request, offers=shown, costs=[round(o.cost(request), 4) for o in shown],
                     skipped_bad_machines=len(ranked) - len(good))


# --- renting -------------------------------------------------------------------------------------


def rent(provider: Provider, request: FleetRequest, journal: Journal, run_id: str, reputation: Reputation) -> list[RentedBox]:
    """`request.nodes` qualified boxes, or RentError with every created box destroyed."""
    offers = find_offers(provider, request.offer.model_copy(update={"limit": 500}), reputation).offers
    renter = _Renter(provider, request, journal, run_id, reputation, deque(offers))
    return renter.run()


class _BoxFailed(Exception):
    """This box will not do (deadline, died, qualification): destroy it and try the next offer."""

    def __init__(self, reason: str, machine_bad: bool = False) -> None:
        super().__init__(reason)
        self.machine_bad = machine_bad


class _Cancelled(Exception):
    """Another slot failed for good, or the caller was interrupted: stop waiting."""


class _Renter:
    """One rental of N boxes: a thread per node slot, drawing from one queue of ranked offers."""

    def __init__(self, provider: Provider, request: FleetRequest, journal: Journal, run_id: str,
                 reputation: Reputation, offers: deque[Offer]) -> None:
        self.provider, self.request, self.journal, self.run_id = provider, request, journal, run_id
        self.reputation = reputation
        self.offers = offers
        self.budget = request.box_budget()
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.results: list[RentedBox | BaseException | None] = [None] * request.nodes
        self.keys_dir = journal.path.parent / "rentals" / run_id
        self.public_key = Path(request.identity + ".pub").read_text().strip()

    def run(self) -> list[RentedBox]:
        threads = [threading.Thread(target=self._slot, args=(i,), name=f"rent-{i}", daemon=True) for i in range(self.request.nodes)]
        handed_over = False
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins: a KeyboardInterrupt reaches this thread at once
            boxes = [r for r in self.results if isinstance(r, RentedBox)]
            if len(boxes) == self.request.nodes:
                handed_over = True
                return boxes
            raise RentError(self._why())
        finally:
            if not handed_over:
                self.cancel.set()
                for t in threads:
                    t.join()  # each call they make is bounded; no box may be created after the sweep below
                destroy_all(self.provider, self.journal, self.run_id)

    def _why(self) -> str:
        errors = [r for r in self.results if isinstance(r, BaseException)]
        if errors:
            return f"renting {self.request.nodes} boxes failed: {errors[0]}"
        return (f"only {sum(isinstance(r, RentedBox) for r in self.results)} of {self.request.nodes} boxes became ready "
                f"(offers or the budget of {self.request.box_budget()} boxes ran out); every box was destroyed")

    def _slot(self, index: int) -> None:
        try:
            while (offer := self._next_offer()) is not None:
                try:
                    self.results[index] = self._provision(offer)
                    return
                except OfferUnavailable as exc:
                    self.journal.event(self.run_id, None, "offer_gone", f"offer {offer.id} is gone: {exc}")
                except _BoxFailed:
                    continue
        except _Cancelled:
            return
        except BaseException as exc:  # auth refused, the API down: no other offer helps
            self.results[index] = exc
        self.cancel.set()

    def _next_offer(self) -> Offer | None:
        with self.lock:
            if self.cancel.is_set() or self.budget <= 0 or not self.offers:
                return None
            self.budget -= 1
            return self.offers.popleft()

    def _provision(self, offer: Offer) -> RentedBox:
        spec = CreateSpec(image=self.request.image, disk_gb=self.request.offer.disk_gb, label=run_label(self.run_id),
                          public_key=self.public_key, onstart=onstart_script(self.request.onstart))
        instance_id = self.provider.create(offer, spec)
        self.journal.add_rental(self.run_id, self.provider.name, instance_id, offer_id=offer.id, machine_id=offer.machine_id,
                                dph=offer.dph, storage_dph=offer.storage_dph)
        try:
            return self._make_ready(offer, instance_id, time.monotonic() + self.request.provision_deadline_s)
        except _BoxFailed as exc:
            self._give_up(offer, instance_id, str(exc), exc.machine_bad)
            raise
        except ProviderAuthError:
            raise
        except (ProviderError, TransportError) as exc:
            self._give_up(offer, instance_id, str(exc), machine_bad=False)
            raise _BoxFailed(str(exc)) from None

    def _make_ready(self, offer: Offer, instance_id: str, deadline: float) -> RentedBox:
        instance = self._wait_running(instance_id, deadline)
        assert instance.ssh is not None
        known_hosts = self.keys_dir / f"{self.provider.name}-{instance_id}.known_hosts"
        transport = self._connect(instance.ssh, known_hosts, deadline)
        try:
            host_key = recorded_host_key(known_hosts)
            self.journal.set_rental(self.provider.name, instance_id, host_key=host_key)
            self._wait_onstart(transport, deadline)
            report = qualify(transport, offer, self.request.qualify)
        finally:
            transport.close()
        if not report.ok:
            raise _BoxFailed(f"qualification failed: {report.failures()}", machine_bad=True)
        target = TargetSpec(url=SSHConfig(host=instance.ssh.host, port=instance.ssh.port, user=instance.ssh.user).url,
                            identity=self.request.identity, known_hosts=str(known_hosts),
                            reconnect_timeout=self.request.reconnect_timeout_s)
        self.journal.set_rental(self.provider.name, instance_id, state="ready", target=target.model_dump(), ready=time.time(),
                                message=f"ready: {', '.join(c.detail for c in report.checks)}")
        return RentedBox(provider=self.provider.name, instance_id=instance_id, offer=offer, endpoint=instance.ssh,
                         target=target, host_key=host_key, report=report)

    def _wait_running(self, instance_id: str, deadline: float) -> Instance:
        """Poll the provider until the box runs and shows an SSH endpoint; a dead box or the deadline ends it."""
        instance = None
        for _ in self._ticks(deadline):
            instance = self.provider.show(instance_id)
            if instance.state in FAILED_STATES:
                raise _BoxFailed(f"box {instance_id} is {instance.state}: {instance.status_message or ''}".strip())
            if instance.state == "running" and instance.ssh is not None:
                return instance
        state = instance.state if instance else "unknown"
        raise _BoxFailed(f"box {instance_id} still {state} after {self.request.provision_deadline_s:g}s (provisioning deadline)")

    def _connect(self, endpoint: SSHEndpoint, known_hosts: Path, deadline: float) -> SSHTransport:
        """SSH to the new box, recording its host key on first contact (we created it); retried until the deadline."""
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for _ in self._ticks(deadline):
            config = SSHConfig(host=endpoint.host, port=endpoint.port, user=endpoint.user, identity=self.request.identity,
                               known_hosts=str(known_hosts), accept_new_host_key=True, reconnect_timeout=0.0,
                               connect_timeout=max(1.0, min(self.request.connect_timeout_s, deadline - time.monotonic())))
            try:
                return SSHTransport(config)
            except HostKeyError as exc:
                raise _BoxFailed(f"{config.url}: {exc}") from None  # a key that changed under us: not our box
            except TransportError as exc:
                last = exc  # sshd not up yet, or our key not yet authorised
        raise _BoxFailed(f"SSH to {endpoint.host}:{endpoint.port} did not answer before the deadline: {last}")

    def _wait_onstart(self, transport: SSHTransport, deadline: float) -> None:
        for _ in self._ticks(deadline):
            if transport.stat(ONSTART_DONE) is not None:
                rc = transport.get(ONSTART_DONE).decode().strip()
                if rc != "0":
                    raise _BoxFailed(f"onstart exited with {rc or '?'} (see ~/.agentops/onstart.log on the box)")
                return
        raise _BoxFailed("onstart did not finish before the provisioning deadline")

    def _ticks(self, deadline: float):
        """Yield until the deadline, sleeping with backoff between; raise _Cancelled when the rental is called off."""
        interval = POLL_FIRST_S
        while time.monotonic() < deadline:
            if self.cancel.is_set():
                raise _Cancelled()
            yield
            if self.cancel.wait(min(interval, max(0.0, deadline - time.monotonic()))):
                raise _Cancelled()
            interval = min(interval * POLL_FACTOR, POLL_CAP_S)

    def _give_up(self, offer: Offer, instance_id: str, reason: str, machine_bad: bool) -> None:
        log.warning("%s box %s (offer %s, machine %s): %s; destroying it", self.provider.name, instance_id, offer.id,
                    offer.machine_id, reason)
        if machine_bad:
            self.reputation.mark_bad(self.provider.name, offer.machine_id, reason)
        self.journal.set_rental(self.provider.name, instance_id, state="failed", message=reason)
        try:
            _destroy_one(self.provider, self.journal, instance_id)
        except ProviderError as exc:  # the sweep at the end of the rental tries again
            log.warning("%s box %s: destroy failed: %s", self.provider.name, instance_id, exc)


def onstart_script(user_onstart: str | None) -> str:
    """agentops' preparation, then the user's onstart in a subshell; its exit code lands in the marker file."""
    user = user_onstart or "true"
    return f"{ONSTART_PRELUDE}( {user}\n) >> ~/.agentops/onstart.log 2>&1\necho $? > {ONSTART_DONE}\n"


def recorded_host_key(known_hosts: Path) -> str:
    """The `type base64` of the one key the box's own known_hosts file holds (written on first contact)."""
    for line in known_hosts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            return f"{parts[1]} {parts[2]}"
    raise _BoxFailed(f"no host key was recorded in {known_hosts}")


# --- giving back ---------------------------------------------------------------------------------


def destroy_all(provider: Provider, journal: Journal, run_id: str) -> TeardownResult:
    """Destroy every box the run rented: those the journal knows, then any the provider shows with the run's label."""
    result = TeardownResult(run_id=run_id, policy="destroy")
    for row in journal.rentals(run_id):
        if row.provider == provider.name and row.state in LIVE_RENTAL_STATES:
            _record(result, row.instance_id, lambda iid=row.instance_id: _destroy_one(provider, journal, iid))
    try:
        strays = [i for i in provider.instances(label=run_label(run_id)) if i.state != "gone"]
    except ProviderError as exc:
        result.failed.append(f"listing instances labelled {run_label(run_id)}: {exc}")
        return result
    for inst in strays:
        if inst.id not in result.done:
            journal.add_rental(run_id, provider.name, inst.id, offer_id=inst.offer_id, machine_id=inst.machine_id, dph=inst.dph)
            _record(result, inst.id, lambda iid=inst.id: _destroy_one(provider, journal, iid))
    return result


def teardown(provider: Provider, journal: Journal, run_id: str, policy: TeardownPolicy) -> TeardownResult:
    """Give a run's boxes back by policy: keep them, stop them (disk kept), or destroy them."""
    if policy == "destroy":
        return destroy_all(provider, journal, run_id)
    result = TeardownResult(run_id=run_id, policy=policy)
    if policy == "stop":
        for row in journal.rentals(run_id):
            if row.provider == provider.name and row.state in ("created", "ready"):
                _record(result, row.instance_id, lambda iid=row.instance_id: _stop_one(provider, journal, iid))
    return result


def _destroy_one(provider: Provider, journal: Journal, instance_id: str) -> None:
    provider.destroy(instance_id)
    journal.set_rental(provider.name, instance_id, state="destroyed", ended=time.time())


def _stop_one(provider: Provider, journal: Journal, instance_id: str) -> None:
    provider.stop(instance_id)
    journal.set_rental(provider.name, instance_id, state="stopped", stopped=time.time())


def _record(result: TeardownResult, instance_id: str, action: Callable[[], None]) -> None:
    try:
        action()
        result.done.append(instance_id)
    except ProviderError as exc:
        result.failed.append(f"{instance_id}: {exc}")
