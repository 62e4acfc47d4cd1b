"""Names of event sources, and where per-event consumers keep their state.

A light module (logicblocks' identifier types only), shared by the consumers and
by ``cluster status``, which reads the same names and states from the database.
"""

from typing import Any

from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    StreamIdentifier,
)

from .partitions import CategoryPartition

# logicblocks' EventConsumerStateStore keeps its state in this stream of the state
# category, as {"state": {"last_sequence_number": n}} (pinned by
# test_saved_positions_are_those_the_state_store_saved).
STATE_STREAM = "default"


def source_key(identifier: EventSourceIdentifier) -> str:
    """A short readable name for an event source: ``category``,
    ``category/stream`` or, for a partition, ``category#index/count``."""
    match identifier:
        case CategoryPartition():
            return identifier.key
        case StreamIdentifier(category=category, stream=stream):
            return f"{category}/{stream}"
        case CategoryIdentifier(category=category):
            return category
    return str(identifier.serialise())


def state_category_name(subscriber_group: str, source: EventSourceIdentifier) -> str:
    """Where a group keeps its consumer state for one source."""
    return f"{subscriber_group}.state.{source_key(source).replace('/', '.')}"


def position_in_state(payload: Any) -> int | None:
    """The position a saved consumer state (an event's payload) records."""
    state = payload.get("state") if isinstance(payload, dict) else None
    position = state.get("last_sequence_number") if isinstance(state, dict) else None
    return position if isinstance(position, int) else None
