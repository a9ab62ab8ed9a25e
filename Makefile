.PHONY: demo test lint typecheck bench
demo:
	./scripts/demo
test:
	./scripts/test
lint:
	.venv/bin/ruff check otel_puppy tests bench grafana
typecheck:
	.venv/bin/mypy
	.venv/bin/mypy grafana/generate.py
bench:
	.venv/bin/python -m bench
