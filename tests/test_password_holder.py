"""Issue 17, findings 4 and 7: what someone with the Redis password but not the signing key tries.

Replaying a copied envelope, moving one to another cluster, keeping one past its expiry, pushing a
task envelope onto a results list: each is refused, on a real redis-server and a real worker.
"""

from __future__ import annotations

import logging
import time

import pytest

from helpers import RedisServer, wait_until
from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.protocol import KIND_RESULT, KIND_TASK, EnvelopeError, EnvelopeExpired, Signer, TaskQueue
from prefect_dockerparallel.protocol.keys import make_ident

KEY = b"k" * 32


def test_envelope_is_bound_to_its_cluster():
    raw = Signer(KEY, cluster="dp-a").dumps(KIND_TASK, "P:1@L", 1)
    assert Signer(KEY, cluster="dp-a").loads(raw, KIND_TASK) == ("P:1@L", 1)
    with pytest.raises(EnvelopeError, match="another cluster"):
        Signer(KEY, cluster="dp-b").open(raw)


def test_expiry_is_signed_and_enforced():
    raw = bytearray(Signer(KEY, ttl=-1).seal(KIND_TASK, "P:1@L", b"x"))
    with pytest.raises(EnvelopeExpired) as info:
        Signer(KEY).open(bytes(raw))
    assert info.value.ident == "P:1@L"
    # moving the expiry forward breaks the signature
    id_end = 6 + raw[5]
    raw[id_end : id_end + 8] = (int(time.time() * 1000) + 3_600_000).to_bytes(8, "big")
    with pytest.raises(EnvelopeError, match="signature"):
        Signer(KEY).open(bytes(raw))


def test_ack_records_the_id_and_drops_a_replayed_next_envelope():
    signer = Signer(KEY)
    with RedisServer() as server:
        queue = TaskQueue(server.client(), "replay")
        first = signer.seal(KIND_TASK, "C:t1@L", b"1")
        queue.enqueue([first])
        assert queue.claim("w", 1) == first and not queue.is_acked("C:t1@L")
        queue.enqueue([first])  # the copy, pushed again by a password holder
        assert queue.ack("w", first, "L", signer.seal(KIND_RESULT, "C:t1@L", b"r"), claim_next=True,
                         ident="C:t1@L") is None
        assert queue.is_acked("C:t1@L")
        assert queue.pending() == 0 and queue.redis.llen(queue.keys.processing("w")) == 0
        assert any("replayed" in e for e in queue.errors())


def _append(path: str, text: str) -> str:
    with open(path, "a") as fh:
        fh.write(text + "\n")
    return text


@pytest.mark.usefixtures("no_leftover_processes")
def test_replayed_expired_and_misdirected_envelopes_on_a_real_worker(tmp_path, caplog):
    marker = tmp_path / "runs"
    cluster = DockerCluster(workers=0, idle_timeout=30).start()
    try:
        with cluster.executor() as ex:
            future = ex.submit(_append, str(marker), "once")
            copied = cluster.queue.redis.lrange(cluster.queue.keys.tasks, 0, -1)  # the attacker's copy
            assert len(copied) == 1
            cluster.set_worker_number(1)
            assert future.result(timeout=60) == "once"

            with caplog.at_level(logging.ERROR, logger="prefect_dockerparallel.cluster"):
                cluster.queue.enqueue(copied)  # replay after completion (finding 4)
                assert wait_until(lambda: "already acked" in caplog.text, 30), caplog.text
                # the same task signed for another cluster with the same key
                other = Signer(cluster.secrets.signing_key, cluster="dp-other")
                call = {"kind": "call", "fn": _append, "args": (str(marker), "other"), "kwargs": {}}
                import cloudpickle

                ident = make_ident("C", "other", cluster.listener.listener_id)
                cluster.queue.enqueue([other.seal(KIND_TASK, ident, cloudpickle.dumps(call))])
                assert wait_until(lambda: "another cluster" in caplog.text, 30), caplog.text

            # an envelope past its signed expiry fails its future instead of running
            cluster.signer.ttl_ms = -1000
            late = ex.submit(_append, str(marker), "late")
            with pytest.raises(RuntimeError, match="expired"):
                late.result(timeout=60)
            cluster.signer.ttl_ms = 3_600_000

            # finding 7: a (genuine) task envelope pushed onto the results list resolves nothing
            pending = ex.submit(time.sleep, 2)
            task_bytes = cluster.signer.seal(KIND_TASK, list(cluster.listener._pending)[0], b"x")
            cluster.queue.push_result(cluster.listener.listener_id, task_bytes)
            assert pending.result(timeout=60) is None  # the real result, not the forged one
        assert marker.read_text() == "once\n"
    finally:
        cluster.stop()


