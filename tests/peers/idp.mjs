// The organisation's identity provider for Latchkey's tests and local stack,
// built on oauth2-mock-server (OIDC discovery, JWKS, token endpoint).
//
//   node idp.mjs --port <port> [--host 127.0.0.1]
//
// Prints `IDP_READY <issuer>` once listening. POST /token with
// grant_type=client_credentials and client_id=<id> issues an RS256 JWT; extra
// form parameters shape it, so tests can ask for the tokens they need:
//   sub         subject (default: the client_id)
//   aud         audience (the gateway's public URL)
//   exp_offset  seconds from now until exp; negative gives an expired token (default 3600)
//   iss         overrides the iss claim (a "wrong issuer" token with a valid signature)
//   scope       scope claim
// SIGUSR2 adds a signing key (key rotation).
// client_id and azp always carry the client_id.

import { OAuth2Server } from 'oauth2-mock-server';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', '9400'));
const host = arg('host', '127.0.0.1');
const issuer = `http://${host}:${port}`;

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.issuer.url = issuer;

server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  const clientId = typeof body.client_id === 'string' ? body.client_id : 'anonymous-client';
  const now = Math.floor(Date.now() / 1000);
  const offset = Number.parseInt(body.exp_offset ?? '3600', 10);
  token.payload.sub = typeof body.sub === 'string' ? body.sub : clientId;
  token.payload.client_id = clientId;
  token.payload.azp = clientId;
  token.payload.exp = now + (Number.isFinite(offset) ? offset : 3600);
  if (offset < 0) {
    // An expired token was also issued in the past.
    token.payload.iat = token.payload.exp - 60;
    token.payload.nbf = token.payload.iat;
  }
  if (typeof body.iss === 'string') token.payload.iss = body.iss;
  if (typeof body.aud === 'string') token.payload.aud = body.aud;
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
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
