"""A real `redis-server` on loopback for tests: started, stopped, restarted on the same port; and a
real three-node Redis Cluster."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests._programs import require_program
from tests._service import free_port

__all__ = ("RedisClusterServers", "RedisServer")


class RedisServer:
    """One `redis-server` process bound to 127.0.0.1; `persistent`: an fsync'd append-only file, so
    a restart (even after SIGKILL) keeps every write Redis acknowledged, as deployed."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        self.binary = require_program("redis-server")
        self.workdir = workdir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--dir", str(self.workdir),
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = self.client()
        try:
            while True:
                try:
                    client.ping()
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.02)
                else:
                    return self
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def _cluster_port() -> int:
    """A free loopback port of this test process's own (`free_port`) whose cluster bus port (+10000) is
    free too."""
    for _ in range(200):
        port = free_port()
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServers:
    """A real Redis Cluster on loopback: `size` `redis-server --cluster-enabled yes` primaries (no
    replicas, no persistence) joined by `redis-cli --cluster create`, ready once every node reports
    `cluster_state:ok`. `url` names one node with the `redis+cluster://` scheme."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.binary = require_program("redis-server")
        self.cli = require_program("redis-cli")
        self.workdir = workdir
        self.ports: list[int] = []
        while len(self.ports) < size:
            port = _cluster_port()
            if port not in self.ports and port + 10000 not in self.ports and port - 10000 not in self.ports:
                self.ports.append(port)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self) -> RedisClusterServers:
        try:
            for port in self.ports:
                directory = self.workdir / str(port)
                directory.mkdir(parents=True, exist_ok=True)
                self.processes.append(
                    subprocess.Popen(
                        [
                            self.binary,
                            "--bind",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(directory / "nodes.conf"),
                            "--cluster-node-timeout",
                            "5000",
                            "--appendonly",
                            "no",
                            "--save",
                            "",
                            "--dir",
                            str(directory),
                            "--protected-mode",
                            "yes",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for port in self.ports:
                self._wait(port, lambda client: bool(client.ping()))
            subprocess.run(
                [self.cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            for port in self.ports:
                self._wait(port, lambda client: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, port: int, ready: Callable[[redis.Redis], bool]) -> None:
        deadline = time.monotonic() + 30
        client = self.node(port)
        try:
            while True:
                try:
                    if ready(client):
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis cluster node {port} not ready")
                time.sleep(0.05)  # polling for an event (the node answering), not waiting out time
        finally:
            client.close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.processes = []