def test_worker_refuses_an_oversized_reply_unread_and_puts_it_aside():
    """Finding 8: a 20 MB element never reaches a worker limited to 64 kB; Lua puts it aside."""
    from prefect_dockerparallel.protocol.limits import ReplyTooLarge

    with RedisServer() as server:
        queue = TaskQueue(server.client(), "big")
        queue.limit_reads(65536)
        queue.redis.lpush(queue.keys.tasks, b"x" * 20_000_000, b"DPE2" + b"y" * 100_000, b"small")
        with pytest.raises(ReplyTooLarge):
            queue.claim("w", 1)
        assert queue.put_aside("w") == 1 and queue.dead_lettered() == 1
        assert "[20000000 bytes: over 65536 bytes]" in queue.dead_letters()[0]
        # claimed by the ack in passing: the next oversized one is put aside inside Redis
        assert queue.ack("w", b"-", "L", None, claim_next=True) == b"small"
        assert queue.dead_lettered() == 2 and queue.redis.llen(queue.keys.processing("w")) == 1


def test_reaper_verifies_before_declaring_a_task_lost():
    """Finding 7: elements forged into a dead worker's claims are dropped, never answered."""
    signer = Signer(KEY)
    with RedisServer() as server:
        queue = TaskQueue(server.client(), "reap")
        genuine = signer.seal(KIND_TASK, "P:real@L", b"1")
        forged = Signer(b"z" * 32).seal(KIND_TASK, "P:victim@L", b"1")
        queue.redis.sadd(queue.keys.workers, "dead\nFAKE LOG LINE")
        queue.redis.lpush(queue.keys.processing("dead\nFAKE LOG LINE"), genuine, forged, b"x")
        out = queue.requeue_expired(max_attempts=1)
        assert {r.ident for r in out} == {"P:real@L", "P:victim@L"}  # unverified: log text only
        assert all("\n" not in r.worker_id for r in out)  # escaped
        verified = []
        for r in out:
            try:
                verified.append(signer.open(r.envelope, check_expiry=False).ident)
            except EnvelopeError:
                pass
        assert verified == ["P:real@L"]
        assert queue.dead_lettered() == 1  # b"x": not even an envelope


def _ok(i: int) -> int:
    return i * 2


@pytest.mark.usefixtures("no_leftover_processes")
def test_poison_elements_are_dead_lettered_while_normal_tasks_keep_flowing(caplog):
    cluster = DockerCluster(workers=1, idle_timeout=30, max_payload_bytes=50_000).start()
    try:
        queue = cluster.queue
        with cluster.executor() as ex:
            assert ex.submit(_ok, 0).result(timeout=60) == 0  # the worker is up
            # un-ackable: its listener's results key was made a string, so the ack's LPUSH fails
            queue.redis.set(queue.keys.results("broken"), b"not a list")
            unackable = cluster.signer.seal(KIND_TASK, make_ident("C", "p1", "broken"), b"\x80\x05N.")
            oversized = b"DPE2" + b"z" * 200_000
            forged = Signer(b"q" * 32, cluster=cluster.name).seal(KIND_TASK, "C:p3@x", b"")
            queue.enqueue([unackable, oversized, forged])
            futures = [ex.submit(_ok, i) for i in range(1, 21)]
            assert [f.result(timeout=120) for f in futures] == [i * 2 for i in range(1, 21)]
            assert wait_until(lambda: cluster.dead_lettered >= 3, 30), cluster.dead_lettered
            assert queue.pending() == 0
        assert "put 1 element(s) aside" in caplog.text or "element(s) aside" in caplog.text
    finally:
        cluster.stop()


def _big(n: int) -> bytes:
    return b"x" * n


@pytest.mark.usefixtures("no_leftover_processes")
def test_a_result_over_max_payload_bytes_fails_clearly_instead_of_being_unreadable():
    with DockerCluster(workers=1, idle_timeout=30, max_payload_bytes=20_000) as cluster:
        with cluster.executor() as ex:
            assert len(ex.submit(_big, 1000).result(timeout=60)) == 1000
            with pytest.raises(Exception, match="max_payload_bytes=20000"):
                ex.submit(_big, 50_000).result(timeout=60)
