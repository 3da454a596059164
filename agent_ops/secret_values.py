"""Secrets: read from the controller's environment, handed to jobs in a mode-600 file, masked everywhere."""
from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping

MASK = "***"
# Values this short would mask ordinary words and numbers everywhere; they are refused instead.
MIN_SECRET_LEN = 4


class MissingSecret(KeyError):
    """A runbook declares a secret the controller's environment does not have."""


class Masker:
    """Replaces every known secret (its pieces, and their shell-quoted forms) with ***."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for piece in mask_pieces(values):
            forms.update({piece, shlex.quote(piece), piece.replace("'", "'\"'\"'")})
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._rx = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def mask(self, text: str) -> str:
        return text if self._rx is None else self._rx.sub(MASK, text)


def mask_pieces(values: Iterable[str]) -> list[str]:
    """What to mask for these secrets: each whole value and, of a multi-line one, every line on its own.

    A multi-line secret (a PEM key, a service-account JSON) rarely reaches a reader whole: the job
    log is masked line by line (sed), a status shows the last line, a tail starts mid-value. So each
    of its lines that is long enough to be secret-like is a secret of its own; shorter ones (`{`,
    `}`, a blank line) would mask ordinary text everywhere and give nothing away.
    """
    pieces: set[str] = set()
    for value in values:
        if not value:
            continue
        pieces.add(value)
        if "\n" in value or "\r" in value:
            pieces.update(line.strip() for line in re.split(r"\r\n|\n|\r", value) if len(line.strip()) >= MIN_SECRET_LEN)
    return sorted(pieces, key=len, reverse=True)


def read_secrets(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of the named secrets from the environment; all missing names are reported at once."""
    env = os.environ if environ is None else environ
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise MissingSecret(", ".join(missing))
    short = [n for n in names if len(env[n]) < MIN_SECRET_LEN]
    if short:
        raise MissingSecret(f"{', '.join(short)} (shorter than {MIN_SECRET_LEN} characters: too short to mask safely)")
    return {n: env[n] for n in names}


def env_file(values: Mapping[str, str]) -> bytes:
    """A bash-sourceable file of `export NAME=value` lines (written with mode 600 on the target)."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()).encode()


def hex_mask_list(values: Iterable[str]) -> bytes:
    """The secrets for the box's output filter (run/mask_stream.py): every form Masker masks, hex-encoded, one a line.

    Pieces, not only whole values: a multi-line secret's lines are masked on their own (mask_pieces).
    """
    forms = {form for v in mask_pieces(values) for form in (v, shlex.quote(v))}
    return "".join(form.encode().hex() + "\n" for form in sorted(forms, key=len, reverse=True)).encode()


def sed_mask_script(values: Iterable[str]) -> bytes:
    """A `sed -f` script masking secrets in a job's output on a box without python3 (secrets never reach argv).

    sed sees one line at a time, so a multi-line secret is masked by its lines (mask_pieces).
    """
    lines = []
    for v in mask_pieces(values):
        if "\n" in v or "\r" in v:
            continue  # never matches a single line; its lines are pieces of their own
        pattern = re.sub(r"([\\/.*\[\]^$])", r"\\\1", v)
        # In a sed replacement only \\, & and the delimiter are special; *** is literal.
        lines.append(f"s/{pattern}/{MASK}/g")
    return ("\n".join(lines) + "\n").encode()
