# otel_puppy's image: `otel-puppy serve` (and the demo fleet) with the Redis extra, at the lock's versions.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The lock first (its layer is cached while only the code changes): every file checked against its hash.
COPY requirements/image.txt requirements/uv.txt ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/uv.txt \
    && uv pip install --system --require-hashes -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY otel_puppy ./otel_puppy
RUN uv pip install --system --no-deps --no-build-isolation . && useradd --system --uid 10001 puppy
COPY policies ./policies
USER puppy
EXPOSE 4319
ENTRYPOINT ["otel-puppy"]
CMD ["serve", "--host", "0.0.0.0"]
