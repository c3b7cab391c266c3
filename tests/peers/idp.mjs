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
// Token exchange (RFC 8693), for clients registered with
// --exchange-client <id>:<secret> (client_secret_basic or _post) or with
// --exchange-client-key <id>:<SPKI PEM file> (private_key_jwt, ES256 or RS256:
// iss = sub = the client, aud = <issuer>/token, unexpired, jti single use);
// others get 401 invalid_client:
//   POST /token grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//       &subject_token&subject_token_type[&actor_token&actor_token_type]
//       &requested_token_type[&audience][&resource][&scope]
//     Checked: the subject token (and the actor token) is a JWT signed by
//     this provider's keys, with its issuer, not expired; its type is
//     access_token, jwt or id_token; a subject on the deny list
//     (/control/exchange-deny) is refused with 400 invalid_grant.
//     requested_token_type access_token (the default): an access token for
//       sub = the subject's, aud = audience (else resource), scope as asked,
//       client_id = the requesting client, a fresh jti, and `act` naming
//       the actor token's client_id (else its sub), with the subject's own
//       `act` nested inside; expires_in = exchange-ttl (default 3600).
//     requested_token_type urn:ietf:params:oauth:token-type:id-jag: an
//       Identity Assertion JWT Authorization Grant (header typ
//       oauth-id-jag+jwt; iss, sub, aud = audience (required), resource,
//       client_id = the requesting client, jti, iat, exp = 300 s, scope,
//       act as above), token_type N_A.
//   The discovery documents list the token exchange grant.
//
// The server's own authorization server (ID-JAG redemption, RFC 7523), with
// --trust-issuer <url> (the identity provider whose ID-JAGs it accepts) and
// its clients registered with --exchange-client:
//   POST /token grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion[&scope]
//     Checked: the assertion's header typ is oauth-id-jag+jwt; it is signed
//     by a key of <trust-issuer>/jwks, iss = that issuer, aud = this
//     issuer, not expired; its client_id is the client that authenticated;
//     its jti was not redeemed before (replay: 400 invalid_grant); a
//     requested scope is within the grant's. Issues an access token: sub
//     from the grant, aud = the grant's resource, scope = the grant's
//     (narrowed to what was asked), its act, a fresh jti; expires_in =
//     exchange-ttl.
//   /.well-known/oauth-authorization-server lists
//   urn:ietf:params:oauth:grant-profile:id-jag in
//   authorization_grant_profiles_supported.
// Not checked: audience/resource values against a registry (any is
// accepted), client authentication methods other than a shared secret.
//
// Control endpoints for the exchanges:
//   POST /control/exchange-ttl  seconds=<n>   lifetime of exchanged tokens from now on
//   POST /control/exchange-deny subs=<a,b>    these subjects are refused (replaces the list)
//   GET  /control/stats also counts "token_exchange", "token_exchange_by_sub",
//        "id_jag", "jwt_bearer", "jwt_bearer_by_sub" (successful ones) and
//        "exchange_refused".
//
// SIGUSR2 adds a signing key (key rotation).

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import express from 'express';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, importSPKI, jwtVerify } from 'jose';
import { OAuth2Server } from 'oauth2-mock-server';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', process.env.IDP_PORT ?? '9400'));
const host = arg('host', process.env.IDP_HOST ?? '127.0.0.1');
const issuer = arg('issuer', process.env.IDP_ISSUER ?? `http://${host}:${port}`).replace(/\/+$/, '');
const rotateRefreshTokens = !process.argv.includes('--no-rotate');
/** client_id -> secret of the clients that may exchange tokens or redeem grants. */
const exchangeClients = new Map();
for (let i = 0; i < process.argv.length; i += 1) {
  if (process.argv[i] !== '--exchange-client') continue;
  const spec = process.argv[i + 1] ?? '';
  const colon = spec.indexOf(':');
  if (colon <= 0) {
    console.error('idp.mjs: --exchange-client takes <id>:<secret>');
    process.exit(2);
  }
  exchangeClients.set(spec.slice(0, colon), spec.slice(colon + 1));
}
const trustIssuer = arg('trust-issuer', undefined)?.replace(/\/+$/, '');
/** client_id -> path of the public key (SPKI PEM) of its private_key_jwt assertions. */
const clientKeyFiles = new Map();
for (let i = 0; i < process.argv.length; i += 1) {
  if (process.argv[i] !== '--exchange-client-key') continue;
  const spec = process.argv[i + 1] ?? '';
  const colon = spec.indexOf(':');
  if (colon <= 0) {
    console.error('idp.mjs: --exchange-client-key takes <id>:<public key PEM file>');
    process.exit(2);
  }
  clientKeyFiles.set(spec.slice(0, colon), spec.slice(colon + 1));
}
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
  token_exchange: 0,
  token_exchange_by_sub: {},
  id_jag: 0,
  jwt_bearer: 0,
  jwt_bearer_by_sub: {},
  exchange_refused: 0,
});

