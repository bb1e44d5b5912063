# syntax=docker/dockerfile:1
# One image for every role: the API (default CMD), the GPU workers
# (`finetune worker --queues gpu`), the CPU workers (`finetune worker --queues cpu`) and
# migrations (`finetune db upgrade`).
#
#   docker build -t finetune-service .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t finetune-service:cpu .

FROM python:3.11-slim AS builder

# The CUDA wheels bundle their own CUDA runtime; the host needs only an NVIDIA driver
# recent enough for that CUDA version (and the NVIDIA Container Toolkit). cu130 is the build
# the suite runs with (torch 2.14 + cu130; the cu124 index ends at torch 2.6). For an older
# driver pass an older CUDA index as TORCH_INDEX_URL, and get the torch that index holds.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first and from the CUDA index: PyPI would otherwise pick the default build, and this
# multi-GB layer then stays cached until the index changes.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch torchvision

WORKDIR /build
COPY pyproject.toml README.md ./
# The other dependencies, read from pyproject, so editing the source keeps this layer cached.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt

COPY app/ app/
COPY worker/ worker/
COPY migrations/ migrations/
RUN pip install --no-cache-dir --no-deps .


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FINETUNE_DATA_DIR=/data \
    FINETUNE_STORAGE_URL=/data/artifacts \
    TORCH_HOME=/data/torch \
    TMPDIR=/data/work/tmp

# The data folders are made here, owned by the service user, because a named volume mounted
# on them starts as a copy of the image's folder, ownership included. TMPDIR is on the work
# volume: an upload's body spools there while it streams in (up to FINETUNE_MAX_UPLOAD_BYTES),
# not in the container's writable layer; where the folder is missing, Python uses /tmp.
RUN groupadd --system --gid 10001 finetune \
 && useradd --system --uid 10001 --gid finetune --create-home --home-dir /home/finetune \
        --shell /usr/sbin/nologin finetune \
 && mkdir -p /data/artifacts /data/torch/hub/checkpoints /data/work /data/work/tmp \
 && chown -R finetune:finetune /data

COPY --from=builder /opt/venv /opt/venv

# `finetune db upgrade` runs the migrations installed with the package; these copies let an
# operator run Alembic by hand in the container (`alembic current`, `alembic history`).
WORKDIR /srv/finetune
COPY alembic.ini ./
COPY migrations/ migrations/

USER finetune

EXPOSE 8000

# Liveness only: readiness (DB + broker) is checked by /readyz in docker-compose.yml.
# Worker and migrate containers do not serve HTTP; compose disables this check for them.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]

# Exec form, so SIGTERM reaches finetune itself rather than a shell.
CMD ["finetune", "api", "--host", "0.0.0.0", "--port", "8000"]
