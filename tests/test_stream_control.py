"""The closed loop that picks a restore's stream count (backends/stream_control.py), fed measured
windows by hand: what it decides from them. The same control running a real pool against the
far-store proxy is in tests/test_adaptive_streams.py."""

from __future__ import annotations

import pytest

from memrestore.backends.stream_control import CPU_BUSY, MIN_WINDOW, Sample, StreamControl

MB = 1_000_000


def feed(control: StreamControl, rate_of, cpu_share: float = 0.1, windows: int = 40) -> list[int]:
    """Run ``windows`` judged windows: each count's warm-up window and then a second of
    ``rate_of(streams)`` bytes; the counts after each judged window."""
    seen = []
    for _ in range(windows):
        if control.warming:  # the first window after a change
            assert control.decide(Sample(0.5, 0, 0.0)) == control.streams
        streams = control.streams
        seen.append(control.decide(Sample(1.0, int(rate_of(streams)), cpu_share * control.cores)))
    return seen


def capped_connections(per_stream: float):
    """A far store: each connection gets ``per_stream`` bytes a second, the link no limit."""
    return lambda streams: per_stream * streams


def full_link(link: float, per_stream: float):
    """A link that ``link // per_stream`` connections fill: beyond them, nothing more."""
    return lambda streams: min(link, per_stream * streams)


def test_climbs_to_the_ceiling_while_each_connection_is_capped():
    control = StreamControl(ceiling=48, start=4, cores=2)
    seen = feed(control, capped_connections(3 * MB))
    # 4 -> 8 paid in full: the next step is a leap (x4), then the ceiling.
    assert seen[:5] == [8, 32, 48, 48, 48]
    assert set(seen[4:]) == {48} and control.reason == "ceiling"


def test_stays_low_when_one_connection_fills_the_link():
    control = StreamControl(ceiling=48, start=4, cores=2)
    seen = feed(control, full_link(100 * MB, 200 * MB))
    assert seen[0] == 8 and seen[1] == 4  # tried 8, no gain: back to 4
    assert max(seen) == 8 and seen[-1] == 4


def test_stops_where_the_link_fills():
    control = StreamControl(ceiling=64, start=4, cores=2)
    seen = feed(control, full_link(100 * MB, 6 * MB))  # 17 connections fill it
    # 4 -> 8 paid in full, so a leap to 32 (100 MB/s: +108%, not the +225% of a full leap, but
    # more than a quarter of it: kept); 64 gives nothing more: back to 32.
    assert seen[:4] == [8, 32, 64, 32]
    assert max(seen) == 64 and seen[-1] == 32


def test_tries_again_after_settling_and_less_often_when_it_still_does_not_pay():
    control = StreamControl(ceiling=64, start=4, cores=2)
    seen = feed(control, full_link(100 * MB, 6 * MB), windows=80)
    probes = [i for i, n in enumerate(seen) if n == 64]
    assert len(probes) >= 3
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]  # backs off


def test_a_link_that_gets_better_is_found_on_the_next_try():
    control = StreamControl(ceiling=64, start=4, cores=2)
    feed(control, full_link(40 * MB, 6 * MB), windows=4)  # 4 -> 8 -> 16, no gain: back to 8
    assert control.streams == 8
    seen = feed(control, capped_connections(6 * MB), windows=30)
    assert seen[-1] == 64


def test_stops_adding_when_this_process_uses_its_cores():
    control = StreamControl(ceiling=48, start=4, cores=2)
    # Throughput would still grow, but the CPU is the limit from 32 streams on.
    cpu = {4: 0.3, 8: 0.6, 32: CPU_BUSY + 0.05, 48: 1.0}
    seen = []
    for _ in range(20):
        if control.warming:
            control.decide(Sample(0.5, 0, 0.0))
        n = control.streams
        seen.append(control.decide(Sample(1.0, n * 5 * MB, cpu[n] * 2)))
    assert max(seen) == 32 and seen[-1] == 32 and control.reason == "CPU"


def test_a_window_short_of_work_is_not_judged():
    control = StreamControl(ceiling=48, start=4, cores=2)
    control.decide(Sample(0.5, 0, 0.0))
    # A stream idle for want of a part: the rate says nothing about the link; no step either way.
    for _ in range(5):
        assert control.decide(Sample(1.0, 1 * MB, 0.1, starved=True)) == 4
    assert control.reason == "starved"
    assert control.decide(Sample(1.0, 12 * MB, 0.1)) == 8


def test_a_starved_window_after_a_step_keeps_the_step_pending():
    control = StreamControl(ceiling=48, start=4, cores=2)
    control.decide(Sample(0.5, 0, 0.0))
    assert control.decide(Sample(1.0, 40 * MB, 0.1)) == 8
    control.decide(Sample(0.5, 0, 0.0))  # warm-up
    assert control.decide(Sample(1.0, 1 * MB, 0.1, starved=True)) == 8
    assert control.decide(Sample(1.0, 41 * MB, 0.1)) == 4  # judged against 4's rate: no gain


def test_never_beyond_the_ceiling_nor_below_one():
    for ceiling in (1, 3, 5, 64):
        control = StreamControl(ceiling=ceiling, start=4, cores=8)
        seen = feed(control, capped_connections(1 * MB))
        assert 1 <= min(seen) and max(seen) <= ceiling and seen[-1] == ceiling
    with pytest.raises(ValueError):
        StreamControl(ceiling=0)


def test_windows_last_long_enough_for_the_reads_to_count():
    control = StreamControl(ceiling=48, start=4, cores=2, read_size=1024 * 1024)
    assert control.window_done(Sample(0.5, 0, 0.0))  # the warm-up: time only
    control.decide(Sample(0.5, 0, 0.0))
    assert not control.window_done(Sample(MIN_WINDOW / 2, 10**9, 0.0))  # too short, whatever the bytes
    assert not control.window_done(Sample(1.0, 2 * 1024 * 1024, 0.0))  # 4 streams, 2 reads: too few
    assert control.window_done(Sample(1.0, 16 * 1024 * 1024, 0.0))  # 4 reads a stream
    assert control.window_done(Sample(control.max_window, 1, 0.0))  # a stalled link still gets judged
