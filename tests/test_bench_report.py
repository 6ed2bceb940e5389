"""``benchmarks/report.py`` rewrites only its own block of BENCHMARKS.md: every other section (the
notes people wrote, the listing benchmark's section between its own markers) stays byte for byte,
wherever it stands, and a run of some rows keeps the other rows' lines of the table it replaces."""

from __future__ import annotations

from benchmarks.measure import Run, Series
from benchmarks.report import BEGIN, END, NOTES_MARKER, Row, write_report

LISTING = "<!-- listing:begin -->\n## Listing at scale\n\n| naive | 85 s |\n<!-- listing:end -->"


def _row(number: str, what: str) -> Row:
    series = Series(f"cmd {number}", [Run(1.5, 100 * 2**20, "")])
    return Row(number, what, "base", "1 s", "2 s", "2x", "t", True, "d", [series])


def _old_style_file(tmp_path, listing_inside: bool):
    """A file as the benchmark wrote it before its markers, with notes and a listing section."""
    path = tmp_path / "BENCHMARKS.md"
    write_report(path, [_row("0", "row zero"), _row("1", "row one")], {"cores": "2"}, "python -m benchmarks", 3, [])
    text = path.read_text().replace(BEGIN + "\n", "").replace(END, "")
    generated, notes = text.split(NOTES_MARKER)
    if listing_inside:
        generated += "\n" + LISTING + "\n"
    notes = "\n## Notes (written by people)\n\nkeep me\n" + ("" if listing_inside else "\n" + LISTING + "\n")
    path.write_text(generated + NOTES_MARKER + notes)
    return path


def test_a_rewrite_keeps_every_other_section_and_the_rows_it_did_not_run(tmp_path):
    for listing_inside in (False, True):
        path = _old_style_file(tmp_path, listing_inside)
        write_report(path, [_row("1", "row one, again"), _row("7", "far store")], {"cores": "2"},
                     "python -m benchmarks --rows 1,7", 3, ["a note"])
        text = path.read_text()
        assert text.count(LISTING) == 1 and "keep me" in text and text.count(NOTES_MARKER) == 1
        block = text.split(BEGIN, 1)[1].split(END, 1)[0]
        table = [line for line in block.split("## Machine")[0].splitlines() if line[:3] in ("| 0", "| 1", "| 7")]
        assert [line[:3] for line in table] == ["| 0", "| 1", "| 7"]
        assert "row zero" in table[0] and "row one, again" in table[1] and "far store" in table[2]
        assert "Row 0 was not run this time" in block and "`python -m benchmarks`" in block
        assert "| 0 | cmd 0 |" in block  # its every-run line, kept with it

        # A second rewrite changes the block only.
        outside = text.split(BEGIN)[0], text.split(END)[1]
        write_report(path, [_row("7", "far store, again")], {"cores": "2"}, "python -m benchmarks --rows 7", 3, [])
        again = path.read_text()
        assert (again.split(BEGIN)[0], again.split(END)[1]) == outside
        assert "far store, again" in again and "row one, again" in again
