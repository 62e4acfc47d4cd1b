"""EventRuntime: register consumers in one call and run them with a clean lifecycle."""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .consumer_service import ConsumerService, ConsumesCategories
    from .errors import RuntimeLifecycleError
    from .policies import ErrorPolicy
    from .registrations import (
        ConsumerRegistration,
        Registration,
        SubscriberRegistration,
        SubscriptionConsumerRegistration,
    )
    from .runtime import BROKER_SERVICE_NAME, EventRuntime, ExposesSources
    from .settings import (
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

__getattr__ = lazy_attributes(__name__, __file__)
