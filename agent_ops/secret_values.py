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
    """Replaces every known secret value (and its shell-quoted form) with ***."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for v in values:
            if v:
                forms.update({v, shlex.quote(v)})
        # Longest first so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._rx = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def mask(self, text: str) -> str:
        return text if self._rx is None else self._rx.sub(MASK, text)


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
    """The secrets for the box's output filter (run/mask_stream.py): every form Masker masks, hex-encoded, one a line."""
    forms = {form for v in values if v for form in (v, shlex.quote(v))}
    return "".join(form.encode().hex() + "\n" for form in sorted(forms, key=len, reverse=True)).encode()


def sed_mask_script(values: Iterable[str]) -> bytes:
    """A `sed -f` script masking secrets in a job's output on a box without python3 (secrets never reach argv)."""
    lines = []
    for v in sorted({v for v in values if v}, key=len, reverse=True):
        pattern = re.sub(r"([\\/.*\[\]^$])", r"\\\1", v).replace("\n", "\\n")
        # In a sed replacement only \\, & and the delimiter are special; *** is literal.
        lines.append(f"s/{pattern}/{MASK}/g")
    return ("\n".join(lines) + "\n").encode()
