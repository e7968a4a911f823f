# syntax=docker/dockerfile:1
#
# UniMMAD inference service: GPU image.
#
#   docker build -t unimmad-service .                                  # bundle mounted at run time
#   docker build -t unimmad-service --build-arg BUNDLE=bundles/demo .  # bundle baked into the image
#   docker run --gpus all -p 8000:8000 -v "$PWD/bundles/last:/bundle:ro" unimmad-service
#
# The runtime stage holds only the serving code and its virtualenv: no torch, no compiler, no pip.
# Python comes from uv's relocatable CPython builds, so neither stage needs the distribution's
# python packages and both stages share one interpreter path (the venv is copied, not rebuilt).

# onnxruntime-gpu 1.31.1 is built against CUDA 13 and cuDNN 9 and loads cuBLAS: the cudnn-runtime
# flavour ships all three.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5
ARG PYTHON_VERSION=3.11

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS builder
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv
WORKDIR /src
# Only the torch-free packages enter the build context (.dockerignore), so the wheel cannot carry
# model/ or export/. Every dependency comes from the serve+gpu lock, version and hash (onnxruntime-gpu,
# never onnxruntime); the project itself is installed on top without resolving anything.
COPY requirements/serve-gpu.lock ./requirements/
RUN uv pip install --python /opt/venv/bin/python --require-hashes -r requirements/serve-gpu.lock
COPY pyproject.toml README.md ./
COPY bundle ./bundle
COPY modalities ./modalities
COPY service ./service
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
 && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch leaked into the serving venv" >&2; exit 1; fi \
 && /opt/venv/bin/python -c "import onnxruntime, service; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()"

FROM ${CUDA_IMAGE} AS runtime
# A folder inside the build context to bake in as the bundle (bundles/ is in the context). The default
# is an empty placeholder: the bundle is then mounted read-only over /bundle when the container starts.
ARG BUNDLE=deploy/no-bundle
LABEL org.opencontainers.image.title="unimmad-service" \
      org.opencontainers.image.description="UniMMAD multimodal anomaly detection: FastAPI + onnxruntime-gpu" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 unimmad \
 && useradd --system --no-log-init --uid 10001 --gid unimmad --home-dir /nonexistent --shell /usr/sbin/nologin unimmad
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root ${BUNDLE} /bundle
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UNIMMAD_BUNDLE=/bundle \
    UNIMMAD_HOST=0.0.0.0 \
    UNIMMAD_PORT=8000 \
    UNIMMAD_REQUIRE_GPU=true \
    UNIMMAD_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# Liveness: /healthz fails once the process cannot serve any more (a stopped batcher task, an onnxruntime
# session whose runs fail); a failed warm-up exits by itself. Readiness (/readyz) is for load balancers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('UNIMMAD_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]