// --- Token exchange and ID-JAG state -------------------------------------------

let exchangeTtl = 3600;
let exchangeDenied = new Set();
/** jti of every ID-JAG redeemed here (replay protection). */
const redeemedJti = new Set();
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TT = 'urn:ietf:params:oauth:token-type:';
const ID_JAG_PROFILE = 'urn:ietf:params:oauth:grant-profile:id-jag';
const trustedKeys = trustIssuer ? createRemoteJWKSet(new URL(`${trustIssuer}/jwks`)) : undefined;
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

// The client and secret of a request: HTTP Basic, else client_id/client_secret in the form.
function clientCredentialsOf(req) {
  const m = /^Basic\s+(\S+)$/i.exec(str(req.headers.authorization) ?? '');
  if (m) {
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const dec = (v) => {
      try {
        return decodeURIComponent(v.replace(/\+/g, ' '));
      } catch {
        return v;
      }
    };
    return colon < 0 ? { id: dec(decoded) } : { id: dec(decoded.slice(0, colon)), secret: dec(decoded.slice(colon + 1)) };
  }
  return { id: str(req.body?.client_id), secret: str(req.body?.client_secret) };
}

const CLIENT_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** jti of every client assertion accepted (each is single use). */
const usedAssertions = new Set();

// The client a token exchange or grant redemption comes from, authenticated:
// a registered secret (client_secret_basic or _post), or a private_key_jwt
// assertion (RFC 7523 2.2: signed by the client's registered key, iss = sub =
// the client, aud = this token endpoint, unexpired, its jti unused). undefined
// when it does not authenticate.
async function authenticatedClient(req) {
  const body = req.body ?? {};
  if (body.client_assertion_type === CLIENT_ASSERTION) {
    const id = str(body.client_id);
    const file = id !== undefined ? clientKeyFiles.get(id) : undefined;
    if (file === undefined) return undefined;
    const pem = readFileSync(file, 'utf8');
    for (const alg of ['ES256', 'RS256']) {
      let key;
      try {
        key = await importSPKI(pem, alg);
      } catch {
        continue;
      }
      try {
        const { payload } = await jwtVerify(str(body.client_assertion) ?? '', key, {
          issuer: id,
          subject: id,
          audience: `${issuer}/token`,
        });
        if (typeof payload.jti !== 'string' || usedAssertions.has(payload.jti)) return undefined;
        usedAssertions.add(payload.jti);
        return id;
      } catch {
        return undefined;
      }
    }
    return undefined;
  }
  const { id, secret } = clientCredentialsOf(req);
  return id !== undefined && exchangeClients.has(id) && exchangeClients.get(id) === secret ? id : undefined;
}

function oauthError(res, status, error, description) {
  res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
  res.status(status).json({ error, error_description: description });
}

// A token this provider signed (its keys, its issuer, not expired); its claims or undefined.
async function ownToken(token) {
  if (typeof token !== 'string') return undefined;
  try {
    const { payload } = await jwtVerify(token, createLocalJWKSet({ keys: server.issuer.keys.toJSON() }), { issuer });
    return payload;
  } catch {
    return undefined;
  }
}

