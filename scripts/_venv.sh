# Sourced by scripts/demo, scripts/test and scripts/test-long with one argument, the extra (demo | dev):
# make .venv with Python >= 3.11 and make it exactly requirements/<extra>.txt (the lock) plus the
# project, editable. Skipped when nothing changed: .venv/.otel-puppy-installed holds the extra and a
# hash of the lock, this script and the interpreter; the dev install also serves the demo (the demo's
# lock is the dev lock's subset at the same versions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="$1"
source scripts/_python.sh

stamp=.venv/.otel-puppy-installed
lock_key() {
  { cat requirements/dev.txt requirements/demo.txt requirements/uv.txt scripts/_venv.sh pyproject.toml
    .venv/bin/python -c 'import sys; print(sys.version)' 2>/dev/null || true
  } | "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# A lock made from other inputs than pyproject.toml's dependencies installs the wrong set: refuse.
locked_from="$(sed -n 's/^# pyproject-dependencies-sha256: //p' "requirements/$extra.txt")"
if [ "$locked_from" != "$("$PYTHON" scripts/_lock_key.py)" ]; then
  echo "pyproject.toml's dependencies changed since requirements/ was locked: run ./scripts/lock" >&2
  exit 1
fi

if [ -x .venv/bin/python ] && [ -f "$stamp" ]; then
  read -r installed_extra installed_key < "$stamp" || true
  if [ "${installed_key:-}" = "$(lock_key)" ] && { [ "$installed_extra" = "$extra" ] || [ "$installed_extra" = dev ]; }; then
    return 0  # nothing changed since the last install
  fi
fi

echo "installing .venv from requirements/$extra.txt ..." >&2
if ! [ -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
uv_pin="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements/uv.txt)"
if ! [ -x .venv/bin/uv ] || [ "$(.venv/bin/uv --version | cut -d' ' -f2)" != "$uv_pin" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/uv.txt
fi
# sync: exactly the lock (removes what is not in it), every file checked against its hash. Compiled to
# bytecode now: where PYTHONDONTWRITEBYTECODE is set no import writes it, and every process the tests and
# the demo start (the service, fleet workers, the CLI) would compile ~10,000 modules again (3.4 s, not 1.3 s).
.venv/bin/uv pip sync --quiet --python .venv/bin/python --require-hashes --compile-bytecode "requirements/$extra.txt"
# The project itself, built by the locked hatchling rather than a freshly downloaded one.
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
.venv/bin/python -m compileall -q otel_puppy >/dev/null  # the same for our own modules (an edited one is compiled again)
echo "$extra $(lock_key)" > "$stamp"
