from ..errors import EventCompositionError


class RuntimeLifecycleError(EventCompositionError, RuntimeError):
    """A runtime method called at a point of its lifecycle that does not allow it."""
