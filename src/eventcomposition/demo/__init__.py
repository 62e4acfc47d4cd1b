"""The sample application: orders projected into totals per customer.

- ``orders``: the "order-placed" events, one stream per customer in one ``orders``
  category that the subscriber group reads in partitions; a deterministic
  publisher; the totals the projection must reach.
- ``batches``: the batch processors its transactional consumer uses
  (``PostgresCustomerTotals``: one statement per batch; ``InMemoryCustomerTotals``:
  on commit), with no idempotency of their own; malformed events are logged and
  skipped.
- ``processor``: ``CustomerTotalsProcessor``, the same projection event by event for
  a subscription consumer (at least once), idempotent of its own; the throughput
  benchmark's per-event figure and the runtime's tests use it.
- ``DemoCluster``: a coordinator and K observers in one process (the demo command).

Its container, ``DemoContainer``, lives with the composition root in
``eventcomposition.containers.demo``; ``eventcomposition.demo:DemoContainer`` names
it too (loaded on first use, so this package never imports dependency-injector).
"""

from .batches import (
    CustomerTotalsBatchProcessor,
    InMemoryCustomerTotals,
    PostgresCustomerTotals,
)
from .cluster import (
    DemoCluster,
    DemoClusterError,
    DemoNode,
    NodeFactory,
    NodeSummary,
    SharedMemory,
)
from .orders import (
    ORDER_PLACED,
    DemoNames,
    Order,
    expected_totals,
    generate_orders,
    publish_in_batches,
    publish_orders,
)
from .processor import CustomerTotalsProcessor, MalformedOrderError, amount_of
from .totals import AppliedPosition, CustomerTotals, read_totals

__all__ = [
    "ORDER_PLACED",
    "AppliedPosition",
    "CustomerTotals",
    "CustomerTotalsBatchProcessor",
    "CustomerTotalsProcessor",
    "DemoCluster",
    "DemoClusterError",
    "DemoNames",
    "DemoNode",
    "InMemoryCustomerTotals",
    "MalformedOrderError",
    "NodeFactory",
    "NodeSummary",
    "Order",
    "PostgresCustomerTotals",
    "SharedMemory",
    "amount_of",
    "expected_totals",
    "generate_orders",
    "publish_in_batches",
    "publish_orders",
    "read_totals",
]


def __getattr__(name: str) -> object:
    # ``--app eventcomposition.demo:DemoContainer`` keeps working; the container
    # itself belongs to the composition root.
    if name == "DemoContainer":
        from ..containers.demo import DemoContainer

        return DemoContainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
