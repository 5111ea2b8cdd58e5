"""Secrets delivered as a file instead of environment variables.

`docker inspect` shows a container's environment and command to anyone who can reach the engine's
API, so the Docker provider never puts the Redis password or the signing key there. It copies a
0600 JSON object of variables into the created container before starting it, and names the file
in DOCKERPARALLEL_SECRETS_FILE; each entrypoint calls `load()` first, which puts the file's
variables into its own process environment, where the rest of the code (and the slot processes a
worker spawns) reads them as on any other provider. Standard library only.
"""

from __future__ import annotations

import json
import os
from typing import MutableMapping

from ..protocol.keys import ENV_SECRETS_FILE


class SecretsFileError(RuntimeError):
    """The secrets file named by DOCKERPARALLEL_SECRETS_FILE is missing or malformed."""


def load(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Move the variables of the secrets file (if one is named) into `environ`; returns their names.

    The file is left in place: the provider reads the server's copy back to reconnect.
    """
    env = os.environ if environ is None else environ
    path = env.get(ENV_SECRETS_FILE)
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise SecretsFileError(f"{ENV_SECRETS_FILE}={path}: no such file (the provider did not deliver it)") from None
    except (OSError, ValueError) as exc:
        raise SecretsFileError(f"{ENV_SECRETS_FILE}={path} is unreadable: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SecretsFileError(f"{ENV_SECRETS_FILE}={path} is not a JSON object of strings")
    env.update(data)
    return sorted(data)
