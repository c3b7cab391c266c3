# A real MCP client (the official Python SDK over Streamable HTTP) living a
# tool call held for approval, as an agent would:
#
#   MCP_TOKEN=<bearer token> python approval_client.py <url> <tool> <arguments JSON> <go file>
#
# 1. connects, declaring URL-mode elicitation (an elicitation callback);
# 2. calls <tool> with <arguments>; the gateway holds it and answers with a
#    link to the approval page: an InputRequiredResult (2026-07-28, with a
#    requestState), a -32042 URL elicitation (2025-11-25) or a JSON-RPC
#    error carrying the link;
# 3. waits (at most 60 s) for <go file> to exist (the test creates it once
#    a person decided in the browser);
# 4. makes the same call again (with the requestState, when there was one)
#    and reports its result;
# 5. makes it a third time: an approval is used once, so this one is held.
#
# Prints one JSON line per step on stdout:
#   {"step": "connected", "protocol_version": "..."}
#   {"step": "held", "form": "input_required|url_elicitation|error", "url": "..."}
#   {"step": "result", "text": "...", "is_error": false}
#   {"step": "held_again", "form": "...", "url": "..."}
# Any other outcome prints {"step": "failed", "error": "..."} and exits 1.
# The token comes from the environment, never the command line, and is
# never printed.

import asyncio
import json
import os
import re
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

URL_ELICITATION_REQUIRED = -32042


def say(line):
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def accept_nothing(_ctx, _params):
    # Declares URL-mode elicitation; the gateway asks for none in this test.
    raise RuntimeError("no elicitation expected")


def link_in(text):
    m = re.search(r"https?://[^\s)]+", text or "")
    return m.group(0) if m else None


async def call(session, tool, arguments, request_state=None):
    """One call: ("result", CallToolResult) or ("held", form, url, state)."""
    try:
        r = await session.call_tool(
            tool, arguments, request_state=request_state, allow_input_required=True
        )
    except MCPError as e:
        data = e.error.data or {}
        if e.error.code == URL_ELICITATION_REQUIRED:
            url = data.get("elicitations", [{}])[0].get("url")
            return ("held", "url_elicitation", url, None)
        return ("held", "error", link_in(e.error.message), None)
    if getattr(r, "result_type", None) == "input_required":
        requests = r.input_requests or {}
        first = next(iter(requests.values()), None)
        params = getattr(first, "params", None)
        url = getattr(params, "url", None)
        return ("held", "input_required", url, r.request_state)
    return ("result", r)


async def main():
    url, tool, arguments, go_file = sys.argv[1:5]
    arguments = json.loads(arguments)
    token = os.environ["MCP_TOKEN"]
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with streamable_http_client(url, http_client=http) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write, elicitation_callback=accept_nothing) as session:
            init = await session.initialize()
            say({"step": "connected", "protocol_version": str(init.protocol_version)})
            first = await call(session, tool, arguments)
            if first[0] != "held":
                raise RuntimeError(f"the first call was not held: {first[1]}")
            say({"step": "held", "form": first[1], "url": first[2]})
            for _ in range(600):
                if os.path.exists(go_file):
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("nobody decided within 60 s")
            again = await call(session, tool, arguments, request_state=first[3])
            if again[0] != "result":
                raise RuntimeError(f"the retry was held again ({again[1]})")
            result = again[1]
            text = " ".join(c.text for c in result.content if getattr(c, "text", None))
            say({"step": "result", "text": text, "is_error": bool(result.is_error)})
            third = await call(session, tool, arguments)
            if third[0] != "held":
                raise RuntimeError("the third call went through: an approval was used twice")
            say({"step": "held_again", "form": third[1], "url": third[2]})


try:
    asyncio.run(main())
except BaseException as e:  # noqa: BLE001 - every failure is reported the same way
    say({"step": "failed", "error": f"{type(e).__name__}: {e}"})
    sys.exit(1)
