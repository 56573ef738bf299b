# loomd in a container. It binds 0.0.0.0, so it needs LOOMD_ADMIN_TOKEN (open mode is only
# allowed on loopback):
#   docker build -t loomd .
#   docker run -p 8080:8080 -e LOOMD_ADMIN_TOKEN=change-me -v loomd-data:/data loomd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOOMD_DATABASE_URL=sqlite+aiosqlite:////data/loomd.db \
    LOOMD_PORT=8080

RUN useradd --create-home --uid 10001 loomd && mkdir /data && chown loomd /data

WORKDIR /opt/loomd
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install . && rm -rf /opt/loomd/build

USER loomd
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"

CMD ["loomd", "serve", "--host", "0.0.0.0"]
