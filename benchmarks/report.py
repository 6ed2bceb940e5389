"""The rows of the table and the markdown file they go to.

``BENCHMARKS.md`` holds the generated part (table, machine, command, every run) between
:data:`BEGIN` and :data:`END`, and everything else written by people or by other benchmarks:
after :data:`NOTES_MARKER` the notes (what dominated, what was changed, why a target is not met),
and sections of their own between their own markers (``<!-- listing:begin -->`` ...). A new run
replaces only the text between BEGIN and END, and keeps every other byte of the file. A run of
some rows only (``--rows``) keeps the other rows' lines from the table it replaces, saying so.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import Series

NOTES_MARKER = "<!-- Everything below this line is kept when the benchmark rewrites the file. -->"
BEGIN = "<!-- benchmark:begin: `python -m benchmarks` rewrites the text from here to benchmark:end -->"
END = "<!-- benchmark:end -->"
#: A section another writer keeps between markers of its own (kept wherever it stands).
_SECTION = re.compile(r"<!-- ([a-z0-9-]+):begin -->.*?<!-- \1:end -->", re.S)
MiB = 1024 * 1024


@dataclass
class Row:
    number: str
    what: str
    baseline: str
    ours: str  # memrestore's median, as shown
    theirs: str  # the baseline's median, as shown
    ratio: str
    target: str
    met: bool | None  # None: nothing to meet (report only)
    detail: str = ""
    series: list[Series] = field(default_factory=list)

    @classmethod
    def time_ratio(cls, number: str, what: str, baseline: str, ours: Series, theirs: Series, *,
                   limit: float | None = None, in_flow: bool = False, flow_limit: float | None = None,
                   fixed_cost: float | None = None) -> "Row":
        """Time against the baseline's. Targets (each judged when given): the whole command's
        ratio <= ``limit``; inside the flow, <= ``flow_limit``; with ``fixed_cost`` (row 0's
        command), the whole command <= ``flow_limit`` x the baseline + that (issue 20, row 6)."""
        ratio = ours.median_seconds / theirs.median_seconds
        detail = f"memrestore peak RSS {ours.max_rss_bytes / MiB:.0f} MiB"
        flow = _in_flow(ours) if in_flow or flow_limit is not None else None
        if flow is not None:
            detail += (f"; inside the flow {flow:.2f} s (ratio {flow / theirs.median_seconds:.2f}), the rest "
                       f"({ours.median_seconds - flow:.2f} s) is the CLI's start-up and the flow run's own cost")
        targets, met = [], True
        if limit is not None:
            targets.append(f"time ratio <= {limit}")
            met = met and ratio <= limit
        if flow_limit is not None:
            targets.append(f"in the flow <= {flow_limit}")
            met = met and flow is not None and flow / theirs.median_seconds <= flow_limit
            if fixed_cost is not None:
                allowed = flow_limit * theirs.median_seconds + fixed_cost
                targets.append(f"whole command <= {flow_limit} x baseline + row 0's {fixed_cost:.2f} s "
                               f"= {allowed:.2f} s")
                met = met and ours.median_seconds <= allowed
            elif limit is None:
                targets.append("whole command: not judged (row 0 not run)")
        return cls(number, what, baseline, f"{ours.median_seconds:.2f} s", f"{theirs.median_seconds:.2f} s",
                   f"{ratio:.2f}x time", "; ".join(targets), met, detail, [ours, theirs])

    @classmethod
    def throughput_ratio(cls, number: str, what: str, baseline: str, ours: Series, theirs: Series, *,
                         floor: float) -> "Row":
        ratio = theirs.median_seconds / ours.median_seconds  # throughput = same bytes / time
        detail = f"memrestore peak RSS {ours.max_rss_bytes / MiB:.0f} MiB, baseline {theirs.max_rss_bytes / MiB:.0f} MiB"
        flow = _in_flow(ours)
        if flow is not None:
            detail += (f"; inside the flow {flow:.2f} s (throughput ratio {theirs.median_seconds / flow:.2f}), "
                       f"the rest ({ours.median_seconds - flow:.2f} s) is the CLI's start-up and the flow run's own cost")
        return cls(number, what, baseline, f"{ours.median_seconds:.2f} s", f"{theirs.median_seconds:.2f} s",
                   f"{ratio:.2f}x throughput", f"throughput ratio >= {floor}", ratio >= floor, detail,
                   [ours, theirs])

    @classmethod
    def rss(cls, what: str, small: Series, large: Series, *, limit_mib: float, growth: float) -> "Row":
        s, big = small.max_rss_bytes / MiB, large.max_rss_bytes / MiB
        ratio = big / s
        met = s <= limit_mib and big <= limit_mib and ratio <= growth
        detail = (f"highest of each side's runs; times {small.median_seconds:.2f} s and "
                  f"{large.median_seconds:.2f} s")
        return cls("4", what, "each other", f"{s:.0f} MiB (small)", f"{big:.0f} MiB (large)",
                   f"{ratio:.2f}x (large / small)", f"<= {limit_mib:.0f} MiB each; large <= {growth}x small",
                   met, detail, [small, large])

    @classmethod
    def rate(cls, what: str, baseline: str, ours: Series, theirs: Series, tenants: int, floor: float) -> "Row":
        ours_rate = tenants / ours.median_seconds * 60
        their_rate = tenants / theirs.median_seconds * 60
        return cls("5", what, baseline,
                   f"{ours.median_seconds:.1f} s = {ours_rate:.0f} tenants/min",
                   f"{theirs.median_seconds:.1f} s = {their_rate:.0f} tenants/min",
                   f"{ours_rate / their_rate:.2f}x tenants/min", f"tenants/min ratio >= {floor:g}",
                   ours_rate / their_rate >= floor,
                   f"memrestore peak RSS {ours.max_rss_bytes / MiB:.0f} MiB; "
                   f"{ours.median_seconds / tenants * 1000:.0f} ms vs {theirs.median_seconds / tenants * 1000:.0f} ms "
                   "a tenant", [ours, theirs])


    @classmethod
    def fixed_cost(cls, what: str, baseline: str, ours: Series, theirs: Series, allowance: float) -> "Row":
        """The floor under rows 1, 2, 3 and 6, split into its parts; met when a command costs at
        most importing Prefect + ``allowance`` seconds (issue 20)."""
        flow = _in_flow(ours) or 0.0
        rest = ours.median_seconds - theirs.median_seconds - flow
        over = ours.median_seconds - theirs.median_seconds
        return cls("0", what, baseline, f"{ours.median_seconds:.2f} s", f"{theirs.median_seconds:.2f} s",
                   f"{ours.median_seconds / theirs.median_seconds:.2f}x time (+{over:.2f} s)",
                   f"<= the import + {allowance:g} s", over <= allowance,
                   f"importing Prefect {theirs.median_seconds:.2f} s; inside the flow {flow:.2f} s; the rest "
                   f"({rest:.2f} s) is our imports, the CLI and the flow run's own cost (API calls, heartbeat)",
                   [ours, theirs])

    @classmethod
    def failed(cls, number: str, error: str) -> "Row":
        """A row whose command failed: shown as such, with the start of the error."""
        first = " ".join(error.split())[:300]
        return cls(number, "(row failed)", "", "", "", "", "", False, f"failed: {first}")


def _in_flow(series: Series) -> float | None:
    import json
    import statistics

    values = []
    for run in series.runs:
        try:
            values.append(float(json.loads(run.stdout)["seconds"]))
        except (ValueError, KeyError, TypeError):
            return None
    return statistics.median(values) if values else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Kept:
    """The lines of rows not run this time, from the table being replaced."""

    rows: dict[str, str] = field(default_factory=dict)  # number -> its line in the table
    runs: dict[str, list[str]] = field(default_factory=dict)  # number -> its "every run" lines
    generated: str = ""  # when and by what command that table was made


def kept_rows(old_block: str, numbers_run: set[str]) -> Kept:
    """From a generated block, the table lines (and every-run lines) of rows not in ``numbers_run``."""
    kept = Kept()
    match = re.search(r"Generated by (`[^`]*`) on ([^;]*);", old_block)
    if match:
        kept.generated = f"{match.group(1)} on {match.group(2)}"
    in_runs = False
    for line in old_block.splitlines():
        if line.startswith("## Every run"):
            in_runs = True
        number = line[2:].split(" |", 1)[0] if line.startswith("| ") else ""
        if not number.isdigit() or number in numbers_run:
            continue
        if in_runs:
            kept.runs.setdefault(number, []).append(line)
        elif "(row failed)" not in line:
            kept.rows[number] = line
    kept.runs = {n: lines for n, lines in kept.runs.items() if n in kept.rows}
    return kept


def render(rows: list[Row], machine: dict[str, str], command: str, pairs: int, notes: list[str],
           kept: Kept | None = None) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks: memrestore against real peers (issues 5 and 11)",
        "",
        f"Generated by `{command}` on {now}; {pairs} interleaved pair(s) (A B A B ...) per row, medians.",
        "Times are wall seconds of whole commands; peak RSS is the maximum resident set of the command and",
        "its children as `/usr/bin/time` reports it (file pages mapped by `b3sum` count): both measured",
        "from outside the measured process.",
        "",
        "| # | what | baseline (same run) | memrestore (median) | baseline (median) | ratio | target | met? | detail |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table: dict[str, str] = dict(kept.rows) if kept else {}
    for r in rows:
        met = "n/a (report)" if r.met is None else ("**yes**" if r.met else "**no**")
        table[r.number] = "| " + " | ".join(_cell(c) for c in (
            r.number, r.what, r.baseline, r.ours, r.theirs, r.ratio, r.target, met, r.detail)) + " |"
    lines += [table[n] for n in sorted(table, key=int)]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    if kept and kept.rows:
        which = ", ".join(sorted(kept.rows, key=int))
        notes = [*notes, (f"Rows {which} were" if len(kept.rows) > 1 else f"Row {which} was")
                 + " not run this time: their lines are those of the table this one replaced "
                 f"({kept.generated or 'an earlier run'}), measured then."]
    if notes:
        lines += ["", "## How it was run", ""]
        lines += [f"- {n}" for n in notes]
    lines += ["", "## Every run", "", "| # | command | seconds | peak RSS (MiB) |", "| --- | --- | --- | --- |"]
    runs: dict[str, list[str]] = dict(kept.runs) if kept else {}
    for r in rows:
        runs[r.number] = [f"| {r.number} | {_cell(s.label)} | " + ", ".join(f"{x.seconds:.2f}" for x in s.runs)
                          + " | " + ", ".join(f"{x.max_rss_bytes / MiB:.0f}" for x in s.runs) + " |"
                          for s in r.series]
    for n in sorted(runs, key=int):
        lines += runs[n]
    return "\n".join(lines) + "\n"


def split_report(text: str) -> tuple[str, str, str]:
    """``text`` as (before, the generated block, after). A file written before the markers has its
    generated block from the top to NOTES_MARKER; sections of other writers found inside it (their
    own markers) are moved after it, not dropped."""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        before, rest = text.split(BEGIN, 1)
        block, after = rest.split(END, 1)
        return before, block, after
    if NOTES_MARKER in text:
        block, after = text.split(NOTES_MARKER, 1)
        after = NOTES_MARKER + after
    else:
        block, after = text, ""
    others = [m.group(0) for m in _SECTION.finditer(block)]
    block = _SECTION.sub("", block)
    if others:
        after = "\n\n".join(others) + "\n\n" + after
    return "", block, ("\n" + after if after else "\n" + NOTES_MARKER + "\n")


def write_report(path: Path, rows: list[Row], machine: dict[str, str], command: str, pairs: int,
                 notes: list[str]) -> None:
    """Replace the generated block of ``path`` (keeping the lines of rows not run now) and keep
    every other part of the file as it is; the file is replaced whole by a rename."""
    old = path.read_text() if path.exists() else ""
    before, block, after = split_report(old)
    kept = kept_rows(block, {r.number for r in rows})
    text = (before + BEGIN + "\n" + render(rows, machine, command, pairs, notes, kept) + END
            + (after if after.startswith("\n") else "\n" + after))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the text from ``start`` to ``end`` in ``path`` (a section of one of the benchmark's
    own modules: the listing, the start-up, the S3 profile) and nothing else, or append the
    section after the notes marker (whatever follows that marker survives the main benchmark's
    rewrites, and a section's writer touches nothing outside its markers). The file is replaced
    whole by a rename, so a reader never sees half of it."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        if NOTES_MARKER not in text:
            text = (text or "# Benchmarks\n") + "\n" + NOTES_MARKER + "\n"
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def median_with_runs(values: list[float]) -> str:
    """``1.29 (1.29, 1.30, 1.32)``: the median of a section's runs, and every run."""
    import statistics

    return f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def publish_section(path: Path, lines: list[str], write: bool) -> None:
    """Print a section's lines (its first and last are its markers) and, unless told not to
    (``--no-write``), put it in ``path`` in place of the section between the same markers."""
    table = "\n".join(lines)
    print(table)
    if write:
        write_section(path, lines[0], lines[-1], table)
        print(f"written to {path}")
