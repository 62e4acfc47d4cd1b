"""The reader's decoding: orjson for payloads, with the standard library for the
rest, and ``StoredEvent``s made without their ``__init__``."""

import dataclasses
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from logicblocks.event.types import StoredEvent

from eventcomposition.consumers.decoding import (
    EVENT_COLUMNS,
    FastJsonLoader,
    fast_json_loads,
    stored_event_rows,
)


@pytest.mark.parametrize(
    "text",
    [
        '{"order_id": "order-1", "amount_cents": 4977, "note": "caf\\u00e9"}',
        '[1, 2.5, -3e-7, true, false, null, "", {}]',
        '{"big": 123456789012345678901234567890}',  # beyond orjson's 64 bits
        '{"edge": 9223372036854775808, "small": -9223372036854775808}',
        '{"digits": 0.12345678901234567890123}',
        '{"nested": {"deep": [[[]]]}}',
        '{"huge": 1e400}',  # orjson refuses it; json reads infinity
        '{"id": "1234567890123456789012345"}',  # a long run of digits in a string
        "[18446744073709551615, 18446744073709551616]",
    ],
)
def test_decodes_what_the_standard_library_decodes(text: str) -> None:
    assert fast_json_loads(text.encode()) == json.loads(text)
    assert fast_json_loads(memoryview(text.encode())) == json.loads(text)
    assert fast_json_loads(text) == json.loads(text)


def test_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match=r"."):
        fast_json_loads(b"{not json")


def test_the_loader_decodes_what_psycopg_hands_it() -> None:
    # psycopg gives a text-format loader a memoryview of the value.
    loader = FastJsonLoader(0)
    assert loader.load(memoryview(b'{"a": [1, 2]}')) == {"a": [1, 2]}


def _values() -> tuple[Any, ...]:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return ("id-1", "placed", "s-1", "orders", 3, 42, {"n": 1}, at, at)


def _cursor(*names: str) -> Any:
    return SimpleNamespace(description=[SimpleNamespace(name=n) for n in names])


def test_stored_events_are_equal_to_those_their_constructor_makes() -> None:
    # Pins StoredEvent's shape: a frozen dataclass without slots whose fields are
    # the reader's columns, in order, and nothing run at construction.
    assert tuple(f.name for f in dataclasses.fields(StoredEvent)) == EVENT_COLUMNS
    assert StoredEvent.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" not in vars(StoredEvent)  # its instances have a __dict__
    assert not hasattr(StoredEvent, "__post_init__")
    values = _values()
    expected = StoredEvent(**dict(zip(EVENT_COLUMNS, values, strict=True)))

    made = stored_event_rows(_cursor(*EVENT_COLUMNS))(values)

    assert type(made) is StoredEvent
    assert made == expected
    assert (hash(made), repr(made)) == (hash(expected), repr(expected))
    assert dataclasses.asdict(made) == dataclasses.asdict(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.stream = "other"  # type: ignore[misc]
