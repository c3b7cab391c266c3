// An OAuth 2.0 / OIDC provider for Latchkey's tests and local stack, built on
// oauth2-mock-server (OIDC discovery, JWKS, token endpoint). It plays both the
// organisation's identity provider and a downstream OAuth provider whose
// tokens Latchkey stores, refreshes and revokes.
//
//   node idp.mjs --port <port> [--host 127.0.0.1] [--issuer <url>] [--no-rotate]
//   (or IDP_PORT / IDP_HOST / IDP_ISSUER in the environment)
//
// The issuer defaults to http://<host>:<port>. An RS256 key is generated at
// start. Prints `IDP_READY <issuer>` once listening. JWKS at /jwks, discovery
// at /.well-known/openid-configuration. It never prints a code or a token.
//
// Client credentials (the tokens most tests ask for):
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
//
// Authorization code (+ PKCE) with a person signing in:
//   GET /authorize?response_type=code&client_id&redirect_uri&state
//       [&scope][&nonce][&resource][&code_challenge&code_challenge_method]
//     without `login`: an HTML page titled "Sign in" with a text input
//     #username (name=login), a submit button #sign-in and a button #deny;
//     the form sends the same query back to /authorize plus login=<username>
//     (or deny=1).
//     deny=1: redirect to redirect_uri?error=access_denied[&state]&iss.
//     login=<name>: redirect to redirect_uri?code=<code>[&state]&iss; the code
//     remembers {sub: <name>, client_id, scope, resource, nonce, PKCE
//     challenge, redirect_uri}.
//   POST /token grant_type=authorization_code&code&code_verifier&client_id&redirect_uri
//     Access token: sub = the login, aud = the `resource` of the authorize
//     request when one was sent, else the client_id; client_id/azp, scope as
//     asked at /authorize. id_token: sub = the login, aud = client_id, nonce.
//     Plus a refresh_token. Answers 400 {"error":"invalid_grant"} for an
//     unknown code, a code used before (codes are single use), a PKCE
//     verifier that does not match, or a client_id / redirect_uri other than
//     the authorize request's.
//   POST /token grant_type=refresh_token&refresh_token[&client_id]
//     A new access token (and id_token) with the same sub/aud/scope/client.
//     Rotation: a new refresh_token each time, and the one used stops working.
//     With --no-rotate the refresh token stays valid and the response carries
//     none. Unknown, rotated-out or revoked refresh token, or another
//     client's: 400 {"error":"invalid_grant"}.
//   Access tokens of these two grants live `access-ttl` seconds (exp and
//   expires_in; default 3600). Form extras (sub, aud, claims, ...) do not
//   apply to them; per-user extra claims come from /control/user-claims.
//   POST /revoke (RFC 7009) token=<refresh token>: that refresh token stops
//     working; always 200, as the RFC says.
//   GET /userinfo with the access token: {"sub": <its sub>}.
//   Every authorization response carries RFC 9207 `iss` (the issuer), and
//   the discovery document says so (authorization_response_iss_parameter_supported).
//
// Control endpoints for tests (form or JSON bodies):
//   POST /control/access-ttl    seconds=<n>  lifetime of user access tokens
//                                            issued from now on (negative: already expired)
//   POST /control/revoke-subject sub=<s>     revokes every refresh token of that
//                                            subject (the person revoked the app at the provider);
//                                            answers {"revoked": n}
//   POST /control/user-claims   sub=<s>&claims=<JSON object>  merged into every
//                                            user token (access and id) of that subject
//   GET  /control/stats         {"authorization_code": n, "refresh_token": n,
//                                 "refresh_token_by_sub": {"<sub>": n},
//                                 "revocations": n, "invalid_grant": n}
//                               (successful code and refresh exchanges, POST /revoke
//                               calls, invalid_grant answers)
//   POST /control/reset-stats   zeroes those counters (tokens stay as they are)
//   POST /control/refresh-delay ms=<n>       refresh grants are answered n ms late (a slow
//                                            provider); the presented token is spent at once
//   POST /control/misbehave     the provider stops playing along; each POST replaces
//                               the whole set (an empty body: behave again), answers it:
//     wrong_nonce=1         ID tokens carry another nonce than the authorize request's
//     wrong_id_token_aud=1  ID tokens are issued to another audience than the client
//     require_pkce=1        /authorize refuses (error=invalid_request) a request without
//                           an S256 code_challenge
//     iss=omit|<value>      authorization responses carry no `iss`, or this one
//     revoke_fails=1        POST /revoke answers 503 temporarily_unavailable and
//                           revokes nothing (counted in `revocations` all the same)
//
// SIGUSR2 adds a signing key (key rotation).

