"""A loopback stand-in of the vast.ai REST endpoints the `vastai` SDK calls, with real boxes behind it.

The SDK is real; only the server is ours. Endpoints (read from vastai 1.9.1's source):
  POST   /api/v0/bundles/                 search offers (JSON filter: {field: {op: value}}, order, limit)
  PUT    /api/v0/asks/{offer}/            create an instance -> {"success": true, "new_contract": id}
  POST   /api/v0/instances/{id}/ssh/      attach a public key
  GET    /api/v0/instances/{id}/?owner=me show one -> {"instances": row | null}
  GET    /api/v1/instances/               list (paged: next_token)
  PUT    /api/v0/instances/{id}/          {"state": "stopped" | "running"} or {"label": ...}
  DELETE /api/v0/instances/{id}/          destroy
Every request must carry `Authorization: Bearer KEY`; each is written to access.log (method, path
with query, body) so a test can show the key never travels anywhere else.

Creating an instance makes a box: a real OpenSSH server on 127.0.0.1 (tests/sshd.py) with a fresh
host key, the attached keys authorised, and a stand-in `nvidia-smi` first on its PATH. The box
moves provisioning -> loading -> running with delays; when it first runs, its onstart runs.
Faults a test can script: an offer gone at create, a box stuck loading, a box that dies (its sshd
stops, its state becomes offline), GPUs other than the offer's.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.sshd import SSHServer

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OPS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
# Keys of a search body that are not filters.
_NOT_FILTERS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}


@dataclass
class BoxPlan:
    """How the box made from an offer behaves (None: as the offer says)."""

    smi_name: str = "NVIDIA GeForce RTX 4090"
    gpus: int | None = None
    memory_mib: int | None = None
    driver: str = "550.54.14"
    cuda: str = "12.4"
    provisioning_s: float = 0.2
    loading_s: float = 0.5
    stuck_loading: bool = False
    direct: bool = False  # SSH through a direct port-22 mapping; the proxy fields then point at a closed port


@dataclass
class _Box:
    id: int
    offer: dict[str, Any]
    plan: BoxPlan
    body: dict[str, Any]
    sshd: SSHServer
    root: Path
    created: float = field(default_factory=time.monotonic)
    override: str | None = None  # stopped | offline
    started: bool = False
    onstart: subprocess.Popen[bytes] | None = None
    dead_port: int = 0
    tmux_dir: Path | None = None  # the box's own TMUX_TMPDIR: its tmux servers are its own, as on a separate machine
    lock: threading.Lock = field(default_factory=threading.Lock)

    def end_processes(self) -> None:
        """What a box's end does to what ran on it: its tmux servers (and the jobs in them) end."""
        for socket_path in self.tmux_dir.glob("tmux-*/*") if self.tmux_dir else ():
            subprocess.run(["tmux", "-S", str(socket_path), "kill-server"], capture_output=True, timeout=10)

    def status(self) -> str | None:
        if self.override:
            return self.override
        age = time.monotonic() - self.created
        if age < self.plan.provisioning_s:
            return None
        if self.plan.stuck_loading or age < self.plan.provisioning_s + self.plan.loading_s:
            return "loading"
        return "running"


