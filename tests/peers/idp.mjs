// The organisation's identity provider for Latchkey's tests and local stack,
// built on oauth2-mock-server (OIDC discovery, JWKS, token endpoint).
//
//   node idp.mjs --port <port> [--host 127.0.0.1] [--issuer <url>]
//   (or IDP_PORT / IDP_HOST / IDP_ISSUER in the environment)
//
// The issuer defaults to http://<host>:<port>. An RS256 key is generated at
// start. Prints `IDP_READY <issuer>` once listening. JWKS at /jwks, discovery
// at /.well-known/openid-configuration.
//
// POST /token with grant_type=client_credentials and client_id=<id> issues an
// RS256 JWT; extra form parameters shape it, so tests can ask for the tokens
// they need:
//   sub         subject (default: the client_id)
//   aud         audience (the gateway's public URL); send it twice for two audiences
//   exp_offset  seconds from now until exp; negative gives an expired token (default 3600)
//   iss         overrides the iss claim (a "wrong issuer" token with a valid signature)
//   scope       scope claim
//   claims      a JSON object merged into the payload (groups, capabilities, act, ...)
// client_id and azp carry the client_id. The token response's `expires_in`
// stays 3600 whatever exp_offset says.
// SIGUSR2 adds a signing key (key rotation).

import { OAuth2Server } from 'oauth2-mock-server';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', process.env.IDP_PORT ?? '9400'));
const host = arg('host', process.env.IDP_HOST ?? '127.0.0.1');
const issuer = arg('issuer', process.env.IDP_ISSUER ?? `http://${host}:${port}`).replace(/\/+$/, '');
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`idp.mjs: bad port ${port}; usage: node idp.mjs --port <port> [--issuer <url>]`);
  process.exit(2);
}

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.issuer.url = issuer;

// Runs after oauth2-mock-server filled in its defaults (iss, iat, nbf = iat - 10,
// exp = iat + 3600, and for client_credentials `scope` and `aud` from the form).
// For client_credentials every claim below is shaped by the form; for the other
// grants (authorization code, refresh: the IdP as a downstream OAuth provider)
// only the parameters actually sent override the mock's defaults.
server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  const clientCredentials = body.grant_type === 'client_credentials';
  const str = (v) => (typeof v === 'string' ? v : undefined);

  const clientId = str(body.client_id) ?? (clientCredentials ? 'anonymous-client' : undefined);
  if (clientId !== undefined) {
    token.payload.client_id = clientId;
    token.payload.azp = clientId;
  }
  const sub = str(body.sub) ?? (clientCredentials ? clientId : undefined);
  if (sub !== undefined) token.payload.sub = sub;

  if (clientCredentials || body.exp_offset !== undefined) {
    const parsed = Number.parseInt(str(body.exp_offset) ?? '3600', 10);
    const offset = Number.isFinite(parsed) ? parsed : 3600;
    token.payload.exp = Math.floor(Date.now() / 1000) + offset;
    if (offset < 0) {
      // An expired token was also issued (and valid from) a minute before it expired.
      token.payload.iat = token.payload.exp - 60;
      token.payload.nbf = token.payload.iat;
    }
  }
  if (str(body.iss) !== undefined) token.payload.iss = body.iss;
  if (typeof body.aud === 'string' || Array.isArray(body.aud)) token.payload.aud = body.aud;
  if (str(body.scope) !== undefined) token.payload.scope = body.scope;
  // Extra claims (groups, capabilities, act, ...) as one JSON object.
  if (str(body.claims) !== undefined) {
    try {
      const extra = JSON.parse(body.claims);
      if (extra && typeof extra === 'object' && !Array.isArray(extra)) Object.assign(token.payload, extra);
    } catch {
      console.error('idp.mjs: the claims parameter is not a JSON object; ignored');
    }
  }
});

// SIGUSR2 adds a new signing key (tokens then alternate between the keys),
// as an identity provider does when it rotates keys.
process.on('SIGUSR2', async () => {
  const jwk = await server.issuer.keys.generate('RS256');
  console.log(`IDP_KEY_ADDED ${jwk.kid}`);
});

await server.start(port, host);
console.log(`IDP_READY ${issuer}`);

const stop = async () => {
  // server.stop() waits for open connections (a half-sent request held it ~5 s).
  setTimeout(() => process.exit(0), 1000).unref();
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
