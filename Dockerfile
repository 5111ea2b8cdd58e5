# Worker (and Redis server) image for prefect-dockerparallel: ECS Fargate, Kubernetes, local Docker.
#
# The default image (prefecthq/prefect) works without this file: it pip-installs the package and
# your pip_packages at every container start. Build this image to start in seconds instead:
#
#   docker build -t <registry>/dockerparallel-worker:py3.11 \
#       --build-arg PREFECT_VERSION="$(python -c 'import prefect; print(prefect.__version__)')" \
#       --build-arg CLOUDPICKLE_VERSION="$(python -c 'import cloudpickle; print(cloudpickle.__version__)')" \
#       --build-arg EXTRA_PIP_PACKAGES="numpy pandas" .
#   WorkerContainer(image="<registry>/dockerparallel-worker:py3.11", install_self="")
#
# PREFECT_VERSION and CLOUDPICKLE_VERSION are required and installed exactly (==): they must be
# the flow runner's, as must the base image's Python major.minor; a worker checks them when it
# joins and refuses to run tasks pickled by other versions. BASE_IMAGE picks the base (any
# Debian-based image with Python, pip and apt-get; default python:3.11-slim).
# Corporate proxy that intercepts TLS: put its CA certificate(s) as PEM files named *.crt into
# certs/ (empty by default); they are trusted by the system store, pip and Python's ssl.
# No BuildKit-only syntax: the legacy builder builds it. scripts/prepare_docker.py builds it for tests.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# redis-server: the same image serves as the cluster's server container.
COPY certs/ /usr/local/share/ca-certificates/dockerparallel/
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && command -v redis-server
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1

ARG PREFECT_VERSION
ARG CLOUDPICKLE_VERSION
ARG EXTRA_PIP_PACKAGES=""
WORKDIR /opt/prefect-dockerparallel
# Dependencies first, from pyproject.toml alone (a stub package stands in for the code), so that
# a change to the package's code rebuilds only the short layer below.
COPY pyproject.toml ./
RUN test -n "$PREFECT_VERSION" && test -n "$CLOUDPICKLE_VERSION" \
 || { echo "set --build-arg PREFECT_VERSION=... and CLOUDPICKLE_VERSION=... to the flow runner's exact versions" >&2; exit 1; } \
 && mkdir prefect_dockerparallel && touch prefect_dockerparallel/__init__.py README.md \
 && pip install . "prefect==${PREFECT_VERSION}" "cloudpickle==${CLOUDPICKLE_VERSION}" ${EXTRA_PIP_PACKAGES} \
 && pip uninstall -y -q prefect-dockerparallel \
 && rm -rf prefect_dockerparallel README.md build ./*.egg-info

COPY pyproject.toml README.md* ./
COPY prefect_dockerparallel ./prefect_dockerparallel
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && cd / \
 && python -c "import sys, prefect, cloudpickle; \
v = (prefect.__version__, cloudpickle.__version__); \
sys.exit(0 if v == tuple(sys.argv[1:]) else f'prefect, cloudpickle {v} installed, {sys.argv[1:]} pinned')" \
    "$PREFECT_VERSION" "$CLOUDPICKLE_VERSION" \
 && python -c "import prefect_dockerparallel.container.worker, prefect_dockerparallel.container.server" \
 && command -v redis-server

WORKDIR /workspace
# Root by default so that `system_packages` can still be apt-installed at start; set
# `USER 1000` in a derived image when you install everything at build time.
# Providers set the command (`sh -c "<install step> && exec python -m prefect_dockerparallel.container.worker"`);
# this default lets `docker run` start a worker by hand. The server container runs
# `python -m prefect_dockerparallel.container.server`.
CMD ["python", "-m", "prefect_dockerparallel.container.worker"]
