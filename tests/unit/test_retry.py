"""Backoff: doubling delays up to a maximum, with jitter drawn from a given source."""

from datetime import timedelta

import pytest

from eventcomposition import Backoff


def exact(initial_ms: int, maximum_ms: int) -> Backoff:
    return Backoff(
        initial=timedelta(milliseconds=initial_ms),
        maximum=timedelta(milliseconds=maximum_ms),
        jitter=0,
    )


def test_delays_double_up_to_the_maximum() -> None:
    backoff = exact(100, 500)

    assert [backoff.delay(n) for n in range(6)] == [
        timedelta(0),
        timedelta(milliseconds=100),
        timedelta(milliseconds=200),
        timedelta(milliseconds=400),
        timedelta(milliseconds=500),
        timedelta(milliseconds=500),
    ]


def test_a_huge_failure_count_stays_at_the_maximum() -> None:
    assert exact(100, 500).delay(10_000) == timedelta(milliseconds=500)


@pytest.mark.parametrize(
    ("drawn", "expected_ms"), [(0.0, 400), (0.5, 300), (0.999, 200.2)]
)
def test_jitter_takes_up_to_its_fraction_off_each_delay(
    drawn: float, expected_ms: float
) -> None:
    backoff = Backoff(
        initial=timedelta(milliseconds=400),
        maximum=timedelta(seconds=1),
        jitter=0.5,
        random=lambda: drawn,
    )

    assert backoff.delay(1) == timedelta(milliseconds=expected_ms)


def test_jitter_applies_to_the_capped_delay() -> None:
    backoff = Backoff(
        initial=timedelta(milliseconds=400),
        maximum=timedelta(milliseconds=500),
        jitter=0.2,
        random=lambda: 1.0,
    )

    assert backoff.delay(5) == timedelta(milliseconds=400)


def test_by_default_delays_are_jittered_but_never_below_half() -> None:
    backoff = Backoff(initial=timedelta(seconds=1), maximum=timedelta(seconds=1))
    delays = {backoff.delay(1) for _ in range(50)}

    assert len(delays) > 1
    assert all(timedelta(milliseconds=500) <= d <= timedelta(seconds=1) for d in delays)


def test_the_random_source_takes_no_part_in_equality() -> None:
    assert Backoff(random=lambda: 0.1) == Backoff(random=lambda: 0.9)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5])
def test_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(
        ValueError, match=rf"jitter must be at least 0 and below 1, got {jitter}"
    ):
        Backoff(jitter=jitter)


def test_a_zero_initial_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="initial delay must be positive"):
        Backoff(initial=timedelta(0))
