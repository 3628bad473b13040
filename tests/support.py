"""Helpers shared by the tests (importable as ``support``; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "include" / "workflows"
#: The ``careflow`` console script of the interpreter running the tests.
CAREFLOW = str(Path(sys.executable).parent / "careflow")


def run_careflow(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The ``careflow`` command run with ``env``: its exit code and output."""
    return subprocess.run([CAREFLOW, *argv], env=env, capture_output=True, text=True, timeout=120)


def airflow_env(home: Path, workflows: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow subprocess over ``home`` and a workflows dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CAREFLOW__WORKFLOWS_DIR": str(workflows),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


def failure_output(run: Any) -> str:
    """What an ``airflow …`` subprocess printed, for a failed assertion: its first error, and its end.

    The end alone often shows only what failed last (a run's failure callback), not why.
    """
    text = f"{run.stdout}\n{run.stderr}"
    lines = text.splitlines()
    first = next(
        (i for i, line in enumerate(lines) if "[error" in line or line.startswith("Traceback")), None
    )
    head = "\n".join(lines[first : first + 80]) if first is not None else "(no error logged)"
    return f"first error:\n{head}\n\nlast output:\n{text[-2500:]}"


def careflow_env(
    home: Path,
    workflows: Path,
    db_url: str,
    tmp_path: Path,
    provider: Any,
    *,
    redis_url: str = "",
    token: str | None = None,
    connection_extra: dict[str, Any] | None = None,
    **extra: str,
) -> dict[str, str]:
    """``airflow_env`` for careflow's tasks: its database, Redis (none: the embedded breaker file of
    ``tmp_path``) and the ``careflow_messaging`` connection to ``provider`` (its own token unless
    ``token``)."""
    connection: dict[str, Any] = {
        "conn_type": "http",
        "host": provider.url,
        "password": provider.token if token is None else token,
    }
    if connection_extra:
        connection["extra"] = connection_extra
    return airflow_env(
        home,
        workflows,
        CAREFLOW_DB_URL=db_url,
        CAREFLOW_REDIS_URL=redis_url,
        CAREFLOW_BREAKER_DB=str(tmp_path / "breakers.db"),
        AIRFLOW_CONN_CAREFLOW_MESSAGING=json.dumps(connection),
        **extra,
    )


def publish_for_airflow(document: dict[str, Any], engine: Any, tmp_path: Path) -> Path:
    """Publish ``document`` into ``tmp_path / "workflows"`` (what the dags folder reads); returns that dir.

    The engine's connections are let go, so that the Airflow processes the test starts next are the
    only ones using the database.
    """
    from careflow.publishing import publish_paths
    from careflow.store.db import dispose_engines

    source = tmp_path / f"{document['id']}.json"
    source.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    workflows = tmp_path / "workflows"
    assert publish_paths([source], engine=engine, workflows_dir=workflows)[0].action == "published"
    dispose_engines()
    return workflows


def phone_spellings(phone: str) -> list[str]:
    """A Korean mobile number as written and as careflow carries it, to search output for.

    ``010-5550-1186`` -> itself, ``01055501186``, the E.164 form the provider client sends
    (``+821055501186``), the national digits without the trunk 0 (``1055501186``, in every
    unseparated spelling) and the written form without it (``10-5550-1186``, as in
    ``+82 10-5550-1186``).
    """
    digits = "".join(ch for ch in phone if ch.isdigit())
    national = digits[1:] if digits.startswith("0") else digits
    spellings = [phone, digits, f"+82{national}", national]
    if phone.startswith("0"):
        spellings.append(phone[1:])
    return spellings


def refuse_connections(monkeypatch: Any) -> list[str]:
    """Refuse every network connection (sockets, and libpq's own in psycopg2) for the rest of a test.

    Returns the list each attempt is recorded in: a refusal raised inside code that catches
    ``Exception`` and carries on is still seen when the test asserts the list is empty.
    """
    import psycopg2

    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            target = next((a for a in args if not isinstance(a, socket.socket)), kwargs)
            attempts.append(f"{what} {target!r}")
            raise ConnectionRefusedError(f"no network here: {what} {target!r}")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(psycopg2, "connect", refuse("psycopg2.connect"))
    return attempts


def copy_examples(target: Path) -> list[Path]:
    """Copy the examples into ``target`` (returns the copies)."""
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, target / p.name)) for p in sorted(EXAMPLES.glob("*.json"))]


