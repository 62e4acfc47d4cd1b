"""``eventcomposition dead-letters list``: the events parked by transactional
consumers, read from PostgreSQL (``dead-letters retry`` is in
``dead_letters_retry``: it builds the application, which listing does not need)."""

import argparse
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..consumers.claims import DeadLetter
from ..consumers.postgres import PostgresCheckpointStore
from .db import reachable_postgres


async def list_dead_letters(args: argparse.Namespace) -> int:
    postgres = await reachable_postgres(args)
    where = postgres.location()
    async with AsyncConnectionPool[AsyncConnection[Any]](
        postgres.conninfo(), min_size=1, max_size=1, open=False
    ) as pool:
        letters = await PostgresCheckpointStore(pool).dead_letters(args.group)
    if not letters:
        print(f"no dead letters in {where}")
        return 0
    print("\n".join(describe(letter) for letter in letters))
    return 0


def describe(letter: DeadLetter) -> str:
    """One line per letter: a failed event, or one waiting behind its stream's."""
    state = "waiting" if letter.waiting else "failed"
    stream = f"stream={letter.stream}  " if letter.stream else ""
    return (
        f"{letter.group}  {letter.source}  sequence_number={letter.sequence_number}  "
        f"{stream}{state}  event={letter.event_id}  attempts={letter.attempts}  "
        f"parked_at={letter.parked_at.isoformat(timespec='seconds')}  {letter.error}"
    )
