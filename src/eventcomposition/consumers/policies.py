"""The policies a transactional consumer's settings name (light: the settings
import them)."""

from enum import StrEnum


class PoisonPolicy(StrEnum):
    """What happens to an event its processor keeps failing."""

    PARK = "park"
    """Park it as a dead letter and go on with the rest of its source (the later
    events of its stream wait behind it, unless ``PoisonOrder.NONE``)."""
    STOP = "stop"
    """Stop its source (the others go on); the consumer reports errored."""


class PoisonOrder(StrEnum):
    """What happens to the later events of a parked event's stream."""

    STREAM = "stream"
    """They are parked behind it (each stream keeps its order), while the other
    streams of the source go on; a retry applies them in order."""
    NONE = "none"
    """They are applied: the source goes on as if the parked event were not
    there, and a retry applies it after newer events of its stream."""
