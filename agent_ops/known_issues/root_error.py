"""A log tail reduced to its failure: normalised lines, the last traceback's exception chain, tool error lines.

A failed job's log is mostly noise around one or two lines that say what went wrong. Before
any catalog entry is tried, the tail is read the way a person reads it:

- normalised line by line: ANSI colour and cursor codes go, a tqdm line keeps only its last
  carriage-return rewrite, launcher labels (`[rank4]:`, `[default0]:`, `[1,0]<stdout>:`,
  `(RayWorker pid=7602)`) and time stamps (`[2023-06-02 00:34:14,470]`, dmesg's
  `[2059991.491436]`, `2019/03/24 13:19:10`) are dropped, so are the prefixes of tools that run
  others (Packer, Vagrant, Terraform provisioners, BuildKit, docker compose), and a terminal's
  padded wrap (a line continued after a run of blanks) is closed up;
- reduced to the failure: the last Python traceback's final exception and its chain
  (`During handling of the above exception`, `The above exception was the direct cause`),
  exception lines printed without a traceback, and the error lines of the other tools a GPU
  box runs (pip/uv/poetry resolvers, apt/dpkg, ssh, rclone, gsutil, git, NCCL, the CUDA
  driver, the kernel's OOM killer, torchrun, compilers, C++ and Java runtimes, and the conventions
  many programs share: `prog: error: ...`, make's `***`, a death by signal, an assert).

Hard wraps at a fixed width are undone inside an exception's message, where they are certain
(the message goes on until a blank line); across the rest of the log the matcher joins
neighbouring lines only where a signature needs it (see `diagnose.LogView`).

Reading is bounded: `read_tail` seeks to the last bytes of a file, so a 1 GiB log costs the
same as a 1 MiB one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from agent_ops.bounds import DIAGNOSE_TAIL_BYTES

MAX_MESSAGE_LINES = 12  # an exception's message lines kept (the rest is a dump, not the error)
MAX_TOOL_LINES = 12  # tool error lines kept, the latest
MIN_WRAP_WIDTH = 80  # a hard wrap happens at a terminal's width; none is narrower than 80 columns

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Launcher labels, possibly nested (`[default0]:[rank0]:`): torchrun --tee / DDP, `srun -l`, mpirun --tag-output, Ray actors.
RANK_PREFIX = re.compile(
    r"^(?:\[(?:rank|default)\s?\d+\]:\s?|(?:rank|worker-?)\s?\d+:\s|\d{1,4}:\s|\[\d+,\d+\]<(?:stdout|stderr)>:\s?"
    r"|\(\w+(?: pid=\d+)?(?:, ip=[\d.]+)?\)(?:\s|$))+",
    re.IGNORECASE,
)
# Prefixes that provisioning and build tools put before every line of the command they run: Packer's builder
# (`    amazon-ebs: `, `==> azure-arm: `: indented or arrowed, unlike docker's own `docker: Error response`),
# Vagrant's machine (`    default: `), Terraform's provisioners (`null_resource.x (remote-exec): `), BuildKit's
# plain progress (`#57 2848.4 `), docker compose's service (`web_1  | `, `app-1  | `) and the STDOUT/STDERR labels
# of Chef and Ansible. Under them the tool's own line (`E: Could not get lock ...`, `error: resolution-too-deep`)
# starts where its producer put it.
WRAPPER_PREFIX = re.compile(
    r"^(?:\s*==> |\s+)(?:(?:amazon|azure|googlecompute|docker|qemu|virtualbox|vmware|hyperv|proxmox|null|digitalocean|hcloud"
    r"|oracle|openstack|lxd|parallels|vsphere|alicloud|tencentcloud|yandex|scaleway|linode|vultr)[\w.-]*|default): "
    r"|^\s*[\w.\[\]\"-]+ \((?:remote|local)-exec\): "
    r"|^\s*#\d+ \d+\.\d+ ?"
    r"|^\s*[\w.-]+[_-]\d+\s+\| "
    r"|^\s*(?:STDERR|STDOUT): "
)
# Time stamps (and the logger fields glued to them) a line starts with; one bracketed group that holds a
# clock time covers most loggers.
TIMESTAMP = re.compile(
    r"^(?:\[[^\]\n]{0,60}?\d\d:\d\d:\d\d[^\]\n]{0,40}\]:?"  # [2023-06-02 00:34:14,470]  [Sun Mar 30 08:24:00 2025]
    r"|\[\s*\d+\.\d+\]"  # dmesg: [2059991.491436]
    r"|\[\d{1,6}\](?=\s)"  # a capture's line number: [80746]
    r"|(?:INFO|WARNING|WARN|ERROR|DEBUG|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+[\w./-]+:\d+\]"  # vLLM: ERROR 03-26 05:25:01 engine.py:389]
    r"|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+[\w./-]+:\d+\]"  # glog: E0221 13:10:41.400000 7712 api.py:869]
    r"|\d{4}[-/]\d\d[-/]\d\d(?:[T ]|,\s)\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d|\sUTC)?:?"  # 2023-04-29 06:01:12.977
    r"(?:\s[IWEF] [\w./-]+:\d+\])?"  # ... TensorFlow's `: E path/file.cc:672]`
    r"|\d\d:\d\d:\d\d(?:[.,]\d+)?(?=\s))\s?"  # 10:52:53 (one blank goes: a traceback's indentation stays)
)
# A label that says the line is an error: glog `[E1206 ...]`/`E0221 ...`, or a logger's ERROR/CRITICAL/FATAL.
ERROR_LABEL = re.compile(r"(?:^|\s)\[?[EF]\s?\d{0,4}\b|\b(?:ERROR|CRITICAL|FATAL)\b")
PADDED_WRAP = re.compile(r"(?<=\S) {40,}(?=\S)")  # a terminal copy pads a wrapped line to the full width
# A whole line set in bold, as a log pasted into an issue often shows the line that matters (`**Killed**`); not a banner
# of asterisks (torchrun's `*****`, glog's `*** Check failure stack trace: ***`).
MARKDOWN_BOLD = re.compile(r"^\*\*([^*\s](?:.*[^*\s])?)\*\*$")
# Ray folds repeated lines into one and says so at its end: the note is not part of the line (a `$` must still match).
RAY_DEDUP = re.compile(r"\s\[repeated \d+x across cluster\](?: \(Ray deduplicates logs by default\..*)?$")

TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
CHAIN = re.compile(
    r"^\s*(?:During handling of the above exception, another exception occurred"
    r"|The above exception was the direct cause of the following exception):?\s*$"
)
# A frame of a traceback (plain, notebook `---> 12`, rich `│ ... │`), source, carets, elisions.
FRAME = re.compile(r"^\s+\S|^\s*$|^\s*File \"|^\s*File [~/\w]|^-*>\s*\d+|^\s*\d+\s|^\s*│|^\s*\.\.\.|^\s*\[Previous line repeated|^Cell In\[|^\S+\.py:\d+,? in ")
FRAME_LINE = re.compile(r"^\s|^File \"")
# `RuntimeError: ...`, `torch.distributed.DistBackendError: ...`, `ncclSystemError: ...`, `AssertionError` alone.
EXCEPTION = re.compile(
    r"^(?:Caused by: |Exception in thread \"[^\"]*\" )?"
    r"(?P<type>(?:[A-Za-z_]\w*(?:\.|::))*(?:[A-Za-z]\w*(?:Error|Exception|Exit|Interrupt|Failure|Failed|Fault)\w*|[A-Z]\w*Error))"
    r"(?:\s*:\s?(?P<message>.*))?$"
)
# Where a message stops: a new traceback, a chain marker, a new log record or a launcher banner.
MESSAGE_END = re.compile(r"^\s*$|Traceback \(most recent call last\)|^(?:During handling|The above exception)|^[=\-*]{20,}\s*$|^(?:INFO|WARNING|DEBUG)\b")

# Error lines of the tools a GPU box runs, as (tool, regex) on a normalised line.
TOOL_ERRORS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (tool, re.compile(pattern))
    for tool, pattern in (
        ("apt", r"^(?:E|Err:\d*):? |^dpkg: (?:error|dependency problems)|^W: (?:Failed to fetch|Some index files failed)"),
        ("pip", r"^ERROR: (?:Could not|No matching|Cannot install|ResolutionImpossible|Failed building|Failed to build)|^\s*× |^\s*╰─▶ "
                r"|^\s*(?:SolverProblemError|ResolutionImpossible|ResolutionTooDeep)\b|^error: (?:subprocess-exited-with-error|resolution-too-deep)"),
        ("conda", r"(?:Unsatisfiable|PackagesNotFound|ResolvePackageNotFound|LibMambaUnsatisfiable)Error|^Could not solve for environment specs"),
        ("ssh", r"^ssh: |(?:kex|ssh)_exchange_identification: |^Connection (?:reset|closed) by |^Connection to \S+ closed|^client_loop: |^packet_write_wait: "
                r"|Host key verification failed|^Permission denied \(|^ssh_dispatch_run_fatal|^Received disconnect from"),
        ("rclone", r"^(?:ERROR|CRITICAL) : |^Failed to \w+: "),
        ("gsutil", r"^(?:AccessDenied|Service|Command|BadRequest|NotFound|Forbidden|Unauthorized)Exception: "),
        ("git", r"^fatal: |^error: |^remote: (?:error|fatal)|^warning: Clone succeeded, but checkout failed|^Error downloading object"),
        ("nccl", r"NCCL WARN |NCCL error|\bnccl[A-Z]\w*Error\b"),
        ("cuda", r"CUDA error: |CUDA driver version is insufficient|Failed to initialize NVML|NVIDIA-SMI has failed|cudaGetDeviceCount returned \d+"
                 r"|CUDA initialization: "),
        ("kernel", r"Out of memory: Kill|\boom-kill\b|invoked oom-killer|\boom_reaper\b|^Killed$|Memory cgroup out of memory|detected \d+ oom[_-]kill event"),
        ("torchrun", r"ChildFailedError|\bexitcode\s*:\s*-?\d+|failed \(exitcode: -?\d+\)|Signal \d+ \(SIG\w+\) received"),
        ("compiler", r"\bfatal error\b|^\S+\.(?:c|cc|cpp|cu|h|pyx):\d+:(?:\d+:)? error: |error: command '[^']*' failed"),
        ("runtime", r"^terminate called after throwing|^\s*what\(\):|^Caused by: |^Exception in thread "),
        ("docker", r"^docker: Error response|failed to build|^failed to register layer|^ERRO\[\d+\]"),
        # Conventions many producers share: `prog: error: ...` (slurmstepd, srun, ld, clang, collect2), make's `***`,
        # configure's and CMake's errors, rustc's `error[E0425]:`, npm/gyp's `ERR!`, Go's panic, C's assert, a process
        # killed by a signal as the shell reports it, PowerShell's error record, GitHub Actions' `##[error]`, and a
        # leading `Fatal:`/`FAILURE:` (restic, Gradle).
        ("program", r"^[\w.+-]+(?:\[\d+\])?: (?:error|fatal|ERROR|FATAL)\b|^make(?:\[\d+\])?: \*\*\* |^configure: error: |^CMake Error\b"
                    r"|^error\[E\d{4}\]: |^(?:npm|gyp|pnpm) (?:ERR!|error) |^panic: |\bAssertion [`'\"].*[`'\"] failed"
                    r"|^(?:Aborted|Segmentation fault|Bus error|Illegal instruction|Floating point exception)(?: \(core dumped\))?$"
                    r"|^\s*\+ (?:CategoryInfo|FullyQualifiedErrorId)\s*: |^##\[error\]|^(?:Fatal|FAILURE|FAILED): "),
        ("log", r"\b(?:ERROR|CRITICAL|FATAL)\b|^\[?[EF]\s?\d{0,4}[\s\d:.]*\S+\.(?:cpp|cc|cu|h|hpp):\d+\]|^Error: |^ERROR\b"),
    )
)


class Normalised(NamedTuple):
    """A log's lines as parallel lists: the label each started with, the normalised text, the width it had on screen."""

    labels: list[str]
    lines: list[str]
    widths: list[int]  # with labels and rank prefixes: what a terminal wrapped at


