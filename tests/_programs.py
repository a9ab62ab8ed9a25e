"""System programs the tests start (Prometheus, promtool, redis-server): found, skipped or failed.

Under `CI=true` a missing program fails the test instead of skipping it, so CI can never pass
by quietly not running what it is meant to prove.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ("require_program",)

_INSTALL = {
    "prometheus": "Debian: apt-get install -y prometheus",
    "promtool": "Debian: apt-get install -y prometheus",
    "redis-server": "Debian: apt-get install -y redis-server",
    "redis-cli": "Debian: apt-get install -y redis-tools",
    "node": "Node.js 20 or newer, with npm",
    "npm": "Node.js 20 or newer, with npm",
}
"""Where each program comes from, for the message."""


def require_program(name: str) -> str:
    """The path of `name` on PATH; skip the test without it, or fail under `CI=true`."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed ({_INSTALL.get(name, 'see the README: System packages')})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)
