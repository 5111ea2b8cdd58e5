"""Container start scripts: packages installed at start, SSH, and no secret in the script."""

from __future__ import annotations

import pytest

from prefect_dockerparallel.specs import ClusterSpec, ContainerSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample me@laptop"


def test_worker_script_installs_packages_then_execs_the_bootstrap():
    script = ContainerSpec(pip_packages=("numpy==2.1",), system_packages=("git",)).startup_script("worker")
    assert script.index("apt-get install -y -qq -- 'git'") < script.index("pip install -q -- 'numpy==2.1' && exec python -c ")
    assert "prefect-dockerparallel" not in script  # the package ships through Redis


def test_worker_script_without_shipping_installs_the_package_then_execs_the_entrypoint():
    spec = ContainerSpec(pip_packages=("numpy==2.1",), system_packages=("git",), ship_package=False)
    script = spec.startup_script("worker")
    assert script.index("apt-get install -y -qq -- 'git'") < script.index("pip install -q -- 'prefect-dockerparallel' 'numpy==2.1'")
    assert script.endswith("exec python -m prefect_dockerparallel.container.worker")


def test_server_script_brings_a_redis_server_and_skips_worker_packages():
    script = ContainerSpec(pip_packages=("numpy",), system_packages=("git",)).startup_script("server")
    assert script == "pip install -q -- 'prefect-dockerparallel[local]' && exec python -m prefect_dockerparallel.container.server"


def test_ssh_key_starts_sshd_from_the_environment_not_the_script():
    script = ContainerSpec(ssh_public_key=KEY).startup_script("worker")
    assert "'openssh-server'" in script and "/usr/sbin/sshd" in script
    assert "$DOCKERPARALLEL_SSH_PUBLIC_KEY" in script and "AAAAC3Nza" not in script
    assert script.index("/usr/sbin/sshd") < script.index("exec python")


def test_package_names_cannot_inject_shell():
    with pytest.raises(ValueError, match="pip_packages.*not a valid package requirement"):
        ContainerSpec(pip_packages=("numpy; rm -rf /",)).startup_script("worker")


def test_containers_for_rounds_up_slots():
    spec = ClusterSpec(name="c1", container=ContainerSpec(workers_per_container=4), workers=9)
    assert spec.containers_for(9) == 3 and spec.containers_for(0) == 0
