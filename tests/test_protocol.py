"""The wire protocol against a real redis-server: signatures, leased claims, requeue, auth."""

from __future__ import annotations

import os
import random

import cloudpickle
import pytest
import redis

from helpers import RedisServer
from prefect_dockerparallel.protocol import (
    KIND_RESULT,
    KIND_TASK,
    EnvelopeError,
    PayloadTooLarge,
    Signer,
    TaskQueue,
)
from prefect_dockerparallel.protocol.blobs import BlobResolver, BlobStore, dumps_with_refs
from prefect_dockerparallel.protocol.keys import make_ident, split_ident

KEY = b"k" * 32


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def queue(server, request):
    q = TaskQueue(server.client(), f"t{abs(hash(request.node.name)) % 10**8}")
    yield q
    q.purge()


def test_seal_and_open_round_trip():
    signer = Signer(KEY)
    raw = signer.dumps(KIND_TASK, "P:abc@drv", {"x": [1, 2, 3]})
    ident, obj = signer.loads(raw, KIND_TASK)
    assert ident == "P:abc@drv" and obj == {"x": [1, 2, 3]}


def test_tampered_body_is_rejected():
    raw = bytearray(Signer(KEY).dumps(KIND_TASK, "id", "payload"))
    raw[-1] ^= 0x01
    with pytest.raises(EnvelopeError, match="signature"):
        Signer(KEY).open(bytes(raw))


def test_wrong_key_is_rejected():
    raw = Signer(b"x" * 32).dumps(KIND_TASK, "id", 1)
    with pytest.raises(EnvelopeError, match="signature"):
        Signer(KEY).loads(raw)