def normalise_line(raw: str) -> str:
    """One physical line as displayed and without its labels: last CR rewrite, no ANSI, no rank prefix or time stamp."""
    return _split_line(raw)[1]


def _split_line(raw: str) -> tuple[str, str, int]:
    segments = [ANSI.sub("", s) for s in raw.split("\r")]
    shown = [s for s in segments if s.strip()]
    line = RAY_DEDUP.sub("", PADDED_WRAP.sub("", (shown[-1] if shown else "").rstrip()))
    width = len(line)
    line = MARKDOWN_BOLD.sub(r"\1", line)
    label = []
    for _ in range(4):  # `[80746] [rank0]:[E321 02:07:08 ...]` stacks a few; a bound keeps this linear
        line = WRAPPER_PREFIX.sub("", RANK_PREFIX.sub("", line, count=1), count=1)
        stamp = TIMESTAMP.match(line)
        if stamp is None or not stamp.group(0):
            break
        label.append(stamp.group(0).strip())
        line = line[stamp.end() :]
    return " ".join(label), line, width


def normalise(text: str) -> list[str]:
    """Every line of `text`, normalised (a trailing newline does not make an empty last line)."""
    return normalise_labelled(text).lines


def normalise_labelled(text: str) -> Normalised:
    """Every line's label (time stamp, log level), normalised text and width on screen."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    parts = [_split_line(raw) for raw in physical]
    return Normalised([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])


def read_tail(path: str | Path, max_bytes: int = DIAGNOSE_TAIL_BYTES) -> str:
    """The last `max_bytes` of a file as text, starting at a line boundary when one is near (bounded: seek, not scan)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    if start > 0 and (cut := data.find(b"\n")) != -1:
        data = data[cut + 1 :]  # the first line is a fragment
    return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class RaisedException:
    """One exception as printed: its type, message (wraps undone) and the lines it spans."""

    type: str
    message: str
    first: int
    last: int

    @property
    def text(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True)
