"""EventRuntime: register consumers in one call and run them with a clean lifecycle."""

from .consumer_service import ConsumerService, ConsumesCategories
from .errors import RuntimeLifecycleError
from .registrations import (
    ConsumerRegistration,
    Registration,
    SubscriberRegistration,
    SubscriptionConsumerRegistration,
)
from .runtime import BROKER_SERVICE_NAME, EventRuntime, ExposesSources
from .settings import (
    ErrorPolicy,
    EventConsumerSettings,
    continue_after_error,
    error_handler_for,
)

__all__ = [
    "BROKER_SERVICE_NAME",
    "ConsumerRegistration",
    "ConsumerService",
    "ConsumesCategories",
    "ErrorPolicy",
    "EventConsumerSettings",
    "EventRuntime",
    "ExposesSources",
    "Registration",
    "RuntimeLifecycleError",
    "SubscriberRegistration",
    "SubscriptionConsumerRegistration",
    "continue_after_error",
    "error_handler_for",
]
