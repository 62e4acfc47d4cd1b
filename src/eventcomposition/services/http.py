"""``NodeHttpServer``: a node's probes, status and Prometheus metrics over HTTP.

A node service (an async context manager, entered once the runtime runs)::

    server = NodeHttpServer(holdings=lag_reader, metrics=metrics, port=8080)
    node = EventNode(runtime, services=[server])   # the node attaches itself

- ``GET /health/live``: 200 while the node runs; 503 once it failed for good
  (see ``services.health``).
- ``GET /health/ready``: 200 when every readiness check passes; otherwise 503 with
  a JSON body naming the checks that failed and why.
- ``GET /status``: the node's id, role, status, service statuses and holdings.
- ``GET /metrics``: the node's ``PrometheusNodeMetrics``, lag and holdings read
  at each scrape.

Every probe answers within ``probe_timeout`` (1 s) whatever the database does:
the database is asked (``database``, then the holdings) within a shorter budget,
and what did not answer in time is reported as not known (readiness fails, with
the reason; the lag series are left out of ``/metrics``).

Other paths answer 404, other methods 405. Nothing shows settings.

Built on aiohttp's ``AppRunner`` and ``TCPSite``: the server runs on the node's own
event loop, with no thread and no framework of its own, and stops when the node
exits it.
"""

import asyncio
import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Protocol, Self

import structlog
from aiohttp import web
from logicblocks.event.processing import ProcessStatus
from logicblocks.event.types import EventSourceIdentifier
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..broker import BrokerRole
from ..errors import EventCompositionError
from ..lag import HoldingsProvider, NoHoldings, SourceLag
from ..metrics import PrometheusNodeMetrics, source_label
from .health import DatabaseCheck, LagTrend, check_readiness, liveness_failure

logger = structlog.get_logger("eventcomposition.http")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_LAG_EVENTS = 1000
# Probes in flight get this long to finish when the node stops.
SHUTDOWN_TIMEOUT_SECONDS = 2.0
# Every probe answers within this bound; the database gets most of it.
DEFAULT_PROBE_TIMEOUT = timedelta(seconds=1)
_DATABASE_SHARE = 0.8


class HttpServerError(EventCompositionError):
    """The node's HTTP server could not start."""


class OperatedRuntime(Protocol):
    @property
    def service_statuses(self) -> Mapping[str, ProcessStatus]: ...

    @property
    def broker_failed(self) -> bool: ...

    def subscriber_groups(self) -> Sequence[str]: ...

    def held_sources(self) -> Sequence[tuple[str, EventSourceIdentifier]]: ...

    def rebuilds(self) -> Sequence[Mapping[str, object]]: ...


@dataclass(frozen=True)
class _Reading:
    """What one probe read: the holdings (``None`` when not read) and why not;
    ``database_error`` is set when the database did not answer."""

    holdings: Sequence[SourceLag] | None
    error: str = ""
    database_error: str | None = None


class OperatedNode(Protocol):
    """What the server reads of a node (``EventNode`` satisfies it)."""

    @property
    def node_id(self) -> str: ...

    @property
    def role(self) -> BrokerRole: ...

    @property
    def status(self) -> ProcessStatus: ...

    @property
    def service_statuses(self) -> Mapping[str, ProcessStatus]: ...

    @property
    def runtime(self) -> OperatedRuntime: ...