class RootError:
    """What a log's failure is: the final exception and its chain, and the tools' error lines."""

    exception: RaisedException | None = None
    chain: tuple[RaisedException, ...] = ()  # earlier exceptions, first = the original cause
    tool_lines: tuple[tuple[int, str, str], ...] = ()  # (index, tool, line), in log order
    traceback_at: int | None = None  # index of the last `Traceback (most recent call last)` line
    lines: frozenset[int] = field(default_factory=frozenset)  # every index that is part of the failure

    @property
    def final_lines(self) -> range:
        """Indices of the final exception (type line and message)."""
        return range(self.exception.first, self.exception.last + 1) if self.exception else range(0)

    def summary(self) -> str:
        """The failure in a few lines, for a person: the exception chain, else the latest tool error lines."""
        if self.exception:
            parts = [e.text for e in (*self.chain, self.exception)]
            return "\n".join(dict.fromkeys(parts))  # a chain that repeats a message says it once
        return "\n".join(line for _, _, line in self.tool_lines[-4:])

    @property
    def found(self) -> bool:
        return self.exception is not None or bool(self.tool_lines)


def root_error(lines: list[str], labels: list[str] | None = None, widths: list[int] | None = None) -> RootError:
    """Reduce normalised lines (with the labels and widths of `normalise_labelled`) to their failure."""
    return _Reader(lines, labels, widths).root_error()