import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import express from 'express';
import { OAuth2Server } from 'oauth2-mock-server';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', process.env.IDP_PORT ?? '9400'));
const host = arg('host', process.env.IDP_HOST ?? '127.0.0.1');
const issuer = arg('issuer', process.env.IDP_ISSUER ?? `http://${host}:${port}`).replace(/\/+$/, '');
const rotateRefreshTokens = !process.argv.includes('--no-rotate');
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`idp.mjs: bad port ${port}; usage: node idp.mjs --port <port> [--issuer <url>] [--no-rotate]`);
  process.exit(2);
}

// The mock is used for its keys, token signing and endpoints; this file
// serves it behind its own HTTP server so the routes below run first.
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.issuer.url = issuer;

const str = (v) => (typeof v === 'string' ? v : undefined);
const nowSecs = () => Math.floor(Date.now() / 1000);

// --- State of the authorization code and refresh grants ----------------------

let accessTtl = 3600;
let refreshDelayMs = 0;
const behave = () => ({
  wrong_nonce: false,
  wrong_id_token_aud: false,
  require_pkce: false,
  iss: undefined,
  revoke_fails: false,
});
let misbehave = behave();

// RFC 9207: the issuer named in an authorization response (or none).
function setIss(url) {
  if (misbehave.iss === 'omit') return;
  url.searchParams.set('iss', misbehave.iss ?? issuer);
}
/** code -> {sub, client_id, scope, aud, nonce, challenge, method, redirect_uri} */
const codes = new Map();
/** codes already exchanged (or refused), so a second use is told apart in tests. */
const usedCodes = new Set();
/** refresh token -> {sub, client_id, scope, aud, active} */
const refreshTokens = new Map();
/** sub -> extra claims object */
const userClaims = new Map();

const freshStats = () => ({
  authorization_code: 0,
  refresh_token: 0,
  refresh_token_by_sub: {},
  revocations: 0,
  invalid_grant: 0,
});
let stats = freshStats();

function invalidGrant(res, description) {
  stats.invalid_grant += 1;
  res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
  res.status(400).json({ error: 'invalid_grant', error_description: description });
}

// client_id from HTTP Basic (RFC 6749 2.3.1: form-urlencoded, then base64) or the form.
function clientIdOf(req) {
  const auth = str(req.headers.authorization) ?? '';
  const m = /^Basic\s+(\S+)$/i.exec(auth);
  if (m) {
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const name = colon >= 0 ? decoded.slice(0, colon) : decoded;
    try {
      return decodeURIComponent(name.replace(/\+/g, ' '));
    } catch {
      return name;
    }
  }
  return str(req.body?.client_id);
}

function pkceMatches(verifier, challenge, method) {
  if (typeof verifier !== 'string' || !/^[A-Za-z0-9\-._~]{43,128}$/.test(verifier)) return false;
  const computed = method === 'S256' ? createHash('sha256').update(verifier).digest('base64url') : verifier;
  return computed === challenge;
}

// --- Sign-in page ------------------------------------------------------------

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

function signInPage(query) {
  const hidden = Object.entries(query)
    .filter(([k]) => k !== 'login' && k !== 'deny')
    .flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v]]))
    .filter(([, v]) => typeof v === 'string')
    .map(([k, v]) => `    <input type="hidden" name="${escapeHtml(k)}" value="${escapeHtml(v)}">`)
    .join('\n');
  const client = typeof query.client_id === 'string' ? query.client_id : 'an application';
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in</title></head>
<body>
  <h1>Sign in</h1>
  <p>${escapeHtml(client)} asks to act on your behalf at ${escapeHtml(issuer)}.</p>
  <form method="get">
