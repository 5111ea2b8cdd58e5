#!/usr/bin/env python3
"""Prepare a Docker engine and the images that prefect-dockerparallel's container tests use.

    python scripts/prepare_docker.py [--only ROLE[,ROLE]] [--no-pull] [--rebuild] [--jobs N]

Run it with the Python that runs the flows (the driver): the `prefect` and `worker` images pin
Prefect and cloudpickle to the exact versions installed there, because workers refuse tasks
pickled by other versions.

1. Engine: if `docker info` does not answer, start `dockerd --storage-driver=overlay2` (installing
   Debian's docker.io and debootstrap with apt-get when missing; needs root) and poll until it
   answers. A daemon that is already running is used as it is and left running.
2. Images, one per logical role (see ROLES below): the real official image when it is already
   local or `docker pull` gets it, else a stand-in built here under a test-only name
   (`dp-test/...`, never an official name) on a debootstrapped Debian bookworm base. On these
   machines no image registry is reachable, but the Debian and PyPI package registries are.
   Every image built here carries the label `dp-test.content-hash`: a hash of everything that
   went into it (Dockerfile text, build args, copied files incl. CA certificates, the parent
   image id); a rerun whose hashes match builds nothing.
3. Manifest: JSON mapping each role to the image to use (path printed at the end; default
   /tmp/dp-docker-images.json, or env DOCKERPARALLEL_TEST_IMAGES), so tests never hard-code
   stand-in names:
       {"python": {"image": "dp-test/python:3.11", "official": "python:3.11-slim",
                   "stand_in": true, "built_in_s": 21.7, ...}, ..., "engine": {...}}

The `worker` role is the project's own Dockerfile (repo root as context) built on the `python`
role's image; it has no official counterpart ("official": null), and "stand_in" says whether its
base is a stand-in. Its hash covers Dockerfile, .dockerignore, pyproject.toml, README.md,
prefect_dockerparallel/** and certs/, so any source change rebuilds it (in seconds: the
dependency layer only depends on pyproject.toml).

The host's extra CA certificates (the ones `update-ca-certificates` installs from
/usr/local/share/ca-certificates) are copied into every image and trusted there, with PIP_CERT
set: pip inside containers goes through a TLS-intercepting proxy on these machines.

Standard library only (Python 3.10+). Idempotent; concurrent runs are serialised by a lock file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST_ENV = "DOCKERPARALLEL_TEST_IMAGES"
DEFAULT_MANIFEST = "/tmp/dp-docker-images.json"
LOCK_FILE = "/tmp/dp-prepare-docker.lock"
LOG_DIR = Path("/var/log") if os.access("/var/log", os.W_OK) else Path(tempfile.gettempdir())
DOCKERD_LOG = LOG_DIR / "dp-dockerd.log"
BUILD_LOG_DIR = Path(tempfile.gettempdir()) / "dp-docker-build-logs"
DEBOOTSTRAP_CACHE = Path("/var/cache/dp-debootstrap")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Bump to rebuild every stand-in once (a change in how this script builds them).
RECIPE_VERSION = "2"
LABEL_HASH = "dp-test.content-hash"
LABEL_ROLE = "dp-test.role"
LABEL_BY = "dp-test.created-by"
CREATED_BY = "scripts/prepare_docker.py"
STAND_IN_PREFIX = "dp-test/"
SUITE = "bookworm"

ROLES = ("debian", "python", "prefect", "redis", "worker")
PARENT = {"debian": None, "python": "debian", "prefect": "python", "redis": "debian", "worker": "python"}
DEPTH = {"debian": 0, "python": 1, "redis": 1, "prefect": 2, "worker": 2}

PULL_FIRST_OUTPUT_S = 20.0  # a registry that answers says "Pulling from ..." within seconds
PULL_TOTAL_S = 900.0
ENGINE_START_S = 60.0
BUILD_TIMEOUT_S = 1800.0

PY_MM = f"{sys.version_info.major}.{sys.version_info.minor}"
BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the legacy builder: there is no buildx here


class Failure(Exception):
    """A step failed; the message says what and where to look."""


def say(msg: str) -> None:
    print(f"[prepare_docker] {msg}", flush=True)


# ----------------------------------------------------------------------------- small helpers


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise Failure(f"{' '.join(cmd[:4])} ... timed out after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise Failure(f"{' '.join(cmd[:6])} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@dataclass
class Timings:
    rows: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, step: str, result: str, seconds: float) -> None:
        with self.lock:
            self.rows.append((step, result, seconds))

    def print(self, total: float) -> None:
        width = max([len(r[1]) for r in self.rows] + [10])
        print(f"\n{'step':<10} {'result':<{width}} {'time':>8}")
        for step, result, seconds in self.rows:
            print(f"{step:<10} {result:<{width}} {seconds:>7.1f}s")
        print(f"{'total':<10} {'':<{width}} {total:>7.1f}s  (wall clock; builds run {ARGS.jobs} at a time)")


TIMINGS = Timings()
ARGS: argparse.Namespace


# ----------------------------------------------------------------------------- engine


def engine_info() -> dict | None:
    """Server version and storage driver when an engine answers, else None."""
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{json .ServerVersion}} {{json .Driver}}"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        version, driver = (json.loads(x) for x in proc.stdout.split())
    except ValueError:
        return None
    if not version:
        return None
    return {"server_version": version, "storage_driver": driver}


def apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise Failure(f"need {' '.join(packages)} (apt-get install needs root); install them and rerun")
    if not shutil.which("apt-get"):
        raise Failure(f"need {' '.join(packages)} and there is no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    say(f"apt-get install {' '.join(packages)}")
    for cmd in (["apt-get", *lock_wait, "update", "-q"],
                ["apt-get", *lock_wait, "install", "-y", "-q", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
        if proc.returncode != 0:
            raise Failure(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}")


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def ensure_engine() -> dict:
    t0 = time.monotonic()
    info = engine_info()
    if info:
        TIMINGS.add("engine", f"answering (Docker {info['server_version']})", time.monotonic() - t0)
        return {**info, "started_by_script": False}
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix:///var/run/docker.sock"):
        raise Failure(f"DOCKER_HOST={host} does not answer; not starting a local dockerd in its place")
    if os.geteuid() != 0:
        raise Failure("no Docker engine answers and this is not root: start dockerd (or Docker Desktop) and rerun")
    missing = [exe for exe in ("docker", "dockerd") if not shutil.which(exe)]
    if missing:
        ta = time.monotonic()
        apt_install(["docker.io", "debootstrap", "ca-certificates", "apparmor"])
        TIMINGS.add("apt", "docker.io debootstrap", time.monotonic() - ta)
    t1 = time.monotonic()
    proc = None
    running = pid_alive(Path("/var/run/docker.pid"))
    if running:
        say(f"dockerd (pid {running}) is running but not answering yet; waiting for it")
    else:
        say(f"starting dockerd --storage-driver=overlay2 (log: {DOCKERD_LOG})")
        log = open(DOCKERD_LOG, "ab")
        proc = subprocess.Popen(
            ["dockerd", "--storage-driver=overlay2"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
        log.close()
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        info = engine_info()
        if info:
            TIMINGS.add("engine", f"started (Docker {info['server_version']})", time.monotonic() - t1)
            return {**info, "started_by_script": True, "dockerd_log": str(DOCKERD_LOG)}
        if proc is not None and proc.poll() is not None:
            raise Failure(f"dockerd exited {proc.returncode}; last lines of {DOCKERD_LOG}:\n{tail(DOCKERD_LOG)}")
        time.sleep(0.25)  # polling interval, not a fixed wait
    raise Failure(f"dockerd did not answer within {ENGINE_START_S:.0f} s; see {DOCKERD_LOG}:\n{tail(DOCKERD_LOG)}")


# ----------------------------------------------------------------------------- docker queries


def image_inspect(ref: str) -> dict | None:
    proc = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def labels_of(img: dict | None) -> dict:
    return ((img or {}).get("Config") or {}).get("Labels") or {}


def cached(tag: str, content_hash: str) -> dict | None:
    img = image_inspect(tag)
    if img and labels_of(img).get(LABEL_HASH) == content_hash:
        return img
    return None


def remove_replaced(old: dict | None, new_id: str) -> None:
    """Drop the image a rebuild replaced, if this script made it and nothing uses it any more."""
    if not old or old["Id"] == new_id or labels_of(old).get(LABEL_BY) != CREATED_BY:
        return
    # no -f: the engine refuses while a container, another tag or a child image still uses it
    subprocess.run(["docker", "image", "rm", old["Id"]], capture_output=True, timeout=120)


_registry_down = threading.Event()


def try_pull(name: str) -> bool:
    """`docker pull name`; False quickly when no registry answers."""
    if _registry_down.is_set():
        return False
    t0 = time.monotonic()
    proc = subprocess.Popen(["docker", "pull", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    progressed = threading.Event()

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.append(line.rstrip())
            if re.search(r"Pulling from|Pulling fs layer|Digest:|Status:|Already exists", line):
                progressed.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    while proc.poll() is None:
        elapsed = time.monotonic() - t0
        if (not progressed.is_set() and elapsed > PULL_FIRST_OUTPUT_S) or elapsed > PULL_TOTAL_S:
            proc.kill()
            out.append(f"(killed after {elapsed:.0f} s)")
            break
        thread.join(0.2)
    proc.wait()
    thread.join(5)
    if proc.returncode == 0:
        return True
    text = " ".join(out[-3:])
    if re.search(r"no such host|dial tcp|i/o timeout|connection refused|TLS handshake|killed after|network is unreachable", text):
        _registry_down.set()  # one answer is enough: the other pulls would fail the same way
    say(f"pull {name}: not available ({text[-200:]})")
    return False


def docker_build(role: str, tag: str, context: Path, dockerfile: Path, build_args: dict[str, str],
                 content_hash: str) -> str:
    """`docker build` with our labels; full output in a log file, step lines echoed. Returns image id."""
    BUILD_LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = BUILD_LOG_DIR / f"{role}.log"
    cmd = ["docker", "build", "--force-rm", "-t", tag, "-f", str(dockerfile),
           "--label", f"{LABEL_HASH}={content_hash}", "--label", f"{LABEL_ROLE}={role}",
           "--label", f"{LABEL_BY}={CREATED_BY}"]
    if ARGS.rebuild:
        cmd.append("--no-cache")
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd.append(str(context))
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=BUILD_ENV)
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            if line.startswith(("Step ", "Sending build context")):
                say(f"{role}: {line.strip()[:150]}")
            if time.monotonic() - t0 > BUILD_TIMEOUT_S:
                proc.kill()
        proc.wait()
    if proc.returncode != 0:
        raise Failure(f"docker build of {tag} failed ({proc.returncode}); last lines of {log_path}:\n{tail(log_path)}")
    img = image_inspect(tag)
    if not img:
        raise Failure(f"docker build of {tag} reported success but the image is missing")
    return img["Id"]


def probe(image: str, *command: str, entrypoint: str | None = None) -> str:
    cmd = ["docker", "run", "--rm", "--network", "none"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    proc = run([*cmd, image, *command], timeout=120)
    return proc.stdout.strip()


# ----------------------------------------------------------------------------- inputs


def host_ca_files() -> dict[str, bytes]:
    """The host's extra (local) CA certificates, relative path -> PEM bytes."""
    found: dict[str, bytes] = {}
    if HOST_CA_DIR.is_dir():
        for path in sorted(HOST_CA_DIR.rglob("*.crt")):
            if path.is_file():
                found[str(path.relative_to(HOST_CA_DIR))] = path.read_bytes()
    return found


