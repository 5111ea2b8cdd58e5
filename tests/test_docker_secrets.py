"""Secrets as a file (container/secrets_file.py) and the archive that delivers it
(providers/docker/objects.py): what keeps them out of `docker inspect`. No engine needed."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from prefect_dockerparallel.container import secrets_file
from prefect_dockerparallel.container.secrets_file import SecretsFileError
from prefect_dockerparallel.providers.base import server_env, worker_env
from prefect_dockerparallel.providers.docker import objects as O
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, Endpoint

SECRETS = ClusterSecrets(redis_password="pw-" + "x" * 40, signing_key=bytes(range(32)))


def test_the_entrypoints_load_the_file_into_their_environment(tmp_path) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(O.secrets_json(SECRETS))
    env = {"DOCKERPARALLEL_SECRETS_FILE": str(path), "OTHER": "1"}
    assert secrets_file.load(env) == ["DOCKERPARALLEL_CLUSTER_SECRET", "DOCKERPARALLEL_REDIS_PASSWORD"]
    assert env["DOCKERPARALLEL_REDIS_PASSWORD"] == SECRETS.redis_password
    assert bytes.fromhex(env["DOCKERPARALLEL_CLUSTER_SECRET"]) == SECRETS.signing_key
    assert secrets_file.load({"OTHER": "1"}) == []  # other providers: nothing to do


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"[1, 2]", "not a JSON object of strings"),
                                              (b'{"A": 1}', "not a JSON object of strings"), (b"{", "unreadable")])
def test_a_missing_or_malformed_file_is_a_clear_error_without_its_content(tmp_path, content, message) -> None:
    path = tmp_path / "secrets.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretsFileError, match=message) as err:
        secrets_file.load({"DOCKERPARALLEL_SECRETS_FILE": str(path)})
    assert "{" not in str(err.value).replace(str(path), "")


def test_no_secret_is_left_in_the_container_environment() -> None:
    spec = ClusterSpec(name="c1")
    for env in (server_env(spec, SECRETS), worker_env(spec, SECRETS, Endpoint("dp-c1-server", 6379))):
        public, hidden = O.split_secrets(env)
        shown = json.dumps(public)
        assert SECRETS.redis_password not in shown and SECRETS.signing_key.hex() not in shown
        assert public["DOCKERPARALLEL_SECRETS_FILE"] == O.SECRETS_PATH and hidden
    assert O.secrets_from_json(O.secrets_json(SECRETS)) == SECRETS


def test_the_archive_holds_a_0600_file_in_a_0700_folder_owned_by_the_images_user() -> None:
    raw = O.secrets_archive({"secrets.json": b"{}", "redis.conf": b"port 6379\n"}, uid=1000, gid=1001)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["run/dockerparallel"].isdir() and members["run/dockerparallel"].mode == 0o700
    for name in ("run/dockerparallel/secrets.json", "run/dockerparallel/redis.conf"):
        assert members[name].mode == 0o600 and (members[name].uid, members[name].gid) == (1000, 1001)


@pytest.mark.parametrize("user, ids", [("", (0, 0)), ("root", (0, 0)), ("1000", (1000, 1000)), ("1000:50", (1000, 50)),
                                       ("prefect", (999, 998)), ("prefect:7", (999, 7)), ("nobody-here", (0, 0))])
def test_the_owner_is_the_images_user(user, ids) -> None:
    passwd = "root:x:0:0:root:/root:/bin/sh\nprefect:x:999:998::/home/prefect:/bin/sh\n"
    assert O.owner_ids(user, passwd) == ids


def test_worker_ids_name_their_container() -> None:
    spec = ClusterSpec(name="a" * 40)
    host = O.worker_hostname(spec, "1a2b3c")
    assert len(host) <= 40 and host.endswith("-w-1a2b3c")
    assert O.suffix_of_worker_id(f"{host}-7-abcdef") == "1a2b3c"  # a single-slot worker
    assert O.suffix_of_worker_id(f"{host}-s3-abcdef") == "1a2b3c"  # a slot of a supervisor
    assert O.suffix_of_worker_id("ip-10-0-0-5-7-abcdef") is None  # another provider's worker
