"""A log tail reduced to its failure: normalised lines, the last traceback's exception chain, tool error lines.

A failed job's log is mostly noise around one or two lines that say what went wrong. Before
any catalog entry is tried, the tail is read the way a person reads it:

- normalised line by line: ANSI colour and cursor codes go, a tqdm line keeps only its last
  carriage-return rewrite, launcher labels (`[rank4]:`, `[default0]:`, `[1,0]<stdout>:`,
  `(RayWorker pid=7602)`) and time stamps (`[2023-06-02 00:34:14,470]`, dmesg's
  `[2059991.491436]`, `2019/03/24 13:19:10`) are dropped, and a terminal's padded wrap (a
  line continued after a run of blanks) is closed up;
- reduced to the failure: the last Python traceback's final exception and its chain
  (`During handling of the above exception`, `The above exception was the direct cause`),
  exception lines printed without a traceback, and the error lines of the other tools a GPU
  box runs (pip/uv/poetry resolvers, apt/dpkg, ssh, rclone, gsutil, git, NCCL, the CUDA
  driver, the kernel's OOM killer, torchrun, compilers, C++ and Java runtimes).

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

TAIL_BYTES = 64 << 10  # the failure is at the end; a log can be GBs
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
# Time stamps a line starts with; one bracketed group that holds a clock time covers most loggers.
TIMESTAMP = re.compile(
    r"^(?:\[[^\]\n]{0,60}?\d\d:\d\d:\d\d[^\]\n]{0,40}\]:?"  # [2023-06-02 00:34:14,470]  [Sun Mar 30 08:24:00 2025]
    r"|\[\s*\d+\.\d+\]"  # dmesg: [2059991.491436]
    r"|\d{4}[-/]\d\d[-/]\d\d(?:[T ]|,\s)\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d|\sUTC)?"  # 2023-04-29 06:01:12.977
    r"|\d\d:\d\d:\d\d(?:[.,]\d+)?(?=\s))\s*"  # 10:52:53
)
# A label that says the line is an error: glog `[E1206 ...]`/`E0221 ...`, or a logger's ERROR/CRITICAL/FATAL.
ERROR_LABEL = re.compile(r"^\[?[EF]\s?\d{0,4}\b|\b(?:ERROR|CRITICAL|FATAL)\b")
PADDED_WRAP = re.compile(r"(?<=\S) {40,}(?=\S)")  # a terminal copy pads a wrapped line to the full width

TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
CHAIN = re.compile(
    r"^\s*(?:During handling of the above exception, another exception occurred"
    r"|The above exception was the direct cause of the following exception):?\s*$"
)
# A frame of a traceback (plain, notebook `---> 12`, rich `│ ... │`), source, carets, elisions.
FRAME = re.compile(r"^\s+\S|^\s*$|^\s*File \"|^\s*File [~/\w]|^-*>\s*\d+|^\s*\d+\s|^\s*│|^\s*\.\.\.|^\s*\[Previous line repeated|^Cell In\[|^\S+\.py:\d+,? in ")
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
        ("log", r"\b(?:ERROR|CRITICAL|FATAL)\b|^\[?[EF]\s?\d{0,4}[\s\d:.]*\S+\.(?:cpp|cc|cu|h|hpp):\d+\]|^Error: |^ERROR\b"),
    )
)


def normalise_line(raw: str) -> str:
    """One physical line as displayed and without its labels: last CR rewrite, no ANSI, no rank prefix or time stamp."""
    return label_and_text(raw)[1]


def label_and_text(raw: str) -> tuple[str, str]:
    """A physical line split into the time stamp / level label it started with ('' if none) and its normalised text."""
    segments = [ANSI.sub("", s) for s in raw.split("\r")]
    shown = [s for s in segments if s.strip()]
    line = PADDED_WRAP.sub("", (shown[-1] if shown else "").rstrip())
    label = []
    for _ in range(4):  # `[80746] [rank0]:[E321 02:07:08 ...]` stacks a few; a bound keeps this linear
        line = RANK_PREFIX.sub("", line, count=1)
        stamp = TIMESTAMP.match(line)
        if stamp is None or not stamp.group(0):
            break
        label.append(stamp.group(0).strip())
        line = line[stamp.end() :]
    return " ".join(label), line


def normalise(text: str) -> list[str]:
    """Every line of `text`, normalised (a trailing newline does not make an empty last line)."""
    return normalise_labelled(text)[1]


def normalise_labelled(text: str) -> tuple[list[str], list[str]]:
    """Every line's label (time stamp, log level) and normalised text, as two parallel lists."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    pairs = [label_and_text(raw) for raw in physical]
    return [label for label, _ in pairs], [line for _, line in pairs]


def read_tail(path: str | Path, max_bytes: int = TAIL_BYTES) -> str:
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