class _Boom:
    """Unpickling this object writes a marker file: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_forged_envelope_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    forged = Signer(b"attacker-key-000").dumps(KIND_TASK, "id", _Boom(str(marker)))
    with pytest.raises(EnvelopeError):
        Signer(KEY).loads(forged)
    assert not marker.exists()
    # the same bytes signed with the right key do run: the check above is what stopped them
    body = Signer(b"attacker-key-000").open(forged).body
    Signer(KEY).loads(Signer(KEY).seal(KIND_TASK, "id", body))
    assert marker.exists()


def test_fuzzed_envelopes_never_unpickle_or_crash():
    signer = Signer(KEY)
    good = signer.dumps(KIND_TASK, "P:t@l", list(range(10)))
    rng = random.Random(1234)
    for i in range(3000):
        if i % 3 == 0:
            data = good[: rng.randrange(len(good))]
        elif i % 3 == 1:
            data = bytearray(good)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data)
        else:
            data = os.urandom(rng.randrange(0, 200))
        with pytest.raises(EnvelopeError):
            signer.open(data)


def test_payload_limit_names_the_setting():
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes=100"):
        Signer(KEY, max_payload_bytes=100).seal(KIND_TASK, "id", b"x" * 101)


def test_ident_round_trip():
    assert split_ident(make_ident("P", "abc", "listener1")) == ("P", "abc", "listener1")


def test_claim_ack_moves_result_to_listener(queue):
    signer = Signer(KEY)
    env = signer.dumps(KIND_TASK, make_ident("C", "t1", "L"), "work")
    queue.enqueue([env])
    assert queue.claim("w1", 1) == env
    assert queue.redis.llen(queue.keys.processing("w1")) == 1
    queue.ack("w1", env, "L", signer.dumps(KIND_RESULT, "x", "done"))
    assert queue.redis.llen(queue.keys.processing("w1")) == 0
    (result,) = queue.pop_results("L", timeout=1)
    assert signer.loads(result)[1] == "done"


def test_expired_lease_requeues_then_exhausts(queue):
    signer = Signer(KEY)
    ident = make_ident("C", "t2", "L")
    env = signer.dumps(KIND_TASK, ident, "work")
    queue.enqueue([env])
    for attempt in (1, 2):
        queue.join(f"w{attempt}")
        assert queue.claim(f"w{attempt}", 1) == env
        assert queue.requeue_expired(max_attempts=2) == []  # lease alive: nothing happens
        queue.redis.delete(queue.keys.lease(f"w{attempt}"))  # the worker dies
        (r,) = queue.requeue_expired(max_attempts=2)
        assert (r.ident, r.worker_id) == (ident, f"w{attempt}")
        assert r.exhausted is (attempt == 2)
    assert queue.pending() == 0  # exhausted: not re-queued again


def test_release_gives_claims_back(queue):
    env = Signer(KEY).dumps(KIND_TASK, "C:t3@L", 1)
    queue.enqueue([env])
    queue.claim("w", 1)
    queue.release("w")
    assert queue.pending() == 1


def test_withdraw_takes_back_only_one_listeners_unclaimed_envelopes_in_order(queue):
    signer = Signer(KEY)
    envs = [signer.dumps(KIND_TASK, make_ident("P", f"t{i}", "L1" if i % 2 else "L2"), i) for i in range(6)]
    queue.enqueue(envs)
    claimed = queue.claim("w", 1)  # t0 (L2): claimed, stays with its worker
    taken = queue.withdraw("L1")
    assert sorted(taken) == sorted(envs[1::2])
    assert queue.withdraw("L1") == []
    assert [queue.claim("w", 1) for _ in range(2)] == [envs[2], envs[4]]  # L2's, in claim order
    assert claimed == envs[0] and queue.pending() == 0


def test_purge_removes_every_key(queue):
    queue.enqueue([b"x"])
    queue.beat_driver(10)
    queue.publish_meta({"a": "b"})
    assert queue.purge() >= 3
    assert list(queue.redis.scan_iter(match=queue.keys.pattern)) == []


def test_client_without_password_is_refused(server):
    with pytest.raises(redis.AuthenticationError):
        server.client(password=None).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(password="wrong").ping()


def test_blobs_are_uploaded_once_and_verified(queue):
    signer = Signer(KEY)
    store = BlobStore(queue, signer)
    big = list(range(100_000))
    d1, size = store.put(big)
    d2, _ = store.put(big)
    assert d1 == d2 and size > 100_000
    body = dumps_with_refs({"a": big, "b": big}, {id(big): d1})
    assert len(body) < 200  # the value travels by reference
    resolver = BlobResolver(queue.get_blob, signer)
    out = resolver.loads(body)
    assert out["a"] == big and out["a"] is out["b"]
    queue.redis.set(queue.keys.blob(d1), Signer(b"z" * 32).seal(b"B", d1, cloudpickle.dumps(0)))
    with pytest.raises(EnvelopeError):
        BlobResolver(queue.get_blob, signer).loads(body)


def test_ack_can_claim_the_next_envelope_in_the_same_round_trip(queue):
    signer = Signer(KEY)
    first, second = (signer.dumps(KIND_TASK, make_ident("C", t, "L"), t) for t in ("a", "b"))
    queue.enqueue([first, second])  # claimed in the order given
    assert queue.claim("w", 1) == first
    nxt = queue.ack("w", first, "L", signer.dumps(KIND_RESULT, "x", 1), claim_next=True)
    assert nxt == second
    assert queue.redis.lrange(queue.keys.processing("w"), 0, -1) == [second]
    assert queue.ack("w", second, "L", None, claim_next=True) is None
    assert queue.redis.llen(queue.keys.processing("w")) == 0


def test_results_use_plain_pickle_when_it_is_exact_and_cloudpickle_otherwise():
    import pickle

    signer = Signer(b"k" * 32)
    plain = signer.dumps_result("t1", ("ok", {"x": [1, 2.5, "s"]}))
    assert signer.loads(plain) == ("t1", ("ok", {"x": [1, 2.5, "s"]}))

    # A class made at run time (as one that reached a worker by value) and a lambda cannot be
    # named by module and qualname: plain pickle refuses them, cloudpickle carries them by value.
    Dynamic = type("Dynamic", (), {"__module__": "__main__", "value": 7})
    square = lambda v: v * v  # noqa: E731
    for obj in (Dynamic(), square):
        with pytest.raises(Exception):
            pickle.dumps(obj)
    _, (_, (inst, fn)) = signer.loads(signer.dumps_result("t2", ("ok", (Dynamic(), square))))
    assert inst.value == 7 and fn(4) == 16


def test_stop_sentinel_wakes_a_blocked_claim(queue):
    """Teardown does not wait for blocked claims to time out: the sentinel wakes them."""
    import threading

    from prefect_dockerparallel.protocol.keys import STOP_SENTINEL

    got: list = []
    claimer = threading.Thread(target=lambda: got.append(queue.claim("w-blocked", 30)))
    claimer.start()
    queue.wake_for_stop(2)  # one more than there are claimers: the spare one must expire
    claimer.join(timeout=20)
    assert not claimer.is_alive() and got == [STOP_SENTINEL]
    assert 0 < queue.redis.ttl(queue.keys.tasks) <= 60  # no sentinel outlives the cluster for long
    queue.wake_for_stop(0)  # nobody joined: nothing pushed