${hidden}
    <label for="username">Username</label>
    <input type="text" id="username" name="login" autocomplete="username" required autofocus>
    <button type="submit" id="sign-in">Sign in</button>
    <button type="submit" id="deny" name="deny" value="1" formnovalidate>Deny</button>
  </form>
</body>
</html>
`;
}

// --- Routes that run before the mock's ---------------------------------------

const app = express();
app.disable('x-powered-by');
const bodies = [express.urlencoded({ extended: false }), express.json()];

// The discovery document says authorization responses carry `iss`.
app.get('/.well-known/openid-configuration', (_req, res, next) => {
  const json = res.json.bind(res);
  res.json = (body) => json({ ...body, authorization_response_iss_parameter_supported: true });
  next();
});

app.get('/authorize', (req, res, next) => {
  const q = req.query;
  const errorRedirect = (error, description) => {
    let url;
    try {
      url = new URL(str(q.redirect_uri) ?? '');
    } catch {
      res.status(400).json({ error: 'invalid_request', error_description: 'redirect_uri is not a URL' });
      return;
    }
    url.searchParams.set('error', error);
    url.searchParams.set('error_description', description);
    if (str(q.state)) url.searchParams.set('state', q.state);
    setIss(url);
    res.redirect(url.href);
  };
  if (misbehave.require_pkce && (!str(q.code_challenge) || q.code_challenge_method !== 'S256')) {
    errorRedirect('invalid_request', 'PKCE with S256 is required.');
    return;
  }
  if (q.deny !== undefined && q.deny !== '' && q.deny !== '0') {
    errorRedirect('access_denied', 'The person declined.');
    return;
  }
  if (!str(q.login)) {
    res.set({ 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.send(signInPage(q));
    return;
  }
  next(); // the mock issues the code; beforeAuthorizeRedirect remembers who signed in
});

server.service.on('beforeAuthorizeRedirect', ({ url }, req) => {
  setIss(url);
  const code = url.searchParams.get('code');
  const q = req.query ?? {};
  if (!code || !str(q.login)) return;
  const resource = q.resource;
  const clientId = str(q.client_id);
  codes.set(code, {
    sub: q.login,
    client_id: clientId,
    scope: str(q.scope),
    aud: resource !== undefined && resource !== '' ? resource : clientId,
    nonce: str(q.nonce),
    challenge: str(q.code_challenge),
    method: str(q.code_challenge_method) ?? 'plain',
    redirect_uri: str(q.redirect_uri),
  });
});

app.post('/token', ...bodies, (req, res, next) => {
  const body = req.body ?? {};
  const clientId = clientIdOf(req);
  if (body.grant_type === 'authorization_code') {
    const code = str(body.code);
    const grant = code !== undefined ? codes.get(code) : undefined;
    if (grant === undefined) {
      invalidGrant(res, code !== undefined && usedCodes.has(code) ? 'code already used' : 'unknown code');
      return;
    }
    // Single use, whatever happens next.
    codes.delete(code);
    usedCodes.add(code);
    if (grant.challenge !== undefined && !pkceMatches(body.code_verifier, grant.challenge, grant.method)) {
      invalidGrant(res, 'code_verifier does not match the code_challenge');
      return;
    }
    if (grant.client_id !== undefined && clientId !== grant.client_id) {
      invalidGrant(res, 'code issued to another client');
      return;
    }
    if (grant.redirect_uri !== undefined && str(body.redirect_uri) !== grant.redirect_uri) {
      invalidGrant(res, 'redirect_uri differs from the authorization request');
      return;
    }
    req.latchkeyGrant = { sub: grant.sub, client_id: grant.client_id, scope: grant.scope, aud: grant.aud };
  } else if (body.grant_type === 'refresh_token') {
    const presented = str(body.refresh_token);
    const rec = presented !== undefined ? refreshTokens.get(presented) : undefined;
    if (rec === undefined || !rec.active) {
      invalidGrant(res, rec === undefined ? 'unknown refresh token' : 'refresh token revoked or rotated');
      return;
    }
    if (clientId !== undefined && rec.client_id !== undefined && clientId !== rec.client_id) {
      invalidGrant(res, 'refresh token issued to another client');
      return;
    }
    // With rotation the presented token is spent now, so two concurrent uses cannot both win.
    if (rotateRefreshTokens) rec.active = false;
    req.latchkeyGrant = { sub: rec.sub, client_id: rec.client_id, scope: rec.scope, aud: rec.aud, refreshed: presented };
    if (refreshDelayMs > 0) {
      setTimeout(next, refreshDelayMs);
      return;
    }
  }
  next();
});

// RFC 7009: the token is revoked if it is one of our refresh tokens; 200 in every case.
app.post('/revoke', ...bodies, (req, res, next) => {
  stats.revocations += 1;
  if (misbehave.revoke_fails) {
    res.set({ 'Cache-Control': 'no-store' });
    res.status(503).json({ error: 'temporarily_unavailable', error_description: 'revocation is down' });
    return;
  }
  const rec = refreshTokens.get(str(req.body?.token) ?? '');
  if (rec !== undefined) rec.active = false;
  next();
});

app.post('/control/access-ttl', ...bodies, (req, res) => {
  const seconds = Number.parseInt(String(req.body?.seconds ?? ''), 10);
  if (!Number.isFinite(seconds)) {
    res.status(400).json({ error: 'seconds must be an integer' });
    return;
  }
  accessTtl = seconds;
  res.json({ access_ttl: accessTtl });
});

app.post('/control/refresh-delay', ...bodies, (req, res) => {
  const ms = Number.parseInt(String(req.body?.ms ?? ''), 10);
  if (!Number.isFinite(ms) || ms < 0) {
    res.status(400).json({ error: 'ms must be a non-negative integer' });
    return;
  }
  refreshDelayMs = ms;
  res.json({ refresh_delay_ms: refreshDelayMs });
});

app.post('/control/misbehave', ...bodies, (req, res) => {
  const body = req.body ?? {};
  const on = (v) => v === true || v === '1' || v === 'true';
  const iss = body.iss === undefined || body.iss === '' ? undefined : String(body.iss);
  misbehave = {
    wrong_nonce: on(body.wrong_nonce),
    wrong_id_token_aud: on(body.wrong_id_token_aud),
    require_pkce: on(body.require_pkce),
    iss,
    revoke_fails: on(body.revoke_fails),
  };
  res.json(misbehave);
});

app.post('/control/revoke-subject', ...bodies, (req, res) => {
  const sub = str(req.body?.sub);
  if (sub === undefined) {
    res.status(400).json({ error: 'sub is required' });
    return;
  }
  let revoked = 0;
  for (const rec of refreshTokens.values()) {
    if (rec.sub === sub && rec.active) {
      rec.active = false;
      revoked += 1;
    }
  }
  res.json({ revoked });
});

app.post('/control/user-claims', ...bodies, (req, res) => {
  const sub = str(req.body?.sub);
  let claims = req.body?.claims;
  if (typeof claims === 'string') {
    try {
      claims = JSON.parse(claims);
    } catch {
      claims = undefined;
    }
  }
  if (sub === undefined || !claims || typeof claims !== 'object' || Array.isArray(claims)) {
    res.status(400).json({ error: 'sub and claims (a JSON object) are required' });
    return;
  }
  userClaims.set(sub, claims);
  res.json({ sub, claims });
});

app.get('/control/stats', (_req, res) => {
  res.json(stats);
});

app.post('/control/reset-stats', (_req, res) => {
  stats = freshStats();
  res.json(stats);
});

// A body that does not parse gets the mock's kind of answer, not an HTML page.
app.use((err, _req, res, next) => {
  if (err && err.type === 'entity.parse.failed') {
    res.status(400).json({ error: 'invalid_request', error_description: 'Malformed request body' });
    return;
  }
  next(err);
});

// Everything else (and the requests passed on above) goes to the mock.
app.use((req, res) => server.service.requestHandler(req, res));

// --- Token shaping -----------------------------------------------------------

// Runs after oauth2-mock-server filled in its defaults (iss, iat, nbf = iat - 10,
// exp = iat + 3600, and for client_credentials `scope` and `aud` from the form).
server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  const grant = req.latchkeyGrant;
  if (grant !== undefined) {
    // authorization_code / refresh_token: the first token signed for a request
    // is the access token, the second the id_token.
    req.latchkeySigned = (req.latchkeySigned ?? 0) + 1;
    const idToken = req.latchkeySigned > 1;
    const p = token.payload;
    Object.assign(p, userClaims.get(grant.sub) ?? {});
    p.sub = grant.sub;
    p.exp = nowSecs() + accessTtl;
    if (accessTtl < 0) {
      p.iat = p.exp - 60;
      p.nbf = p.iat;
    }
    if (grant.client_id !== undefined) {
      p.client_id = grant.client_id;
      p.azp = grant.client_id;
    }
    if (idToken) {
      if (grant.client_id !== undefined) p.aud = grant.client_id;
      if (misbehave.wrong_id_token_aud) p.aud = 'someone-else';
      if (misbehave.wrong_nonce) p.nonce = randomBytes(16).toString('base64url');
    } else {
      p.aud = grant.aud;
      if (grant.scope !== undefined) p.scope = grant.scope;
      else delete p.scope;
    }
    return;
  }

  // Client credentials: every claim below is shaped by the form. Other grants
  // the mock knows (password): only the parameters actually sent override
  // the mock's defaults.
  const clientCredentials = body.grant_type === 'client_credentials';
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
    token.payload.exp = nowSecs() + offset;
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

// The token response of the user grants: lifetime, scope, and the refresh
// token this file tracks (the mock's own is replaced by ours).
server.service.on('beforeResponse', (response, req) => {
  const grant = req.latchkeyGrant;
  if (grant === undefined || response.statusCode !== 200) return;
  const body = response.body;
  body.expires_in = accessTtl;
  if (grant.scope !== undefined) body.scope = grant.scope;
  else delete body.scope;
  if (grant.refreshed !== undefined && !rotateRefreshTokens) {
    delete body.refresh_token;
  } else {
    const refreshToken = randomBytes(32).toString('base64url');
    refreshTokens.set(refreshToken, {
      sub: grant.sub,
      client_id: grant.client_id,
      scope: grant.scope,
      aud: grant.aud,
      active: true,
    });
    body.refresh_token = refreshToken;
  }
  if (grant.refreshed !== undefined) {
    stats.refresh_token += 1;
    stats.refresh_token_by_sub[grant.sub] = (stats.refresh_token_by_sub[grant.sub] ?? 0) + 1;
  } else {
    stats.authorization_code += 1;
  }
});

// /userinfo answers for the person the access token was issued to.
server.service.on('beforeUserinfo', (response, req) => {
  const m = /^Bearer\s+(\S+)$/i.exec(str(req.headers.authorization) ?? '');
  const payload = m?.[1].split('.')[1];
  if (payload === undefined) {
    response.statusCode = 401;
    response.body = { error: 'invalid_token' };
    return;
  }
  try {
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    response.body = { ...(userClaims.get(claims.sub) ?? {}), sub: claims.sub };
  } catch {
    response.statusCode = 401;
    response.body = { error: 'invalid_token' };
  }
});

// SIGUSR2 adds a new signing key (tokens then alternate between the keys),
// as an identity provider does when it rotates keys.
process.on('SIGUSR2', async () => {
  const jwk = await server.issuer.keys.generate('RS256');
  console.log(`IDP_KEY_ADDED ${jwk.kid}`);
});

const httpServer = createServer(app);
await new Promise((resolve, reject) => {
  httpServer.once('error', reject);
  httpServer.listen(port, host, resolve);
});
console.log(`IDP_READY ${issuer}`);

const stop = () => {
  // close() waits for open connections (a half-sent request held it ~5 s).
  setTimeout(() => process.exit(0), 1000).unref();
  httpServer.close(() => process.exit(0));
  httpServer.closeIdleConnections?.();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
