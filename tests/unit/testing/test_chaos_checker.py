"""The fault-injection run's history checker, on histories with planted violations."""

from dataclasses import replace

from eventcomposition.testing.chaos.checker import check, p99
from eventcomposition.testing.chaos.history import (
    AllocationWrite,
    Applied,
    CheckpointMove,
    Fault,
    FaultKind,
    History,
    Published,
    Readiness,
)
from eventcomposition.testing.chaos.report import render_report


def applied(
    n: int, *, node: str = "a", epoch: int = 1, at: float | None = None
) -> Applied:
    return Applied(
        event_id=f"e{n}",
        source="orders",
        stream="s",
        position=n,
        node=node,
        epoch=epoch,
        transaction=100 + n,
        at=float(n) if at is None else at,
    )


def history(records: list[Applied], **changes: object) -> History:
    base = History(
        published={f"e{n}": Published("orders", "s", n, n - 0.1) for n in range(6)},
        applied=records,
        checkpoints=[CheckpointMove("orders", None, 3, 3.0)],
        allocations=[AllocationWrite("c1", 0.5), AllocationWrite("c1", 1.0)],
        ended_at=10.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def clean() -> list[Applied]:
    # Node a holds epoch 1 up to event 2; b takes over with epoch 2.
    return [applied(n) for n in range(3)] + [
        applied(n, node="b", epoch=2) for n in range(3, 6)
    ]


def no_bound(fault: Fault) -> float:
    return 5.0


def test_a_clean_history_passes() -> None:
    report = check(history(clean()), no_bound)

    assert report.violations == []
    assert report.passed


def test_a_duplicate_is_caught() -> None:
    records = [*clean(), applied(4, node="b", epoch=2, at=5.5)]

    report = check(history(records), no_bound)

    assert report.duplicated == ["e4 applied 2 times"]
    assert not report.passed


def test_a_gap_is_caught() -> None:
    records = [record for record in clean() if record.event_id != "e2"]

    report = check(history(records), no_bound)

    assert report.lost == ["e2 (orders s position 2)"]


def test_a_reorder_is_caught() -> None:
    records = clean()
    records[1], records[2] = replace(records[1], at=2.0), replace(records[2], at=1.0)

    report = check(history(records), no_bound)

    assert len(report.out_of_order) == 1
    assert "position 1" in report.out_of_order[0]


def test_two_overlapping_holders_are_caught() -> None:
    # b's epoch 2 commits at 1.5, while a's epoch 1 still commits until 2.0.
    records = clean()
    records[3] = replace(records[3], at=1.5)

    report = check(history(records), no_bound)

    assert len(report.overlapping) == 1
    assert "epoch 2 (b)" in report.overlapping[0]


def test_one_epoch_of_two_nodes_is_caught() -> None:
    records = clean()
    records[4] = replace(records[4], node="c")

    report = check(history(records), no_bound)

    assert any("committed by b, c" in found for found in report.overlapping)


def test_two_leaders_are_caught() -> None:
    writes = [
        AllocationWrite("c1", 1.0),
        AllocationWrite("c2", 1.2),
        AllocationWrite("c1", 1.4),
    ]

    report = check(history(clean(), allocations=writes), no_bound)

    assert len(report.leaders) == 1
    assert "c2 wrote allocations at 1.200 between writes of c1" in report.leaders


def test_a_write_without_the_lock_is_caught() -> None:
    writes = [AllocationWrite("c1", 1.0), AllocationWrite("c2", 9.0, False)]

    report = check(history(clean(), allocations=writes), no_bound)

    assert report.leaders == ["c2 wrote allocations at 9.000 without the lock"]


def test_a_leader_handing_over_is_not_two_leaders() -> None:
    writes = [AllocationWrite("c1", t) for t in (1.0, 1.2)] + [
        AllocationWrite("c2", t) for t in (4.0, 4.2)
    ]

    assert check(history(clean(), allocations=writes), no_bound).leaders == []


def test_a_backward_checkpoint_is_caught() -> None:
    moves = [CheckpointMove("orders", 2, 5, 5.0), CheckpointMove("orders", 5, 3, 6.0)]

    report = check(history(clean(), checkpoints=moves), no_bound)

    assert report.backward == ["orders moved from 5 to 3 at 6.000"]


def test_a_recovery_is_measured_from_the_fault_against_its_bound() -> None:
    fault = Fault(FaultKind.KILL, "a", started=2.5, ended=4.0, affected=("orders",))

    within = check(history(clean(), faults=[fault]), no_bound)
    late = check(history(clean(), faults=[fault]), lambda fault: 0.2)

    assert [r.seconds for r in within.recoveries] == [0.5]
    assert within.passed
    assert late.slow_recoveries == [
        "kill of a at 2.5: resumed after 0.5 s, bound 0.2 s"
    ]


def test_a_database_fault_is_measured_from_its_end() -> None:
    fault = Fault(
        FaultKind.DB_CRASH, "postgres", started=0.5, ended=3.2, affected=("orders",)
    )

    report = check(history(clean(), faults=[fault]), no_bound)

    assert [round(r.seconds or 0, 1) for r in report.recoveries] == [0.8]


def test_sources_that_never_resume_are_caught() -> None:
    fault = Fault(FaultKind.PARTITION, "b", started=3.5, ended=7, affected=("orders",))
    records = clean()[:4]  # e4 and e5, published at 3.9 and 4.9, never applied

    report = check(history(records, faults=[fault]), no_bound)

    assert report.slow_recoveries == [
        "partition of b at 3.5: its sources never resumed"
    ]


def test_a_source_with_nothing_to_apply_after_a_fault_has_nothing_to_resume() -> None:
    fault = Fault(FaultKind.PARTITION, "b", started=5.5, ended=7, affected=("orders",))

    report = check(history(clean(), faults=[fault]), no_bound)

    assert report.recoveries[0].seconds == 0.0
    assert report.passed


def test_an_overlapping_fault_extends_the_bound() -> None:
    first = Fault(FaultKind.KILL, "a", started=2.5, ended=3.0, affected=("orders",))
    second = Fault(FaultKind.DB_RESTART, "postgres", started=2.6, ended=2.8)

    report = check(history(clean(), faults=[first, second]), lambda f: 0.2)

    assert report.recoveries[0].bound > 0.2
    assert report.recoveries[0].within_bound


def test_a_blocked_source_holding_up_its_nodes_other_sources_is_caught() -> None:
    # "orders" is one of the node's other sources: it must go on as usual.
    fault = Fault(FaultKind.BLOCK, "a", started=1.5, ended=4.5, affected=("orders",))
    records = clean()
    held_up = [*records[:3], replace(records[3], at=4.8), *records[4:]]

    as_usual = check(history(records, faults=[fault]), lambda fault: 1.0)
    stalled = check(history(held_up, faults=[fault]), lambda fault: 1.0)

    assert [round(r.seconds or 0, 1) for r in as_usual.recoveries] == [0.1]
    assert as_usual.passed
    assert stalled.slow_recoveries == [
        "block of a at 1.5: resumed after 1.9 s, bound 1.0 s"
    ]


def test_a_partitioned_node_slow_to_report_not_ready_is_caught() -> None:
    probes = [Readiness("b", 1.0, 4.5, 6.0, 6.5), Readiness("c", 1.0, 2.0, 6.0, None)]

    report = check(
        history(clean(), readiness=probes),
        no_bound,
        readiness_within=3.0,
        ready_again_within=5.0,
    )

    assert report.readiness == [
        "b cut at 1.0 did not report not ready within 3.0 s",
        "c healed at 6.0 was not ready again within 5.0 s",
    ]


def test_the_table_names_the_seed_and_the_counts() -> None:
    fault = Fault(FaultKind.KILL, "a", started=2.5, ended=4.0, affected=("orders",))
    records = [*clean(), applied(4, node="b", epoch=2, at=5.5)]

    text = render_report(
        check(history(records, faults=[fault]), no_bound), seed=42, minutes=2
    )

    assert "kill" in text
    assert "FAILED: seed 42 reproduces it" in text
    assert "duplicated: e4 applied 2 times" in text


def test_p99_is_the_nearest_rank() -> None:
    assert p99([1.0]) == 1.0
    assert p99([float(n) for n in range(1, 101)]) == 99.0


def test_events_a_server_crash_lost_are_reported_apart_not_held_against_consumers() -> (
    None
):
    # e6 and e7 were acknowledged, then a crash took them: gone from the store.
    acknowledged = {
        **{f"e{n}": Published("orders", "s", n, n - 0.1) for n in range(6)},
        "e6": Published("orders", "s", 6, 6.0),
        "e7": Published("orders", "s", 7, 6.1),
    }
    crash = Fault(FaultKind.DB_CRASH, "postgres", 6.5, 7.5, ("orders",))

    report = check(
        history(clean(), acknowledged=acknowledged, faults=[crash]), no_bound
    )

    assert report.lost == []
    assert report.lost_by_server == [
        "e6 (orders s position 6)",
        "e7 (orders s position 7)",
    ]
    assert report.passed
    text = render_report(report, seed=2, minutes=1)
    assert "2 acknowledged event(s) lost by the server in a crash" in text


def test_an_acknowledged_event_gone_without_a_crash_is_caught() -> None:
    acknowledged = {"e6": Published("orders", "s", 6, 6.0)}

    report = check(history(clean(), acknowledged=acknowledged), no_bound)

    assert report.lost_by_server == []
    assert report.vanished == ["e6 (orders s position 6), with no crash after"]
    assert not report.passed