class VastStandIn:
    """The stand-in server and its boxes; `close()` destroys what is left and stops everything."""

    def __init__(self, root: Path, api_key: str) -> None:
        self.root = root
        self.api_key = api_key
        self.offers: dict[int, dict[str, Any]] = {}
        self.plans: dict[int, BoxPlan] = {}
        self.gone_at_create: set[int] = set()
        self.boxes: dict[int, _Box] = {}
        self.destroyed: list[int] = []
        self.access_log = root / "access.log"
        self._next_id = 1000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="vast-standin", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- scripting -------------------------------------------------------------------------

    def add_offer(self, offer_id: int, machine_id: int, plan: BoxPlan | None = None, **fields: Any) -> dict[str, Any]:
        """An offer as vast.ai's search returns it; `fields` override the defaults."""
        row = {
            "id": offer_id, "ask_contract_id": offer_id, "machine_id": machine_id, "host_id": machine_id * 10,
            "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "gpu_total_ram": 24564, "disk_space": 200.0,
            "cuda_max_good": 12.4, "driver_version": "550.54.14", "reliability": 0.995, "reliability2": 0.995,
            "dph_total": 0.40, "storage_total_cost": 0.02, "geolocation": "Texas, US", "inet_down": 900.0, "inet_up": 500.0, "inet_down_cost": 0.005,
            "verified": True, "external": False, "rentable": True, "rented": False, "direct_port_count": 10,
            **fields,
        }
        self.offers[offer_id] = row
        self.plans[offer_id] = plan or BoxPlan()
        return row

    def kill(self, instance_id: int) -> None:
        """The box dies: its sshd stops (connections drop) and vast.ai reports it offline."""
        box = self.boxes[instance_id]
        with box.lock:
            box.override = "offline"
            box.sshd.stop()
            box.end_processes()

    def live(self) -> list[int]:
        """Instances that exist (are billed) right now."""
        with self._lock:
            return sorted(self.boxes)

    def requests(self) -> list[dict[str, Any]]:
        """Every request so far, as access.log holds it."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines()]

    def close(self) -> list[int]:
        """Destroy the boxes left (returning their ids) and stop the server."""
        left = self.live()
        for iid in left:
            self._destroy(iid)
        self._server.shutdown()
        self._server.server_close()
        return left

    # --- the API -------------------------------------------------------------------------------

    def search(self, q: dict[str, Any]) -> dict[str, Any]:
        rows = [o for o in self.offers.values() if _passes(o, q)]
        for name, direction in reversed(q.get("order") or []):
            rows.sort(key=lambda o, n=name: (o.get(n) is None, o.get(n)), reverse=direction == "desc")
        return {"offers": rows[: int(q.get("limit") or len(rows) or 1)]}

    def create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        offer = self.offers.get(offer_id)
        if offer is None or offer["rented"] or offer_id in self.gone_at_create:
            return 404, {"success": False, "error": "no_such_ask", "msg": f"offer {offer_id} is no longer available"}
        offer["rented"] = True  # one box per offer, as on the market: it leaves the search results
        with self._lock:
            self._next_id += 1
            iid = self._next_id
        root = self.root / f"box-{iid}"
        root.mkdir()
        plan = self.plans[offer_id]
        (root / "bin").mkdir()
        _write_nvidia_smi(root / "bin" / "nvidia-smi", offer, plan)
        # A short directory of its own for tmux sockets (a socket path is limited to ~107 bytes).
        tmux_dir = Path(tempfile.mkdtemp(prefix=f"vbox{iid}-"))
        sshd = SSHServer(root, env={"PATH": f"{root / 'bin'}:{BASE_PATH}", "TMUX_TMPDIR": str(tmux_dir)})
        (root / "authorized_keys").write_text("")  # only keys attached through the API get in
        box = _Box(id=iid, offer=offer, plan=plan, body=body, sshd=sshd, root=root, dead_port=_closed_port(),
                   tmux_dir=tmux_dir)
        with self._lock:
            self.boxes[iid] = box
        return 200, {"success": True, "new_contract": iid}

    def attach(self, iid: int, key: str) -> tuple[int, dict[str, Any]]:
        box = self.boxes.get(iid)
        if box is None:
            return 404, {"success": False, "error": "no_such_instance"}
        with open(box.root / "authorized_keys", "a") as fh:
            fh.write(key.strip() + "\n")
        return 200, {"success": True}

    def row(self, iid: int) -> dict[str, Any] | None:
        box = self.boxes.get(iid)
        if box is None:
            return None
        with box.lock:
            status = box.status()
            if status == "running" and not box.started:
                self._start(box)
        offer, plan = box.offer, box.plan
        ssh_port = box.dead_port if plan.direct else box.sshd.port
        row = {
            "id": iid, "machine_id": offer["machine_id"], "ask_contract_id": offer["id"], "actual_status": status,
            "intended_status": "stopped" if box.override == "stopped" else "running", "cur_state": status or "loading",
            "status_msg": {None: "provisioning", "loading": "pulling image", "running": "success, running",
                           "offline": "host offline", "stopped": "stopped"}.get(status, ""),
            "label": box.body.get("label"), "image_uuid": box.body.get("image"), "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"], "dph_total": offer["dph_total"], "start_date": time.time(), "extra_env": [],
            "ssh_host": "127.0.0.1", "ssh_port": ssh_port, "public_ipaddr": "127.0.0.1", "ports": {},
        }
        if plan.direct:
            row["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(box.sshd.port)}]}
        return row

    def update(self, iid: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        box = self.boxes.get(iid)
        if box is None:
            return 404, {"success": False, "error": "no_such_instance"}
        with box.lock:
            if body.get("state") == "stopped":
                box.override = "stopped"
                box.sshd.stop()
                box.end_processes()
            elif body.get("state") == "running" and box.override == "stopped":
                box.override = None
                box.sshd.start()
            if "label" in body:
                box.body["label"] = body["label"]
        return 200, {"success": True}

    def destroy(self, iid: int) -> tuple[int, dict[str, Any]]:
        if iid not in self.boxes:
            return 404, {"success": False, "error": "no_such_instance"}
        self._destroy(iid)
        return 200, {"success": True}

    def _destroy(self, iid: int) -> None:
        with self._lock:
            box = self.boxes.pop(iid, None)
        if box is None:
            return
        with box.lock:
            box.sshd.stop()
            box.end_processes()
            if box.tmux_dir is not None:
                shutil.rmtree(box.tmux_dir, ignore_errors=True)
            if box.onstart is not None and box.onstart.poll() is None:
                box.onstart.kill()
            if box.onstart is not None:
                box.onstart.wait()
        self.destroyed.append(iid)

    def _start(self, box: _Box) -> None:
        """The box runs: sshd answers, onstart starts (as vast.ai runs it: bash in the container)."""
        box.started = True
        box.sshd.start()
        onstart = box.body.get("onstart")
        if onstart:
            env = {"HOME": str(box.sshd.home), "PATH": f"{box.root / 'bin'}:{BASE_PATH}"}
            with open(box.root / "onstart.out", "ab") as out:
                box.onstart = subprocess.Popen(["bash", "-c", onstart], env=env, cwd=box.sshd.home,
                                               stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def log_request(self, method: str, path: str, body: Any) -> None:
        with self._lock, open(self.access_log, "a") as fh:
            fh.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")


def _passes(offer: dict[str, Any], q: dict[str, Any]) -> bool:
    for name, cond in q.items():
        if name in _NOT_FILTERS or not isinstance(cond, dict):
            continue
        for op, want in cond.items():
            if op not in _OPS or not _OPS[op](offer.get(name), want):
                return False
    return True


def _write_nvidia_smi(path: Path, offer: dict[str, Any], plan: BoxPlan) -> None:
    count = offer["num_gpus"] if plan.gpus is None else plan.gpus
    memory = offer["gpu_ram"] if plan.memory_mib is None else plan.memory_mib
    rows = "".join(f"{plan.smi_name}, {memory}, {plan.driver}\n" for _ in range(count))
    path.write_text(
        "#!/bin/bash\n# stand-in nvidia-smi: the GPUs this box pretends to have\n"
        'if [[ " $* " == *" --query-gpu="* ]]; then\n'
        f"  printf '%s' '{rows}'\n  exit 0\nfi\n"
        "cat <<'EOF'\n"
        "+-----------------------------------------------------------------------------------------+\n"
        f"| NVIDIA-SMI {plan.driver}             Driver Version: {plan.driver}     CUDA Version: {plan.cuda}     |\n"
        "+-----------------------------------------------------------------------------------------+\n"
        "EOF\n"
    )
    path.chmod(0o755)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_INSTANCE = re.compile(r"^/api/v0/instances/(\d+)/$")
_ASK = re.compile(r"^/api/v0/asks/(\d+)/$")
_SSH = re.compile(r"^/api/v0/instances/(\d+)/ssh/$")


def _handler(api: VastStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # access.log has it, with the body

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else None

        def _send(self, status: int, data: Any) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _route(self, method: str) -> None:
            body = self._body()
            api.log_request(method, self.path, body)
            parts = urlsplit(self.path)
            if parts.path == "/standin/blob":  # a download for qualification's speed check; no key needed
                return self._blob(int(parse_qs(parts.query).get("bytes", ["1000000"])[0]))
            if self.headers.get("Authorization") != f"Bearer {api.api_key}":
                return self._send(401, {"success": False, "error": "invalid_api_key"})
            status, data = self._dispatch(method, parts.path, body or {})
            self._send(status, data)

        def _dispatch(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
            if method == "POST" and path == "/api/v0/bundles/":
                return 200, api.search(body)
            if method == "GET" and path == "/api/v1/instances/":
                rows = [api.row(iid) for iid in api.live()]
                return 200, {"instances": [r for r in rows if r], "next_token": None}
            if (m := _ASK.match(path)) and method == "PUT":
                return api.create(int(m.group(1)), body)
            if (m := _SSH.match(path)) and method == "POST":
                return api.attach(int(m.group(1)), body.get("ssh_key", ""))
            if m := _INSTANCE.match(path):
                iid = int(m.group(1))
                if method == "GET":
                    return 200, {"instances": api.row(iid)}
                if method == "PUT":
                    return api.update(iid, body)
                if method == "DELETE":
                    return api.destroy(iid)
            return 404, {"success": False, "error": "not_found", "msg": f"{method} {path}"}

        def _blob(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"\0" * 65536
            while size > 0:
                self.wfile.write(chunk[: min(size, len(chunk))])
                size -= len(chunk)

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler
