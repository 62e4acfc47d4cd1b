"""A node's extra services: entered once its runtime runs, exited before it stops.

- ``NotifyListener``: wakes consumers when PostgreSQL NOTIFYs that events arrived.
- ``NodeHttpServer`` (``services.http``): probes, status and Prometheus metrics.
"""

from .notify import NOTIFY_LISTENER_SERVICE_NAME, ConsumerWaker, NotifyListener

__all__ = ["NOTIFY_LISTENER_SERVICE_NAME", "ConsumerWaker", "NotifyListener"]
