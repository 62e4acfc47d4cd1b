"""Appending events to streams: parsing and checking them first, then publishing.

    events = parse_json_lines(open("events.jsonl"), source="events.jsonl")
    stored = await publish_events(event_store, events)

Every event of an input is checked before any is written, so a malformed line
(reported with its number) leaves the store untouched.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from logicblocks.event.store import EventStore, stream_publish_definition
from logicblocks.event.types import JsonValue, NewEvent, StoredEvent

from .errors import EventCompositionError

FIELDS = ("category", "stream", "name", "payload")


class PublishInputError(EventCompositionError, ValueError):
    """An event to publish is malformed; nothing of its input was written."""


@dataclass(frozen=True)
class EventToPublish:
    """One checked event: where it goes, its name and its JSON object payload."""

    category: str
    stream: str
    name: str
    payload: dict[str, JsonValue]


def parse_event(category: str, stream: str, name: str, payload: str) -> EventToPublish:
    """One event from its parts; ``payload`` is the text of a JSON object."""
    try:
        value = json.loads(payload)
    except ValueError as error:
        raise PublishInputError(f"the payload is not valid JSON: {error}") from None
    return _checked(
        {"category": category, "stream": stream, "name": name, "payload": value}
    )


def parse_json_lines(lines: Iterable[str], *, source: str) -> list[EventToPublish]:
    """The events of JSON Lines text: one object a line with ``FIELDS``.

    Blank lines are skipped. The first malformed line raises PublishInputError
    naming ``source`` and the line number.
    """
    events: list[EventToPublish] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                value = json.loads(line)
            except ValueError as error:
                raise PublishInputError(f"not valid JSON: {error}") from None
            events.append(_checked(value))
        except PublishInputError as error:
            raise PublishInputError(
                f"{source} line {number}: {error}; nothing was published"
            ) from None
    return events


def _checked(value: Any) -> EventToPublish:
    if not isinstance(value, dict):
        raise PublishInputError(
            f"expected a JSON object with {', '.join(FIELDS)}, got "
            f"{type(value).__name__}"
        )
    missing = [field for field in FIELDS if field not in value]
    unknown = sorted(set(value) - set(FIELDS))
    if missing or unknown:
        raise PublishInputError(
            "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                )
                if part
            )
            + f" (an event has exactly {', '.join(FIELDS)})"
        )
    for field in FIELDS[:3]:
        text = value[field]
        if not isinstance(text, str) or not text.strip():
            raise PublishInputError(f"{field} must be a non-empty string")
    if not isinstance(value["payload"], dict):
        raise PublishInputError("payload must be a JSON object")
    return EventToPublish(
        category=value["category"],
        stream=value["stream"],
        name=value["name"],
        payload=value["payload"],
    )


async def publish_events(
    event_store: EventStore, events: Sequence[EventToPublish]
) -> list[StoredEvent[str, JsonValue]]:
    """Append ``events``; the stored events, with their positions, in input order.

    The events of one category are written together, atomically: one write (one
    transaction) for all their streams, whatever the order of the lines. Several
    categories are written one after the other, in the order they first appear;
    a failure while writing (the database gone, say) keeps the categories written
    before it. Within a stream the input's order is kept; within a category the
    events are stored stream by stream.
    """
    by_category: dict[str, dict[str, list[tuple[int, EventToPublish]]]] = {}
    for index, event in enumerate(events):
        streams = by_category.setdefault(event.category, {})
        streams.setdefault(event.stream, []).append((index, event))
    stored: list[StoredEvent[str, JsonValue] | None] = [None] * len(events)
    for category, streams in by_category.items():
        written = await event_store.category(category=category).publish(
            streams={
                stream: stream_publish_definition(
                    events=[
                        NewEvent(name=event.name, payload=event.payload)
                        for _, event in entries
                    ]
                )
                for stream, entries in streams.items()
            }
        )
        for stream, entries in streams.items():
            for (index, _), saved in zip(entries, written[stream], strict=True):
                stored[index] = saved
    return [event for event in stored if event is not None]


def categories_of(events: Iterable[EventToPublish]) -> list[str]:
    """The categories of ``events``, in the order they first appear."""
    return list(dict.fromkeys(event.category for event in events))
