"""A Kubernetes API test server: the subset KubernetesDriver uses, over real HTTP.

Real JSON shapes (Status errors, List kinds without per-item kind, base64 Secret data), label
selectors (equality and set-based), create / get / list / strategic-merge, merge and JSON patch /
delete with propagationPolicy (Background, Foreground, Orphan; Jobs default to Orphan like
batch/v1), ownerReference garbage collection, graceful pod deletion (deletionTimestamp until the
kubelet has killed the process), pod logs, optional bearer-token auth, and a request counter.
Pod port-forward over WebSocket is in `k8s_fake_portforward.py`; controllers (Job,
LoadBalancer) and the kubelet live in `k8s_fake_kubelet.py`.
"""

from __future__ import annotations

import base64
import collections
import copy
import ipaddress
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from k8s_fake_portforward import PortForwardSessions, serve_portforward

KINDS = {  # plural -> (kind, apiVersion, api prefix)
    "pods": ("Pod", "v1", "/api/v1"),
    "services": ("Service", "v1", "/api/v1"),
    "secrets": ("Secret", "v1", "/api/v1"),
    "configmaps": ("ConfigMap", "v1", "/api/v1"),
    "jobs": ("Job", "batch/v1", "/apis/batch/v1"),
}
PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log|portforward))?$"
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiFailure(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


# -- label selectors -------------------------------------------------------------------------
_REQ = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<val>[A-Za-z0-9._-]*)|(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?\s*"
)


