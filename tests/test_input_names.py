"""Issue 17, finding 9: package names that are really pip/apt options, and names that end in a
newline, are refused at block / spec construction with the field, the value and the fix."""

from __future__ import annotations

import pytest

from prefect_dockerparallel.specs import ClusterSpec, ContainerSpec, validate_cluster_name

PIP_OPTIONS = [
    "--index-url=https://evil.example/simple",
    "-e git+https://evil.example/x.git",
    "-r https://evil.example/req.txt",
    "--target=/etc",
    "numpy --extra-index-url=https://evil.example",
    "numpy\n",
    " numpy",
    "numpy; rm -rf /",
    "",
]
APT_OPTIONS = ["-oDPkg::Pre-Invoke::=touch /tmp/pwned", "--allow-unauthenticated", "git\n", "Git", "git curl", "$(reboot)"]


@pytest.mark.parametrize("value", PIP_OPTIONS)
def test_pip_options_are_not_requirements(value):
    with pytest.raises(ValueError) as info:
        ContainerSpec(pip_packages=(value,))
    msg = str(info.value)
    assert msg.startswith("pip_packages:") and repr(value) in msg and "PEP 508" in msg


@pytest.mark.parametrize("value", APT_OPTIONS)
def test_apt_options_are_not_package_names(value):
    with pytest.raises(ValueError) as info:
        ContainerSpec(system_packages=(value,))
    msg = str(info.value)
    assert msg.startswith("system_packages:") and repr(value) in msg and "Debian package name" in msg


@pytest.mark.parametrize(
    "value", ["numpy", "pandas>=2,<3", "numpy[extra]==1.0", "mypkg @ https://host/mypkg-1.0-py3-none-any.whl",
              "pkg @ git+https://github.com/o/r@v1", 'tomli; python_version < "3.11"'],
)
def test_pep508_requirements_and_direct_urls_pass_and_are_quoted(value):
    script = ContainerSpec(pip_packages=(value,), install_self=None).startup_script("worker")
    assert "pip install -q -- " in script
    assert "'" + value.replace("'", "'\\''") + "'" in script


@pytest.mark.parametrize("value", ["git", "libpq-dev=15.4-0+deb12u1", "g++", "libc6:amd64", "python3.11"])
def test_debian_names_with_versions_pass(value):
    script = ContainerSpec(system_packages=(value,)).startup_script("worker")
    assert f"apt-get install -y -qq -- '{value}'" in script


def test_install_self_is_a_requirement_too():
    with pytest.raises(ValueError, match="install_self"):
        ContainerSpec(install_self="--index-url=https://evil.example")


@pytest.mark.parametrize("name", ["probe\n", "probe\n\n", "../etc", "Probe", "-probe", "probe-"])
def test_cluster_names_are_full_matches(name):
    with pytest.raises(ValueError, match="cluster name"):
        validate_cluster_name(name)
    with pytest.raises(ValueError, match="cluster name"):
        ClusterSpec(name=name)


def test_blocks_refuse_option_shaped_and_newline_terminated_names():
    from prefect_dockerparallel import ClusterConfig, LocalProvider, WorkerContainer

    with pytest.raises(ValueError, match=r"pip_packages: '--index-url=x'.*PIP_INDEX_URL"):
        WorkerContainer(pip_packages=["--index-url=x"])
    with pytest.raises(ValueError, match="pip_packages"):
        WorkerContainer().add_pip_packages("numpy\n")
    with pytest.raises(ValueError, match="system_packages"):
        WorkerContainer(system_packages=["-oAPT::Update::Pre-Invoke::=id"])
    with pytest.raises(ValueError, match="system_packages"):
        WorkerContainer().set_system_packages("git\n")
    with pytest.raises(ValueError, match="env"):
        WorkerContainer(env={"NAME\n": "x"})
    with pytest.raises(ValueError, match="tags"):
        ClusterConfig(provider=LocalProvider(), tags={"team\n": "x"})


def test_runner_refuses_a_newline_terminated_cluster_name_before_provisioning():
    from prefect_dockerparallel import DockerCluster

    with pytest.raises(ValueError, match="cluster name 'probe\\\\n' is invalid"):
        DockerCluster(name="probe\n", workers=0)
