"""Worker bootstrap: standard library only, sent inline as the container command.

A stock Prefect image knows nothing of this package. The driver stores its own package (plus any
pure-Python dependency the image may lack, and the user's own modules) in the cluster's Redis as
signed, content-addressed zip archives, listed in a signed manifest (`protocol/archives.py`).
This module runs as `python -c <its own source>` (see `specs.bootstrap_command`): it connects to
Redis with a minimal RESP client (TLS with the cluster CA when DOCKERPARALLEL_REDIS_TLS=1),
verifies the manifest and every archive (SHA-256 and HMAC-SHA256 with the cluster's signing key)
before writing or importing a byte of it, unpacks what the image lacks into a temporary
directory, puts it on PYTHONPATH and execs the worker entrypoint. An image that already holds
this package with identical sources (the Dockerfile's) skips that fetch.

Nothing here may import anything outside the standard library, and the formats must match
`protocol/archives.py` (tests check both).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import json
import os
import socket
import ssl
import sys
import tempfile
import time
import zipfile

MANIFEST_MAGIC = b"DPM1"
ARCHIVE_MAGIC = b"DPA1"
MAC_SIZE = 32
EXIT_REFUSED = 78  # a tampered or foreign archive / manifest: never retried by the supervisor
EXIT_UNREACHABLE = 75
PACKAGE = "prefect_dockerparallel"
WORKER_MODULE = "prefect_dockerparallel.container.worker"
# Environment contract (protocol/keys.py holds the same names; a test checks they agree).
ENV = {
    "cluster": "DOCKERPARALLEL_CLUSTER",
    "host": "DOCKERPARALLEL_REDIS_HOST",
    "port": "DOCKERPARALLEL_REDIS_PORT",
    "password": "DOCKERPARALLEL_REDIS_PASSWORD",
    "user": "DOCKERPARALLEL_REDIS_USER",
    "tls": "DOCKERPARALLEL_REDIS_TLS",
    "ca": "DOCKERPARALLEL_REDIS_CA",
    "tls_name": "DOCKERPARALLEL_REDIS_TLS_NAME",
    "key": "DOCKERPARALLEL_CLUSTER_SECRET",
    "secrets_file": "DOCKERPARALLEL_SECRETS_FILE",
    "idle": "DOCKERPARALLEL_IDLE_TIMEOUT",
    "shipped": "DOCKERPARALLEL_SHIPPED",
}


class Refused(Exception):
    """A manifest or archive failed verification: nothing of it was written or imported."""


def manifest_key(cluster: str) -> str:
    return f"dp:{cluster}:code-manifest"


def archive_key(cluster: str, digest: str) -> str:
    return f"dp:{cluster}:code:{digest}"


def mac(key: bytes, magic: bytes, data: bytes) -> bytes:
    return hmac.new(key, magic + data, hashlib.sha256).digest()


def open_signed(key: bytes, magic: bytes, value: bytes | None, what: str) -> bytes:
    """The payload of MAGIC | mac | payload, or Refused (before anything uses the payload)."""
    if value is None:
        raise Refused(f"{what} is missing from Redis")
    if value[:4] != magic or len(value) < 4 + MAC_SIZE:
        raise Refused(f"{what} is not a prefect-dockerparallel archive")
    tag, payload = value[4 : 4 + MAC_SIZE], value[4 + MAC_SIZE :]
    if not hmac.compare_digest(tag, mac(key, magic, payload)):
        raise Refused(f"{what} has a bad signature (tampered, or signed by another cluster)")
    return payload


def tree_digest(root: str) -> str:
    """SHA-256 over the relative paths and contents of a package's .py files (driver and
    bootstrap compute it alike: it tells whether an image already has the very same sources)."""
    out = hashlib.sha256()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    for path in sorted(files, key=lambda p: os.path.relpath(p, root).replace(os.sep, "/")):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        with open(path, "rb") as fh:
            out.update(rel.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return out.hexdigest()


class Resp:
    """The few Redis commands the bootstrap needs (AUTH, GET), over TCP or verified TLS."""

    def __init__(
        self, host: str, port: int, tls: bool = False, ca: str | None = None, timeout: float = 10.0,
        tls_name: str | None = None,
    ):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            if ca and not ca.lstrip().startswith("-----BEGIN"):
                context = ssl.create_default_context(cafile=ca)  # a path to the PEM file
            else:
                context = ssl.create_default_context(cadata=ca or None)
            sock = context.wrap_socket(sock, server_hostname=tls_name or host)  # hostname checked
        self.sock = sock
        self.buf = sock.makefile("rb")

    def command(self, *args: str | bytes) -> object:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> object:
        line = self.buf.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the Redis server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.buf.read(size + 2)
            return data[:-2]
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise ConnectionError(f"unexpected Redis reply {line[:20]!r}")

    def close(self) -> None:
        self.sock.close()


def load_secrets_file(env: dict) -> None:
    """The Docker provider delivers the password and key as a 0600 JSON file (secrets_file.py)."""
    path = env.get(ENV["secrets_file"])
    if path:
        with open(path, encoding="utf-8") as fh:
            env.update({str(k): str(v) for k, v in json.load(fh).items()})


def connect(env: dict) -> Resp:
    client = Resp(
        env[ENV["host"]],
        int(env[ENV["port"]]),
        tls=env.get(ENV["tls"], "") in ("1", "true"),
        ca=env.get(ENV["ca"]) or None,
        tls_name=env.get(ENV["tls_name"]) or None,
    )
    password = env.get(ENV["password"])
    if password:
        user = env.get(ENV["user"])
        client.command("AUTH", *([user] if user else []), password)
    return client


def fetch_manifest(env: dict, key: bytes, deadline: float) -> tuple[Resp, dict | None]:
    """Poll for the signed manifest (the driver writes it before any worker starts). None when
    Redis answers without one but the image has the package: a driver that ships nothing."""
    name = manifest_key(env[ENV["cluster"]])
    while True:
        try:
            client = connect(env)
            value = client.command("GET", name)
            if value is not None:
                return client, json.loads(open_signed(key, MANIFEST_MAGIC, value, "the manifest"))
            if installed_tree(PACKAGE) is not None:
                return client, None
            client.close()
        except (OSError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"Redis at {env[ENV['host']]}:{env[ENV['port']]} unreachable: {exc}") from None
        if time.monotonic() > deadline:
            raise Refused(f"no manifest at {name}: this cluster ships no archives")
        time.sleep(0.5)


def installed_tree(module: str) -> str | None:
    """Where the image has `module` (without importing it), or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def wanted(manifest: dict) -> list[tuple[dict, str]]:
    """(archive entry, reason) of every archive this image needs."""
    out = []
    package = manifest["package"]
    here = installed_tree(PACKAGE)
    if here is None:
        out.append((package, "not in the image"))
    elif tree_digest(here) != package["tree"]:
        out.append((package, f"the image's copy at {here} differs from the driver's"))
    for dep in manifest.get("deps", []):
        if importlib.util.find_spec(dep["module"]) is None:
            out.append((dep, "not in the image"))
    if manifest.get("code"):
        out.append((manifest["code"], "the flow's own modules"))
    return out