class _Reader:
    """One log's normalised lines, read for their failure."""

    def __init__(self, lines: list[str], labels: list[str] | None, widths: list[int] | None):
        self.lines = lines
        self.labels = labels if labels is not None else [""] * len(lines)
        self.widths = widths if widths is not None else [len(line) for line in lines]
        self.starts = [i for i, line in enumerate(lines) if TRACEBACK.search(line)]

    def root_error(self) -> RootError:
        chain = self._exception_chain()
        standalone = self._standalone_exceptions(chain)
        # The latest exception is the final one: usually the traceback's, but a process can print more after it.
        final = max((*chain, *standalone), key=lambda e: e.first, default=None)
        earlier = tuple(e for e in chain if e is not final)
        tools = self._tool_lines()
        indices: set[int] = {i for i, _, _ in tools}
        for exc in (*chain, *standalone):
            indices.update(range(exc.first, exc.last + 1))
        return RootError(final, earlier, tuple(tools), self.starts[-1] if self.starts else None, frozenset(indices))

    def _exception_chain(self) -> list[RaisedException]:
        """The last traceback's exception, preceded by the exceptions it was chained to (first = the original)."""
        if not self.starts:
            return []
        chain: list[RaisedException] = []
        start, end = self.starts[-1], len(self.lines)
        while True:
            exc = self._traceback_exception(start, end)
            if exc is not None:
                chain.insert(0, exc)
            # Walk back only while this traceback was chained to an earlier exception.
            marker = self._previous_nonblank(start)
            if marker is None or not CHAIN.match(self.lines[marker]):
                return chain
            earlier = self._exception_before(marker)
            if earlier is None:
                return chain
            previous = [i for i in self.starts if i < earlier.first]
            if not previous:  # an excerpt that starts after the earlier traceback's header: its exception still counts
                chain.insert(0, earlier)
                return chain
            start, end = previous[-1], marker

    def _exception_before(self, marker: int) -> RaisedException | None:
        """The exception whose message ends just above a chain marker."""
        for k in range(marker - 1, max(-1, marker - MAX_MESSAGE_LINES - 2), -1):
            match = EXCEPTION.match(self.lines[k].strip())
            if match and not FRAME_LINE.match(self.lines[k]):
                return self._raised(match, self.lines, k)
        return None

    def _previous_nonblank(self, index: int) -> int | None:
        for i in range(index - 1, max(-1, index - 4), -1):
            if self.lines[i].strip():
                return i
        return None

    def _traceback_exception(self, start: int, end: int) -> RaisedException | None:
        """The exception that ends the traceback starting at `start` (its log prefix, if any, taken off each line)."""
        prefix = _prefix_pattern(self.lines[start])
        # `text` is indexed like the log: lines outside this traceback are never looked at.
        text = list(self.lines)
        if prefix:
            text[start + 1 : end] = [prefix.sub("", line, count=1) for line in self.lines[start + 1 : end]]
        for i in range(start + 1, end):
            match = EXCEPTION.match(text[i].strip())
            if match is None and FRAME.match(text[i]):
                continue
            return self._raised(match, text[:end], i) if match else None  # None: cut, or interrupted by something else
        return None

    def _raised(self, match: re.Match[str], text: list[str], first: int) -> RaisedException:
        message, last = self._message(match.group("message") or "", text, first)
        return RaisedException(match.group("type"), message, first, last)

    def _message(self, head: str, text: list[str], first: int) -> tuple[str, int]:
        """The message from its first line on, continuation lines joined (hard wraps without a space).

        It ends at a blank line, a new traceback or chain marker, another exception, or a line with a
        time stamp of its own (a new log record; continuation lines of one record carry none).
        """
        parts, last = [head.strip()] if head.strip() else [], first
        stop = min(len(text), first + MAX_MESSAGE_LINES)
        wrap_width = _wrap_width(self.widths[first:stop])
        for k in range(first + 1, stop):
            line = text[k]
            if MESSAGE_END.search(line) or (EXCEPTION.match(line.strip()) and parts) or self.labels[k]:
                break
            # A line cut at the terminal's width mid-word continues without a space; a sentence end never was cut.
            previous = text[k - 1].rstrip()
            hard = wrap_width is not None and self.widths[k - 1] == wrap_width and not previous.endswith((".", "!", "?"))
            if parts and hard:
                parts[-1] += line.strip()
            else:
                parts.append(line.strip())
            last = k
        return " ".join(parts), last

    def _standalone_exceptions(self, chain: list[RaisedException]) -> list[RaisedException]:
        """Exception lines printed without a traceback (a logger's `RuntimeError: ...`, a cut excerpt)."""
        taken = {i for exc in chain for i in range(exc.first, exc.last + 1)}
        found = []
        for i, line in enumerate(self.lines):
            if i in taken:
                continue
            match = EXCEPTION.match(line.strip())
            if match and (match.group("message") is not None or line.strip().endswith(("Error", "Exception"))):
                found.append(self._raised(match, self.lines, i))
        return found

    def _tool_lines(self) -> list[tuple[int, str, str]]:
        found = []
        for i, line in enumerate(self.lines):
            tool = next((tool for tool, pattern in TOOL_ERRORS if pattern.search(line)), None)
            # A logger that labels every line of a traceback ERROR: its frames are not error lines.
            if tool is None and ERROR_LABEL.search(self.labels[i]) and not FRAME_LINE.match(line):
                tool = "log"
            if tool is not None:
                found.append((i, tool, line.strip()))
        return found[-MAX_TOOL_LINES:]


def _prefix_pattern(line: str) -> re.Pattern[str] | None:
    """A logger's per-line prefix seen before `Traceback`, as a regex that tolerates other numbers and times."""
    prefix = line[: TRACEBACK.search(line).start()]  # type: ignore[union-attr]
    if not prefix.strip() or set(prefix.strip()) <= set("╭─│"):
        return None
    return re.compile("^" + re.sub(r"\\?\d+", r"\\d+", re.escape(prefix.rstrip())) + r"\s?")


def _wrap_width(widths: list[int]) -> int | None:
    """The width a block was hard-wrapped at: the longest on screen, shared by two lines, and a terminal's."""
    widest = max(widths, default=0)
    return widest if widest >= MIN_WRAP_WIDTH and widths.count(widest) >= 2 else None
