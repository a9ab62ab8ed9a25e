# otel_puppy's image: `otel-puppy serve` (and the demo fleet) with the Redis extra.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY otel_puppy ./otel_puppy
RUN pip install ".[redis,demo]" && useradd --system --uid 10001 puppy
COPY policies ./policies
USER puppy
EXPOSE 4319
ENTRYPOINT ["otel-puppy"]
CMD ["serve", "--host", "0.0.0.0"]