#: What a ScriptedServer does with the n-th request: bytes to send, a function of the socket, or None.
Answer = Callable[[int, bytes], "bytes | None | Callable[[socket.socket], bool | None]"]


class ScriptedServer:
    """Reads HTTP/1.1 requests and answers each with ``answer(n, request)``; keeps connections open.

    ``answer`` returns the bytes to send, a function that takes the socket (to drip or stall;
    the connection closes after it unless it returns True), or None to close the connection
    without a word. ``connections`` counts accepted sockets.
    """

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += conn.recv(65536)
                request, data = head + b"\r\n\r\n" + data[:length], data[length:]
                with self._lock:
                    self.requests.append(request)
                    n = len(self.requests)
                reply = self.answer(n, request)
                if reply is None:
                    return
                if callable(reply):
                    if not reply(conn):  # True: the answer is written, the connection stays open
                        return
                    continue
                conn.sendall(reply)
                if b"connection: close" in reply.lower().split(b"\r\n\r\n")[0]:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def upgraded(url: str, monkeypatch: Any) -> Iterator[str]:
    """careflow's database at ``url``, upgraded and set as ``CAREFLOW_DB_URL``, for a fixture to yield from."""
    from careflow.store.db import dispose_engines
    from careflow.store.migrations import upgrade

    monkeypatch.setenv("CAREFLOW_DB_URL", url)
    dispose_engines()
    upgrade()
    yield url
    dispose_engines()


#: Linux's prctl option: the signal a process gets when its parent ends.
PR_SET_PDEATHSIG = 1


@dataclass
class GroupedProcess:
    """A subprocess that leads a session and process group of its own, stopped with its whole group.

    Whatever it starts stays in its group (an Airflow scheduler's task processes, a pytest's
    servers), so a signal to the group reaches all of them and a signal to the caller's group
    reaches none of them.
    """

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def launch(
        self,
        output: IO[bytes] | int,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        *,
        errors: IO[bytes] | int | None = None,
        parent_death_signal: int | None = None,
    ) -> None:
        """Start ``argv`` with its stdout to ``output`` and its stderr to ``errors`` (else ``output``).

        Either may be ``subprocess.PIPE``, read through :attr:`process` (bytes).

        ``parent_death_signal``: a signal the process gets when the process that started it ends,
        however it ends (Linux only): its own group keeps a signal to the caller's group (a
        harness's SIGKILL) from reaching it, and without this it would run on alone.
        """

        def when_parent_dies() -> None:
            if parent_death_signal is not None and sys.platform == "linux":
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, parent_death_signal)

        self.process = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT if errors is None else errors,
            start_new_session=True,
            preexec_fn=when_parent_dies if parent_death_signal is not None else None,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process and every process in its group, if it still runs."""
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def finish(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the process to end, then kill whatever its group still holds.

        Send it its stop signal (:meth:`signal`) first; this sends none of its own, so a process
        that was signalled once is not signalled again before the kill.
        """
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        # the process's children (task processes, servers) may outlive it in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def euc_kr_locale(root: Path) -> dict[str, str]:
    """This process's environment under ``ko_KR.EUC-KR``, a locale whose text files are not UTF-8,
    compiled into ``root`` (``LOCPATH``); skips the test where the machine cannot compile it."""
    import pytest

    localedef = shutil.which("localedef")
    if localedef is None or not Path("/usr/share/i18n/locales/ko_KR").exists():
        pytest.skip("localedef or the ko_KR locale's source is not on this machine")
    subprocess.run(
        [localedef, "-i", "ko_KR", "-f", "EUC-KR", str(root / "ko_KR.EUC-KR")], capture_output=True
    )
    if not (root / "ko_KR.EUC-KR").is_dir():
        pytest.skip("localedef could not compile ko_KR.EUC-KR")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LC_", "LANGUAGE", "PYTHONUTF8", "PYTHONIOENCODING"))
    }
    env.update(LOCPATH=str(root), LANG="ko_KR.EUC-KR")
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that refuses every connection until the block ends: bound by this
    process and never listened on, so that no other process (the Airflow tier's servers, running
    beside the other tests) can take it meanwhile, as it can a :func:`free_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    """Call ``probe`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # a component still starting answers with connection errors
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _free_port_pair() -> int:
    """A TCP port free now whose Redis Cluster bus port (10,000 above it) is free too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def _redis_server(what: str) -> str:
    """The redis-server binary on PATH; RuntimeError saying what needs it otherwise."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(f"{what} needs the redis-server binary on PATH")
    return server


