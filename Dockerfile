# Berth's image: gunicorn serving the registry from the installed wheel, entry point
# deploy/docker-entrypoint.sh (waits for the database, migrates, then `berth serve`).
# Used by compose.yml.
FROM python:3.11-slim-bookworm AS wheel

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 berth \
 && useradd --system --uid 10001 --gid berth --home-dir /var/lib/berth --shell /usr/sbin/nologin berth

# The wheel, not an editable checkout: migrations ship inside it (app.migrations).
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

COPY deploy/docker-entrypoint.sh /usr/local/bin/berth-entrypoint
RUN mkdir -p /var/lib/berth/storage && chown -R berth:berth /var/lib/berth

USER berth
WORKDIR /var/lib/berth
# The proxy in front (another container) sets X-Forwarded-Proto; trust it.
ENV BERTH_STORAGE_ROOT=/var/lib/berth/storage \
    BERTH_FORWARDED_ALLOW_IPS=*
VOLUME ["/var/lib/berth/storage"]
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=4)"]
ENTRYPOINT ["berth-entrypoint"]
CMD ["berth", "serve", "--bind", "0.0.0.0:5000"]