def unpack(client: Resp, cluster: str, key: bytes, entry: dict, dest: str) -> int:
    """Fetch, verify (digest and signature), then extract one archive; returns its size."""
    value = client.command("GET", archive_key(cluster, entry["digest"]))
    data = open_signed(key, ARCHIVE_MAGIC, value, f"archive {entry['name']}")
    if hashlib.sha256(data).hexdigest() != entry["digest"]:
        raise Refused(f"archive {entry['name']} does not match its digest")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.namelist():
            parts = member.split("/")
            if member.startswith("/") or ".." in parts or "\\" in member:
                raise Refused(f"archive {entry['name']} has an unsafe path {member!r}")
        archive.extractall(dest)
    return len(data)


def main() -> int:
    started = time.monotonic()
    env = dict(os.environ)
    log = lambda msg: print(f"bootstrap {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        load_secrets_file(env)
        key = bytes.fromhex(env[ENV["key"]])
        deadline = time.monotonic() + max(30.0, float(env.get(ENV["idle"], "60")))
        client, manifest = fetch_manifest(env, key, deadline)
        if manifest is None:
            log(f"no manifest in Redis (the driver ships nothing): starting the image's {PACKAGE}")
            manifest = {"package": {}}
        needed = wanted(manifest) if manifest["package"] else []
        shipped = []
        if needed:
            dest = tempfile.mkdtemp(prefix="dp-ship-")
            for entry, reason in needed:
                size = unpack(client, env[ENV["cluster"]], key, entry, dest)
                shipped.append(f"{entry['name']}={entry['digest'][:12]}")
                log(f"fetched {entry['name']} {entry.get('version', '')} from Redis "
                    f"({size} bytes, sha256 {entry['digest'][:12]}, verified; {reason})")
            path = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = dest + (os.pathsep + path if path else "")
        elif manifest["package"]:
            log(f"the image has {PACKAGE} {manifest['package'].get('version', '')} with the driver's sources: nothing fetched")
        client.close()
    except Refused as exc:
        log(f"refused: {exc}; nothing was imported")
        return EXIT_REFUSED
    except (OSError, ConnectionError, RuntimeError, KeyError, ValueError) as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        return EXIT_UNREACHABLE
    os.environ[ENV["shipped"]] = ",".join(shipped) or "none"
    log(f"starting the worker ({time.monotonic() - started:.2f} s in the bootstrap)")
    entrypoint = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].startswith(PACKAGE + ".container.") else WORKER_MODULE
    os.execv(sys.executable, [sys.executable, "-m", entrypoint])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
