"""vast.ai through its official SDK (`from vastai import VastAI`), in the optional extra `agentops[vast]`.

What the SDK (1.9.1) sends, read from its source: the key goes only in an `Authorization: Bearer`
header (never in a URL); search is POST /api/v0/bundles/ with a JSON filter, create is PUT
/api/v0/asks/{offer}/, the key is attached with POST /api/v0/instances/{id}/ssh/, show is GET
/api/v0/instances/{id}/?owner=me, list is GET /api/v1/instances/ (paged), stop is PUT
/api/v0/instances/{id}/ {"state": "stopped"}, destroy is DELETE /api/v0/instances/{id}/.
It does not log requests (unless `explain`/`curl`, which we never set); errors from `requests`
name the URL only. Still, every message that leaves this module passes the key's Masker.

The SDK is imported when a VastProvider is made, so the controller runs without the extra.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from agent_ops.provider.base import (
    CreateSpec,
    Instance,
    InstanceState,
    Offer,
    OfferRequest,
    OfferUnavailable,
    ProviderAuthError,
    ProviderError,
    ProviderMissing,
    SSHEndpoint,
)
from agent_ops.secret_values import Masker

T = TypeVar("T")
NAME = "vast"
API_KEY_ENV = "VAST_API_KEY"
# The SDK's own variable for another API server (read when the SDK is imported); tests point it at a stand-in.
URL_ENV = "VAST_URL"
SSH_USER_ENV = "VAST_SSH_USER"
# One HTTP request gives up after this long; the SDK retries transient failures (its default: 3 tries).
REQUEST_TIMEOUT_S = 30.0
# Offers asked of the server per search: our own filters (location, driver) run after, so ask for more than shown.
SEARCH_FETCH = 200
# vast.ai's gpu_ram is in MB; the SDK's query parser multiplies GB by 1000 the same way.
MB_PER_GB = 1000.0
# A create refused with these means the offer is gone (taken, withdrawn, changed): the next one may do.
_OFFER_GONE_HTTP = (400, 404, 410)
_STATES: dict[str | None, InstanceState] = {
    None: "provisioning",
    "created": "provisioning",
    "scheduling": "provisioning",
    "loading": "loading",
    "rebooting": "loading",
    "running": "running",
    "stopped": "stopped",
    "frozen": "stopped",
    "exited": "exited",
    "offline": "offline",
    "unknown": "unknown",
}


def _sdk() -> Any:
    try:
        from vastai import VastAI
    except ImportError:
        raise ProviderMissing("the vast.ai provider needs its extra: pip install 'agentops[vast]'") from None
    return VastAI


class VastProvider:
    """vast.ai: offers, instances and their SSH endpoints, through the official SDK."""

    name = NAME

    def __init__(self, api_key: str, server_url: str | None = None, *, ssh_user: str = "root",
                 request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not api_key:
            raise ProviderAuthError(f"no vast.ai API key: set {API_KEY_ENV}")
        self._masker = Masker([api_key])
        self.ssh_user = ssh_user
        self._sdk = _sdk()(api_key=api_key, server_url=server_url or os.environ.get(URL_ENV) or None, raw=True, quiet=True)
        self._sdk.client.timeout = request_timeout

    @classmethod
    def from_env(cls, server_url: str | None = None) -> VastProvider:
        """A provider with the key from $VAST_API_KEY (never from a command line); $VAST_SSH_USER for images not logged into as root."""
        return cls(os.environ.get(API_KEY_ENV, ""), server_url, ssh_user=os.environ.get(SSH_USER_ENV) or "root")

    def __repr__(self) -> str:
        return f"VastProvider({self._sdk.client.server_url!r})"  # never the key

    def search(self, request: OfferRequest) -> list[Offer]:
        """Offers matching the request's filters, cheapest $/h first (the caller re-checks and ranks)."""
        rows = self._call("search offers", lambda: self._sdk.search_offers(
            query=search_query(request), order="dph_total", limit=SEARCH_FETCH, storage=request.disk_gb))
        return [offer_from_row(row) for row in rows]

    def create(self, offer: Offer, spec: CreateSpec) -> str:
        """Accept the offer and attach our key; a new box left half-made is destroyed before the error goes up."""
        answer = self._call(f"create from offer {offer.id}", lambda: self._sdk.create_instance(
            id=int(offer.id), image=spec.image, disk=spec.disk_gb, label=spec.label, onstart_cmd=spec.onstart,
            ssh=True, direct=True, cancel_unavail=True), offer_id=offer.id)
        if not isinstance(answer, dict) or not answer.get("success") or not answer.get("new_contract"):
            raise OfferUnavailable(self._masker.mask(f"offer {offer.id} was not rented: {answer}"))
        instance_id = str(answer["new_contract"])
        try:
            self._call(f"attach key to {instance_id}", lambda: self._sdk.attach_ssh(int(instance_id), spec.public_key))
        except BaseException:
            self._destroy_quietly(instance_id)
            raise
        return instance_id

    def show(self, instance_id: str) -> Instance:
        """The instance now; state "gone" once vast.ai no longer has it."""
        try:
            row = self._call(f"show {instance_id}", lambda: self._sdk.show_instance(int(instance_id)))
        except _Gone:
            row = None
        if not row:
            return Instance(provider=NAME, id=instance_id, state="gone")
        return self.instance_from_row(row)

    def instances(self, label: str | None = None) -> list[Instance]:
        """This account's instances (all pages), or those with `label`."""
        rows = self._call("list instances", self._sdk.show_instances)
        found = [self.instance_from_row(row) for row in rows]
        return [i for i in found if label is None or i.label == label]

    def stop(self, instance_id: str) -> None:
        """Stop the box (disk kept)."""
        self._call(f"stop {instance_id}", lambda: self._sdk.stop_instance(int(instance_id)))

    def destroy(self, instance_id: str) -> None:
        """Destroy the box; one vast.ai no longer has is fine."""
        try:
            self._call(f"destroy {instance_id}", lambda: self._sdk.destroy_instance(int(instance_id)))
        except _Gone:
            pass

    def close(self) -> None:
        """The SDK opens a session per request: nothing to release."""

    def instance_from_row(self, row: dict[str, Any]) -> Instance:
        """vast.ai's instance row in our words (state, SSH endpoint, price)."""
        return Instance(
            provider=NAME, id=str(row["id"]), state=_STATES.get(row.get("actual_status"), "unknown"),
            status_message=_text(row.get("status_msg")), machine_id=_opt_str(row.get("machine_id")),
            offer_id=_opt_str(row.get("ask_contract_id")), label=_text(row.get("label")),
            gpu_name=_text(row.get("gpu_name")), gpus=row.get("num_gpus"), dph=row.get("dph_total"),
            ssh=ssh_endpoint(row, self.ssh_user),
        )

    def _destroy_quietly(self, instance_id: str) -> None:
        try:
            self.destroy(instance_id)
        except ProviderError:
            pass  # the label sweep of lifecycle.destroy_all finds it

    def _call(self, what: str, fn: Callable[[], T], offer_id: str | None = None) -> T:
        """Run one SDK call; its exceptions become ours, here, once, with the key masked."""
        import requests

        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            detail = self._masker.mask(f"{what}: HTTP {status}: {_body(exc.response)}")
            if status in (401, 403):
                raise ProviderAuthError(f"vast.ai refused the API key ({detail})") from None
            if offer_id is not None and status in _OFFER_GONE_HTTP:
                raise OfferUnavailable(detail) from None
            if status == 404:
                raise _Gone(detail) from None
            raise ProviderError(detail) from None
        except requests.RequestException as exc:
            raise ProviderError(self._masker.mask(f"{what}: {type(exc).__name__}: {exc}")) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(self._masker.mask(f"{what}: unexpected answer from vast.ai ({type(exc).__name__}: {exc})")) from None


