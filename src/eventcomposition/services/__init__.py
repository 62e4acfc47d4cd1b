"""Services a node runs beside its runtime (entered after it starts, exited before
it stops): the NOTIFY listener that wakes consumers when events arrive."""

from .notify import NOTIFY_LISTENER_SERVICE_NAME, ConsumerWaker, NotifyListener

__all__ = ["NOTIFY_LISTENER_SERVICE_NAME", "ConsumerWaker", "NotifyListener"]
