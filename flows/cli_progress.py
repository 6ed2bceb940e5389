"""The byte progress bar a ``restore`` or ``verify`` shows on a terminal, fed by the flow's
progress reports (tasks/progress.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from memrestore.flows.cli_common import err


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    """A byte progress bar on a terminal; nothing otherwise."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from memrestore.tasks import progress

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as bar:
        job = bar.add_task("restoring", total=None)

        def advance(n: int) -> None:
            bar.advance(job, n)

        def expect(total: int) -> None:
            bar.update(job, total=total)

        # The flow runs in this process, in this context: what it reports reaches the bar.
        with progress.watching(progress.Listener(on_bytes=advance, on_total=expect)):
            yield
