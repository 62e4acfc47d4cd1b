"""The base of every error eventcomposition raises on purpose.

Each subclass stands for one failure a user can act on, and its message says what to
do about it.
"""


class EventCompositionError(Exception):
    """Base class of the errors raised by eventcomposition."""
