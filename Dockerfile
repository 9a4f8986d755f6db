# syntax=docker/dockerfile:1
# tensorgate: the service with the bundled models trained, exported and baked in.
#   docker build -t tensorgate:cuda .                         # NVIDIA GPUs (the default)
#   docker build --build-arg VARIANT=cpu -t tensorgate:cpu .  # CPU only, smaller
# VARIANT=cuda installs torch's CUDA build, which brings NVIDIA's CUDA 13 and cuDNN 9
# runtime wheels; onnxruntime-gpu (built for CUDA 13) uses the same libraries, which torch
# loads first (the service also calls onnxruntime.preload_dlls), so the image needs no CUDA
# base: the host's NVIDIA driver, passed in by the NVIDIA container toolkit, is enough.
# VARIANT=cpu installs torch's CPU build from download.pytorch.org, or, when TORCH_FIND_LINKS
# is given, from that folder or page of wheels (pip's --find-links), for builds that cannot
# reach PyTorch's index; deploy/image_test.py builds this way. Either way it must be the
# "+cpu" build: a CUDA torch found instead fails the build rather than bloating the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG VARIANT=cuda
ARG TORCH_FIND_LINKS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# torch first, at the version pyproject.toml pins, from the source of the chosen variant.
# DL3013 (pin pip versions) cannot see the pin: it is read from pyproject.toml, its one place.
# hadolint ignore=DL3013
RUN TORCH="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')" \
    && case "$VARIANT" in \
         cuda) pip install --no-cache-dir "$TORCH" ;; \
         cpu) if [ -n "$TORCH_FIND_LINKS" ]; then \
                pip install --no-cache-dir "$TORCH+cpu" --find-links "$TORCH_FIND_LINKS"; \
              else \
                pip install --no-cache-dir "$TORCH+cpu" --index-url https://download.pytorch.org/whl/cpu; \
              fi ;; \
         *) echo "VARIANT must be cuda or cpu, not '$VARIANT'" >&2; exit 1 ;; \
       esac
COPY training/ training/
COPY artifacts/ artifacts/
COPY export/ export/
COPY service/ service/
RUN pip install --no-cache-dir .
# Train and export on the CPU, so the image serves out of the box.
RUN python -m training --model all --out /src/runs --device cpu \
    && python -m export --model all --runs /src/runs --repository /models

FROM ${PYTHON_IMAGE} AS runtime
# The service's user can write to /tmp only: the base's other world-writable folders
# (/var/tmp, /run/lock) are closed to it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tensorgate \
    && find / -xdev -type d -perm -o+w ! -path /tmp -exec chmod o-w {} +
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /models /models
# /models is the baked repository; mount another one over it to serve your own models.
# HOME and PROMETHEUS_MULTIPROC_DIR (the metrics' per-process files) are under /tmp, with
# multiprocessing's sockets, so a read-only root filesystem (Kubernetes) needs only /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    TENSORGATE_HOST=0.0.0.0 \
    TENSORGATE_PORT=8000 \
    TENSORGATE_GRPC_PORT=8001 \
    TENSORGATE_REPOSITORY=/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tensorgate-metrics
USER 10001
EXPOSE 8000 8001
# Python's own urllib: the image needs no curl. Ready = every model loaded, verified, warm.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['TENSORGATE_PORT'] + '/v2/health/ready', timeout=2)"]
# Exec form: SIGTERM reaches the service, which drains and stops its workers.
CMD ["python", "-m", "service"]