def apt_sources() -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled `deb` entry in the host's apt sources (both formats)."""
    entries: list[tuple[str, list[str]]] = []
    one_line = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in one_line:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], [line[2]]))
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for raw in para.splitlines():
                if raw.startswith("#"):
                    continue
                if raw[:1] in (" ", "\t") and key:
                    fields[key] += " " + raw.strip()
                elif ":" in raw:
                    key, value = raw.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def debian_mirrors() -> tuple[str, str]:
    """The Debian mirror (and security mirror) that the host's apt already uses."""
    main = os.environ.get("DOCKERPARALLEL_DEBIAN_MIRROR", "")
    security = ""
    for uri, suites in apt_sources():
        uri = uri.rstrip("/")
        if not security and (uri.endswith("/debian-security") or any(s.endswith("-security") for s in suites)):
            security = uri
        elif not main and uri.endswith("/debian") and not any(s.endswith("-security") for s in suites):
            main = uri
    return main or "http://deb.debian.org/debian", security or "http://deb.debian.org/debian-security"


def driver_versions() -> dict[str, str]:
    try:
        return {"prefect": importlib.metadata.version("prefect"),
                "cloudpickle": importlib.metadata.version("cloudpickle")}
    except importlib.metadata.PackageNotFoundError as exc:
        raise Failure(
            f"{exc.name} is not installed in {sys.executable}: run this script with the Python that "
            "runs the flows (the prefect and worker images pin its exact Prefect and cloudpickle versions)"
        ) from exc


