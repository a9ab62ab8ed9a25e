"""A downstream that reads every `POST /v1/traces` body and answers `200` without decoding it, so a
forwarding benchmark measures the forwarder, not the sink. `GET /count` answers the requests taken.

    python -m bench._sink PORT
"""

from __future__ import annotations

import sys
from typing import Any

_taken = [0]
"""Requests taken (a list: the app adds to it)."""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        _taken[0] += 1
        body = b""
    else:
        body = str(_taken[0]).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
