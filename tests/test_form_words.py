"""The refusals a UI user reads name form fields, not flags (flows/form_words.py): each message a
restore can end with, built by the real error classes, rewritten, with no flag left outside a
command still to run (```memrestore abort --data-dir D```)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memrestore.flows.form_words import FIELDS, in_form_words
from memrestore.tasks import errors
from memrestore.tasks.marker import MarkerInfo, Phase
from memrestore.tasks.validation import Validation, ValidationResult, command_words
from memrestore.tasks.dead_restores import what_is_left

D = Path("/srv/memory")


def _raised(call) -> Exception:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the error a refusal is built from
        return exc
    raise AssertionError("nothing was raised")


CASES = [
    (errors.DataDirNotEmptyError(D, ["tenant_3"], 3),
     "To replace tenant_3 only, with every other entry left as it is, set mode to replace_tenant"),
    (errors.DataDirNotEmptyError(D, ["tenant_9"], 3), "To add this tenant beside what is there, set mode to single_tenant"),
    (errors.TenantPathOccupiedError(3, D / "tenant_3"), "To replace tenant 3 only, set mode to replace_tenant"),
    (errors.ModelMissingError("s1", "m", ["a"]),
     "pass the model the destination serves in the destination's embedding_model field"),
    (errors.WireVersionError("s1", "2.0", "1.0"), "(then set destination's wire_version)"),
    (errors.ChecksumsRequiredError("s1", ["sqlite_checkpoint"]),
     "require_checksums is on: those bytes could not be verified. Restore a snapshot with checksums, "
     "or turn require_checksums off"),
    (errors.RestoreInProgressError.gone(D / ".restore-in-progress", "x"),
     f"finish it with a new run with resume on or undo it with `memrestore abort --data-dir {D}`"),
    (errors.RollbackFailedError(D, OSError("disk"), OSError("disk")),
     f"run `memrestore abort --data-dir {D}` to put the previous contents back, or a new run with resume on"),
    (_raised(lambda: command_words("check {tenant}")), "validation's command 'check {tenant}' names {tenant}"),
    (errors.ValidationTimedOutError(Validation(command="c"), ValidationResult(status="timed_out", seconds=5.0,
                                                                             reason="command `c` ran past it"),
                                    D, "s1"),
     "Raise validation's timeout_seconds if the check needs longer"),
]


def _flags_outside_code(text: str) -> list[str]:
    prose = re.sub(r"`[^`]*`", "", text)
    return [flag for flag in FIELDS if re.search(re.escape(flag) + r"(?![\w-])", prose)]


@pytest.mark.parametrize("error,expected", CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_a_refusal_in_form_words(error, expected):
    cli = str(error)
    ui = in_form_words(cli)
    assert expected in ui and expected not in cli, ui
    assert _flags_outside_code(ui) == [], ui


def test_what_an_interrupted_restore_left_in_form_words():
    info = MarkerInfo(snapshot_id="s1", tenant_id=3, mode="new_cluster", phase=Phase.STAGING, pid=1, host="h",
                      started_at="2026-12-07T00:00:00+00:00")
    ui = in_form_words(what_is_left(D, info))
    assert ("Finish it with a new run with resume on and the same backend, tenant_id 3, snapshot s1, "
            "mode new_cluster and data_dir") in ui, ui
    assert f"`memrestore abort --data-dir {D}`" in ui and _flags_outside_code(ui) == []
