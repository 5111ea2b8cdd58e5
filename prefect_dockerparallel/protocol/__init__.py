"""The wire protocol between driver and workers. Imports stdlib, redis and cloudpickle only."""

from .envelope import (
    KIND_BLOB,
    KIND_RESULT,
    KIND_TASK,
    EnvelopeError,
    EnvelopeExpired,
    PayloadTooLarge,
    Signer,
    digest,
    peek_ident,
)
from .keys import Keys
from .queue import Requeued, TaskQueue, connect, connect_from_env, versions

__all__ = [
    "KIND_BLOB",
    "KIND_RESULT",
    "KIND_TASK",
    "EnvelopeError",
    "EnvelopeExpired",
    "Keys",
    "PayloadTooLarge",
    "Requeued",
    "Signer",
    "TaskQueue",
    "connect",
    "connect_from_env",
    "digest",
    "peek_ident",
    "versions",
]
