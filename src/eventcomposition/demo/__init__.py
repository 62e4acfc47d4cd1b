"""The sample application: orders projected into totals per customer.

- ``orders``: the "order-placed" events, sharded over ``SHARD_COUNT`` categories by
  customer; a deterministic publisher; the totals the projection must reach.
- ``processor``: ``CustomerTotalsProcessor``, idempotent, skipping malformed events.
- ``DemoContainer``: how an application declares its consumers
  (``eventcomposition run --app eventcomposition.demo:DemoContainer``).
- ``DemoCluster``: a coordinator and K observers in one process (the demo command).
"""

from .cluster import DemoCluster, DemoClusterError, NodeSummary
from .container import DemoContainer
from .orders import (
    ORDER_PLACED,
    SHARD_COUNT,
    DemoNames,
    Order,
    expected_totals,
    generate_orders,
    publish_in_batches,
    publish_orders,
    shard_of,
)
from .processor import CustomerTotalsProcessor, MalformedOrderError, amount_of
from .totals import AppliedPosition, CustomerTotals, read_totals

__all__ = [
    "ORDER_PLACED",
    "SHARD_COUNT",
    "AppliedPosition",
    "CustomerTotals",
    "CustomerTotalsProcessor",
    "DemoCluster",
    "DemoClusterError",
    "DemoContainer",
    "DemoNames",
    "MalformedOrderError",
    "NodeSummary",
    "Order",
    "amount_of",
    "expected_totals",
    "generate_orders",
    "publish_in_batches",
    "publish_orders",
    "read_totals",
    "shard_of",
]