class NodeHttpServer:
    """Serves a node's probes, status and metrics on ``host``:``port``.

    ``port=0`` takes a free port (see ``url`` once started).
    """

    name = "http"

    def __init__(
        self,
        *,
        node: OperatedNode | None = None,
        holdings: HoldingsProvider | None = None,
        metrics: PrometheusNodeMetrics | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_lag_events: int = DEFAULT_MAX_LAG_EVENTS,
        lag_trend_window: timedelta = timedelta(seconds=60),
        database: DatabaseCheck | None = None,
        probe_timeout: timedelta = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        self._node = node
        self._holdings = holdings if holdings is not None else NoHoldings()
        self._database = database
        self._read_budget = probe_timeout.total_seconds() * _DATABASE_SHARE
        self.metrics = metrics if metrics is not None else PrometheusNodeMetrics()
        self._host = host
        self._port = port
        self._max_lag_events = max_lag_events
        self._trend = LagTrend(lag_trend_window)
        self._runner: web.AppRunner | None = None
        self._status = ProcessStatus.INITIALISED
        self._url: str | None = None

    def attach_node(self, node: OperatedNode) -> None:
        self._node = node

    @property
    def status(self) -> ProcessStatus:
        return self._status

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8080``, once started."""
        if self._url is None:
            raise HttpServerError("the HTTP server has not started")
        return self._url

    async def __aenter__(self) -> Self:
        if self._node is None:
            raise HttpServerError(
                "the HTTP server has no node: give it one, or list it in the "
                "node's services"
            )
        self._status = ProcessStatus.STARTING
        runner = web.AppRunner(
            self._application(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as error:
            await runner.cleanup()
            self._status = ProcessStatus.ERRORED
            raise HttpServerError(
                _start_failure(self._host, self._port, error)
            ) from None
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://{_url_host(host)}:{port}"
        self._status = ProcessStatus.RUNNING
        await logger.ainfo("http.serving", url=self._url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._status = ProcessStatus.STOPPING
            await runner.cleanup()
        self._status = ProcessStatus.STOPPED

    def _application(self) -> web.Application:
        application = web.Application()
        application.router.add_get("/health/live", self._live, allow_head=False)
        application.router.add_get("/health/ready", self._ready, allow_head=False)
        application.router.add_get("/status", self._node_status, allow_head=False)
        application.router.add_get("/metrics", self._metrics, allow_head=False)
        return application

    @property
    def _served(self) -> OperatedNode:
        assert self._node is not None  # checked on entry
        return self._node

    async def _live(self, request: web.Request) -> web.Response:
        node = self._served
        failure = liveness_failure(node.runtime.broker_failed)
        body = {"live": failure is None, "status": node.status.value, "reason": failure}
        return web.json_response(body, status=200 if failure is None else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        reading = await self._read()
        readiness = check_readiness(
            self._served.runtime.service_statuses,
            reading.holdings,
            max_lag_events=self._max_lag_events,
            trend=self._trend,
            holdings_error=reading.error,
            database_error=reading.database_error,
        )
        return web.json_response(
            readiness.as_json(), status=200 if readiness.ready else 503
        )

    async def _node_status(self, request: web.Request) -> web.Response:
        node = self._served
        reading = await self._read()
        holdings, error = reading.holdings, reading.error
        body = {
            "node_id": node.node_id,
            "role": str(node.role),
            "status": node.status.value,
            "services": {
                name: status.value for name, status in node.service_statuses.items()
            },
            "sources": None if holdings is None else [_holding(h) for h in holdings],
            "sources_error": error or None,
            "database_error": reading.database_error,
            "rebuilds": list(node.runtime.rebuilds()),
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        reading = await self._read()
        runtime = self._served.runtime
        if reading.holdings is None:
            # What is held is known here, without the database; the lag is not.
            self.metrics.holdings_unknown(
                runtime.held_sources(), runtime.subscriber_groups()
            )
        else:
            self.metrics.holdings_observed(
                reading.holdings, runtime.subscriber_groups()
            )
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _read(self) -> _Reading:
        """The database's answer and the holdings, within the read budget."""
        budget = self._read_budget
        try:
            async with asyncio.timeout(budget):
                if self._database is not None:
                    try:
                        await self._database.check()
                    except Exception as error:
                        await logger.awarning(
                            "http.database-unreachable", error=repr(error)
                        )
                        reason = f"the database is unreachable ({type(error).__name__})"
                        return _Reading(None, reason, reason)
                try:
                    holdings = await self._holdings.holdings()
                except Exception as error:
                    # The error's type only: a driver's message may name hosts and
                    # users.
                    await logger.awarning("http.holdings-unreadable", error=repr(error))
                    return _Reading(None, type(error).__name__)
        except TimeoutError:
            reason = f"the database did not answer within {budget:g} s"
            await logger.awarning("http.database-timed-out", budget_seconds=budget)
            return _Reading(None, reason, reason)
        self._trend.observe(holdings)
        return _Reading(holdings)


def _holding(holding: SourceLag) -> dict[str, object]:
    return {
        "group": holding.group,
        "source": source_label(holding.source),
        "checkpoint": holding.checkpoint,
        "head": holding.head,
        "lag": holding.lag,
    }


def _start_failure(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"cannot serve HTTP on {host}:{port}: the port is already in use; stop "
            "what uses it or give this node another http.port"
        )
    return (
        f"cannot serve HTTP on {host}:{port}: {error.strerror or error}; check "
        "http.host and http.port"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
