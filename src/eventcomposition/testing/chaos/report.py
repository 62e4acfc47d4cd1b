"""The table a fault-injection run prints: faults by kind, and what the checker
found."""

from collections import defaultdict

from rich.console import RenderableType

from ...cli.tables import add_plain_row, new_table, render
from .checker import Recovery, Report, p99
from .history import History

_COLUMNS = (
    "fault",
    "count",
    "overlapped",
    "max recovery s",
    "p99 recovery s",
    "max alone s",
    "bound s",
)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _readiness_table(history: History) -> list[RenderableType]:
    if not history.readiness:
        return []
    table = new_table(
        "partitioned node",
        "not ready after s",
        "ready again after heal s",
        numeric=("not ready after s", "ready again after heal s"),
    )
    for probe in history.readiness:
        add_plain_row(
            table,
            probe.node,
            _seconds(
                None
                if probe.not_ready_at is None
                else probe.not_ready_at - probe.cut_at
            ),
            _seconds(
                None
                if probe.ready_again_at is None
                else probe.ready_again_at - probe.healed_at
            ),
        )
    return [table, ""]


def render_report(
    report: Report, *, seed: int, minutes: float, history: History | None = None
) -> str:
    """The run's table and verdict, as plain text."""
    by_kind: dict[str, list[Recovery]] = defaultdict(list)
    for recovery in report.recoveries:
        by_kind[str(recovery.fault.kind)].append(recovery)
    faults = new_table(*_COLUMNS, numeric=_COLUMNS[1:])
    for kind, measured in sorted(by_kind.items()):
        seconds = [r.seconds for r in measured]
        never = any(value is None for value in seconds)
        known = [value for value in seconds if value is not None]
        alone = [r.seconds for r in measured if not r.overlapped]
        add_plain_row(
            faults,
            kind,
            str(len(measured)),
            str(sum(1 for r in measured if r.overlapped)),
            "never" if never else _seconds(max(known, default=0.0)),
            "never" if never else _seconds(p99(known) if known else 0.0),
            "-" if not alone else _seconds(max(alone, key=lambda v: v or 0.0)),
            _seconds(min(r.base for r in measured)),
        )
    columns = (
        "events",
        "lost",
        "duplicated",
        "out of order",
        "violations",
        "lost by the server",
    )
    totals = new_table(*columns, numeric=columns)
    add_plain_row(
        totals,
        str(report.events),
        str(len(report.lost)),
        str(len(report.duplicated)),
        str(len(report.out_of_order)),
        str(len(report.violations)),
        str(len(report.lost_by_server)),
    )
    verdict = (
        f"PASSED: seed {seed}, {minutes:g} minutes"
        if report.passed
        else f"FAILED: seed {seed} reproduces it (--seed {seed} --minutes {minutes:g})"
    )
    lines = [f"  {violation}" for violation in report.violations[:50]]
    if len(report.violations) > 50:
        lines.append(f"  ... and {len(report.violations) - 50} more")
    if report.lost_by_server:
        lines.append(
            f"  {len(report.lost_by_server)} acknowledged event(s) lost by the "
            "server in a crash (it commits asynchronously); not consumers' to "
            "apply: " + ", ".join(report.lost_by_server[:5])
        )
    readiness = _readiness_table(history) if history is not None else []
    return render(faults, "", totals, "", *readiness, *lines, verdict)
