#!/usr/bin/env python3
"""Print the sha256 of what pyproject.toml asks to install, so a lock made from other inputs is caught.

Only the dependency tables count (not tool settings), so editing ruff's config does not stale the lock.
"""

import hashlib
import json
import pathlib
import tomllib

data = tomllib.loads(pathlib.Path(__file__).resolve().parent.parent.joinpath("pyproject.toml").read_text())
inputs = {
    "requires-python": data["project"].get("requires-python"),
    "dependencies": data["project"].get("dependencies", []),
    "optional-dependencies": data["project"].get("optional-dependencies", {}),
    "build-system": data["build-system"].get("requires", []),
}
print(hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest())