// `act` naming the actor (its client_id, else sub), with the subject's own chain inside.
function actClaim(subject, actor) {
  if (actor === undefined) return subject.act;
  const act = { sub: actor.client_id ?? actor.sub };
  if (subject.act !== undefined) act.act = subject.act;
  return act;
}

async function tokenExchange(req, res, client) {
  const body = req.body ?? {};
  const subjectType = str(body.subject_token_type);
  if (![`${TT}access_token`, `${TT}jwt`, `${TT}id_token`].includes(subjectType)) {
    oauthError(res, 400, 'invalid_request', 'subject_token_type must be an access token, a JWT or an ID token');
    return;
  }
  const subject = await ownToken(body.subject_token);
  if (subject === undefined) {
    oauthError(res, 400, 'invalid_grant', 'the subject token is not a valid token of this provider');
    return;
  }
  let actor;
  if (body.actor_token !== undefined) {
    actor = await ownToken(body.actor_token);
    if (actor === undefined) {
      oauthError(res, 400, 'invalid_grant', 'the actor token is not a valid token of this provider');
      return;
    }
  }
  if (exchangeDenied.has(subject.sub)) {
    stats.exchange_refused += 1;
    oauthError(res, 400, 'invalid_grant', `${subject.sub} is not entitled to this resource`);
    return;
  }
  const requested = str(body.requested_token_type) ?? `${TT}access_token`;
  const scope = str(body.scope);
  const audience = str(body.audience);
  const resource = str(body.resource);
  const act = actClaim(subject, actor);
  const jti = randomBytes(12).toString('base64url');
  if (requested === `${TT}id-jag`) {
    if (audience === undefined) {
      oauthError(res, 400, 'invalid_request', 'an ID-JAG needs the audience: the issuer of the authorization server');
      return;
    }
    const grant = await server.issuer.buildToken({
      expiresIn: 300,
      scopesOrTransform: (header, payload) => {
        header.typ = 'oauth-id-jag+jwt';
        Object.assign(payload, { sub: subject.sub, aud: audience, client_id: client, jti });
        if (resource !== undefined) payload.resource = resource;
        if (scope !== undefined) payload.scope = scope;
        if (act !== undefined) payload.act = act;
      },
    });
    stats.id_jag += 1;
    res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
    res.json({ access_token: grant, issued_token_type: `${TT}id-jag`, token_type: 'N_A', expires_in: 300, ...(scope ? { scope } : {}) });
    return;
  }
  if (requested !== `${TT}access_token`) {
    oauthError(res, 400, 'invalid_request', `this provider issues access tokens and ID-JAGs, not ${requested}`);
    return;
  }
  const token = await server.issuer.buildToken({
    expiresIn: exchangeTtl,
    scopesOrTransform: (_header, payload) => {
      Object.assign(payload, { sub: subject.sub, aud: audience ?? resource ?? client, client_id: client, jti });
      if (scope !== undefined) payload.scope = scope;
      if (act !== undefined) payload.act = act;
      if (exchangeTtl < 0) {
        payload.iat = payload.exp - 60;
        payload.nbf = payload.iat;
      }
    },
  });
  stats.token_exchange += 1;
  stats.token_exchange_by_sub[subject.sub] = (stats.token_exchange_by_sub[subject.sub] ?? 0) + 1;
  res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
  res.json({ access_token: token, issued_token_type: `${TT}access_token`, token_type: 'Bearer', expires_in: exchangeTtl, ...(scope ? { scope } : {}) });
}

