"""Queue operations on one cluster's keys: enqueue, leased claim, ack, requeue, results.

Delivery is at-least-once: a claimed envelope sits in the claimer's processing list until it is
acked; if the claimer's lease key expires first, `requeue_expired` moves the envelope back to the
pending list (bounded by `max_attempts`) and reports the tasks that ran out of attempts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import cloudpickle
import redis
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection
from redis.retry import Retry

from .keys import BLOB_TTL, ENV_REDIS_CA, ENV_REDIS_HOST, ENV_REDIS_PASSWORD, ENV_REDIS_PORT, ENV_REDIS_TLS
from .envelope import ENVELOPE_TTL, peek_ident
from .keys import ENV_REDIS_TLS_NAME
from .limits import limit_replies, safe_text
from .scripts import ACK_LUA as _ACK_LUA, PUT_ASIDE_LUA as _PUT_ASIDE_LUA, REQUEUE_LUA as _REQUEUE_LUA
from .keys import STOP_SENTINEL, WORKER_LEASE_TTL, Keys

# Take back the envelopes of one listener that no worker has claimed yet, keeping the others in
# order (one pass: the list is rebuilt, not LREMed per item). KEYS[1]=tasks; ARGV[1]='@'..listener.
_WITHDRAW_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local taken, kept = {}, {}
local n = #ARGV[1]
for _, item in ipairs(items) do
  local idlen = string.byte(item, 6) or 0
  local ident = string.sub(item, 7, 6 + idlen)
  if string.sub(ident, -n) == ARGV[1] then table.insert(taken, item) else table.insert(kept, item) end
end
if #taken > 0 then
  redis.call('DEL', KEYS[1])
  for _, item in ipairs(kept) do redis.call('RPUSH', KEYS[1], item) end
end
return taken
"""


def versions() -> dict[str, str]:
    """Versions whose mismatch would corrupt an unpickle; Prefect's is added by the caller.

    The CPU architecture is not among them: pickles are portable between arm64 and x86_64.
    """
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
    }


def tls_options(tls: bool, ca_pem: str | None) -> dict:
    """redis-py keywords for a server verified against the cluster CA, hostname checking on.

    Without a CA (TLS terminated by the user's own proxy) the system trust store verifies."""
    if not tls:
        return {}
    opts: dict = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca_pem:
        opts["ssl_ca_data"] = ca_pem
    return opts


def named_ssl_connection(name: str) -> type[SSLConnection]:
    """An SSLConnection that checks the certificate for `name` while it dials another address:
    a server whose address is known only after it started (a Fargate task's IP) gets a certificate
    for a fixed name made before it started."""

    class NamedSSLConnection(SSLConnection):
        def _wrap_socket_with_ssl(self, sock):  # type: ignore[no-untyped-def]
            dialled, self.host = self.host, name  # redis-py checks the name it dialled: swap it in
            try:
                return super()._wrap_socket_with_ssl(sock)
            finally:
                self.host = dialled

    return NamedSSLConnection


def connect(
    host: str,
    port: int,
    password: str,
    tls: bool = False,
    ca_pem: str | None = None,
    tls_name: str | None = None,
) -> redis.Redis:
    """A client with timeouts long enough for blocking pops and short enough to notice death;
    with TLS, the certificate must name `tls_name` (default: `host`)."""
    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        **tls_options(tls or bool(ca_pem), ca_pem),
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=15,
        decode_responses=False,
        # Two quick retries ride out a blip; more would only delay noticing a dead server.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2),
    )
    if tls_name and (tls or ca_pem) and tls_name != host:
        client.connection_pool.connection_class = named_ssl_connection(tls_name)
    return client


def connect_from_env(env: dict[str, str] | None = None) -> redis.Redis:
    env = os.environ if env is None else env
    return connect(
        env[ENV_REDIS_HOST],
        int(env[ENV_REDIS_PORT]),
        env[ENV_REDIS_PASSWORD],
        tls=env.get(ENV_REDIS_TLS, "") in ("1", "true"),
        ca_pem=env.get(ENV_REDIS_CA) or None,
        tls_name=env.get(ENV_REDIS_TLS_NAME) or None,
    )


@dataclass(frozen=True)
class Requeued:
    ident: str  # unverified, escaped: for log lines only
    worker_id: str  # unverified, escaped
    exhausted: bool
    envelope: bytes | None = None  # the element, when exhausted: verify before acting on it