# ----------------------------------------------------------------------------- the stand-ins

PYTHON_DOCKERFILE = """\
# Stand-in for python:3.11-slim (built by scripts/prepare_docker.py; no registry here).
ARG BASE
FROM ${BASE}
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && update-ca-certificates \\
 && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -c "import ssl, venv, ensurepip, sqlite3, sys; print(sys.version)"
# The venv first on PATH gives `python` and a pip that PEP 668 allows; PIP_CERT makes pip trust
# the system store, which holds the host's extra CA certificates (TLS-intercepting proxy).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    VIRTUAL_ENV=/opt/venv \\
    LANG=C.UTF-8 \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
"""

PREFECT_DOCKERFILE = """\
# Stand-in for prefecthq/prefect:<version>-python3.11 (built by scripts/prepare_docker.py).
# Like the official image: tini as PID 1, an entrypoint that pip-installs $EXTRA_PIP_PACKAGES
# and then execs the command (the official one uses uv; this one uses pip), WORKDIR /opt/prefect.
ARG BASE
FROM ${BASE}
ARG PREFECT_VERSION
ARG CLOUDPICKLE_VERSION
COPY certs/ /usr/local/share/ca-certificates/
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \\
 && apt-get install -y --no-install-recommends tini ca-certificates \\
 && update-ca-certificates \\
 && rm -rf /var/lib/apt/lists/* \\
 && pip install --no-cache-dir "prefect==${PREFECT_VERSION}" "cloudpickle==${CLOUDPICKLE_VERSION}" \\
 && python -c "import sys, prefect, cloudpickle; \\
v = (prefect.__version__, cloudpickle.__version__); sys.exit(0 if v == tuple(sys.argv[1:]) else f'installed {v}')" \\
    "${PREFECT_VERSION}" "${CLOUDPICKLE_VERSION}"
COPY entrypoint.sh /opt/prefect/entrypoint.sh
WORKDIR /opt/prefect
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/prefect/entrypoint.sh"]
"""

