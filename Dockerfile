# reelbot: slim image, non-root user, data on a volume, `reelbot serve` by default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    REELBOT_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin reelbot \
 && mkdir -p /data && chown reelbot:reelbot /data && chmod 700 /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
RUN pip install . && rm -rf /root/.cache

USER reelbot
VOLUME ["/data"]
EXPOSE 3000
ENTRYPOINT ["reelbot"]
CMD ["serve"]