def root_error(lines: list[str], labels: list[str] | None = None) -> RootError:
    """Reduce normalised lines (and the labels `normalise_labelled` took off them) to their failure."""
    labels = labels if labels is not None else [""] * len(lines)
    chain = _exception_chain(lines, labels)
    standalone = _standalone_exceptions(lines, labels, chain)
    # The latest exception is the final one: usually the traceback's, but a process can print more after it.
    final = max((*chain, *standalone), key=lambda e: e.first, default=None)
    earlier = tuple(e for e in chain if e is not final)
    tools = _tool_lines(lines, labels)
    indices: set[int] = {i for i, _, _ in tools}
    for exc in (*chain, *standalone):
        indices.update(range(exc.first, exc.last + 1))
    starts = [i for i, line in enumerate(lines) if TRACEBACK.search(line)]
    return RootError(final, earlier, tuple(tools), starts[-1] if starts else None, frozenset(indices))


def _exception_chain(lines: list[str], labels: list[str]) -> list[RaisedException]:
    """The last traceback's exception, preceded by the exceptions it was chained to."""
    starts = [i for i, line in enumerate(lines) if TRACEBACK.search(line)]
    chain: list[RaisedException] = []
    end = len(lines)
    for start in reversed(starts):
        if start >= end:
            continue
        exc = _traceback_exception(lines, labels, start, end)
        if exc is not None:
            chain.insert(0, exc)
        # Keep walking back only while this traceback was chained to the one before it.
        marker = _previous_nonblank(lines, start)
        if marker is None or not CHAIN.match(lines[marker]):
            break
        end = marker
    return chain


def _previous_nonblank(lines: list[str], index: int) -> int | None:
    for i in range(index - 1, max(-1, index - 4), -1):
        if lines[i].strip():
            return i
    return None


def _traceback_exception(lines: list[str], labels: list[str], start: int, end: int) -> RaisedException | None:
    """The exception that ends the traceback starting at `start` (its log prefix, if any, taken off each line)."""
    prefix = _prefix_pattern(lines[start])
    body = [prefix.sub("", line, count=1) if prefix else line for line in lines[start + 1 : end]]
    for offset, line in enumerate(body):
        if FRAME.match(line) and not EXCEPTION.match(line.strip()):
            continue
        match = EXCEPTION.match(line.strip())
        if match is None:
            return None  # the traceback was cut, or something else interrupted it
        first = start + 1 + offset
        message, last = _message(match.group("message") or "", body, labels[start + 1 : end], offset, first)
        return RaisedException(match.group("type"), message, first, last)
    return None


def _prefix_pattern(line: str) -> re.Pattern[str] | None:
    """A logger's per-line prefix seen before `Traceback`, as a regex that tolerates other numbers and times."""
    prefix = line[: TRACEBACK.search(line).start()]  # type: ignore[union-attr]
    if not prefix.strip() or prefix.strip() in {"╭", "│"} or set(prefix.strip()) <= set("╭─"):
        return None
    return re.compile("^" + re.sub(r"\\?\d+", r"\\d+", re.escape(prefix.rstrip())) + r"\s?")


def _message(head: str, body: list[str], labels: list[str], offset: int, first: int) -> tuple[str, int]:
    """The message from its first line on, continuation lines joined (hard wraps without a space).

    It ends at a blank line, a new traceback or chain marker, another exception, or a line with a
    time stamp of its own (a new log record; continuation lines of one record carry none).
    """
    parts, last = [head.strip()] if head.strip() else [], first
    wrap_width = _wrap_width(body[offset : offset + MAX_MESSAGE_LINES])
    previous = body[offset]
    for k in range(offset + 1, min(len(body), offset + MAX_MESSAGE_LINES)):
        line = body[k]
        if MESSAGE_END.search(line) or (EXCEPTION.match(line.strip()) and parts) or labels[k]:
            break
        # A line cut at the terminal's width mid-word continues without a space; a sentence end never was cut.
        hard = wrap_width is not None and len(previous) == wrap_width and not previous.endswith((".", "!", "?", " "))
        if parts and hard:
            parts[-1] += line.strip()
        else:
            parts.append(line.strip())
        previous, last = line, first + (k - offset)
    return " ".join(parts), last


def _wrap_width(lines: list[str]) -> int | None:
    """The width a block was hard-wrapped at: the longest length, shared by two lines and wide enough for a terminal."""
    widths = [len(line) for line in lines]
    widest = max(widths, default=0)
    return widest if widest >= MIN_WRAP_WIDTH and widths.count(widest) >= 2 else None


def _standalone_exceptions(lines: list[str], labels: list[str], chain: list[RaisedException]) -> list[RaisedException]:
    """Exception lines printed without a traceback (a logger's `RuntimeError: ...`, a cut excerpt)."""
    taken = {i for exc in chain for i in range(exc.first, exc.last + 1)}
    found = []
    for i, line in enumerate(lines):
        if i in taken:
            continue
        match = EXCEPTION.match(line.strip())
        if match and (match.group("message") is not None or line.strip().endswith(("Error", "Exception"))):
            message, last = _message(match.group("message") or "", lines, labels, i, i)
            found.append(RaisedException(match.group("type"), message, i, last))
    return found


def _tool_lines(lines: list[str], labels: list[str]) -> list[tuple[int, str, str]]:
    found = []
    for i, line in enumerate(lines):
        tool = next((tool for tool, pattern in TOOL_ERRORS if pattern.search(line)), None)
        if tool is None and ERROR_LABEL.search(labels[i]):
            tool = "log"
        if tool is not None:
            found.append((i, tool, line.strip()))
    return found[-MAX_TOOL_LINES:]
