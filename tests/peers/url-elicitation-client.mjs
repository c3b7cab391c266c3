// A real MCP client (the official TypeScript SDK over Streamable HTTP) that
// declares URL-mode elicitation, for tests of the in-band consent round trip
// as such a client lives it:
//
//   MCP_TOKEN=<bearer token> node url-elicitation-client.mjs <url> <tool> <wait_ms>
//
// 1. connects (initialize, then the SDK opens the session's GET stream);
// 2. calls <tool>; the gateway answers -32042 (URL elicitation required);
// 3. waits up to <wait_ms> for notifications/elicitation/complete naming
//    that elicitation, on whatever stream the SDK reads;
// 4. calls <tool> again and prints its text.
//
// Prints one JSON line per step on stdout:
//   {"step": "connected", "protocol_version": "..."}
//   {"step": "elicitation", "id": "...", "url": "..."}
//   {"step": "completed", "id": "...", "after_ms": n}
//   {"step": "result", "text": "..."}
// Any other outcome prints {"step": "failed", "error": "..."} and exits 1.
// The token comes from the environment, never the command line, and is
// never printed.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  ElicitationCompleteNotificationSchema,
  ErrorCode,
  McpError,
} from '@modelcontextprotocol/sdk/types.js';

const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const fail = (error) => {
  say({ step: 'failed', error: String(error?.message ?? error) });
  process.exit(1);
};

const [url, tool, waitArg] = process.argv.slice(2);
const token = process.env.MCP_TOKEN;
if (!url || !tool || !waitArg || !token) {
  console.error('usage: MCP_TOKEN=<token> node url-elicitation-client.mjs <url> <tool> <wait_ms>');
  process.exit(2);
}
const waitMs = Number(waitArg);

const completed = new Map();
const waiters = new Map();
const client = new Client(
  { name: 'latchkey-url-elicitation-client', version: '1.0.0' },
  { capabilities: { elicitation: { url: {} } } },
);
client.setNotificationHandler(ElicitationCompleteNotificationSchema, (n) => {
  const id = n.params.elicitationId;
  completed.set(id, Date.now());
  waiters.get(id)?.();
});
client.onerror = () => {}; // stream reconnects are the SDK's business

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { authorization: `Bearer ${token}` } },
});

try {
  await client.connect(transport);
  say({ step: 'connected', protocol_version: transport.protocolVersion ?? null });

  let elicitation;
  try {
    const result = await client.callTool({ name: tool, arguments: {} });
    fail(`expected a URL elicitation, got a result: ${JSON.stringify(result).slice(0, 300)}`);
  } catch (e) {
    if (!(e instanceof McpError) || e.code !== ErrorCode.UrlElicitationRequired) throw e;
    elicitation = e.data?.elicitations?.[0];
    if (!elicitation?.elicitationId || !elicitation?.url) {
      fail(`a -32042 without an elicitation: ${JSON.stringify(e.data)}`);
    }
  }
  const id = elicitation.elicitationId;
  const asked = Date.now();
  say({ step: 'elicitation', id, url: elicitation.url });

  if (!completed.has(id)) {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no notifications/elicitation/complete for ${id} within ${waitMs} ms`)),
        waitMs,
      );
      waiters.set(id, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  say({ step: 'completed', id, after_ms: completed.get(id) - asked });

  const result = await client.callTool({ name: tool, arguments: {} });
  const text = (result.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
  say({ step: 'result', text });
  await client.close();
  process.exit(0);
} catch (e) {
  fail(e);
}
