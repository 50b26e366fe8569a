# syntax=docker/dockerfile:1
# Moorage container image. Build:  docker build -t moorage .
# (Where the default base image can't be pulled, pass a local one: --build-arg BASE=<image with python3.11+>.)
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry ./registry
COPY storage ./storage
RUN python3 -m venv /opt/moorage && /opt/moorage/bin/pip install --no-cache-dir .

FROM ${BASE}
RUN useradd --system --uid 10001 --home-dir /var/lib/moorage --create-home moorage
COPY --from=build /opt/moorage /opt/moorage
USER moorage
VOLUME ["/var/lib/moorage"]
EXPOSE 5000
ENV PATH=/opt/moorage/bin:$PATH
HEALTHCHECK --interval=30s --timeout=3s CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=2)"
ENTRYPOINT ["moorage"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data-dir", "/var/lib/moorage"]
