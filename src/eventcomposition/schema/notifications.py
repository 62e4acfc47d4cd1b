"""The NOTIFY trigger on the events table: its names and the checks ``migrate`` runs.

``schema.sql`` creates a statement-level ``AFTER INSERT`` trigger that sends the
distinct categories each inserting statement wrote to ``NOTIFY_CHANNEL``, as a JSON
array of strings, or ``NOTIFY_WILDCARD`` when the list would not fit in a payload.
"""

from typing import Any

from psycopg import AsyncCursor

NOTIFY_CHANNEL = "eventcomposition_events"
NOTIFY_WILDCARD = "*"
"""The payload meaning "events of any category were written"."""
NOTIFY_TRIGGER = "eventcomposition_notify_events"
NOTIFY_FUNCTION = "eventcomposition_notify_events"
TRANSITION_TABLE = "inserted_events"
"""The name the trigger gives its new rows; the function reads that name."""

# pg_trigger.tgtype bits (PostgreSQL's trigger.h): a statement-level AFTER INSERT
# trigger has only the INSERT bit set.
_TGTYPE_INSERT_ONLY = 1 << 2
_RETURNS_TRIGGER = "trigger"


async def function_problems(cursor: AsyncCursor[Any]) -> list[str]:
    """What stops ``CREATE OR REPLACE FUNCTION`` of ours, if one of the name exists."""
    await cursor.execute(
        "SELECT format_type(prorettype, NULL) FROM pg_proc "
        "WHERE oid = to_regprocedure(%s)",
        [f"{NOTIFY_FUNCTION}()"],
    )
    row = await cursor.fetchone()
    if row is None or row[0] == _RETURNS_TRIGGER:
        return []
    return [f"it returns {row[0]}, not trigger, so it is not eventcomposition's"]


async def trigger_problems(cursor: AsyncCursor[Any], *, must_exist: bool) -> list[str]:
    """How the trigger of our name on ``events`` differs from the one we create."""
    await cursor.execute(
        "SELECT t.tgtype, t.tgnewtable, t.tgfoid = to_regprocedure(%s), "
        "       t.tgfoid::regproc::text "
        "FROM pg_trigger t "
        "WHERE t.tgrelid = to_regclass('events') AND t.tgname = %s",
        [f"{NOTIFY_FUNCTION}()", NOTIFY_TRIGGER],
    )
    row = await cursor.fetchone()
    if row is None:
        return ["it does not exist after the migration ran"] if must_exist else []
    tgtype, new_table, calls_ours, function = row
    problems = []
    if tgtype != _TGTYPE_INSERT_ONLY:
        problems.append(
            "it is not a statement-level AFTER INSERT trigger (and nothing else)"
        )
    if new_table != TRANSITION_TABLE:
        problems.append(
            f"its new rows are not named {TRANSITION_TABLE} "
            "(REFERENCING NEW TABLE AS ...)"
        )
    if not calls_ours:
        problems.append(f"it runs {function}(), not {NOTIFY_FUNCTION}()")
    return problems