@contextlib.contextmanager
def redis_cluster(root: Path, nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` primaries of its own (each a redis-server holding a third of the
    slots), stopped at the end; yields the URL of its first node, as a clinic would configure it."""
    import redis

    server = _redis_server("a Redis Cluster for the tests")
    root.mkdir(parents=True, exist_ok=True)
    ports = [_free_port_pair() for _ in range(nodes)]
    servers = [
        GroupedProcess(
            f"redis-server {port}",
            [
                server,
                "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", str(root / f"nodes-{port}.conf"), "--dir", str(root),
                "--save", "", "--appendonly", "no",
            ],
        )
        for port in ports
    ]  # fmt: skip
    clients = [redis.Redis(port=port) for port in ports]
    try:
        for node in servers:  # killed with the test process however it ends (a harness's SIGKILL too)
            node.launch(subprocess.DEVNULL, parent_death_signal=signal.SIGKILL)
        wait_for(
            f"the test Redis Cluster's nodes on ports {ports}",
            lambda: all(c.ping() for c in clients),
            10,
            0.05,
        )
        bounds = [16_384 * n // nodes for n in range(nodes + 1)]
        for n, client in enumerate(clients):
            client.execute_command("CLUSTER ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)

        def ready(info: dict[str, Any]) -> bool:
            return info.get("cluster_state") == "ok" and int(info["cluster_known_nodes"]) == nodes

        wait_for(
            f"the test Redis Cluster on ports {ports} to form",
            lambda: all(ready(c.execute_command("CLUSTER INFO")) for c in clients),
            30,
            0.1,
        )
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for client in clients:
            client.close()
        for node in servers:
            node.signal(signal.SIGKILL)  # nothing of theirs is kept
            node.finish(grace_s=10)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost``, 127.0.0.1 and ``provider.test`` and its key, as
    PEM files in ``folder``; the certificate is its own CA (what ``SSL_CERT_FILE`` can name)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    names = [
        x509.DNSName("localhost"),
        x509.DNSName("provider.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A server's TLS context presenting ``certificate`` (its PEM file and key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@contextlib.contextmanager
def _lone_redis(root: Path, what: str, flags: list[str], client: Any) -> Iterator[None]:
    """A redis-server of its own in ``root`` with ``flags`` (``what`` it is, for messages), until
    the block ends; the block starts once ``client`` reaches it, and closes it at the end."""
    server = _redis_server(f"{what} for the tests")
    root.mkdir(parents=True, exist_ok=True)
    node = GroupedProcess(what, [server, *flags, "--dir", str(root), "--save", "", "--appendonly", "no"])
    try:
        node.launch(subprocess.DEVNULL, parent_death_signal=signal.SIGKILL)
        wait_for(f"the test's {what}", client.ping, 10, 0.05)
        yield
    finally:
        client.close()
        node.signal(signal.SIGKILL)
        node.finish(grace_s=10)


@contextlib.contextmanager
def redis_unix_socket(root: Path, password: str = "socket-secret") -> Iterator[Path]:
    """A redis-server of its own listening on a Unix socket only (with ``password``); its socket."""
    import redis

    socket_path = root / "redis.sock"
    flags = [
        "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700", "--requirepass", password,
    ]  # fmt: skip
    client = redis.Redis(unix_socket_path=str(socket_path), password=password)
    with _lone_redis(root, f"Redis on {socket_path}", flags, client):
        yield socket_path


@dataclass
class RedisSentinel:
    """A master, its replica and a Sentinel monitoring them as ``mymaster``; each with a password,
    and all speaking TLS only where ``certificate`` (its PEM file and key) is given."""

    master_port: int
    replica_port: int
    sentinel_port: int
    certificate: tuple[Path, Path] | None = None
    password: str = "data-secret"
    sentinel_password: str = "sentinel-secret"
    service: str = "mymaster"

    @property
    def url(self) -> str:
        """The URL a clinic would configure: the Sentinel, the service, database 0."""
        scheme = "rediss+sentinel" if self.certificate else "redis+sentinel"
        return (
            f"{scheme}://:{self.password}@127.0.0.1:{self.sentinel_port}/{self.service}/0"
            f"?sentinel_password={self.sentinel_password}"
        )

    def _client(self, port: int, password: str) -> Any:
        import redis

        tls = {"ssl": True, "ssl_ca_certs": str(self.certificate[0])} if self.certificate else {}
        return redis.Redis(port=port, password=password, decode_responses=True, **tls)

    def sentinel(self) -> Any:
        return self._client(self.sentinel_port, self.sentinel_password)

    def master_port_now(self) -> int:
        """The port of the server the Sentinel names as the master right now."""
        with self.sentinel() as client:
            return int(client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)[1])

    def server(self, port: int) -> Any:
        return self._client(port, self.password)


@contextlib.contextmanager
def redis_sentinel(root: Path, certificate: tuple[Path, Path] | None = None) -> Iterator[RedisSentinel]:
    """A Redis master, a replica of it and a Sentinel of their own (quorum 1), stopped at the end;
    TLS only, with ``certificate``, where it is given."""
    server = _redis_server("a Redis Sentinel for the tests")
    root.mkdir(parents=True, exist_ok=True)
    setup = RedisSentinel(free_port(), free_port(), free_port(), certificate)
    # Each server's settings as (name, value): flags on a server's command line, lines of the
    # Sentinel's configuration file.
    tls: list[tuple[str, str]] = []
    if certificate:
        cert, key = (str(path) for path in certificate)
        tls = [
            ("tls-cert-file", cert), ("tls-key-file", key), ("tls-ca-cert-file", cert),
            ("tls-auth-clients", "no"), ("tls-replication", "yes"),
        ]  # fmt: skip

    def listening(port: int) -> list[tuple[str, str]]:
        return [("port", "0"), ("tls-port", str(port)), *tls] if certificate else [("port", str(port))]

    def flags(settings: list[tuple[str, str]]) -> list[str]:
        return [word for name, value in settings for word in (f"--{name}", value)]

    data = [
        ("bind", "127.0.0.1"), ("save", ""), ("appendonly", "no"), ("dir", str(root)),
        ("requirepass", setup.password), ("masterauth", setup.password),
    ]  # fmt: skip
    config = root / "sentinel.conf"
    config.write_text(
        "".join(
            f"{name} {value}\n"
            for name, value in [
                *listening(setup.sentinel_port),
                ("bind", "127.0.0.1"),
                ("dir", str(root)),
                ("requirepass", setup.sentinel_password),
                ("sentinel monitor", f"{setup.service} 127.0.0.1 {setup.master_port} 1"),
                ("sentinel auth-pass", f"{setup.service} {setup.password}"),
                ("sentinel down-after-milliseconds", f"{setup.service} 1000"),
                ("sentinel failover-timeout", f"{setup.service} 10000"),
            ]
        )
    )
    processes = [
        GroupedProcess(
            f"redis-server {setup.master_port}", [server, *flags([*listening(setup.master_port), *data])]
        ),
        GroupedProcess(
            f"redis-server {setup.replica_port} (replica)",
            [
                server,
                *flags(
                    [*listening(setup.replica_port), *data, ("replicaof", f"127.0.0.1 {setup.master_port}")]
                ),
            ],
        ),
        GroupedProcess(f"redis-sentinel {setup.sentinel_port}", [server, str(config), "--sentinel"]),
    ]
    try:
        for process in processes:  # killed with the test process however it ends
            process.launch(subprocess.DEVNULL, parent_death_signal=signal.SIGKILL)

        def replicated() -> bool:
            with setup.server(setup.replica_port) as replica:
                return replica.info("replication").get("master_link_status") == "up"

        def watched() -> bool:
            with setup.sentinel() as client:
                replicas = client.execute_command("SENTINEL", "replicas", setup.service)
            return setup.master_port_now() == setup.master_port and len(replicas) == 1

        wait_for("the test Redis replica to follow its master", replicated, 20, 0.1)
        wait_for("the test Redis Sentinel to see the master and its replica", watched, 30, 0.1)
        # The Sentinel's timers, shortened for the tests. A failover's old master is made a replica
        # once it has reported itself a master for four publish periods, seen at an INFO (sent to
        # replicas every 10 s): 8 to 20 s by default. And a Sentinel whose own timer was held up
        # more than 2 s (a loaded machine) stops acting for 30 s (TILT), which outlasted the tests'
        # waits.
        with setup.sentinel() as client:
            client.execute_command(
                "SENTINEL", "DEBUG", "info-period", 1000, "publish-period", 500,
                "tilt-trigger", 10000, "tilt-period", 5000,
            )  # fmt: skip
        yield setup
    finally:
        for process in processes:
            process.signal(signal.SIGKILL)  # nothing of theirs is kept
            process.finish(grace_s=10)


@contextlib.contextmanager
def redis_tls(root: Path, certificate: tuple[Path, Path]) -> Iterator[str]:
    """A redis-server of its own that speaks TLS only, with ``certificate``; yields its ``rediss://`` URL."""
    import redis

    port = free_port()
    cert, key = certificate
    flags = [
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
    ]  # fmt: skip
    client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(cert))
    with _lone_redis(root, f"TLS Redis on port {port}", flags, client):
        yield f"rediss://127.0.0.1:{port}/0"


def fill(path: Path) -> None:
    """Write ``path`` until its disk is full (ENOSPC)."""
    import errno

    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def copy_airflow_db(airflow_home: Path, path: Path) -> None:
    """The metadata database of ``airflow_home`` (the session's, migrated) copied to ``path`` through
    SQLite: the session's may hold pages in its WAL file."""
    import sqlite3

    source, copy = sqlite3.connect(airflow_home / "airflow.db"), sqlite3.connect(path)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()


@contextlib.contextmanager
def tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A filesystem of its own, ``size`` (``1m``), mounted at ``disk`` (made here) while the block
    runs: to fill, or to make read-only. Skips the test where none can be mounted (not root)."""
    import pytest

    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def remount_read_only(disk: Path) -> None:
    """Make the filesystem mounted at ``disk`` (a test's ``small_disk``) read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


#: The uid and gid of the user ``nobody``, as whom :func:`as_nobody` runs.
NOBODY = 65534


def as_nobody(work: Callable[[], Any]) -> Any:
    """What ``work()`` returns (or raises) run as the user nobody, in a forked child: careflow as
    the Airflow components' user where root set things up. Skips the test where this process is not
    root. What it returns goes back through a queue: plain values only."""
    import multiprocessing

    import pytest

    if os.getuid() != 0:
        pytest.skip("acts as another user (nobody): needs root")
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def run() -> None:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            results.put((True, work()))
        except BaseException as exc:  # back to the test, as it would have been raised there
            results.put((False, f"{type(exc).__name__}: {exc}"))

    child = context.Process(target=run)
    child.start()
    ok, value = results.get(timeout=60)
    child.join(30)
    if not ok:
        raise AssertionError(f"as nobody: {value}")
    return value


@contextlib.contextmanager
def open_directory() -> Iterator[Path]:
    """A new directory every user may enter (pytest's own temporary directory is its user's alone)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="careflow-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)