PREFECT_ENTRYPOINT = """\
#!/bin/bash
# Stand-in for the official Prefect image's entrypoint.
set -e
if [ -n "$EXTRA_PIP_PACKAGES" ]; then
  echo "+pip install $EXTRA_PIP_PACKAGES"
  pip install --no-cache-dir $EXTRA_PIP_PACKAGES
fi
if [ -z "$*" ]; then
  exec bash --login
else
  exec "$@"
fi
"""

REDIS_DOCKERFILE = """\
# Stand-in for redis:7.0 (built by scripts/prepare_docker.py): Debian's redis-server, which is
# built with TLS support. No Python.
ARG BASE
FROM ${BASE}
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends redis-server ca-certificates \\
 && update-ca-certificates \\
 && rm -rf /var/lib/apt/lists/* \\
 && redis-server --version \\
 && ldd /usr/bin/redis-server | grep -q libssl \\
 && ! command -v python3 \\
 && mkdir -p /data
WORKDIR /data
EXPOSE 6379
# Like the official image: reachable from other containers without a config file.
CMD ["redis-server", "--protected-mode", "no"]
"""

DEBIAN_SOURCES = """\
Types: deb
URIs: {main}
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# As in the official Debian images: no cached .debs, no translations, no services started by
# package installs.
DEBIAN_EXTRA_FILES = {
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\nDir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    ),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": "force-unsafe-io\n",
    "usr/sbin/policy-rc.d": "#!/bin/sh\nexit 101\n",
}


def mounts_under(root: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, reverse=True)


def remove_rootfs(root: str) -> None:
    """rm -rf a debootstrap target, but only once nothing is mounted inside it."""
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)
    left = mounts_under(root)
    if left:
        say(f"NOT removing {root}: still mounted inside it: {left}")
        return
    shutil.rmtree(root, ignore_errors=True)


def build_debian(tag: str, content_hash: str, main: str, security: str, certs: dict[str, bytes]) -> str:
    if not shutil.which("debootstrap"):
        apt_install(["debootstrap"])
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        apt_install(["debian-archive-keyring"])
    if os.geteuid() != 0:
        raise Failure("debootstrap needs root")
    DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
    BUILD_LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = BUILD_LOG_DIR / "debian.log"
    root = tempfile.mkdtemp(prefix="dp-debootstrap-", dir="/var/tmp")
    try:
        say(f"debian: debootstrap --variant=minbase {SUITE} from {main} (log: {log_path})")
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=ca-certificates",
                 f"--cache-dir={DEBOOTSTRAP_CACHE}", SUITE, root, main],
                stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
            )
        if proc.returncode != 0:
            raise Failure(f"debootstrap exited {proc.returncode}; last lines of {log_path}:\n{tail(log_path)}")
        TIMINGS.add("  debian", "debootstrap", time.monotonic() - t0)
        t0 = time.monotonic()
        rootfs = Path(root)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
            DEBIAN_SOURCES.format(main=main, security=security, suite=SUITE))
        for rel, text in DEBIAN_EXTRA_FILES.items():
            (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
            (rootfs / rel).write_text(text)
        (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
        # debootstrap installs the point release; take bookworm-updates and -security too, as the
        # official image does (DNS through the resolv.conf debootstrap copied in; removed below).
        say("debian: apt-get dist-upgrade from bookworm-updates and bookworm-security")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C"}
        with open(log_path, "a") as log:
            for cmd in (["apt-get", "update", "-q"], ["apt-get", "dist-upgrade", "-y", "-q"]):
                proc = subprocess.run(["chroot", root, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=BUILD_TIMEOUT_S)
                if proc.returncode != 0:
                    raise Failure(f"chroot {' '.join(cmd)} exited {proc.returncode}; see {log_path}:\n{tail(log_path)}")
        TIMINGS.add("  debian", "dist-upgrade", time.monotonic() - t0)
        t0 = time.monotonic()
        for rel, pem in certs.items():
            dest = rootfs / "usr/local/share/ca-certificates" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(pem)
        run(["chroot", root, "update-ca-certificates"], timeout=120)
        for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                        "var/log/*.log", "var/log/apt/*", "tmp/*", "root/.cache"):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        for rel in ("etc/resolv.conf", "etc/hostname"):
            (rootfs / rel).unlink(missing_ok=True)
        (rootfs / "etc/machine-id").write_text("")  # generated per container, never baked in
        say(f"debian: docker import -> {tag}")
        tar = subprocess.Popen(
            ["tar", "-C", root, "--numeric-owner", "--one-file-system", "--exclude=./dev/*",
             "--exclude=./proc/*", "--exclude=./sys/*", "-c", "."],
            stdout=subprocess.PIPE,
        )
        imp = subprocess.run(
            ["docker", "import", "-c", 'CMD ["bash"]', "-c", f"LABEL {LABEL_HASH}={content_hash}",
             "-c", f"LABEL {LABEL_ROLE}=debian", "-c", f"LABEL {LABEL_BY}={CREATED_BY}", "-", tag],
            stdin=tar.stdout, capture_output=True, text=True, timeout=600,
        )
        tar.stdout.close()  # type: ignore[union-attr]
        tar.wait()
        if tar.returncode != 0 or imp.returncode != 0:
            raise Failure(f"tar ({tar.returncode}) | docker import ({imp.returncode}) failed: {imp.stderr.strip()}")
        TIMINGS.add("  debian", "CA certificates, clean-up, tar | docker import", time.monotonic() - t0)
        return imp.stdout.strip()
    finally:
        remove_rootfs(root)


def build_from_text(role: str, tag: str, dockerfile: str, files: dict[str, bytes], build_args: dict[str, str],
                    content_hash: str) -> str:
    ctx = Path(tempfile.mkdtemp(prefix=f"dp-ctx-{role}-"))
    try:
        (ctx / "Dockerfile").write_text(dockerfile)
        (ctx / "certs").mkdir()
        for rel, data in files.items():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_bytes(data)
            if rel.endswith(".sh"):
                (ctx / rel).chmod(0o755)
        return docker_build(role, tag, ctx, ctx / "Dockerfile", build_args, content_hash)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


# ----------------------------------------------------------------------------- the roles


@dataclass
class Result:
    role: str
    image: str
    image_id: str
    official: str | None
    stand_in: bool
    how: str  # "cached", "built", "pulled", "local official"
    seconds: float
    facts: dict = field(default_factory=dict)
    content_hash: str | None = None


def worker_sources() -> list[Path]:
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md"]
    for top in ("prefect_dockerparallel", "certs"):
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO).parts
            if path.is_file() and "__pycache__" not in rel and path.suffix not in (".pyc", ".pyo") \
                    and not any(p.endswith(".egg-info") for p in rel):
                files.append(path)
    return [f for f in files if f.exists()]


def worker_source_parts() -> list[bytes | str]:
    """(path, content) of every worker input, flattened; a file deleted meanwhile is skipped."""
    parts: list[bytes | str] = []
    for path in worker_sources():
        try:
            data = path.read_bytes()
        except OSError:  # someone is moving files around right now; the next run sees the result
            continue
        parts += [str(path.relative_to(REPO)), data]
    return parts


def stage_certs_for_worker(certs: dict[str, bytes]) -> None:
    """Put the host's extra CA certificates into certs/ (the Dockerfile's optional CA step).

    Only needed when the worker's base is not one of our stand-ins (which already trust them).
    certs/.gitignore keeps them out of git.
    """
    folder = REPO / "certs"
    folder.mkdir(exist_ok=True)
    wanted = {f"host-{rel.replace('/', '-')}": pem for rel, pem in certs.items()}
    for old in folder.glob("host-*.crt"):
        if old.name not in wanted:
            old.unlink()
    for name, pem in wanted.items():
        dest = folder / name
        if not dest.exists() or dest.read_bytes() != pem:
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(pem)
            os.replace(tmp, dest)


class Planner:
    def __init__(self, previous: dict, roles: list[str]) -> None:
        self.previous = previous
        self.roles = roles
        self.results: dict[str, Result] = {}
        self.certs = host_ca_files()
        self.certs_files = {f"certs/{rel}": pem for rel, pem in self.certs.items()}
        self._versions: dict[str, str] | None = None

    @property
    def versions(self) -> dict[str, str]:
        if self._versions is None:
            self._versions = driver_versions()
        return self._versions

    def official(self, role: str) -> str | None:
        return {
            "debian": f"debian:{SUITE}-slim",
            "python": f"python:{PY_MM}-slim",
            "prefect": f"prefecthq/prefect:{self.versions['prefect']}-python{PY_MM}" if role == "prefect" else None,
            "redis": "redis:7.0.15",
            "worker": None,
        }[role]

    def previous_facts(self, role: str, image_id: str) -> dict | None:
        entry = self.previous.get(role)
        if isinstance(entry, dict) and entry.get("id") == image_id and entry.get("facts"):
            return entry["facts"]
        return None

    # -- per role ------------------------------------------------------------------------

    def prepare(self, role: str) -> Result:
        t0 = time.monotonic()
        official = self.official(role)
        result = None
        if official and not ARGS.no_pull:
            result = self.use_official(role, official, t0)
        if result is None:
            result = self.stand_in(role, official, t0)
        result.seconds = time.monotonic() - t0
        label = {"cached": "cached", "built": "built", "pulled": "pulled", "local official": "local"}[result.how]
        TIMINGS.add(role, f"{label}: {result.image}", result.seconds)
        return result

    def use_official(self, role: str, official: str, t0: float) -> Result | None:
        how = "local official"
        img = image_inspect(official)
        if img is None:
            if not try_pull(official):
                return None
            how = "pulled"
            img = image_inspect(official)
            if img is None:
                return None
        result = Result(role, official, img["Id"], official, False, how, 0.0)
        try:
            result.facts = self.facts(role, official, img["Id"])
        except Failure as exc:
            say(f"{role}: official {official} does not fit ({exc}); building a stand-in instead")
            return None
        return result

    def stand_in(self, role: str, official: str | None, t0: float) -> Result:
        parent = self.results.get(PARENT[role]) if PARENT[role] else None
        if PARENT[role] and parent is None:
            raise Failure(f"{role} needs the {PARENT[role]} image, which failed")
        build_args: dict[str, str] = {}
        files: dict[str, bytes] = {}
        dockerfile = ""
        if role == "debian":
            tag = f"{STAND_IN_PREFIX}debian:{SUITE}-minbase"
            main, security = debian_mirrors()
            content_hash = sha256(RECIPE_VERSION, role, SUITE, "minbase", "ca-certificates", main, security,
                                  DEBIAN_SOURCES, json.dumps(DEBIAN_EXTRA_FILES, sort_keys=True),
                                  *[x for rel, pem in sorted(self.certs.items()) for x in (rel, pem)])
        elif role == "worker":
            tag = f"{STAND_IN_PREFIX}worker:py{PY_MM}"
            build_args = {"BASE_IMAGE": parent.image, "PREFECT_VERSION": self.versions["prefect"],
                          "CLOUDPICKLE_VERSION": self.versions["cloudpickle"]}
            if not parent.stand_in and self.certs:
                stage_certs_for_worker(self.certs)
            content_hash = sha256(RECIPE_VERSION, role, parent.image_id, json.dumps(build_args, sort_keys=True),
                                  *worker_source_parts())
        else:
            files = dict(self.certs_files)
            build_args = {"BASE": parent.image}
            if role == "python":
                tag, dockerfile = f"{STAND_IN_PREFIX}python:3.11", PYTHON_DOCKERFILE
            elif role == "prefect":
                tag, dockerfile = f"{STAND_IN_PREFIX}prefect:{self.versions['prefect']}-python3.11", PREFECT_DOCKERFILE
                build_args.update(PREFECT_VERSION=self.versions["prefect"],
                                  CLOUDPICKLE_VERSION=self.versions["cloudpickle"])
                files["entrypoint.sh"] = PREFECT_ENTRYPOINT.encode()
            else:
                tag, dockerfile = f"{STAND_IN_PREFIX}redis:7.0", REDIS_DOCKERFILE
            content_hash = sha256(RECIPE_VERSION, role, parent.image_id, dockerfile,
                                  json.dumps(build_args, sort_keys=True),
                                  *[x for rel, data in sorted(files.items()) for x in (rel, data)])
        stand_in = role != "worker" or parent.stand_in
        old = image_inspect(tag)
        img = None if ARGS.rebuild else cached(tag, content_hash)
        if img is not None:
            how, image_id = "cached", img["Id"]
        else:
            how = "built"
            say(f"{role}: building {tag}" + (" (--rebuild)" if ARGS.rebuild else ""))
            if role == "debian":
                image_id = build_debian(tag, content_hash, main, security, self.certs)
            elif role == "worker":
                image_id = docker_build(role, tag, REPO, REPO / "Dockerfile", build_args, content_hash)
            else:
                image_id = build_from_text(role, tag, dockerfile, files, build_args, content_hash)
            remove_replaced(old, image_id)
        result = Result(role, tag, image_id, official, stand_in, how, 0.0, content_hash=content_hash)
        result.facts = self.facts(role, tag, image_id)
        return result

    def facts(self, role: str, image: str, image_id: str) -> dict:
        """What is inside (versions), checked against the driver; cached per image id."""
        facts = self.previous_facts(role, image_id)
        if facts is None:
            facts = {}
            if role == "python":
                facts["python_version"] = probe(image, "python", "-c",
                                                "import sys; print('%d.%d.%d' % sys.version_info[:3])")
            elif role in ("prefect", "worker"):
                out = probe(image, "python", "-c", "import sys, prefect, cloudpickle; "
                            "print(prefect.__version__, cloudpickle.__version__, '%d.%d.%d' % sys.version_info[:3])")
                facts["prefect_version"], facts["cloudpickle_version"], facts["python_version"] = out.split()[-3:]
            elif role == "redis":
                out = probe(image, "redis-server", "--version")
                match = re.search(r"v=(\S+)", out)
                facts["redis_version"] = match.group(1) if match else out
            elif role == "debian":
                facts["debian_version"] = probe(image, "cat", "/etc/debian_version")
        if "python_version" in facts:
            facts["python_matches_driver"] = facts["python_version"].rsplit(".", 1)[0] == PY_MM
            if not facts["python_matches_driver"]:
                say(f"WARNING: {image} has Python {facts['python_version']}, the driver {PY_MM}")
        if role in ("prefect", "worker"):
            got = {"prefect": facts["prefect_version"], "cloudpickle": facts["cloudpickle_version"]}
            if got != self.versions:
                raise Failure(f"{image} has {got}, the driver {self.versions}")
        return facts


def run_roles(planner: Planner) -> list[str]:
    """Prepare the roles in dependency waves, up to ARGS.jobs builds at a time. Returns errors."""
    errors: list[str] = []
    for depth in sorted({DEPTH[r] for r in planner.roles}):
        wave = [r for r in planner.roles if DEPTH[r] == depth]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, ARGS.jobs)) as pool:
            futures = {pool.submit(planner.prepare, role): role for role in wave}
            for future in concurrent.futures.as_completed(futures):
                role = futures[future]
                try:
                    planner.results[role] = future.result()
                except Failure as exc:
                    errors.append(f"{role}: {exc}")
                    TIMINGS.add(role, "FAILED", 0.0)
    return errors


def with_dependencies(roles: list[str]) -> list[str]:
    needed: set[str] = set()
    for role in roles:
        while role:
            needed.add(role)
            role = PARENT[role]
    return [r for r in ROLES if r in needed]


def write_manifest(path: Path, previous: dict, engine: dict, results: dict[str, Result]) -> None:
    manifest: dict = {}
    for role in ROLES:
        if role in results:
            r = results[role]
            img = image_inspect(r.image_id) or {}
            manifest[role] = {
                "image": r.image, "official": r.official, "stand_in": r.stand_in,
                "built_in_s": round(r.seconds, 2), "how": r.how, "id": r.image_id,
                "size_mb": round(img.get("Size", 0) / 1e6, 1), "content_hash": r.content_hash,
                "facts": r.facts,
            }
            if r.how == "cached" and isinstance(previous.get(role), dict):
                last = previous[role].get("last_build_s") or previous[role].get("built_in_s")
                manifest[role]["last_build_s"] = last
            elif r.how == "built":
                manifest[role]["last_build_s"] = round(r.seconds, 2)
        elif isinstance(previous.get(role), dict) and image_inspect(previous[role].get("id", "-")):
            manifest[role] = previous[role]  # prepared by an earlier run (--only), still there
    client = run(["docker", "version", "--format", "{{.Client.Version}}"], check=False).stdout.strip()
    manifest["engine"] = {**engine, "client_version": client,
                          "docker_host": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
                          "registry_reachable": not _registry_down.is_set(),
                          "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "driver_python": sys.version.split()[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated roles ({','.join(ROLES)}); "
                        "their parent images are prepared too")
    parser.add_argument("--no-pull", action="store_true",
                        help="never use official images (no registry contact): always stand-ins")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the selected stand-ins from scratch (ignore hashes and layer cache)")
    parser.add_argument("--jobs", type=int, default=2, help="builds at a time (default 2)")
    ARGS = parser.parse_args(argv)
    selected = [r.strip() for r in ARGS.only.split(",") if r.strip()] or list(ROLES)
    unknown = [r for r in selected if r not in ROLES]
    if unknown:
        parser.error(f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
    manifest_path = Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)

    t0 = time.monotonic()
    lock = open(LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"another prepare_docker.py holds {LOCK_FILE}; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    errors: list[str] = []
    try:
        engine = ensure_engine()
        try:
            previous = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            previous = {}
        planner = Planner(previous, with_dependencies(selected))
        errors = run_roles(planner)
        tm = time.monotonic()
        write_manifest(manifest_path, previous, engine, planner.results)
        TIMINGS.add("manifest", str(manifest_path), time.monotonic() - tm)
    except Failure as exc:
        errors.append(str(exc))
    finally:
        lock.close()
    TIMINGS.print(time.monotonic() - t0)
    if errors:
        for err in errors:
            print(f"\nFAILED: {err}", file=sys.stderr)
        return 1
    print(f"\nmanifest: {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
