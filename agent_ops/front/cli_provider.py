"""CLI for renting boxes: `offers`, `rent`, `rentals`, `down`, mounted on the main app.

The API key comes from $VAST_API_KEY only (no flag: a key on a command line lands in shell
history and `ps`). Exit codes: 0 done; 1 the rental failed (every box it created was destroyed)
or `down` could not give a box back; 2 bad input or no credentials, nothing rented; 3 the
provider could not be reached.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from agent_ops.front.output import Output
from agent_ops.front.service import OpError
from agent_ops.record.journal import Journal

if TYPE_CHECKING:  # imported where used: a status poll never loads them (nor pydantic's models, nor rich)
    from pydantic import ValidationError

    from agent_ops.provider.lifecycle import FleetRequest, OfferList
    from agent_ops.transport.target import RentEntry

EXIT_FAILED, EXIT_INPUT, EXIT_PROVIDER = 1, 2, 3
_INPUT_CODES = ("invalid_request", "provider_auth", "provider_missing")
_FAILED_CODES = ("rent_failed",)

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout.")
PROVIDER = typer.Option("vast", "--provider", help="Where to rent (credentials from the environment: VAST_API_KEY).")
# Offer flags, shared by `offers` and `rent` (None: not given, the model's default or the request file's value holds).
GPUS = typer.Option(None, "--gpus", help="GPUs per box.")
GPU_NAME = typer.Option(None, "--gpu-name", help="GPU model, '_' for spaces: RTX_4090, H100_SXM, RTX_PRO_6000.")
MIN_GPU_RAM = typer.Option(None, "--min-gpu-ram", help="GB per GPU, at least.")
DISK = typer.Option(None, "--disk", help="GB of disk on the box.")
MIN_CUDA = typer.Option(None, "--min-cuda", help="CUDA version the driver supports, at least (12.4).")
MIN_DRIVER = typer.Option(None, "--min-driver", help="NVIDIA driver version, at least (550.54).")
MIN_RELIABILITY = typer.Option(None, "--min-reliability", help="Provider reliability score 0..1, at least.")
MAX_DPH = typer.Option(None, "--max-dph", help="$/h per box, at most.")
LOCATION = typer.Option(None, "--location", help="Text the location must contain (US, DE).")
MIN_INET_DOWN = typer.Option(None, "--min-inet-down", help="Download Mbit/s, at least.")
HOURS = typer.Option(None, "--hours", help="Expected hours of work (ranks by the cost of the work).")
DOWNLOAD_GB = typer.Option(None, "--download-gb", help="GB the box will download (priced by the offer's $/GB).")

_OFFER_FLAGS = {"gpus": "--gpus", "gpu_name": "--gpu-name", "min_gpu_ram_gb": "--min-gpu-ram", "disk_gb": "--disk",
                "min_cuda": "--min-cuda", "min_driver": "--min-driver", "min_reliability": "--min-reliability",
                "max_dph": "--max-dph", "location": "--location", "min_inet_down_mbps": "--min-inet-down",
                "hours": "--hours", "download_gb": "--download-gb", "limit": "--limit"}
_FLEET_FLAGS = {"nodes": "--nodes", "image": "--image", "identity": "--identity", "onstart": "--onstart",
                "provision_deadline_s": "--deadline", "max_boxes": "--max-boxes"}
_QUALIFY_FLAGS = {"min_disk_free_gb": "--min-disk-free", "download_url": "--download-url",
                  "min_download_mbps": "--min-download", "burn_in_s": "--burn-in", "min_tflops": "--min-tflops"}


def _op(o: Output, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except OpError as exc:
        code = EXIT_INPUT if exc.code in _INPUT_CODES else EXIT_FAILED if exc.code in _FAILED_CODES else EXIT_PROVIDER
        o.fail(code, exc.message, exc.code, exc.problems)


def _given(values: dict[str, Any], flags: dict[str, str]) -> dict[str, Any]:
    return {field: values[field] for field in flags if values.get(field) is not None}


def _flag_problems(exc: ValidationError, flags: dict[tuple, str]) -> list[str]:
    return [f"{flags.get(tuple(e['loc']), '.'.join(map(str, e['loc'])))}: {e['msg']}" for e in exc.errors()]


def offers_command(
    gpus: int | None = GPUS, gpu_name: str | None = GPU_NAME, min_gpu_ram: float | None = MIN_GPU_RAM,
    disk: float | None = DISK, min_cuda: float | None = MIN_CUDA, min_driver: str | None = MIN_DRIVER,
    min_reliability: float | None = MIN_RELIABILITY, max_dph: float | None = MAX_DPH, location: str | None = LOCATION,
    min_inet_down: float | None = MIN_INET_DOWN, hours: float | None = HOURS, download_gb: float | None = DOWNLOAD_GB,
    limit: int | None = typer.Option(None, "--limit", help="How many offers to show."),
    provider: str = PROVIDER, as_json: bool = JSON,
) -> None:
    """Offers matching a request, cheapest for the requested work first (bad machines left out)."""
    from pydantic import ValidationError

    from agent_ops.front import provider_ops
    from agent_ops.provider.base import OfferRequest

    o = Output(as_json)
    values = {"gpus": gpus, "gpu_name": gpu_name, "min_gpu_ram_gb": min_gpu_ram, "disk_gb": disk, "min_cuda": min_cuda,
              "min_driver": min_driver, "min_reliability": min_reliability, "max_dph": max_dph, "location": location,
              "min_inet_down_mbps": min_inet_down, "hours": hours, "download_gb": download_gb, "limit": limit}
    try:
        request = OfferRequest(**_given(values, _OFFER_FLAGS))
    except ValidationError as exc:
        problems = _flag_problems(exc, {(k,): v for k, v in _OFFER_FLAGS.items()})
        o.fail(EXIT_INPUT, "invalid offer request", "invalid_request", problems)
    found = _op(o, provider_ops.offers, request, Journal(), provider)
    if as_json:
        o.json(found)
        return
    _print_offers(found, o)


def _print_offers(found: OfferList, o: Output) -> None:
    from rich.table import Table

    req = found.request
    table = Table(title=f"offers for {req.gpus} x {req.gpu_name or 'any GPU'}, {req.hours:g} h + {req.download_gb:g} GB down")
    for col in ("offer", "machine", "GPU", "GB/GPU", "disk", "$/h", "work $", "reliab.", "CUDA", "Mbit/s down", "where"):
        table.add_column(col, justify="left" if col in ("GPU", "where") else "right")
    for offer, cost in zip(found.offers, found.costs):
        table.add_row(offer.id, offer.machine_id, f"{offer.gpus} x {offer.gpu_name}", f"{offer.gpu_ram_gb:g}", f"{offer.disk_gb:g}",
                      f"{offer.dph:.3f}", f"{cost:.2f}", f"{offer.reliability or 0:.3f}", f"{offer.cuda or '-'}",
                      f"{offer.inet_down_mbps or 0:.0f}", offer.location or "-")
    o.out.print(table)
    if found.skipped_bad_machines:
        o.line(f"{found.skipped_bad_machines} offers left out: their machines failed qualification before")


def rent_command(
    request_file: Path | None = typer.Option(None, "--request", help="Fleet request (YAML or JSON); flags override it."),
    nodes: int | None = typer.Option(None, "--nodes", help="Boxes to rent."),
    image: str | None = typer.Option(None, "--image", help="Container image for every box."),
    identity: str | None = typer.Option(None, "--identity", "-i", help="SSH private key; IDENTITY.pub goes on every box."),
    onstart: str | None = typer.Option(None, "--onstart", help="bash run on each box at start."),
    deadline: float | None = typer.Option(None, "--deadline", help="Seconds from create to a qualified box, per box."),
    max_boxes: int | None = typer.Option(None, "--max-boxes", help="Boxes created in all, failures included."),
    min_disk_free: float | None = typer.Option(None, "--min-disk-free", help="GB free on the box, at least."),
    download_url: str | None = typer.Option(None, "--download-url", help="A large file to time the box's download with."),
    min_download: float | None = typer.Option(None, "--min-download", help="Mbit/s from --download-url, at least."),
    burn_in: float | None = typer.Option(None, "--burn-in", help="Seconds of matmul burn-in per GPU (0: none)."),
    min_tflops: float | None = typer.Option(None, "--min-tflops", help="bf16 TFLOP/s of the slowest GPU, at least."),
    gpus: int | None = GPUS, gpu_name: str | None = GPU_NAME, min_gpu_ram: float | None = MIN_GPU_RAM,
    disk: float | None = DISK, min_cuda: float | None = MIN_CUDA, min_driver: str | None = MIN_DRIVER,
    min_reliability: float | None = MIN_RELIABILITY, max_dph: float | None = MAX_DPH, location: str | None = LOCATION,
    min_inet_down: float | None = MIN_INET_DOWN,
    run_id: str | None = typer.Option(None, "--run-id", help="Name the rental (default: a new run id); `down RUN` gives it back."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Rent in the background; print the run id at once."),
    provider: str = PROVIDER, as_json: bool = JSON,
) -> None:
    """Rent N boxes: each created with your key, waited for, reached over SSH and qualified — all or none."""
    from agent_ops.front import provider_ops
    from agent_ops.run.context import new_run_id

    o = Output(as_json)
    values = {"gpus": gpus, "gpu_name": gpu_name, "min_gpu_ram_gb": min_gpu_ram, "disk_gb": disk, "min_cuda": min_cuda,
              "min_driver": min_driver, "min_reliability": min_reliability, "max_dph": max_dph, "location": location,
              "min_inet_down_mbps": min_inet_down, "nodes": nodes, "image": image, "identity": identity, "onstart": onstart,
              "provision_deadline_s": deadline, "max_boxes": max_boxes, "min_disk_free_gb": min_disk_free,
              "download_url": download_url, "min_download_mbps": min_download, "burn_in_s": burn_in, "min_tflops": min_tflops}
    request = _fleet_request(request_file, values, o)
    run_id = run_id or new_run_id()
    journal = Journal()
    if detach:
        started = _op(o, provider_ops.rent_detached, request, journal, run_id, provider)
        if as_json:
            o.json(started)
        else:
            o.line(started.run_id)
        return
    result = _op(o, provider_ops.rent_boxes, request, journal, run_id, provider)
    if as_json:
        o.json(result)
        return
    for box in result.boxes:
        o.line(f"{box.instance_id}  {box.offer.gpus} x {box.offer.gpu_name}  ${box.offer.dph:.3f}/h  {box.target.url}  "
               f"({box.endpoint.kind}; host key {box.host_key.split()[0]} recorded)")
    o.line(f"rented {len(result.boxes)} boxes for {run_id}; give them back with: agentops down {run_id}")


def _fleet_request(path: Path | None, values: dict[str, Any], o: Output, entry: RentEntry | None = None) -> FleetRequest:
    """The request file (or an inventory's rent entry), if any, with the flags given laid over it; problems as
    FILE:LINE or --flag."""
    from pydantic import ValidationError

    from agent_ops.provider.lifecycle import FleetRequest
    from agent_ops.yaml_models import YamlProblems, read_yaml

    data: dict[str, Any] = {}
    lines = None
    label = str(path) if path else "command line"
    prefix: tuple[str, ...] = ()
    if entry is not None:
        data, lines, label, prefix = dict(entry.request), entry.lines, entry.path, entry.prefix
    elif path is not None:
        try:
            data, lines, _ = read_yaml(path, label)
        except FileNotFoundError:
            o.fail(EXIT_INPUT, f"{path}: no such request file", "invalid_request")
        except YamlProblems as exc:
            o.fail(EXIT_INPUT, f"{path}: invalid request", "invalid_request", exc.problems)
        data = dict(data) if isinstance(data, dict) else {}
    data.update(_given(values, _FLEET_FLAGS))
    data["offer"] = {**(data.get("offer") or {}), **_given(values, _OFFER_FLAGS)}
    data["qualify"] = {**(data.get("qualify") or {}), **_given(values, _QUALIFY_FLAGS)}
    try:
        return FleetRequest.model_validate(data)
    except ValidationError as exc:
        o.fail(EXIT_INPUT, f"{label}: invalid fleet request", "invalid_request",
               _request_problems(exc, data, label, lines, values, prefix))


def _request_problems(exc: ValidationError, data: dict[str, Any], label: str, lines, values: dict[str, Any],
                      prefix: tuple[str, ...] = ()) -> list[str]:
    from agent_ops.provider.lifecycle import FleetRequest
    from agent_ops.yaml_models import Report

    by_flag = {(f,): flag for f, flag in _FLEET_FLAGS.items() if values.get(f) is not None}
    by_flag |= {("offer", f): flag for f, flag in _OFFER_FLAGS.items() if values.get(f) is not None}
    by_flag |= {("qualify", f): flag for f, flag in _QUALIFY_FLAGS.items() if values.get(f) is not None}
    report = Report(label, lines, FleetRequest, prefix=prefix)
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if loc in by_flag:
            problems.append(f"{by_flag[loc]}: {err['msg']}")
        else:
            report.add_errors(data, [err])
    return problems + report.problems()


def down_command(
    run_id: str = typer.Argument(..., help="The run (or rental) whose boxes to give back."),
    policy: str = typer.Option("destroy", "--policy", help="destroy | stop (disk kept) | keep."),
    force: bool = typer.Option(False, "--force", help="Destroy even while a declared artifact is not safely copied off."),
    provider: str = PROVIDER, as_json: bool = JSON,
) -> None:
    """Give back every box a run rented: those in the journal, and any the provider shows with the run's label.

    The run's declared artifacts are copied off and checked first; a destroy is refused while one is not safe."""
    from agent_ops.front import provider_ops

    o = Output(as_json)
    if policy not in ("destroy", "stop", "keep"):
        o.fail(EXIT_INPUT, f"--policy {policy!r}: expected destroy, stop or keep", "invalid_request")
    result = _op(o, provider_ops.down, Journal(), run_id, policy, provider, force)
    if as_json:
        o.json(result)
    else:
        for artifact in result.artifacts:
            o.line(artifact.line(), style="red" if artifact.blocks_destroy else None)
        verb = {"destroy": "destroyed", "stop": "stopped", "keep": "kept"}[policy]
        done = result.teardown.done if result.teardown else []
        if result.teardown is not None:
            o.line(f"{run_id}: {verb} {len(done)} boxes{': ' + ', '.join(done) if done else ''}")
        for line in (result.teardown.failed if result.teardown else []):
            o.line(f"could not give back {line}", style="red")
        if result.refused and result.teardown is None:
            o.line(f"{run_id}: destroy refused, boxes kept: artifacts not safe (see above); --force destroys anyway",
                   style="red")
    if result.teardown is None or result.teardown.failed:  # refused (not forced), or a box could not be given back
        raise typer.Exit(EXIT_FAILED)


def rentals_command(run_id: str = typer.Argument(..., help="The run whose boxes to show."), as_json: bool = JSON) -> None:
    """A run's boxes from the journal: state, $/h, spent so far (no provider call)."""
    from agent_ops.front import provider_ops

    o = Output(as_json)
    found = provider_ops.rentals(Journal(), run_id)
    if as_json:
        o.json(found)
        return
    for r in found.rentals:
        o.line(f"{r.instance_id:>10} {r.state:<9} ${r.dph or 0:.3f}/h  ${r.spent_usd:.2f} so far  {r.ssh or '-'}  "
               f"{r.message or ''}")
    o.line(f"{found.live} live, ${found.dph_live:.3f}/h now, ${found.spent_usd:.2f} spent")


# --- `agentops run --provision`: the flags and the provisioning they make -----------------------------------------

PROVISION = typer.Option(None, "--provision", help="Rent the run's boxes from this provider (vast) and give them back "
                         "when it ends (the runbook's provision: block, --fleet and the flags below say what and how).")
FLEET_FILE = typer.Option(None, "--fleet", help="Fleet request file (YAML or JSON, `agentops rent --request`'s fields); "
                          "replaces the runbook's provision.fleet (the flags go over it).")
NODES = typer.Option(None, "--nodes", help="Boxes to rent (with --provision).")
BUDGET = typer.Option(None, "--budget-usd", help="With --provision: at this spend, checkpoint, save the artifacts, give "
                      "the boxes back, end the run.")
ON_SUCCESS = typer.Option(None, "--on-success", help="With --provision: keep | stop | destroy the boxes after success "
                          "(default destroy, once no job runs).")
ON_FAILURE = typer.Option(None, "--on-failure", help="With --provision: keep | stop | destroy after a failure or an "
                          "interrupt (default destroy).")


def provisioning(loaded, values: dict[str, Any], provider: str, fleet_file: Path | None, flags: dict[str, Any],
                 identity: str | None, o: Output, entry: RentEntry | None = None):
    """The run's provisioning: the runbook's provision: block, --fleet (or the inventory's rent entry `-t` named) over
    it, the flags over both; every problem as FILE:LINE or --flag (exit 2, nothing rented)."""
    from pydantic import ValidationError

    from agent_ops.errors import RunbookError
    from agent_ops.run.rented import Provisioning
    from agent_ops.runbook.loader import builtin_values, render_runbook

    try:
        placeholders = builtin_values(**{k: f"<{k}>" for k in ("run_id", "run_dir", "runbook_dir", "artifacts_dir")})
        declared = render_runbook(loaded, {**values, **placeholders}).provision
    except RunbookError as exc:
        o.fail(EXIT_INPUT, f"{loaded.path}: invalid runbook", exc.code, exc.problems)
    base = declared.model_dump() if declared else {"fleet": {}}
    teardown = {**base.get("teardown", {}), **{k: v for k, v in (("success", flags.get("on_success")),
                                                                  ("failure", flags.get("on_failure"))) if v}}
    data = {"provider": provider, "teardown": teardown, "idle_s": base.get("idle_s", 600.0),
            "budget_usd": flags.get("budget_usd") or base.get("budget_usd"), "checkpoint": base.get("checkpoint")}
    if fleet_file is not None or entry is not None:  # it replaces the runbook's provision.fleet; the flags go over it
        request = _fleet_request(fleet_file, {**flags, "identity": identity}, o, entry)
    else:
        request = _declared_request(loaded, base["fleet"], flags, identity, o)
    request = request.model_copy(update={"identity": str(Path(request.identity).expanduser())})
    try:
        return Provisioning.model_validate({**data, "request": request})
    except ValidationError as exc:
        named = {"budget_usd": "--budget-usd", "success": "--on-success", "failure": "--on-failure"}
        problems = [f"{named.get(str(e['loc'][-1]), '.'.join(map(str, e['loc'])))}: {e['msg']}" for e in exc.errors()]
        o.fail(EXIT_INPUT, f"{loaded.path}: invalid provisioning", "invalid_request", problems)


def _declared_request(loaded, fleet: dict[str, Any], flags: dict[str, Any], identity: str | None, o: Output):
    """The runbook's provision.fleet with -i and the flags over it; its own problems at their lines."""
    from pydantic import ValidationError

    from agent_ops.provider.lifecycle import FleetRequest

    problems = _request_problems_in(loaded, fleet)
    fleet = {**fleet, **({"identity": identity} if identity else {}), **_given(flags, _FLEET_FLAGS)}
    fleet["offer"] = {**(fleet.get("offer") or {}), **_given(flags, _OFFER_FLAGS)}
    fleet["qualify"] = {**(fleet.get("qualify") or {}), **_given(flags, _QUALIFY_FLAGS)}
    if not fleet.get("identity"):
        problems.append("--identity: a rented box needs your SSH key (-i KEY; KEY.pub is attached to every box)")
    if not problems:
        try:
            return FleetRequest.model_validate(fleet)
        except ValidationError as exc:
            problems = _flag_problems(exc, {**{(k,): v for k, v in _FLEET_FLAGS.items()},
                                            **{("offer", k): v for k, v in _OFFER_FLAGS.items()}})
    o.fail(EXIT_INPUT, f"{loaded.path}: invalid provisioning", "invalid_request", problems)


def _request_problems_in(loaded, fleet: dict[str, Any]) -> list[str]:
    """The runbook's provision.fleet checked as a fleet request, at its lines (identity may come from -i later)."""
    from pydantic import ValidationError

    from agent_ops.provider.lifecycle import FleetRequest

    try:
        FleetRequest.model_validate({"identity": "-", **fleet})
    except ValidationError as exc:
        report = loaded.report(FleetRequest, ("provision", "fleet"))
        report.add_errors(loaded.data, exc.errors())
        return report.problems()
    return []


def provision_args(provider: str | None, fleet_file: Path | None, flags: dict[str, Any]) -> list[str]:
    """The provisioning flags again, for a detached controller's command line (no secret is among them)."""
    if not provider:
        return []
    args = ["--provision", provider] + (["--fleet", str(fleet_file)] if fleet_file else [])
    names = {**_OFFER_FLAGS, **_FLEET_FLAGS, "budget_usd": "--budget-usd", "on_success": "--on-success",
             "on_failure": "--on-failure"}
    for field, value in flags.items():
        if value is not None and field in names:
            args += [names[field], str(value)]
    return args


def rent_for_run(rented, o: Output):
    """Rent the run's boxes (progress on stderr); a failed rental (every box already destroyed) exits 1, like a run."""
    from agent_ops.provider.base import ProviderError

    req = rented.prov.request
    o.note(f"renting {req.nodes} x {req.offer.gpus} {req.offer.gpu_name or 'GPU'} from {rented.prov.provider} for run "
           f"{rented.run_id} (give back by hand: agentops down {rented.run_id})")
    try:
        nodes = rented.rent()
    except ProviderError as exc:
        code = EXIT_INPUT if exc.code in _INPUT_CODES else EXIT_FAILED if exc.code in _FAILED_CODES else EXIT_PROVIDER
        o.fail(code, str(exc), exc.code)
    o.note(f"rented {len(nodes)} boxes: " + ", ".join(f"{n.name} ({n.target.url})" for n in nodes))
    return nodes
