# SystemX exchange image.
#
#   docker build -t systemx .
#   docker run -p 8080:8080 -v systemx-data:/data systemx
#
# Settings are SYSTEMX_* environment variables (README, Configuration), e.g.
# `docker run -e SYSTEMX_CALL_TIMEOUT=45s ...`, or a file: `--env-file systemx.env`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/systemx
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin systemx \
    && mkdir -p /data \
    && chown systemx:systemx /data

# Wake profiles (SQLite) live here; keep it on a volume to survive a new container.
ENV SYSTEMX_HOST=0.0.0.0 \
    SYSTEMX_PORT=8080 \
    SYSTEMX_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080

USER systemx

# GET, not HEAD: the WebSocket port answers 400 to any other method.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SYSTEMX_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

# SIGTERM: calls are ended (HANGUP shutdown), sessions closed (1001), within SYSTEMX_SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
CMD ["systemx", "serve"]
