"""EventRuntime: register consumers in one call and run them with a clean lifecycle."""

from .consumer_service import ConsumerService
from .errors import RuntimeLifecycleError
from .runtime import BROKER_SERVICE_NAME, EventRuntime
from .settings import EventConsumerSettings, continue_after_error

__all__ = [
    "BROKER_SERVICE_NAME",
    "ConsumerService",
    "EventConsumerSettings",
    "EventRuntime",
    "RuntimeLifecycleError",
    "continue_after_error",
]
