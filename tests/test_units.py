"""tasks/units.py: one unit system (powers of 1024, the units --limit-rate is spelled in)."""

from memrestore.backends.streams import parse_rate
from memrestore.tasks import units


def test_a_rate_limit_shows_as_the_rate_it_was_spelled_in():
    assert units.rate(parse_rate("50M")) == "50.0 MiB/s"
    assert units.rate(parse_rate("1G")) == "1.0 GiB/s"


def test_sizes_durations_ages_and_eta_read_as_a_person_writes_them():
    assert units.size(317046784) == "302.4 MiB"
    assert units.size(512) == "512 B"
    assert units.size(None) == "-"
    assert units.duration(0.4234) == "0.42 s"
    assert units.duration(245) == "4 min 05 s"
    assert units.duration(7620) == "2 h 07 min"
    assert units.age(30 * 3600) == "30.0 h"
    assert units.age(5 * 86400) == "5.0 d"
    assert units.eta(50, 100, 10) == "5.00 s"
    assert units.eta(100, 100, 10) is None
    assert units.eta(0, 100, 0) is None