def parse_selector(text: str) -> list[tuple[str, str, Any]]:
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` -> [(key, op, value)]."""
    reqs: list[tuple[str, str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _REQ.match(text, pos)
        if not m or m.end() == pos:
            raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        key = m["key"]
        if m["neg"]:
            reqs.append((key, "!exists", None))
        elif m["op"]:
            reqs.append((key, "!=" if m["op"] == "!=" else "=", m["val"]))
        elif m["setop"]:
            reqs.append((key, m["setop"], {v.strip() for v in m["set"].split(",") if v.strip()}))
        else:
            reqs.append((key, "exists", None))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
            pos += 1
    return reqs


def matches(labels: dict[str, str], reqs: list[tuple[str, str, Any]]) -> bool:
    for key, op, val in reqs:
        has, cur = key in labels, labels.get(key)
        if op == "=":
            ok = has and cur == val
        elif op == "!=":
            ok = cur != val
        elif op == "exists":
            ok = has
        elif op == "!exists":
            ok = not has
        elif op == "in":
            ok = has and cur in val
        else:  # notin
            ok = not has or cur not in val
        if not ok:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386; strategic merge is served by it too (the driver patches scalars only)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"]) if op["op"] == "add" else parent.__setitem__(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ApiFailure(422, "Invalid", f"json patch op {op['op']!r} is not supported here")
    return doc


class Store:
    """Objects by (plural, namespace, name), with GC. `changed` wakes the controllers."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.version = 0
        self.changed = threading.Condition(self.lock)
        self.requests: collections.Counter[str] = collections.Counter()
        self.logs: dict[tuple[str, str], Any] = {}  # (ns, pod) -> log file path, or output callable

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.changed.notify_all()

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, api_version, _ = KINDS[plural]
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not DNS_LABEL.match(name) or len(name) > (63 if plural in ("pods", "services") else 253):
            raise ApiFailure(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name: Invalid value')
        for k, v in (meta.get("labels") or {}).items():
            if len(str(v)) > 63 or not LABEL_VALUE.match(str(v)):
                raise ApiFailure(422, "Invalid", f"{kind} {name!r} is invalid: metadata.labels: Invalid value: {v!r}")
        validate(plural, obj)
        with self.lock:
            if (plural, ns, name) in self.objects:
                raise ApiFailure(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj["kind"], obj["apiVersion"] = kind, api_version
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
            if plural == "secrets":
                data = dict(obj.get("data") or {})
                for k, v in (obj.pop("stringData", None) or {}).items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                obj["data"] = data
            if plural == "services":
                n = sum(1 for key in self.objects if key[0] == "services") + 1
                obj["spec"]["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
                obj["status"] = {"loadBalancer": {}}
            if plural == "pods":
                obj["status"] = {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]}
            if plural == "jobs":
                obj["status"] = {}
                obj["spec"].setdefault("backoffLimit", 6)
                obj["spec"].setdefault("parallelism", 1)
            self.objects[(plural, ns, name)] = obj
            self._bump(obj)
            return copy.deepcopy(obj)

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                raise ApiFailure(404, "NotFound", f'{plural} "{name}" not found')
            return copy.deepcopy(obj)

    def list(self, plural: str, ns: str | None, selector: str = "") -> list[dict[str, Any]]:
        reqs = parse_selector(selector) if selector else []
        with self.lock:
            return [copy.deepcopy(o) for (p, n, _), o in sorted(self.objects.items())
                    if p == plural and (ns is None or n == ns)
                    and matches(o["metadata"].get("labels") or {}, reqs)]

    def update(self, plural: str, ns: str, name: str, fn: Any) -> dict[str, Any]:
        """Apply `fn(obj) -> obj` under the lock (controllers' status writes, patches)."""
        with self.lock:
            cur = self.objects.get((plural, ns, name))
            if cur is None:
                raise ApiFailure(404, "NotFound", f'{plural} "{name}" not found')
            new = fn(copy.deepcopy(cur))
            for frozen in ("uid", "name", "namespace", "creationTimestamp"):
                new["metadata"][frozen] = cur["metadata"][frozen]
            if plural == "jobs" and new["spec"].get("template") != cur["spec"].get("template"):
                raise ApiFailure(422, "Invalid", "Job.batch is invalid: spec.template: field is immutable")
            self.objects[(plural, ns, name)] = new
            self._bump(new)
            return copy.deepcopy(new)

    def delete(self, plural: str, ns: str, name: str, policy: str | None, grace: int | None = None) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                raise ApiFailure(404, "NotFound", f'{plural} "{name}" not found')
            policy = policy or ("Orphan" if plural == "jobs" else "Background")
            if plural == "pods" and ns and (ns, name) in self.logs:
                # Graceful: the kubelet kills the process, then calls `remove`.
                obj["metadata"].setdefault("deletionTimestamp", now())
                obj["metadata"]["deletionGracePeriodSeconds"] = (
                    int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)) if grace is None else grace)
                self._bump(obj)
                self._propagate(obj, policy)
                return copy.deepcopy(obj)
            self.remove(plural, ns, name, policy)
            return copy.deepcopy(obj)

    def remove(self, plural: str, ns: str, name: str, policy: str = "Background") -> None:
        with self.lock:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return
            self.logs.pop((ns, name), None)
            self.changed.notify_all()
            self._propagate(obj, policy)

    def _propagate(self, owner: dict[str, Any], policy: str) -> None:
        """Garbage collector: dependents whose every owner is gone are deleted (Background and
        Foreground alike here) or, with Orphan, lose the reference."""
        uid = owner["metadata"]["uid"]
        gone = owner["metadata"].get("deletionTimestamp") or (
            (KINDS_BY_KIND[owner["kind"]], owner["metadata"]["namespace"], owner["metadata"]["name"]) not in self.objects)
        for key, dep in list(self.objects.items()):
            refs = dep["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            if policy == "Orphan":
                dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                self._bump(dep)
                continue
            live = [r for r in refs if r.get("uid") != uid and self._owner_exists(r, key[1])]
            if gone and not live and not dep["metadata"].get("deletionTimestamp"):
                self.delete(key[0], key[1], key[2], "Background")

    def _owner_exists(self, ref: dict[str, Any], ns: str) -> bool:
        plural = KINDS_BY_KIND.get(ref.get("kind", ""))
        obj = self.objects.get((plural, ns, ref.get("name", ""))) if plural else None
        return bool(obj and obj["metadata"]["uid"] == ref.get("uid"))


KINDS_BY_KIND = {v[0]: k for k, v in KINDS.items()}


def validate(plural: str, obj: dict[str, Any]) -> None:
    """A few of the API server's validations, those a driver bug would trip."""
    spec = obj.get("spec") or {}
    if plural == "services":
        for rng in spec.get("loadBalancerSourceRanges") or []:
            try:
                ipaddress.ip_network(rng, strict=False)
            except ValueError:
                raise ApiFailure(422, "Invalid", f"spec.loadBalancerSourceRanges: Invalid value: {rng!r}") from None
    if plural == "jobs":
        restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            raise ApiFailure(422, "Invalid", f"spec.template.spec.restartPolicy: Unsupported value: {restart!r}")
    if plural == "pods":
        for c in spec.get("containers") or []:
            for e in c.get("env") or []:
                if "value" in e and "valueFrom" in e:
                    raise ApiFailure(422, "Invalid", "env: may not have both value and valueFrom")


class Handler(BaseHTTPRequestHandler):
    server: "FakeApiServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def _handle(self, method: str) -> None:
        store = self.server.store
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            token = self.server.token
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                raise ApiFailure(401, "Unauthorized", "Unauthorized")
            if url.path == "/version":
                return self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"})
            m = PATH.match(url.path)
            if not m or m["plural"] not in KINDS or KINDS[m["plural"]][2] != m["prefix"]:
                raise ApiFailure(404, "NotFound", f"the server could not find the requested resource {url.path}")
            plural, ns, name, sub = m["plural"], m["ns"], m["name"], m["sub"]
            store.requests[f"{method} {plural}{'/' + sub if sub else ''}{'' if name else ' (collection)'}"] += 1
            kind = KINDS[plural][0]
            if sub == "portforward" and method in ("GET", "POST"):
                pod = store.get(plural, ns, name)
                if pod["status"].get("phase") != "Running":
                    raise ApiFailure(400, "BadRequest", f"pod {name} is not running")
                if (self.headers.get("Upgrade") or "").lower() != "websocket":
                    raise ApiFailure(400, "BadRequest", "Upgrade request required")
                ports = [int(p) for p in q.get("ports", "").split(",") if p]
                if len(ports) != 1:
                    raise ApiFailure(400, "BadRequest", "this fake forwards exactly one port")
                if self.server.forwards.take_rejection():
                    raise ApiFailure(400, "BadRequest", "injected: port-forward handshake rejected")
                return serve_portforward(self, ports[0], self.server.forwards)
            if sub == "log" and method == "GET":
                store.get(plural, ns, name)
                source = store.logs.get((ns, name))  # a log file, or a callable (a container's output)
                if callable(source):
                    text = source()
                else:
                    text = open(source, encoding="utf-8", errors="replace").read() if source else ""
                lines = text.splitlines(keepends=True)
                if q.get("tailLines"):
                    lines = lines[-int(q["tailLines"]):]
                return self._send(200, "".join(lines), "text/plain")
            if method == "GET" and name:
                return self._send(200, store.get(plural, ns, name))
            if method == "GET":
                items = store.list(plural, ns, q.get("labelSelector", ""))
                for it in items:
                    it.pop("kind", None), it.pop("apiVersion", None)
                return self._send(200, {"kind": f"{kind}List", "apiVersion": KINDS[plural][1],
                                        "metadata": {"resourceVersion": str(store.version)}, "items": items})
            if method == "POST" and not name:
                return self._send(201, store.create(plural, ns, self._body() or {}))
            if method == "PATCH" and name:
                ctype = (self.headers.get("Content-Type") or "").split(";")[0]
                patch = self._body()
                if ctype == "application/json-patch+json":
                    fn = lambda o: json_patch(o, patch)  # noqa: E731
                elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    fn = lambda o: merge_patch(o, patch)  # noqa: E731
                else:
                    raise ApiFailure(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json ({ctype})")
                return self._send(200, store.update(plural, ns, name, fn))
            if method == "DELETE" and name:
                body = self._body() or {}
                policy = q.get("propagationPolicy") or body.get("propagationPolicy")
                grace = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
                return self._send(200, store.delete(plural, ns, name, policy, None if grace is None else int(grace)))
            raise ApiFailure(405, "MethodNotAllowed", f"{method} is not supported on {url.path}")
        except ApiFailure as exc:
            self._send(exc.code, exc.status())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: Store, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = store
        self.token = token
        self.forwards = PortForwardSessions()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"