class _Gone(ProviderError):
    """HTTP 404 on an instance: it no longer exists."""


def search_query(request: OfferRequest) -> dict[str, Any]:
    """The SDK's pre-parsed filter dict for a request (typed values; the SDK adds verified/rentable/rented)."""
    q: dict[str, Any] = {"num_gpus": {"eq": request.gpus}, "disk_space": {"gte": request.disk_gb}}
    optional = {
        "gpu_name": ("eq", request.gpu_name),
        "gpu_ram": ("gte", request.min_gpu_ram_gb and request.min_gpu_ram_gb * MB_PER_GB),
        "cuda_max_good": ("gte", request.min_cuda),
        "reliability": ("gte", request.min_reliability),
        "dph_total": ("lte", request.max_dph),
        "inet_down": ("gte", request.min_inet_down_mbps),
    }
    for field, (op, value) in optional.items():
        if value is not None:
            q[field] = {op: value}
    return q


def offer_from_row(row: dict[str, Any]) -> Offer:
    """vast.ai's offer row in our words."""
    return Offer(
        provider=NAME, id=str(row["id"]), machine_id=str(row["machine_id"]), gpu_name=str(row["gpu_name"]),
        gpus=int(row["num_gpus"]), gpu_ram_gb=round(float(row.get("gpu_ram") or 0) / MB_PER_GB, 1),
        disk_gb=float(row.get("disk_space") or 0), cuda=row.get("cuda_max_good"), driver=_opt_str(row.get("driver_version")),
        reliability=row.get("reliability2", row.get("reliability")), dph=float(row["dph_total"]),
        storage_dph=_opt_float(row.get("storage_total_cost")),
        location=_text(row.get("geolocation")), inet_down_mbps=row.get("inet_down"), inet_up_mbps=row.get("inet_up"),
        download_usd_per_gb=float(row.get("inet_down_cost") or 0.0),
    )


def ssh_endpoint(row: dict[str, Any], user: str) -> SSHEndpoint | None:
    """A direct port-22 mapping when the box has one (one hop fewer), else vast.ai's SSH proxy."""
    mapped = (row.get("ports") or {}).get("22/tcp") or []
    host_port = mapped[0].get("HostPort") if mapped and isinstance(mapped[0], dict) else None
    if host_port and row.get("public_ipaddr"):
        return SSHEndpoint(host=str(row["public_ipaddr"]).strip(), port=int(host_port), user=user, kind="direct")
    if row.get("ssh_host") and row.get("ssh_port"):
        return SSHEndpoint(host=str(row["ssh_host"]).strip(), port=int(row["ssh_port"]), user=user, kind="proxy")
    return None


def _body(response: Any) -> str:
    if response is None:
        return ""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        return str(data.get("msg") or data.get("error") or data)[:300]
    return str(data)[:300]


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None
