"""The provider boundary: search offers, create, show, list, stop, destroy — nothing else crosses it.

A Provider rents boxes; everything above it (lifecycle, the fleet, `agentops down`) cannot tell
vast.ai from any other market. Like a Transport it does I/O only and turns foreign exceptions
(HTTP errors, SDK errors) into ProviderError here, once, with every secret masked.
Waiting (until running, until SSH answers) is policy and lives in lifecycle.py.
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_ops.errors import AgentOpsError

# A box's state as the provider reports it, mapped onto one small vocabulary:
# provisioning (asked for, nothing yet), loading (image pulling, container starting), running,
# stopped (disk kept, no GPU billed), exited / offline / unknown (something went wrong), gone.
InstanceState = Literal["provisioning", "loading", "running", "stopped", "exited", "offline", "unknown", "gone"]
FAILED_STATES: tuple[InstanceState, ...] = ("exited", "offline", "gone")


class ProviderError(AgentOpsError):
    """A provider call failed (HTTP error, bad answer, timeout); the message never holds the API key."""

    code = "provider_error"


class ProviderAuthError(ProviderError):
    """The provider refused the API key (401/403): nothing else will work, so nothing is retried."""

    code = "provider_auth"


class OfferUnavailable(ProviderError):
    """The offer was taken or withdrawn between search and create: try the next one."""

    code = "offer_unavailable"


class ProviderMissing(ProviderError):
    """The provider's optional extra is not installed (e.g. `pip install 'agentops[vast]'`)."""

    code = "provider_missing"


class OfferRequest(BaseModel):
    """What a box must have, and what the work will cost besides the hourly price (for ranking)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_name: str | None = Field(None, description="GPU model as the provider names it; '_' stands for ' ' (RTX_PRO_6000)")
    gpus: int = Field(1, ge=1, description="GPUs per box")
    min_gpu_ram_gb: float | None = Field(None, gt=0, description="memory per GPU, GB")
    disk_gb: float = Field(50.0, gt=0, description="disk to allocate on the box, GB (also priced in)")
    min_cuda: float | None = Field(None, gt=0, description="highest CUDA version the driver supports must be at least this")
    min_driver: str | None = Field(None, description="NVIDIA driver version at least this (e.g. 550.54)")
    min_reliability: float | None = Field(0.95, ge=0, le=1, description="provider's reliability score, 0..1")
    max_dph: float | None = Field(None, gt=0, description="most $/h for one box, storage included")
    location: str | None = Field(None, description="text the offer's location must contain (a country code: US, DE)")
    min_inet_down_mbps: float | None = Field(None, ge=0, description="download bandwidth, Mbit/s")
    hours: float = Field(1.0, gt=0, description="expected hours of work, to rank by what the work costs")
    download_gb: float = Field(0.0, ge=0, description="data the box will download, GB (priced by the offer's $/GB)")
    limit: int = Field(20, ge=1, le=500, description="how many offers to return, cheapest first")

    @field_validator("gpu_name")
    @classmethod
    def _spaces(cls, name: str | None) -> str | None:
        return None if name is None else name.replace("_", " ").strip()


class Offer(BaseModel):
    """One box for rent, in the provider-neutral words the rest of agentops uses."""

    model_config = ConfigDict(frozen=True)

    provider: str
    id: str
    machine_id: str
    gpu_name: str
    gpus: int
    gpu_ram_gb: float
    disk_gb: float
    cuda: float | None = None
    driver: str | None = None
    reliability: float | None = None
    dph: float = Field(description="$/h for the box with the requested disk")
    storage_dph: float | None = Field(None, description="$/h of the requested disk alone: what the box costs once stopped")
    location: str | None = None
    inet_down_mbps: float | None = None
    inet_up_mbps: float | None = None
    download_usd_per_gb: float = 0.0

    def cost(self, request: OfferRequest) -> float:
        """What the requested work would cost on this box: hours at its $/h plus the downloads."""
        return self.dph * request.hours + self.download_usd_per_gb * request.download_gb


class SSHEndpoint(BaseModel):
    """Where the box's sshd answers: a direct port mapping when the box has one, else the provider's proxy."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    user: str
    kind: Literal["direct", "proxy"]


class Instance(BaseModel):
    """A rented box as the provider shows it now."""

    model_config = ConfigDict(frozen=True)

    provider: str
    id: str
    state: InstanceState
    status_message: str | None = None
    machine_id: str | None = None
    offer_id: str | None = None
    label: str | None = None
    gpu_name: str | None = None
    gpus: int | None = None
    dph: float | None = None
    ssh: SSHEndpoint | None = None


class CreateSpec(BaseModel):
    """What goes on a new box: image, disk, a label that names the run, our public key, an onstart script."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1)
    disk_gb: float = Field(gt=0)
    label: str = Field(min_length=1, description="names the run that rented it, so `down` finds it even without a journal")
    public_key: str = Field(min_length=1, description="an OpenSSH public key line, authorised on the box")
    onstart: str | None = None


@runtime_checkable
class Provider(Protocol):
    """search / create / show / instances / stop / destroy / close — a market of boxes."""

    #: short name stored in the journal ("vast").
    name: str

    def search(self, request: OfferRequest) -> list[Offer]:
        """Offers matching the request (the provider's own filters; the caller ranks and re-checks)."""
        ...

    def create(self, offer: Offer, spec: CreateSpec) -> str:
        """Rent the offer; the new instance's id. Raises OfferUnavailable if it is gone."""
        ...

    def show(self, instance_id: str) -> Instance:
        """The instance now (state "gone" once it no longer exists)."""
        ...

    def instances(self, label: str | None = None) -> list[Instance]:
        """Every instance of this account, or those with this label."""
        ...

    def stop(self, instance_id: str) -> None:
        """Stop the box: its disk is kept (and billed), its GPUs are not."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Destroy the box and its disk; an instance already gone is not an error."""
        ...

    def close(self) -> None:
        """Release connections; safe to call twice."""
        ...
