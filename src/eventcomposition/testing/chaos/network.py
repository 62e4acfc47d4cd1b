"""Network namespaces for a fault-injection run: partitions of real processes.

The database gets a namespace of its own, and so does every node; each node's is
joined to the database's by a veth pair with a /30 of its own. A node reaches the
server only over its pair, so taking the pair's link down cuts that node off
while its process keeps running; setting it up heals the cut. Every address
exists only inside namespaces the run creates, and ``close`` deletes them (the
links go with them), also after a failure: ``Network`` is a context manager.

The run itself (publishing, reading the history) reaches the server over its
unix socket, which no partition touches.
"""

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

_SUBNET = "10.213"
NETNS_DIR = "/run/netns"


class NetworkError(RuntimeError):
    """A namespace or link could not be set up (root and ``ip`` are needed)."""


def _ip(*args: str) -> None:
    completed = subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=False, timeout=30
    )
    if completed.returncode != 0:
        raise NetworkError(
            f"ip {' '.join(args)} failed: {completed.stderr.strip()}; the run needs "
            "root and iproute2 (ip netns, veth)"
        )


@dataclass(frozen=True)
class Link:
    """One node's namespace and its pair to the database's."""

    node: str
    namespace: str
    node_end: str
    database_end: str
    node_address: str
    database_address: str


class Network:
    """The run's namespaces: ``database`` and one per node in ``nodes``."""

    def __init__(self, nodes: Sequence[str], *, prefix: str | None = None) -> None:
        tag = prefix or secrets.token_hex(2)
        self.database = f"ecc-{tag}-db"
        self.links = {
            node: Link(
                node=node,
                namespace=f"ecc-{tag}-n{index}",
                node_end=f"ec{tag}{index}n",
                database_end=f"ec{tag}{index}d",
                node_address=f"{_SUBNET}.{index}.2",
                database_address=f"{_SUBNET}.{index}.1",
            )
            for index, node in enumerate(nodes, start=1)
        }
        self._created: list[str] = []
        self.subnet = f"{_SUBNET}.0.0/16"

    def __enter__(self) -> Self:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        self._namespace(self.database)
        for link in self.links.values():
            self._namespace(link.namespace)
            _ip(
                "link",
                "add",
                link.node_end,
                "type",
                "veth",
                "peer",
                "name",
                link.database_end,
            )
            _ip("link", "set", link.node_end, "netns", link.namespace)
            _ip("link", "set", link.database_end, "netns", self.database)
            _ip(
                "-n",
                link.namespace,
                "addr",
                "add",
                f"{link.node_address}/30",
                "dev",
                link.node_end,
            )
            _ip(
                "-n",
                self.database,
                "addr",
                "add",
                f"{link.database_address}/30",
                "dev",
                link.database_end,
            )
            _ip("-n", link.namespace, "link", "set", link.node_end, "up")
            _ip("-n", self.database, "link", "set", link.database_end, "up")

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def close(self) -> None:
        """Delete every namespace created (their links go with them)."""
        while self._created:
            name = self._created.pop()
            with contextlib.suppress(NetworkError):
                _ip("netns", "delete", name)

    def cut(self, node: str) -> None:
        """Take ``node``'s link down: it keeps running, cut off from the server."""
        _ip("-n", self.database, "link", "set", self.links[node].database_end, "down")

    def heal(self, node: str) -> None:
        _ip("-n", self.database, "link", "set", self.links[node].database_end, "up")

    def exec_prefix(self, node: str) -> list[str]:
        """The argv prefix that runs a command in ``node``'s namespace."""
        return ["ip", "netns", "exec", self.links[node].namespace]

    def node_of(self, address: str) -> str | None:
        for link in self.links.values():
            if link.node_address == address:
                return link.node
        return None


def run_in_namespace[T](namespace: str, function: Callable[[], T]) -> T:
    """Call ``function`` on a thread of its own that has joined ``namespace``'s
    network (sockets it opens, and processes it starts, live there)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            descriptor = os.open(f"{NETNS_DIR}/{namespace}", os.O_RDONLY)
            try:
                os.setns(descriptor, os.CLONE_NEWNET)
            finally:
                os.close(descriptor)
            result.append(function())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=enter_and_call, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
