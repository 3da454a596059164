"""A catalog that learns, safely: draft an entry from a failing log, admit it only when it is safe.

`propose` takes a failing log's root error (the final exception, else the latest tool error line),
turns its variable parts (paths, URLs, hex, numbers and sizes) into regex classes, and drafts an
entry: a cause under the family the log already matched, or a family of its own when none did.
The draft is admitted to the user catalog (`$AGENTOPS_HOME/known_issues/`, loaded beside the shipped
one) only when it is the best match on its own log, fires on none of the healthy logs (the shipped
`data/_negative/` and any the caller adds) and on no sample of another family. A refusal names the
log it would have fired on.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from agent_ops.bounds import DIAGNOSE_TAIL_LINES
from agent_ops.known_issues.catalog import (
    Catalog,
    CatalogError,
    FixAction,
    KnownIssue,
    load_catalog,
    shipped_dir,
)
from agent_ops.known_issues.diagnose import LogView, diagnose, signature_hits

MAX_ROOT_CHARS = 240  # a longer message is mostly a dump; its head identifies the failure
MAX_SAMPLE_LINES = 40  # lines of the log kept as the entry's second sample
PROPOSED_WEIGHT = 2.0
ID_WORDS = 6  # words of the failure that name a drafted entry
# Variable parts of an error text, in the order they are tried, with the regex that stands for each.
VARIABLE = re.compile(
    r"(?P<url>[a-z][a-z0-9+.-]*://[^\s'\"<>()]+)"
    r"|(?P<path>(?<![\w.])(?:~?/|\./|\.\./|[A-Za-z]:\\)[^\s'\"<>(),:]*[^\s'\"<>(),:.])"
    r"|(?P<hex>\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,}\b)"
    r"|(?P<number>\d+(?:[.,]\d+)*)"  # inside words too: `4x512`, `sm_86`, `12GiB`
)
STANDS_FOR = {"url": r"\S+", "path": r"\S+", "hex": r"(?:0x)?[0-9a-fA-F]+", "number": r"\d+(?:[.,]\d+)*"}
FIX_LIST = TypeAdapter(list[FixAction])


class ProposalError(Exception):
    """The log holds no failure to learn from, or the arguments are unusable."""


class Proposal(BaseModel):
    """A drafted entry and whether it was admitted (and why not)."""

    entry: dict = Field(description="The drafted entry, as it would be written to YAML.")
    admitted: bool = Field(description="Whether the entry was written to the user catalog.")
    path: str | None = Field(None, description="The file written, when admitted.")
    refused: list[str] = Field(default_factory=list, description="Why it was not admitted: each names the log or sample it fired on.")


def generalise(text: str) -> str:
    """A regex for `text` in which paths, URLs, hex, numbers and sizes match any value of their kind."""
    out, pos = [], 0
    for m in VARIABLE.finditer(text):
        out.append(_literal(text[pos : m.start()]))
        out.append(STANDS_FOR[m.lastgroup or "number"])
        pos = m.end()
    out.append(_literal(text[pos:]))
    return "".join(out)


def _literal(text: str) -> str:
    return r"\s+".join(re.escape(word) for word in re.split(r"\s+", text)) if text.strip() else (r"\s+" if text else "")


def root_text(log_text: str) -> str:
    """The failure a proposal is drafted from: the final exception, else the latest tool error line."""
    failure = LogView(log_text, DIAGNOSE_TAIL_LINES).failure
    if failure.exception is not None:
        text = failure.exception.text
    elif failure.tool_lines:
        text = failure.tool_lines[-1][2]
    else:
        raise ProposalError("no failure in the log: no exception and no error line of a known tool")
    return _cut(text.strip())


def _cut(text: str) -> str:
    if len(text) <= MAX_ROOT_CHARS:
        return text
    head = text[:MAX_ROOT_CHARS]
    return head[: head.rfind(" ")] if " " in head else head


def draft(log_text: str, catalog: Catalog, *, issue_id: str | None = None, title: str | None = None,
          fix: list[dict] | None = None) -> KnownIssue:
    """An entry for the log's failure: a cause inside the family it matched, else a family of its own."""
    seen = root_text(log_text)
    result = diagnose(log_text, catalog=catalog)
    if result.best is not None and result.best.level == "cause":
        raise ProposalError(f"already known: {result.best.issue_id} ({result.best.title})")
    family = catalog.get(result.best.issue_id) if result.best is not None else None
    actions = _fix_actions(fix)
    entry = {
        "id": issue_id or _unique_id(seen, catalog),
        "title": title or f"Proposed: {_cut(seen)[:100]}",
        "level": "cause" if family else "family",
        **({"family": family.id, "applies_to": list(family.applies_to)} if family else {}),
        "signatures": [{"regex": generalise(seen), "weight": PROPOSED_WEIGHT}],
        "cause": f"Learnt from a failing log; the failure read: {seen}",
        **({"fix": [a.model_dump(exclude_defaults=True) for a in actions],
            "retry": {"max_attempts": 1}} if actions else {"retry": {"max_attempts": 0}}),
        "escalate": (f"The learnt fix did not help; a person must look at: {seen}" if actions
                     else f"Learnt without an automatic fix; a person must look at: {seen}"),
        "samples": {"positive": [seen, _tail_sample(log_text)]},
    }
    try:
        return KnownIssue.model_validate(entry)
    except ValidationError as exc:
        raise ProposalError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def _fix_actions(fix: list[dict] | None) -> list:
    if not fix:
        return []
    try:
        return FIX_LIST.validate_python(fix)
    except ValidationError as exc:
        raise ProposalError("fix: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def _tail_sample(log_text: str) -> str:
    lines = log_text.rstrip("\n").split("\n")
    return "\n".join(lines[-MAX_SAMPLE_LINES:]) + "\n"


def _unique_id(seen: str, catalog: Catalog) -> str:
    """A slug of the failure's first words (`RuntimeError: Expected to...` -> `runtime-error-expected-to-...`)."""
    words = re.findall(r"[a-z][a-z0-9]*", re.sub(r"([a-z])([A-Z])", r"\1 \2", seen).lower())
    base = "-".join(words[:ID_WORDS]) or "learnt-failure"
    candidate, n = base, 2
    while candidate in catalog.ids:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def check(entry: KnownIssue, log_text: str, catalog: Catalog, healthy: Iterable[tuple[str, str]]) -> list[str]:
    """Why the entry must not be admitted (empty: safe). Every reason names the log or sample it fired on."""
    problems = []
    candidate = Catalog((*catalog.issues, entry), dict(catalog.sources))
    best = diagnose(log_text, catalog=candidate).best
    if best is None or best.issue_id != entry.id:
        problems.append(f"it is not the best match on its own log (best: {best.issue_id if best else 'nothing'})")
    for name, text in healthy:
        if _fires(entry, text, candidate):
            problems.append(f"it fires on the healthy log {name}")
    for other in catalog:
        if other.family_id == entry.family_id or other.level == "hint":
            continue
        for n, sample in enumerate(other.samples.positive):
            if _fires(entry, sample, candidate):
                problems.append(f"it fires on {other.id}'s sample {n} (family {other.family_id})")
    return problems


def _fires(entry: KnownIssue, text: str, catalog: Catalog) -> bool:
    """Whether the entry would match `text` (for a cause: where its family matches too)."""
    view = LogView(text, DIAGNOSE_TAIL_LINES)
    if not any(signature_hits(sig, view) for sig in entry.signatures):
        return False
    if entry.family is None:
        return True
    return any(signature_hits(sig, view) for sig in catalog.get(entry.family).signatures)


def healthy_logs(catalog: Catalog, extra: Iterable[Path] = ()) -> list[tuple[str, str]]:
    """(name, text) of every log a new entry must not fire on: the shipped healthy logs, every entry's
    negative samples, and the `*.log` files of the given files or directories."""
    paths = sorted((shipped_dir() / "_negative").glob("*.log"))
    for item in extra:
        paths += sorted(item.rglob("*.log")) if item.is_dir() else [item]
    logs = [(str(p), p.read_text(encoding="utf-8", errors="replace")) for p in paths]
    return logs + [(f"{i.id}'s negative sample {n}", text) for i in catalog for n, text in enumerate(i.samples.negative)]


def propose(log_text: str, user_dir: Path, *, issue_id: str | None = None, title: str | None = None,
            fix: list[dict] | None = None, healthy: Iterable[Path] = (), admit: bool = True) -> Proposal:
    """Draft an entry from a failing log and, when it is safe, write it to `user_dir`."""
    catalog = load_catalog([shipped_dir(), user_dir] if user_dir.is_dir() else None)
    entry = draft(log_text, catalog, issue_id=issue_id, title=title, fix=fix)
    data = _as_yaml_data(entry)
    refused = check(entry, log_text, catalog, healthy_logs(catalog, healthy))
    if refused or not admit:
        return Proposal(entry=data, admitted=False, refused=refused)
    return Proposal(entry=data, admitted=True, path=str(_write(entry, data, user_dir)))


def _as_yaml_data(entry: KnownIssue) -> dict:
    data = entry.model_dump(mode="json", exclude_defaults=True)
    return {"id": data.pop("id"), "title": data.pop("title"), "level": entry.level, **data}


def _write(entry: KnownIssue, data: dict, user_dir: Path) -> Path:
    user_dir.mkdir(parents=True, exist_ok=True)
    path = user_dir / f"{entry.id}.yaml"
    if path.exists():
        raise ProposalError(f"{path} exists: choose another id")
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
    try:
        load_catalog([shipped_dir(), user_dir])  # what the executor will load must load
    except CatalogError as exc:
        path.unlink()
        raise ProposalError("the written entry does not load: " + "; ".join(exc.problems)) from None
    return path
