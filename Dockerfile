# syntax=docker/dockerfile:1
#
# One image for both roles of the Nethical mesh: `nethical-mesh region ...` (the default
# command) and `nethical-mesh coordinator ...`.
#
#   docker build -t nethical-mesh:0.1.0 .
#
# Build arguments:
#   EXTRAS           optional parts installed with the wheel
#                    (default: jit,redis,postgres,elasticsearch,telemetry; no torch).
#   TORCH_INDEX_URL  where torch comes from when EXTRAS contains `gpu`; the default is the
#                    CPU-only wheel index, which keeps the image small:
#                      docker build --build-arg EXTRAS=jit,redis,postgres,elasticsearch,telemetry,gpu .
#                    For NVIDIA GPUs point it at a CUDA wheel index (the wheels carry the CUDA
#                    runtime; the host needs the NVIDIA driver and container toolkit):
#                      --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#                    or build on a CUDA base that has Python 3.11:
#                      --build-arg PYTHON_IMAGE=<cuda image with python3.11>
#   PYTHON_IMAGE     base of both stages (default python:3.11-slim).
#   APP_UID          numeric user and group id of the runtime user (default 10001).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: build the project's wheel and install it with its extras into a venv ----
FROM ${PYTHON_IMAGE} AS builder

ARG EXTRAS=jit,redis,postgres,elasticsearch,telemetry
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nethical_grpc ./nethical_grpc
COPY region_node ./region_node
COPY coordinator ./coordinator

RUN python -m pip wheel --no-deps --wheel-dir /dist .

# When an extra that holds torch (gpu, all) is asked for, torch is installed first and
# alone from TORCH_INDEX_URL (never as an extra index beside PyPI: pip would take PyPI's
# CUDA build whenever its version is higher); the wheel's install then finds it in place.
# pip writes the .pyc files here (the runtime root filesystem is read-only); --help
# proves the CLI loads.
RUN python -m venv /opt/nethical \
    && extras="$(echo "${EXTRAS}" | tr -d ' ')" \
    && case ",${extras}," in *,gpu,*|*,all,*) \
         /opt/nethical/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.3" ;; esac \
    && wheel="$(echo /dist/nethical_mesh-*.whl)" \
    && /opt/nethical/bin/pip install "${wheel}[${extras}]" \
    && /opt/nethical/bin/nethical-mesh --help > /dev/null

# ---- runtime: the venv on a clean slim base, no compilers, no pip cache, non-root ----
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001

LABEL org.opencontainers.image.title="nethical-mesh" \
      org.opencontainers.image.description="Nethical mesh: federated AI-governance metrics over gRPC (region node and coordinator)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${APP_UID}" nethical \
    && useradd --system --uid "${APP_UID}" --gid nethical --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin nethical

COPY --from=builder /opt/nethical /opt/nethical

# Numba keeps its compiled-kernel cache under /tmp so the root filesystem can be read-only
# (mount a writable /tmp: tmpfs in compose, an emptyDir in Kubernetes).
ENV PATH=/opt/nethical/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /tmp
USER ${APP_UID}:${APP_UID}

# 50051 region node gRPC, 50050 coordinator gRPC, 9464 Prometheus metrics (--metrics-port).
EXPOSE 50051 50050 9464

# The servers drain on SIGTERM: health NOT_SERVING for --drain-announce, then stop
# accepting and give in-flight calls --drain-grace. Give the container at least their sum.
STOPSIGNAL SIGTERM

# Exit 0 only when the server answers SERVING. A coordinator sets
# NETHICAL_HEALTH_TARGET=127.0.0.1:50050 (its default port). A new container compiles
# the JIT kernels (its Numba cache is in its own /tmp: up to two minutes) and a region
# node then restores the windows it flushed before, NOT_SERVING all along: the start
# period is docker-compose.yml's, so that Swarm does not replace a starting node.
HEALTHCHECK --interval=10s --timeout=5s --start-period=240s --retries=3 \
    CMD ["sh", "-c", "exec nethical-mesh health \"${NETHICAL_HEALTH_TARGET:-127.0.0.1:50051}\" --timeout 3"]

ENTRYPOINT ["nethical-mesh"]
CMD ["region", "--region-id", "local", "--host", "0.0.0.0", "--port", "50051"]
