"""The policies a transactional consumer's settings name (light: the settings
import them)."""

from enum import StrEnum


class PoisonPolicy(StrEnum):
    """What happens to an event its processor keeps failing."""

    PARK = "park"
    """Park it as a dead letter and go on with the rest of its source."""
    STOP = "stop"
    """Stop its source (the others go on); the consumer reports errored."""