class TaskQueue:
    """The protocol's Redis operations for one cluster; knows nothing of Prefect."""

    def __init__(self, client: redis.Redis, cluster: str):
        self.redis = client
        self.keys = Keys(cluster)
        self._requeue = client.register_script(_REQUEUE_LUA)
        self._ack = client.register_script(_ACK_LUA)
        self._put_aside = client.register_script(_PUT_ASIDE_LUA)
        self.max_element_bytes = 0  # a worker sets it from the driver's max_payload_bytes (limit_replies)
        self._withdraw = client.register_script(_WITHDRAW_LUA)

    # -- driver side -------------------------------------------------------------------------
    def publish_meta(self, meta: dict[str, str]) -> None:
        self.redis.hset(self.keys.meta, mapping=meta)

    def read_meta(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.keys.meta).items()}

    def enqueue(self, envelopes: list[bytes]) -> None:
        """Push envelopes in one round trip (map batches them)."""
        if envelopes:
            self.redis.lpush(self.keys.tasks, *envelopes)

    def put_blob(self, digest: str, body: bytes) -> bool:
        """Store a content-addressed part once; returns False when it was already there."""
        return bool(self.redis.set(self.keys.blob(digest), body, nx=True, ex=BLOB_TTL))

    def beat_driver(self, ttl: float) -> None:
        self.redis.set(self.keys.driver, b"1", px=int(ttl * 1000))

    def pop_results(self, listener: str, timeout: float, batch: int = 512) -> list[bytes]:
        """Block up to `timeout` for the first result, then drain up to `batch` without waiting."""
        key = self.keys.results(listener)
        first = self.redis.brpop([key], timeout=timeout)
        if first is None:
            return []
        more = self.redis.rpop(key, batch) or []
        return [first[1], *more]

    def push_result(self, listener: str, result: bytes) -> None:
        self.redis.lpush(self.keys.results(listener), result)

    def requeue_expired(self, max_attempts: int, max_element_bytes: int = 2**31) -> list[Requeued]:
        """Re-queue the claims of lost workers. Ids and worker ids are unverified text from Redis
        (escaped); an exhausted entry carries its raw `envelope` for the caller to verify."""
        raw = self._requeue(
            keys=[self.keys.workers, self.keys.tasks, self.keys.attempts, self.keys.deadletter, self.keys.stats],
            args=[self.keys.prefix, max_attempts, max_element_bytes],
        )
        out = []
        for i in range(0, len(raw), 3):
            exhausted = raw[i] == b"exhausted"
            ident = (peek_ident(raw[i + 2]) or "?") if exhausted else raw[i + 2].decode(errors="replace")
            out.append(Requeued(safe_text(ident), safe_text(raw[i + 1]), exhausted, raw[i + 2] if exhausted else None))
        return out

    def dead_lettered(self) -> int:
        """How many elements were put aside in this cluster (oversized, undecodable, un-ackable)."""
        return int(self.redis.hget(self.keys.stats, "dead_lettered") or 0)

    def dead_letters(self) -> list[str]:
        """The bounded trace of put-aside elements (first bytes, size, why), escaped."""
        return [safe_text(e) for e in self.redis.lrange(self.keys.deadletter, 0, -1)]

    def withdraw(self, listener: str) -> list[bytes]:
        """Atomically remove and return the still-unclaimed envelopes whose results go to
        `listener` (a flow run ending: what has not started is cancelled, not run)."""
        return list(self._withdraw(keys=[self.keys.tasks], args=[f"@{listener}"]))

    def pending(self) -> int:
        return int(self.redis.llen(self.keys.tasks))

    def live_workers(self) -> int:
        ids = self.redis.smembers(self.keys.workers)
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for wid in ids:
            pipe.exists(self.keys.lease(wid.decode()))
        return sum(pipe.execute())

    def errors(self) -> list[str]:
        pipe = self.redis.pipeline()
        pipe.lrange(self.keys.errors, 0, -1)
        pipe.delete(self.keys.errors)
        raw, _ = pipe.execute()
        return [safe_text(e) for e in raw]  # written by workers, or by anyone with the password

    def retire(self, slots: int) -> None:
        """Ask `slots` idle worker slots to exit (graceful scale-down)."""
        if slots > 0:
            self.redis.incrby(self.keys.retire, slots)

    def cancel_retirement(self) -> int:
        """Withdraw retirement requests no slot has taken yet (scaling up again); returns how many."""
        return int(self.redis.getdel(self.keys.retire) or 0)

    def mark_stopping(self) -> None:
        self.redis.set(self.keys.stopping, b"1", ex=3600)

    def joined_slots(self) -> int:
        return int(self.redis.scard(self.keys.workers))

    def slot_usage(self) -> tuple[int, int]:
        """(joined slots, slots holding a claimed task), in two round trips."""
        members = list(self.redis.smembers(self.keys.workers))
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.llen(self.keys.processing(member.decode()))
        return len(members), sum(1 for n in pipe.execute() if n)

    def wake_for_stop(self, slots: int) -> None:
        """Wake `slots` blocked claims with the stop sentinel (the list expires on its own)."""
        if slots <= 0:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.keys.tasks, *([STOP_SENTINEL] * slots))
        pipe.expire(self.keys.tasks, 60)
        pipe.execute()

    def purge(self) -> int:
        """Delete every key of this cluster; returns how many were removed."""
        removed = 0
        batch: list[bytes] = []
        for key in self.redis.scan_iter(match=self.keys.pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += self.redis.unlink(*batch)
                batch.clear()
        if batch:
            removed += self.redis.unlink(*batch)
        return removed

    # -- worker side -------------------------------------------------------------------------
    def join(self, worker_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self.keys.lease(worker_id), b"1", ex=WORKER_LEASE_TTL)
        pipe.sadd(self.keys.workers, worker_id)
        pipe.execute()

    def heartbeat(self, worker_id: str) -> tuple[bool, bool]:
        """Refresh the lease; returns (driver_alive, stopping) in the same round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.lease(worker_id), b"1", ex=WORKER_LEASE_TTL)
        pipe.sadd(self.keys.workers, worker_id)
        pipe.exists(self.keys.driver)
        pipe.exists(self.keys.stopping)
        _, _, alive, stopping = pipe.execute()
        return bool(alive), bool(stopping)

    def claim(self, worker_id: str, timeout: float) -> bytes | None:
        """Leased claim: atomically move one envelope into this worker's processing list."""
        return self.redis.blmove(
            self.keys.tasks, self.keys.processing(worker_id), timeout, src="RIGHT", dest="LEFT"
        )

    def ack(
        self,
        worker_id: str,
        envelope: bytes,
        listener: str,
        result: bytes | None,
        claim_next: bool = False,
        ident: str | None = None,
    ) -> bytes | None:
        """Publish the result and drop the claim in one transaction; with `claim_next`, the same
        round trip also claims the next pending envelope (returned, or None if there is none).

        `ident` (a verified envelope id) joins the acked set, so a replayed copy never runs again;
        a next envelope whose id is already acked is dropped (and reported) without being read.
        """
        keys = [self.keys.results(listener), self.keys.processing(worker_id), self.keys.tasks,
                self.keys.acked, self.keys.errors, self.keys.deadletter, self.keys.stats]
        args = [result if result is not None else b"", envelope, b"1" if claim_next else b"0",
                ident or "", int(ENVELOPE_TTL), worker_id, self.max_element_bytes]
        return self._ack(keys=keys, args=args)

    def limit_reads(self, max_element_bytes: int) -> None:
        """Never read a reply over `max_element_bytes` again; Lua puts larger claims aside unread."""
        self.max_element_bytes = max_element_bytes
        limit_replies(self.redis, max_element_bytes)

    def put_aside(self, worker_id: str, envelope: bytes | None = None, why: str = "") -> int:
        """Dead-letter this worker's oversized claims (never read), and `envelope` if given (one
        it could not ack after bounded attempts). Counted; the driver reports the count."""
        keys = [self.keys.processing(worker_id), self.keys.deadletter, self.keys.stats]
        return int(self._put_aside(keys=keys, args=[self.max_element_bytes, envelope or b"", why]))

    def is_acked(self, ident: str) -> bool:
        """True when an envelope with this (verified) id was acked already: a replay."""
        return bool(self.redis.sismember(self.keys.acked, ident))

    def release(self, worker_id: str) -> None:
        """Give claimed-but-unfinished envelopes back (SIGTERM, Fargate Spot reclaim)."""
        plist = self.keys.processing(worker_id)
        while self.redis.lmove(plist, self.keys.tasks, src="LEFT", dest="RIGHT"):
            pass

    def leave(self, worker_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.lease(worker_id))
        pipe.srem(self.keys.workers, worker_id)
        pipe.execute()

    def take_retirement(self) -> bool:
        """True if this slot should exit because the cluster is scaling down."""
        if int(self.redis.get(self.keys.retire) or 0) <= 0:
            return False
        return int(self.redis.decr(self.keys.retire)) >= 0

    def get_blob(self, digest: str) -> bytes | None:
        return self.redis.get(self.keys.blob(digest))

    def report_error(self, message: str) -> None:
        self.redis.rpush(self.keys.errors, message.encode())
