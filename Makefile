.PHONY: demo test lint typecheck bench
demo:
	./scripts/demo
test:
	./scripts/test
lint:
	.venv/bin/ruff check otel_puppy tests bench
typecheck:
	.venv/bin/mypy
bench:
	.venv/bin/python -m bench
