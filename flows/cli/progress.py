"""The byte progress bar a ``restore`` or ``verify`` shows on a terminal, fed by the flow's
progress reports (tasks/progress.py).

Its sizes, rate and time left are written by tasks/units.py (MiB, MiB/s: the units
``--limit-rate`` is spelled in, so that ``--limit-rate 50M`` shows as ``50.0 MiB/s``), as the
UI's progress artifact and the outcome's summary write them; rich's own columns would write MB
and MB/s.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from memrestore.flows.cli.common import err


def _columns():
    """The bar's columns after the bar itself: ``1.5 MiB/4.0 MiB``, ``2.1 MiB/s``, ``ETA 1.19 s``."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    from memrestore.tasks import units

    class Bytes(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{units.size(task.completed)}/{units.size(task.total)}", style="progress.download")

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(units.rate(task.speed), style="progress.data.speed")

    class TimeLeft(ProgressColumn):
        # rich recomputes a column at most this often: an ETA that jumps every frame is unreadable.
        max_refresh = 0.5

        def render(self, task) -> Text:
            left = units.eta(task.completed, task.total, task.speed)
            return Text(f"ETA {left}" if left is not None else "ETA -", style="progress.remaining")

    return Bytes(), Rate(), TimeLeft()


@contextmanager
def progress_bar(enabled: bool) -> Iterator[None]:
    """A byte progress bar on a terminal; nothing otherwise."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, Progress

    from memrestore.tasks import progress

    with Progress("[progress.description]{task.description}", BarColumn(), *_columns(),
                  console=err, transient=True) as bar:
        job = bar.add_task("restoring", total=None)

        def advance(n: int) -> None:
            bar.advance(job, n)

        def expect(total: int) -> None:
            bar.update(job, total=total)

        # The flow runs in this process, in this context: what it reports reaches the bar.
        with progress.watching(progress.Listener(on_bytes=advance, on_total=expect)):
            yield
