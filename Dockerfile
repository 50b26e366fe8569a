# Moorage container image.
#
#   docker build -t moorage .
#   docker run -d -p 5000:5000 -v moorage-data:/var/lib/moorage moorage
#
# Build arguments:
#   BASE    the image both stages start from: any Debian-like image with python3 >= 3.11, the venv module and
#           useradd (default python:3.11-slim-bookworm). Both stages must use the same one: the venv links to
#           the base's interpreter.
#   WHEELS  a directory in the build context holding moorage's wheel and every dependency's
#           (`pip wheel --wheel-dir wheels .`); when it holds no wheels (or doesn't exist), moorage is built
#           from the source in the context and its dependencies come from PyPI.
#
# Configuration at run time: MOORAGE_<SECTION>_<KEY> environment variables (MOORAGE_AUTH_ENABLED=false), or a
# TOML file mounted at /etc/moorage/config.toml (see config.example.toml). Environment variables win over the
# file, so the listen address and data directory set below are changed with -e, not in the file.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG WHEELS=wheels
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# config.example.toml: registry/config.example.toml (package data, for `moorage config-example`) links to it.
COPY pyproject.toml README.md config.example.toml ./
COPY registry ./registry
COPY storage ./storage
# pyproject.toml is a second source so that this COPY works when the wheel directory is missing or empty.
COPY pyproject.toml ${WHEELS}/*.whl /wheels/
RUN python3 -m venv /opt/moorage \
    && if ls /wheels/*.whl >/dev/null 2>&1; then \
         /opt/moorage/bin/pip install --no-index --find-links /wheels moorage; \
       else \
         /opt/moorage/bin/pip install /src; \
       fi \
    && /opt/moorage/bin/moorage --version \
    && /opt/moorage/bin/python -m pip uninstall --yes --quiet pip setuptools

FROM ${BASE}
ENV PATH=/opt/moorage/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MOORAGE_SERVER_LISTEN=0.0.0.0:5000 \
    MOORAGE_SERVER_DATA_DIR=/var/lib/moorage \
    MOORAGE_SERVER_DRAIN_TIMEOUT=8s \
    MOORAGE_CONFIG=/etc/moorage/config.toml
RUN groupadd --gid 10001 moorage \
    && useradd --uid 10001 --gid moorage --home-dir /var/lib/moorage --no-create-home \
         --shell /usr/sbin/nologin moorage \
    && install -d -o moorage -g moorage -m 0750 /var/lib/moorage \
    && install -d -m 0755 /etc/moorage \
    && printf '%s\n' \
         '# Moorage configuration (see config.example.toml in the source). Mount your own file here,' \
         '# or set MOORAGE_<SECTION>_<KEY> environment variables, which win over this file.' \
         > /etc/moorage/config.toml
COPY --from=build /opt/moorage /opt/moorage
USER 10001:10001
WORKDIR /var/lib/moorage
VOLUME ["/var/lib/moorage"]
EXPOSE 5000
# /healthz answers 200 as soon as the server is up (no auth); it reads the port from MOORAGE_SERVER_LISTEN.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('MOORAGE_SERVER_LISTEN', ':5000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# Exec form: moorage is PID 1 and gets docker stop's SIGTERM itself: it stops accepting connections, lets
# in-flight requests finish and exits 0 within MOORAGE_SERVER_DRAIN_TIMEOUT (8 s, inside docker's default 10 s
# grace period before SIGKILL), cutting whatever is still running (a stalled upload) at the deadline. For longer drains raise both: docker run --stop-timeout 60 -e
# MOORAGE_SERVER_DRAIN_TIMEOUT=50s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["moorage"]
CMD ["serve"]