async function redeemIdJag(req, res, client) {
  const body = req.body ?? {};
  if (trustedKeys === undefined) {
    oauthError(res, 400, 'unsupported_grant_type', 'this provider trusts no identity provider (--trust-issuer)');
    return;
  }
  const assertion = str(body.assertion);
  let grant;
  try {
    if (decodeProtectedHeader(assertion ?? '').typ !== 'oauth-id-jag+jwt') throw new Error('typ');
    ({ payload: grant } = await jwtVerify(assertion, trustedKeys, { issuer: trustIssuer, audience: issuer }));
  } catch {
    oauthError(res, 400, 'invalid_grant', 'the assertion is not a valid ID-JAG for this authorization server');
    return;
  }
  if (grant.client_id !== client) {
    oauthError(res, 400, 'invalid_grant', 'the ID-JAG was issued to another client');
    return;
  }
  if (typeof grant.jti !== 'string' || redeemedJti.has(grant.jti)) {
    oauthError(res, 400, 'invalid_grant', 'the ID-JAG was redeemed before');
    return;
  }
  const granted = (grant.scope ?? '').split(' ').filter(Boolean);
  const asked = (str(body.scope) ?? '').split(' ').filter(Boolean);
  if (asked.some((s) => !granted.includes(s))) {
    oauthError(res, 400, 'invalid_scope', 'a requested scope is not in the ID-JAG');
    return;
  }
  redeemedJti.add(grant.jti);
  const scope = (asked.length > 0 ? asked : granted).join(' ');
  const token = await server.issuer.buildToken({
    expiresIn: exchangeTtl,
    scopesOrTransform: (_header, payload) => {
      Object.assign(payload, { sub: grant.sub, aud: grant.resource ?? client, client_id: client, jti: randomBytes(12).toString('base64url') });
      if (scope) payload.scope = scope;
      if (grant.act !== undefined) payload.act = grant.act;
      if (exchangeTtl < 0) {
        payload.iat = payload.exp - 60;
        payload.nbf = payload.iat;
      }
    },
  });
  stats.jwt_bearer += 1;
  stats.jwt_bearer_by_sub[grant.sub] = (stats.jwt_bearer_by_sub[grant.sub] ?? 0) + 1;
  res.set({ 'Cache-Control': 'no-store', Pragma: 'no-cache' });
  res.json({ access_token: token, token_type: 'Bearer', expires_in: exchangeTtl, ...(scope ? { scope } : {}) });
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

// The discovery document says authorization responses carry `iss`, and
// lists the token exchange grant.
app.get('/.well-known/openid-configuration', (_req, res, next) => {
  const json = res.json.bind(res);
  res.json = (body) =>
    json({
      ...body,
      authorization_response_iss_parameter_supported: true,
      grant_types_supported: [...(body.grant_types_supported ?? []), TOKEN_EXCHANGE, ...(trustIssuer ? [JWT_BEARER] : [])],
    });
  next();
});

// RFC 8414 metadata, with the ID-JAG profile when this plays a server's
// authorization server.
app.get('/.well-known/oauth-authorization-server', (_req, res) => {
  res.json({
    issuer,
    token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`,
    grant_types_supported: ['client_credentials', 'authorization_code', 'refresh_token', TOKEN_EXCHANGE, ...(trustIssuer ? [JWT_BEARER] : [])],
    authorization_grant_profiles_supported: trustIssuer ? [ID_JAG_PROFILE] : [],
  });
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

app.post('/token', ...bodies, async (req, res, next) => {
  const body = req.body ?? {};
  if (body.grant_type === TOKEN_EXCHANGE || body.grant_type === JWT_BEARER) {
    const id = await authenticatedClient(req);
    if (id === undefined) {
      oauthError(res, 401, 'invalid_client', 'unknown client, wrong secret or a client assertion that does not verify');
      return;
    }
    try {
      await (body.grant_type === TOKEN_EXCHANGE ? tokenExchange(req, res, id) : redeemIdJag(req, res, id));
    } catch (e) {
      console.error(`idp.mjs: ${body.grant_type} failed: ${e?.message ?? e}`);
      if (!res.headersSent) oauthError(res, 500, 'server_error', 'the exchange failed');
    }
    return;
  }
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

app.post('/control/exchange-ttl', ...bodies, (req, res) => {
  const seconds = Number.parseInt(String(req.body?.seconds ?? ''), 10);
  if (!Number.isFinite(seconds)) {
    res.status(400).json({ error: 'seconds must be an integer' });
    return;
  }
  exchangeTtl = seconds;
  res.json({ exchange_ttl: exchangeTtl });
});

app.post('/control/exchange-deny', ...bodies, (req, res) => {
  exchangeDenied = new Set(String(req.body?.subs ?? '').split(',').filter(Boolean));
  res.json({ denied: [...exchangeDenied] });
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
