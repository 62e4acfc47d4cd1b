"""The sample application on the per-event path, for the throughput benchmark.

``DemoContainer`` with its consumer redefined as a subscription consumer of
logicblocks' per-event processing and the idempotent ``CustomerTotalsProcessor``
(a projection load and save per event): what the sample application ran before
it moved to a transactional consumer, measured beside it.

    eventcomposition run --app benchmarks.per_event_app:PerEventDemoContainer

A subclass of a subclass refers to the providers it inherits through its direct
base (``DemoContainer.<name>``): those are the ones its node opens.
"""

from dependency_injector import providers

from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.containers.demo import DemoContainer
from eventcomposition.demo import CustomerTotalsProcessor, DemoNames
from eventcomposition.runtime import SubscriptionConsumerRegistration


class PerEventDemoContainer(DemoContainer):
    per_event_processor = providers.Singleton(
        CustomerTotalsProcessor,
        projection_store=DemoContainer.projection_store,
        projection_name=DemoContainer.names.provided.projection_name,
    )
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=DemoContainer.event_store,
                subscriber_group=DemoContainer.names.provided.subscriber_group,
                subscription_requests=providers.Callable(
                    DemoNames.partitions, DemoContainer.names
                ),
                event_processor=per_event_processor,
            ),
        )
    )
