# The bnserve serving image: `bnserve serve` on port 8001 over the models mounted at /models.
#
#   docker build -t bnserve .
#   docker run --rm -p 8001:8001 -v ./models:/models:ro bnserve
#   docker run --rm -p 9000:9000 -e BNSERVE_PORT=9000 -v ./models:/models:ro bnserve
#
# Every server setting is an environment variable BNSERVE_<SETTING> (see the README's
# Settings table); the image sets only BNSERVE_REPOSITORY, BNSERVE_HOST and BNSERVE_PORT.
#
# Two stages: the builder makes a virtual environment at /opt/venv and installs the project
# with the `server` extra (non-editable); the runtime stage copies only that venv. The
# `training` extra (torch) is never installed. Both stages use the same base image, because
# the venv's python is a link to the base image's python3.
#
# BASE_IMAGE must provide `python3` (>= 3.11, for tomllib) with the venv module:
# python:3.11-slim does, and so does a Debian bookworm image with python3 + python3-venv
# (whose python3 lives in /usr/bin, with no `python` command: hence `python3` below).
# Pin it by digest for reproducible builds: --build-arg BASE_IMAGE=python:3.11-slim@sha256:...
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A venv, not the system site-packages: Debian's pip refuses to install there
# (externally-managed-environment), and the runtime stage copies one folder.
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir pip==26.3

# Dependencies first, in a layer of their own that is rebuilt only when pyproject.toml
# changes: the base dependencies plus the `server` extra, read from pyproject.toml itself.
COPY pyproject.toml scripts/requirements.py /src/
RUN python3 /src/requirements.py server /src/pyproject.toml > /tmp/requirements-server.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements-server.txt

# Then the project itself (non-editable; .dockerignore keeps the context to the sources).
# The venv's bundled setuptools only served the build: out it goes (image scanners flag
# old ones). Last, a check that every installed distribution's requirements are met.
COPY . /src
RUN pip install --no-cache-dir --no-deps /src \
    && pip uninstall --yes setuptools \
    && pip check


FROM ${BASE_IMAGE} AS runtime

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it. A home folder,
# because onnxruntime keeps a small state file there (it warns at start without one).
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin bnserve

# Owned by root: the service user can read the code, not change it.
COPY --from=builder /opt/venv /opt/venv

# The model repository: <name>/<version>/model.onnx + metadata, mounted read-only.
VOLUME ["/models"]

# The image's defaults, as settings rather than flags, so that `-e BNSERVE_<SETTING>=...`
# overrides any of them (flags would win over the environment): `-e BNSERVE_PORT=9000`
# moves the server, and the health check follows it.
ENV BNSERVE_REPOSITORY=/models \
    BNSERVE_HOST=0.0.0.0 \
    BNSERVE_PORT=8001

USER 10001:10001
EXPOSE 8001

# Asks the server over gRPC whether it is ready (ServerReady): exit 0 when it is. Without
# --address, `bnserve health` checks 127.0.0.1:$BNSERVE_PORT, over TLS (trusting
# $BNSERVE_TLS_CERTIFICATE) when that is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bnserve", "health"]

# Exec form: bnserve is PID 1 and gets SIGTERM from `docker stop` / Kubernetes directly.
# Other subcommands run with the same image: `docker run IMAGE health --address ...`.
ENTRYPOINT ["bnserve"]
CMD ["serve"]
