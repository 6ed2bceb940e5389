"""What the ``memrestore`` commands share: the two consoles, the options several commands take,
and how a command ends with one message (exit status: flows/cli/__init__.py)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console

from memrestore.backends.errors import RestoreError
from memrestore.backends.errors import InstantSpellingError
from memrestore.backends.listing import format_instant, parse_instant
from memrestore.backends.errors import RateSpellingError
from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import DEFAULT_STREAMS, MAX_STREAMS, parse_rate
from memrestore.tasks.errors import ShareSpellingError
from memrestore.tasks.share import parse_share

# Off a terminal (a pipe, a log file), lines are not cut to 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@contextmanager
def errors_as_messages(verbose: bool) -> Iterator[None]:
    """A refusal or failure becomes one message on stderr and exit 1, never a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except RestoreError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; if a restore was running, its marker tells `--resume` or `abort` what to do")
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if verbose:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (run again with --verbose for the traceback)")


def _refused_by(parse: Callable[[str], object], error: type[ValueError]) -> Callable[[Optional[str]], Optional[str]]:
    """An option's callback: a value ``parse`` refuses with ``error`` is a usage error (exit 2),
    saying why; any other is kept as written."""
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse(value)
            except error as exc:
                raise typer.BadParameter(str(exc)) from None
        return value

    return check


_limit_rate = _refused_by(parse_rate, RateSpellingError)
_as_of = _refused_by(parse_instant, InstantSpellingError)  # kept as written: see as_of_instant
#: ``--sample`` (``drill``, ``sample-verify``): a share of the stored bytes, 5% or 10G.
share_spelling = _refused_by(parse_share, ShareSpellingError)


def as_of_instant(value: str) -> tuple[int, str, str]:
    """An ``--as-of`` time as unix microseconds, as the UTC instant the snapshots are compared
    with (whatever zone it was written in), and as a note for people: ``as of <instant>``, with
    how it was written when that differs (and ``read as UTC`` when it had no zone)."""
    micros = parse_instant(value)
    instant = format_instant(micros)
    written = "" if value.strip() == instant else f" ({value!r}{' read as UTC' if _zoneless(value) else ''})"
    return micros, instant, f"as of {instant}{written}"


def _zoneless(value: str) -> bool:
    import datetime

    return datetime.datetime.fromisoformat(value.strip()).tzinfo is None


BackendOpt = typer.Option(..., "--backend", help="file:///abs/path, a path, or s3://bucket\\[/prefix]")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs and tracebacks.")
# restore and drill: a drill's tenants each restore on --streams, and share one --limit-rate.
StreamsOpt = typer.Option(
    DEFAULT_STREAMS, "--streams", min=1, max=MAX_STREAMS, show_default=False,
    help="GETs a restore keeps in flight across all its blobs (S3; large blobs in ranged parts); "
         "in a drill, each tenant's restore. Default: found as it runs, starting with a few and adding "
         "more while the throughput grows (up to --max-streams).")
MaxStreamsOpt = typer.Option(
    DEFAULT_CEILING, "--max-streams", min=1, max=MAX_STREAMS,
    help="Without --streams: the most streams the restore may find worth keeping in flight.")
LimitRateOpt = typer.Option(
    None, "--limit-rate", callback=_limit_rate, metavar="RATE",
    help="Cap the total download rate, bytes a second: 50M, 1G, 500k (powers of 1024); a drill's cap is "
         "shared by the tenants it restores at once. Default: no cap.")
AsOfOpt = typer.Option(
    None, "--as-of", callback=_as_of, metavar="TIME",
    help="The tenant as it was at TIME: its newest snapshot created at or before it (ties and order as "
         "for latest). ISO 8601: 2026-12-07T14:00:00Z, 2026-12-07T15:00+01:00, 2026-12-07; without a "
         "zone, UTC.")


def _validate_command(value: Optional[str]) -> Optional[str]:
    """A ``--validate-command`` whose template cannot work is a usage error (exit 2)."""
    if value is not None:
        from memrestore.tasks.errors import ValidationHookError
        from memrestore.tasks.validation import command_words

        try:
            command_words(value)
        except ValidationHookError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


# restore and drill (and serve, for its deployments): the operator's own validation of a copy.
ValidateCommandOpt = typer.Option(
    None, "--validate-command", callback=_validate_command, metavar="TEMPLATE",
    help="Run this command on the restored copy (a restore's staged copy, before the commit; a drill's "
         "copy, after its checks); exit status 0 passes. Placeholders: {data_dir} (a data dir holding only "
         "this tenant), {tenant_dir}, {tenant_id}, {snapshot_id}, {sqlite_path}. No shell.")
ValidateCallableOpt = typer.Option(
    None, "--validate-callable", metavar="MODULE:FUNCTION",
    help="Call this Python function on the restored copy, in a process of its own: None or True passes, "
         "False, a reason or an exception fails (e.g. memrestore.tasks.validators:commit_log_readable).")
ValidateTimeoutOpt = typer.Option(
    None, "--validate-timeout", min=0.001, metavar="SECONDS",
    help="Each validation's time limit (default 120); past it, its process group is killed and the copy fails.")


def validation_of(command: Optional[str], callable_: Optional[str], timeout: Optional[float]):
    """The options as a tasks.validation.Validation; --validate-timeout alone is a usage error."""
    from memrestore.tasks.validation import Validation

    if timeout is not None and not (command or callable_):
        raise typer.BadParameter("only with --validate-command or --validate-callable", param_hint="--validate-timeout")
    return Validation(command=command, callable=callable_, **({"timeout_seconds": timeout} if timeout else {}))
