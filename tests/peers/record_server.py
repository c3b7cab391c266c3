"""`record_server.py`: an upstream MCP server on the official Python SDK
(PyPI `mcp`, pinned by scripts/setup), Streamable HTTP at `/mcp`, that
records what the SDK parsed of every request, so the differential tests can
compare it with what the gateway's policy judged.

* Every request and notification is recorded by a server middleware, after
  the SDK's JSON parsing and before its validation: `{"method", "params",
  "id"}` with the params exactly as Python's `json` read them (so `1e2` is a
  float, `100` an int of any size, duplicate keys would keep the last).
* Tools `echo(text: str)`, `count(n: int)`, `measure(x: float)`,
  `quota(n: int)` and `delete(target: str)` record and answer the
  arguments after pydantic's validation (`{"tool", "acted"}`, and
  `structuredContent`), i.e. what the tool acted on.
* Prompt `greet(name)`; resource template `rec://item/{id}` answering with
  the URI it was asked for.
* `GET /seen`: `{"requests": n, "calls": [...]}` (n counts POSTs to `/mcp`).

Usage: `python record_server.py --port <port>`; prints `RECORD_PY_READY`.
"""

import argparse
import json
import sys
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse

calls: list[dict[str, Any]] = []
requests = 0


def jsonable(value: Any) -> Any:
    """What a recorded value is, as JSON can say it: numbers beyond what a
    JSON number reads exactly are reported as text so nothing is lost on the
    way to the test (`{"int": "1000...0"}`); infinities likewise."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else {"int": str(value)}
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else {"float": repr(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return repr(value)


async def record(ctx: Any, call_next: Any) -> Any:
    params = dict(ctx.params) if ctx.params is not None else None
    calls.append({"method": ctx.method, "params": jsonable(params), "id": jsonable(ctx.request_id)})
    return await call_next(ctx)


server = MCPServer("record-py", middleware=[record])


def acted(tool: str, **arguments: Any) -> dict[str, Any]:
    """Records and answers what the tool acted on, after pydantic's validation."""
    calls.append({"tool": tool, "acted": jsonable(arguments)})
    return {"types": {k: type(v).__name__ for k, v in arguments.items()}, "arguments": jsonable(arguments)}


@server.tool(description="Echoes the text it parsed")
def echo(text: str) -> dict[str, Any]:
    return acted("echo", text=text)


@server.tool(description="Echoes the integer it parsed")
def count(n: int) -> dict[str, Any]:
    return acted("count", n=n)


@server.tool(description="Echoes the number it parsed")
def measure(x: float) -> dict[str, Any]:
    return acted("measure", x=x)


@server.tool(description="Echoes the integer it parsed, up to any size")
def quota(n: int) -> dict[str, Any]:
    return acted("quota", n=n)


@server.tool(description="A tool the policy hides")
def delete(target: str) -> dict[str, Any]:
    return acted("delete", target=target)


@server.prompt(description="A greeting")
def greet(name: str) -> str:
    return f"Hello {name}"


@server.resource("rec://item/{id}", description="An item, named by its id")
def item(id: str) -> str:
    return f"item {id}"


@server.custom_route("/seen", methods=["GET"])
async def seen(_request: Request) -> JSONResponse:
    return JSONResponse({"requests": requests, "calls": calls})


def counting(app: Any) -> Any:
    """Counts POSTs to /mcp, whatever the SDK then does with them."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        global requests
        if scope.get("type") == "http" and scope.get("path", "").startswith("/mcp"):
            requests += 1
        await app(scope, receive, send)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Behind Envoy the Host is whatever the route sets; this is a test peer.
    app = server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    config = uvicorn.Config(counting(app), host="127.0.0.1", port=args.port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    print(f"RECORD_PY_READY http://127.0.0.1:{args.port}/mcp", flush=True)
    uvicorn_server.run()


if __name__ == "__main__":
    sys.exit(main())
