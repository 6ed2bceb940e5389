"""What a refusal calls the restore's options: flags on the command line, form fields in the UI.

Messages are written once, in the command line's words (tasks/errors.py: ``Use --mode
single_tenant ...``). A run started from a deployment (the Prefect UI's form, ``prefect deployment
run``) has no flags: its state message, log line and summary say the same words with the form's
fields (``Set mode to single_tenant ...``), rewritten by :func:`in_form_words` with the one table
below. A command in backquotes that has no form (```memrestore abort --data-dir D```, ```memrestore
snapshots ...```) is left as it is: it is still what to run; ```memrestore restore ... --resume```
becomes a new run with the resume field on.

No Prefect import: it is text.
"""

from __future__ import annotations

import re

#: Each flag of ``memrestore restore`` and the form field that holds the same value.
FIELDS = {
    "--backend": "backend",
    "--tenant": "tenant_id",
    "--snapshot": "snapshot",
    "--as-of": "as_of",
    "--data-dir": "data_dir",
    "--mode": "mode",
    "--embedding-model": "destination's embedding_model",
    "--wire-version": "destination's wire_version",
    "--tombstone-floor": "destination's tombstone_floor",
    "--require-checksums": "require_checksums",
    "--dry-run": "dry_run",
    "--resume": "resume",
    "--streams": "streams",
    "--max-streams": "max_streams",
    "--limit-rate": "limit_rate",
    "--check": "check",
    "--validate-command": "validation's command",
    "--validate-callable": "validation's callable",
    "--validate-timeout": "validation's timeout_seconds",
}

_FLAG = "(" + "|".join(re.escape(f) for f in sorted(FIELDS, key=len, reverse=True)) + r")(?![\w-])"
_VALUE = r"([A-Za-z0-9_.]+)"

#: Phrases around a flag, rewritten in this order (the first that matches a place wins there).
_RULES: list[tuple[re.Pattern[str], object]] = [
    # "Use --mode single_tenant to ...", "or --mode wipe_and_restore to ...", "pass --wire-version"
    (re.compile(r"\b(Use|use|pass|or) " + _FLAG + r"(?: " + _VALUE + r"(?=[\s,.;:)]|$))?"),
     lambda m: ("or set" if m[1] == "or" else "Set" if m[1] == "Use" else "set")
     + f" {FIELDS[m[2]]}" + (f" to {m[3]}" if m[3] else "")),
    # "... the model the destination serves with --embedding-model"
    (re.compile(r"\bwith " + _FLAG), lambda m: f"in the {FIELDS[m[1]]} field"),
    # "drop --require-checksums to restore them unverified"
    (re.compile(r"\bdrop " + _FLAG), lambda m: f"turn {FIELDS[m[1]]} off"),
    # "--require-checksums is set"
    (re.compile(_FLAG + r" is set\b"), lambda m: f"{FIELDS[m[1]]} is on"),
    # Anything else: "the same --backend, --tenant 3" -> "the same backend, tenant_id 3"
    (re.compile(_FLAG), lambda m: FIELDS[m[1]]),
]

#: A restore command to run again with --resume: in the UI, a new run of the form.
_RESUME_COMMAND = re.compile(r"`memrestore restore[^`]*--resume`")
_CODE = re.compile(r"(`[^`]*`)")


def in_form_words(message: str) -> str:
    """``message`` (the command line's words) with each flag named as the form field it is."""
    message = _RESUME_COMMAND.sub("a new run with resume on", message)
    parts = _CODE.split(message)  # odd indexes: `code`, left as it is
    for i in range(0, len(parts), 2):
        for pattern, replace in _RULES:
            parts[i] = pattern.sub(replace, parts[i])  # type: ignore[arg-type]
    return "".join(parts)
