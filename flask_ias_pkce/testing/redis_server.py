"""Real ``redis-server`` processes on free local ports, for tests.

Tests of the shared cache run against the real thing, not a mock: a mock would not show
what a Redis restart does to pooled connections, how ``PX`` expiry behaves, what a cluster
answers with ``MOVED`` or how Sentinel moves the master. Every server keeps nothing on disk
and listens on 127.0.0.1 only.

- :class:`RedisServer`: one server, plain or over TLS (its own throwaway CA, optionally
  asking for a client certificate);
- :class:`RedisClusterServer`: a cluster of masters (and replicas) made with
  ``redis-cli --cluster create``;
- :class:`RedisSentinelServer`: a master, its replica and Sentinels that fail over.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._pki import issue, make_ca

__all__ = [
    "RedisClusterServer",
    "RedisSentinelServer",
    "RedisServer",
    "RedisServerNotFoundError",
]

_HOST: Final = "127.0.0.1"
_INSTALL_HINT: Final = "redis-server not found: install it with `apt-get install redis-server`"
_CLI_HINT: Final = "redis-cli not found: install it with `apt-get install redis-tools`"


class RedisServerNotFoundError(RuntimeError):
    """The ``redis-server`` binary is neither on ``PATH`` nor at ``$REDIS_SERVER``."""


def _free_port() -> int:
    # The port is free now; another process could take it before redis-server binds it,
    # in which case start() reports redis-server's own error.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _find_executable(executable: str | None) -> str:
    candidate = executable or os.environ.get("REDIS_SERVER") or "redis-server"
    found = shutil.which(candidate)
    if found is None:
        raise RedisServerNotFoundError(_INSTALL_HINT)
    return found


def _find_cli(server: str) -> str:
    # redis-cli next to the server binary first (a $REDIS_SERVER build), then on PATH.
    beside = Path(server).with_name("redis-cli")
    found = str(beside) if beside.is_file() else shutil.which("redis-cli")
    if found is None:
        raise RedisServerNotFoundError(_CLI_HINT)
    return found


def _wait(condition: Any, timeout: float, what: str, *, every: float = 0.05) -> None:
    """Call ``condition`` until it is true; a Redis error counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(every)


class TLSFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM
    files in ``directory`` (what ``redis-server --tls-*`` and clients read)."""

    def __init__(self, directory: Path, *, name: str = "flask-ias-pkce test Redis") -> None:
        ca = make_ca(f"{name} CA")
        server = issue(ca, "localhost", server=True)
        client = issue(ca, "flask-ias-pkce test client", server=False)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.pem"
        self.server_cert_file = directory / "server.pem"
        self.server_key_file = directory / "server-key.pem"
        self.client_cert_file = directory / "client.pem"
        self.client_key_file = directory / "client-key.pem"
        self.ca_file.write_text(ca.certificate_pem)
        self.server_cert_file.write_text(server.certificate_pem)
        self.server_key_file.write_text(server.key_pem)
        self.client_cert_file.write_text(client.certificate_pem)
        self.client_key_file.write_text(client.key_pem)
        for key in (self.server_key_file, self.client_key_file):
            key.chmod(0o600)

    def server_arguments(self, *, client_certificates: bool) -> list[str]:
        """``redis-server`` options that serve TLS with these files."""
        return [
            "--tls-cert-file",
            str(self.server_cert_file),
            "--tls-key-file",
            str(self.server_key_file),
            "--tls-ca-cert-file",
            str(self.ca_file),
            # What a server presents when it connects out (cluster bus, replication): a
            # certificate for client authentication, not its server certificate.
            "--tls-client-cert-file",
            str(self.client_cert_file),
            "--tls-client-key-file",
            str(self.client_key_file),
            "--tls-auth-clients",
            "yes" if client_certificates else "no",
        ]

    def client_options(self) -> dict[str, Any]:
        """``redis.Redis`` options that verify the server and present the client certificate."""
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca_file),
            "ssl_certfile": str(self.client_cert_file),
            "ssl_keyfile": str(self.client_key_file),
            "ssl_cert_reqs": "required",
        }


class RedisServer:
    """Start, stop and restart a private ``redis-server``; a context manager.

    ::

        with RedisServer() as server:
            client = server.client()
            server.stop()    # Redis goes away mid-test ...
            server.start()   # ... and comes back on the same port

    Over TLS (``tls=True``) the server gets its own throwaway CA: :attr:`tls` holds the CA,
    server and client certificate files, and :attr:`url` starts with ``rediss://``::

        with RedisServer(tls=True) as server:
            app.config["IAS_PKCE_CACHE_REDIS_URL"] = server.url
            app.config["IAS_PKCE_CACHE_REDIS_CA"] = str(server.tls.ca_file)

    :param password: if given, clients must authenticate (``--requirepass``).
    :param executable: the binary; else ``$REDIS_SERVER``, else ``redis-server`` on PATH.
    :param startup_timeout: seconds to wait for the first PING answer.
    :param tls: serve TLS only (no plain port).
    :param client_certificates: over TLS, refuse clients without a certificate of the CA.
    :param arguments: more ``redis-server`` options (cluster, replication).
    :param config: text of a configuration file given to the server first (Sentinel needs
        one it can rewrite).
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        executable: str | None = None,
        startup_timeout: float = 10.0,
        tls: bool = False,
        client_certificates: bool = False,
        arguments: Sequence[str] = (),
        config: str | None = None,
    ) -> None:
        self.password = password
        self.executable = _find_executable(executable)
        self.startup_timeout = startup_timeout
        self.host = _HOST
        self.client_certificates = client_certificates
        self.arguments = list(arguments)
        self.config = config
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        self._tls: TLSFiles | None = None
        if tls:
            self._tls = TLSFiles(self.directory / "tls")

    @property
    def directory(self) -> Path:
        """The server's working directory (its log, configuration and TLS files)."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="flask-ias-pkce-redis-"))
        return self._directory

    @property
    def tls(self) -> TLSFiles:
        """The CA, server and client certificate files of a TLS server."""
        if self._tls is None:
            raise RuntimeError("this Redis server does not speak TLS (RedisServer(tls=True))")
        return self._tls

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{self.host}:{self.port}"

    @property
    def log(self) -> str:
        """What the server wrote to its log so far."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def port(self) -> int:
        """The TCP port; fixed at the first :meth:`start` and kept across restarts."""
        if self._port is None:
            raise RuntimeError("the Redis server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0`` (``rediss://`` over TLS)."""
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        scheme = "rediss" if self._tls is not None else "redis"
        return f"{scheme}://{credentials}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again on the same port after :meth:`stop`); wait for PING."""
        if self.running:
            return
        if self._port is None:
            self._port = _free_port()
        command = [self.executable]
        if self.config is not None:
            config_path = self.directory / "redis.conf"
            if not config_path.exists():
                # Written once: Sentinel rewrites it with what it learnt, kept on restart.
                config_path.write_text(self.config)
            command.append(str(config_path))
        if self._tls is not None:
            ports = ["--port", "0", "--tls-port", str(self._port)]
            ports += self._tls.server_arguments(client_certificates=self.client_certificates)
            if "--cluster-enabled" in self.arguments:
                ports += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        else:
            ports = ["--port", str(self._port)]
        command += [
            *ports,
            "--bind",
            _HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            *self.arguments,
        ]
        if self.password:
            command += ["--requirepass", self.password]
        log_path = self.directory / "redis.log"
        # A file, not a pipe: a pipe nobody reads would eventually block the server.
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed arguments
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_until_ready(log_path)

    def _wait_until_ready(self, log_path: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with self.client(socket_timeout=0.5, retries=0) as probe:
            while True:
                if self._process.poll() is not None:
                    output = log_path.read_text(errors="replace")[-2000:]
                    self._process = None
                    raise RuntimeError(f"redis-server exited at start:\n{output}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer PING within {self.startup_timeout} s"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server: terminate, then kill if it has not exited after 5 seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # A paused server would not act on SIGTERM until continued.
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted but nothing is answered.

        This is a slow Redis, as opposed to a stopped one; :meth:`resume` undoes it.
        """
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("the Redis server is not running")
        self._process.send_signal(signum)

    def kill(self) -> None:
        """Kill the server (SIGKILL): a crash, with no chance to say goodbye."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def client(self, *, socket_timeout: float = 2.0, retries: int = 1) -> redis.Redis:
        """A new ``redis.Redis`` for this server (bytes in, bytes out).

        :param retries: immediate retries on a connection error. redis-py's default (three,
            with backoff of seconds) would make a test against a stopped server slow.
        """
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
            **(self._tls.client_options() if self._tls is not None else {}),
        )

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Servers:
    """A context manager over several servers: a start that fails half-way stops the
    ones it started before the error goes on."""

    start: Callable[[], None]
    close: Callable[[], None]

    def __enter__(self) -> Self:
        try:
            self.start()
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


class RedisClusterServer(_Servers):
    """A Redis Cluster on loopback ports, created with ``redis-cli --cluster create``.

    ::

        with RedisClusterServer(masters=3, replicas=1) as cluster:
            app.config["IAS_PKCE_CACHE_REDIS_URL"] = cluster.url
            app.config["IAS_PKCE_CACHE_REDIS_CLUSTER"] = True
            cluster.kill(cluster.master_of(b"some-key"))   # its replica takes over

    :param masters: shards (at least 3, as ``redis-cli`` requires).
    :param replicas: replicas per master; with none, a killed master's slots stay down
        until it is started again.
    :param node_timeout: milliseconds after which a silent node counts as failed and its
        replica is promoted (Redis's default is 15 s; a test wants it short).
    :param password: if given, every node requires it (and replicas use it).
    :param tls: every node, its cluster bus and replication speak TLS only, with one CA.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout: int = 1000,
        password: str | None = None,
        tls: bool = False,
        executable: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.password = password
        self.startup_timeout = startup_timeout
        arguments = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout),
            # The other shards keep serving while one is down: an outage of one slot range
            # is not an outage of the whole cache.
            "--cluster-require-full-coverage",
            "no",
            # Replicas sync at once (Redis waits 5 s for more replicas by default): a replica
            # that has not synced cannot take over.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if password:
            arguments += ["--masterauth", password]
        # The cluster bus gets a free port of its own: the default (port + 10000) may be
        # taken, or beyond 65535.
        self.nodes = [
            RedisServer(
                password=password,
                executable=executable,
                tls=tls,
                arguments=[*arguments, "--cluster-port", str(_free_port())],
            )
            for _ in range(masters * (1 + replicas))
        ]
        if tls:
            # One CA for all nodes: they verify each other on the bus and in replication.
            shared = self.nodes[0].tls
            for node in self.nodes[1:]:
                node._tls = shared
        self.masters = masters
        self.replicas = replicas
        self.cli = _find_cli(self.nodes[0].executable)
        self._created = False

    @property
    def url(self) -> str:
        """The URL of the first node: a client finds the others from it."""
        return self.nodes[0].url

    @property
    def tls(self) -> TLSFiles:
        """The CA, server and client certificate files shared by every node."""
        return self.nodes[0].tls

    def start(self) -> None:
        """Start every node (again), and create the cluster the first time; wait until every
        running node reports ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        if not self._created:
            self._create()
        self.wait_until_ok()

    def _create(self) -> None:
        command = [
            self.cli,
            "--cluster",
            "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        if self.password:
            command += ["-a", self.password, "--no-auth-warning"]
        if self.nodes[0]._tls is not None:
            tls = self.tls
            command += ["--tls", "--cacert", str(tls.ca_file)]
            command += ["--cert", str(tls.client_cert_file), "--key", str(tls.client_key_file)]
        result = subprocess.run(  # noqa: S603 - our own fixed arguments
            command, capture_output=True, timeout=self.startup_timeout, check=False
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")
        self._created = True

    def wait_until_ok(self, timeout: float | None = None) -> None:
        """Wait until every running node reports ``cluster_state:ok``, every running
        replica is in sync with its master, and every slot is served by a running master."""

        def ok() -> bool:
            running = [node for node in self.nodes if node.running]
            for node in running:
                with node.client(socket_timeout=0.5, retries=0) as client:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
            return set(self.master_nodes()) <= set(running)

        _wait(
            ok,
            timeout or self.startup_timeout,
            "the cluster did not report state ok with every replica in sync",
        )

    def master_nodes(self) -> list[RedisServer]:
        """The running nodes that are masters of slots now (they change on failover)."""
        by_port = {node.port: node for node in self.nodes}
        for node in self.nodes:
            if not node.running:
                continue
            with node.client(socket_timeout=0.5, retries=0) as client:
                slots = client.execute_command("CLUSTER", "SLOTS")
            return [by_port[int(entry[2][1])] for entry in slots]
        return []

    def master_of(self, key: str | bytes) -> RedisServer:
        """The node that serves ``key``'s hash slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            with node.client(socket_timeout=0.5, retries=0) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(master[1])
                        return next(node for node in self.nodes if node.port == port)
        raise RuntimeError("no running node knows the slot")

    def kill(self, node: RedisServer) -> None:
        """Kill one node (SIGKILL); :meth:`start` brings it back (as a replica, if its
        replica took over)."""
        node.kill()

    def client(self, *, socket_timeout: float = 2.0) -> redis.RedisCluster:
        """A new ``redis.RedisCluster`` for this cluster (bytes in, bytes out)."""
        first = self.nodes[0]
        tls = first.tls.client_options() if first._tls is not None else {}
        return redis.RedisCluster(
            host=first.host,
            port=first.port,
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            **tls,
        )

    def close(self) -> None:
        """Stop every node and remove their working directories."""
        for node in self.nodes:
            node.close()


class RedisSentinelServer(_Servers):
    """A master, a replica and Sentinels (``redis-server --sentinel``) that watch them.

    ::

        with RedisSentinelServer() as group:
            app.config["IAS_PKCE_CACHE_REDIS_SENTINELS"] = group.sentinel_addresses
            app.config["IAS_PKCE_CACHE_REDIS_SENTINEL_MASTER"] = group.service_name
            group.kill_master()              # a crash ...
            group.wait_for_failover()        # ... and the replica is the master

    :param sentinels: how many Sentinels; a majority of them must agree on a failover.
    :param down_after: milliseconds of silence after which the master is down (Redis's
        default is 30 s; a test wants it short).
    :param password: the master's and replica's password (the Sentinels use it too).
    :param sentinel_password: if given, the Sentinels themselves require it.
    """

    def __init__(
        self,
        *,
        service_name: str = "flask-ias-pkce",
        sentinels: int = 3,
        down_after: int = 1000,
        failover_timeout: int = 5000,
        password: str | None = None,
        sentinel_password: str | None = None,
        executable: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.service_name = service_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.startup_timeout = startup_timeout
        self._down_after = down_after
        self._failover_timeout = failover_timeout
        replication = ["--masterauth", password] if password else []
        self.servers = [
            RedisServer(password=password, executable=executable, arguments=replication)
            for _ in range(2)
        ]
        self.sentinels = [
            RedisServer(password=sentinel_password, executable=executable, arguments=["--sentinel"])
            for _ in range(sentinels)
        ]
        self._quorum = sentinels // 2 + 1
        self._first_master: RedisServer | None = None

    @property
    def sentinel_addresses(self) -> list[str]:
        """``["127.0.0.1:<port>", ...]``, what ``IAS_PKCE_CACHE_REDIS_SENTINELS`` takes."""
        return [sentinel.address for sentinel in self.sentinels]

    def start(self) -> None:
        """Start the servers (the first one as master, the first time) and the Sentinels;
        wait until the Sentinels know the master, its replica and each other."""
        master, replica = self.servers
        if self._first_master is None:
            self._first_master = master
            master.start()
            replica.arguments += ["--replicaof", master.host, str(master.port)]
            replica.start()
            _wait(
                lambda: self._role(replica) == "slave" and self._link_up(replica),
                self.startup_timeout,
                "the replica did not connect to its master",
            )
            for sentinel in self.sentinels:
                sentinel.config = self._sentinel_config(master)
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        _wait(self._sentinels_ready, self.startup_timeout, "the Sentinels did not agree")

    def _sentinel_config(self, master: RedisServer) -> str:
        name = self.service_name
        lines = [
            f"sentinel monitor {name} {master.host} {master.port} {self._quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after}",
            f"sentinel failover-timeout {name} {self._failover_timeout}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            # Sentinels authenticate to each other with the password they require.
            lines += [f"sentinel sentinel-pass {self.sentinel_password}"]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _role(server: RedisServer) -> str:
        with server.client(socket_timeout=0.5, retries=0) as client:
            return str(client.info("replication").get("role"))

    @staticmethod
    def _link_up(server: RedisServer) -> bool:
        with server.client(socket_timeout=0.5, retries=0) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client(socket_timeout=0.5, retries=0) as client:
                state = client.sentinel_master(self.service_name)
                if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
                if int(state["num-slaves"]) < 1 or state.get("is_sdown"):
                    return False
        return True

    def master(self) -> RedisServer:
        """The server the Sentinels name as master now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with sentinel.client(socket_timeout=0.5, retries=0) as client:
                _, port = client.sentinel_get_master_addr_by_name(self.service_name)
            return next(server for server in self.servers if server.port == int(port))
        raise RuntimeError("no Sentinel is running")

    def kill_master(self) -> RedisServer:
        """Kill the current master (SIGKILL) and return it; the Sentinels fail over."""
        master = self.master()
        master.kill()
        return master

    def wait_for_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the Sentinels name another master than ``old`` and it accepts writes."""

        def moved() -> bool:
            new = self.master()
            return new is not old and new.running and self._role(new) == "master"

        _wait(moved, timeout, "the Sentinels did not fail over", every=0.1)
        return self.master()

    def close(self) -> None:
        """Stop everything and remove the working directories."""
        for server in [*self.sentinels, *self.servers]:
            server.close()
