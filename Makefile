.PHONY: demo test test-long test-newest lock lint typecheck bench corpus
demo:
	./scripts/demo
test:
	./scripts/test
test-long:
	./scripts/test-long
test-newest:
	./scripts/test-newest
lock:
	./scripts/lock
lint:
	.venv/bin/ruff check otel_puppy tests bench grafana
typecheck:
	.venv/bin/mypy
	.venv/bin/mypy grafana/generate.py
bench:
	.venv/bin/python -m bench
corpus:
	./scripts/corpus
