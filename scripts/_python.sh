# Sourced by the scripts: set PYTHON to the first interpreter >= 3.11 (or check the one given in PYTHON=).
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    # `command -v` is not enough: a pyenv shim exists for versions it cannot run.
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  echo "otel_puppy needs Python >= 3.11 and found none: set PYTHON=/path/to/python3.11" >&2
  exit 1
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  echo "otel_puppy needs Python >= 3.11: PYTHON=$PYTHON is not one" >&2
  exit 1
fi
