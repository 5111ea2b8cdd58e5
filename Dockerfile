# Worker (and Redis server) image for prefect-dockerparallel: ECS Fargate, Kubernetes, local Docker.
#
# The default image (prefecthq/prefect) works without this file: it pip-installs the package and
# your pip_packages at every container start. Build this image to start in seconds instead:
#
#   docker build -t <registry>/dockerparallel-worker:py3.11 \
#       --build-arg PYTHON_VERSION=3.11 --build-arg EXTRA_PIP_PACKAGES="numpy pandas" .
#   WorkerContainer(image="<registry>/dockerparallel-worker:py3.11", install_self="")
#
# PYTHON_VERSION and the Prefect/cloudpickle versions must match the flow runner's: a worker
# checks them when it joins and refuses to run tasks pickled by another version.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# redis-server: the same image serves as the cluster's server container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*

ARG PREFECT_VERSION=">=3.9,<4"
ARG EXTRA_PIP_PACKAGES=""
WORKDIR /opt/prefect-dockerparallel
COPY pyproject.toml README.md* ./
COPY prefect_dockerparallel ./prefect_dockerparallel
RUN pip install --no-cache-dir . "prefect${PREFECT_VERSION}" ${EXTRA_PIP_PACKAGES} \
 && python -c "import prefect_dockerparallel.worker, prefect_dockerparallel.server" \
 && command -v redis-server

ENV PYTHONUNBUFFERED=1
WORKDIR /workspace
# Root by default so that `system_packages` can still be apt-installed at start; set
# `USER 1000` in a derived image when you install everything at build time.
# Providers set the command (`sh -c "<install step> && exec python -m prefect_dockerparallel.worker"`);
# this default lets `docker run` start a worker by hand.
CMD ["python", "-m", "prefect_dockerparallel.worker"]
