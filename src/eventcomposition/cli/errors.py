from ..errors import EventCompositionError


class CommandError(EventCompositionError):
    """A command cannot do what was asked; the message says why and what to do."""
