// A real OpenID Provider (panva oidc-provider 9.x) for idgate's integration tests.
//
// Usage: node server.mjs [--port N] [--config FILE]   (N = 0, the default, lets the kernel pick a
//        free loopback port; FILE defaults to clients.json beside this script)
// Env:   IDGATE_OP_CONTROL_TOKEN  required secret for the /__test/* control endpoints
//
// Serves on 127.0.0.1 only, prints "READY <port>" once listening.  The listener is created first so
// the issuer URL carries the real port; the Provider behind it can then be replaced in-process (key
// rotation builds a new Provider with a new JWKS and swaps the request handler).
//
// Browser login (authorization code + PKCE S256): web clients register themselves (open Dynamic Client
// Registration at /reg, test-only); GET /interaction/:uid is a minimal login form, POST
// /interaction/:uid/login with `username` logs a user of the config in (an unknown one ends the
// authorization with access_denied); consent is granted at once.  RP-initiated logout and back-channel
// logout are on.
//
// Control endpoints (header "X-Test-Control: <IDGATE_OP_CONTROL_TOKEN>"):
//   POST /__test/rotate              add a new RSA + EC signing key; new tokens are signed with it
//   POST /__test/outage {"on": bool} discovery and JWKS answer 503 while on
//   POST /__test/ttl {"IdToken": 5}  lifetimes (seconds) of code-flow artifacts; replaces the previous
//                                    overrides, {} restores the defaults
//   GET  /__test/state               {kids, outage, ttl}
//   POST /__test/sign {"header": {...}, "payload": {...}}   {"jws": ...}: a compact JWS of exactly these
//                                    claims, signed RS256 with the OP's current key (its kid unless the
//                                    header names one): tokens a real OP would never issue, for attacks

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    config: { type: 'string', default: fileURLToPath(new URL('./clients.json', import.meta.url)) },
  },
});
const controlToken = process.env.IDGATE_OP_CONTROL_TOKEN;
if (!controlToken) {
  console.error('IDGATE_OP_CONTROL_TOKEN is required');
  process.exit(2);
}
// clients: client_credentials clients (groups -> the access token's groups claim) and CIBA clients
// (ciba: true), which yield real ID tokens with no browser; resources: resource indicator -> the
// signing alg and scopes of its JWT access tokens; users: accounts a CIBA login_hint may name and
// the interaction login form accepts.
const config = JSON.parse(readFileSync(args.config, 'utf8'));

// Code-flow lifetimes when no test overrides them: short enough that a test run never outlives them
// by accident, long enough that nothing expires under a slow machine.
const DEFAULT_TTL = { AccessToken: 600, IdToken: 600, RefreshToken: 3600, AuthorizationCode: 60 };
let ttlOverrides = {};

function ttl(name) {
  return () => ttlOverrides[name] ?? DEFAULT_TTL[name];
}

function setTtls(body) {
  for (const [name, seconds] of Object.entries(body)) {
    if (!Object.hasOwn(DEFAULT_TTL, name)) throw new Error(`unknown ttl ${name}`);
    if (!Number.isInteger(seconds) || seconds <= 0) throw new Error(`ttl ${name} must be a positive integer`);
  }
  ttlOverrides = { ...body };
}

// The session and interaction cookies are signed with a key that outlives key rotation's rebuilt
// Provider, so a login in progress survives a rotation.
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

function newSigningKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const suffix = crypto.randomBytes(6).toString('hex');
  return [
    { ...rsa, kid: `rsa-${suffix}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `ec-${suffix}`, alg: 'ES256', use: 'sig' },
  ];
}

// Newest keys first: oidc-provider signs with the first key that fits the alg, and the JWKS keeps
// the older keys so tokens issued before a rotation still verify.
let keys = newSigningKeys();
let outage = false;

function groupsOf(clientId) {
  return config.clients.find((c) => c.client_id === clientId)?.groups;
}

function signRs256(header, payload) {
  const jwk = keys.find((k) => k.alg === 'RS256');
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64({ alg: 'RS256', kid: jwk.kid, ...header })}.${b64(payload)}`;
  const { kid: _kid, alg: _alg, use: _use, ...material } = jwk;
  const signature = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key: material, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

function signingKid(alg) {
  return keys.find((k) => k.alg === alg)?.kid;
}

function buildProvider(issuerUrl) {
  const clients = config.clients.map((c) => (c.ciba
    ? {
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['urn:openid:params:grant-type:ciba'],
      response_types: [],
      redirect_uris: [],
      backchannel_token_delivery_mode: 'poll',
    }
    : {
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    }));

  const op = new Provider(issuerUrl, {
    clients,
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access',
      ...new Set(Object.values(config.resources).flatMap((r) => r.scope.split(' ')))],
    claims: { openid: ['sub'], groups: ['groups'] },
    // The ID token carries the claims of its scopes (groups) even when an access token is issued too,
    // as Okta, Keycloak and Entra do when configured to: idgate's browser login reads them there.
    conformIdTokenClaims: false,
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'none'],
    // The code flow only: no implicit or hybrid responses put tokens in the front channel.
    responseTypes: ['code'],
    // PKCE for every client, confidential ones too (oidc-provider knows only S256).
    pkce: { required: () => true },
    // Every code grant of a client allowed the refresh_token grant gets a refresh token (no
    // offline_access needed); it still ends with the OP session, so RP-initiated logout kills it.
    // Rotated on every use: the old one is then refused, and reusing it revokes the grant.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    ttl: {
      AccessToken: ttl('AccessToken'),
      IdToken: ttl('IdToken'),
      RefreshToken: ttl('RefreshToken'),
      AuthorizationCode: ttl('AuthorizationCode'),
    },
    // oidc-provider refuses to call special-use addresses (SSRF protection), loopback included; this
    // test OP's only outgoing calls are back-channel logouts to relying parties on loopback, so it calls
    // those and nothing else.
    async fetch(url, { dispatcher: _ssrfChecking, ...options }) {
      if (new URL(url).hostname !== '127.0.0.1') throw new Error(`refusing to call ${url}: not loopback`);
      return globalThis.fetch(url, options);
    },
    async findAccount(_ctx, sub) {
      if (!Object.hasOwn(config.users, sub)) return undefined;
      const user = config.users[sub];
      return { accountId: sub, async claims() { return { sub, groups: user.groups }; } };
    },
    // The access token's groups come from the client's configuration (a service identity).
    async extraTokenClaims(_ctx, token) {
      const groups = groupsOf(token.clientId);
      return groups === undefined ? undefined : { groups };
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        async getResourceServerInfo(_ctx, resourceIndicator) {
          if (!Object.hasOwn(config.resources, resourceIndicator)) throw new errors.InvalidTarget();
          const rs = config.resources[resourceIndicator];
          return {
            scope: rs.scope,
            audience: resourceIndicator,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: rs.alg, kid: signingKid(rs.alg) } },
          };
        },
      },
      ciba: {
        enabled: true,
        deliveryModes: ['poll'],
        processLoginHint: async (_ctx, loginHint) => loginHint,
        processLoginHintToken: async () => undefined,
        validateBindingMessage: async () => undefined,
        validateRequestContext: async () => undefined,
        verifyUserCode: async () => undefined,
        // The "authentication device" approves at once, so the first token poll gets the tokens.
        async triggerAuthenticationDevice(ctx, request, account, client) {
          const { Grant } = ctx.oidc.provider;
          const grant = new Grant({ accountId: account.accountId, clientId: client.clientId });
          grant.addOIDCScope(request.scope);
          await grant.save();
          await ctx.oidc.provider.backchannelResult(request, grant);
        },
      },
    },
  });
  op.on('server_error', (_ctx, err) => console.error('server_error', err));
  op.on('backchannel.error', (_ctx, err, client) => console.error('backchannel.error', client.clientId, err));
  return op;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function html(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(req) {
  const text = await readBody(req);
  return text ? JSON.parse(text) : {};
}

function authorizedControl(req) {
  const given = Buffer.from(String(req.headers['x-test-control'] ?? ''));
  const expected = Buffer.from(controlToken);
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

let issuer;
let provider;
let handler;

function usingProvider(next) {
  provider = next;
  handler = next.callback();
}

async function control(req, res, path) {
  if (!authorizedControl(req)) return json(res, 403, { error: 'forbidden' });
  if (req.method === 'POST' && path === '/__test/rotate') {
    keys = [...newSigningKeys(), ...keys];
    usingProvider(buildProvider(issuer));
    return json(res, 200, { kids: keys.map((k) => k.kid) });
  }
  if (req.method === 'POST' && path === '/__test/outage') {
    outage = (await readJson(req)).on === true;
    return json(res, 200, { outage });
  }
  if (req.method === 'POST' && path === '/__test/ttl') {
    setTtls(await readJson(req));
    return json(res, 200, { ttl: ttlOverrides });
  }
  if (req.method === 'POST' && path === '/__test/sign') {
    const { header = {}, payload } = await readJson(req);
    return json(res, 200, { jws: signRs256(header, payload) });
  }
  if (req.method === 'GET' && path === '/__test/state') {
    return json(res, 200, { kids: keys.map((k) => k.kid), outage, ttl: ttlOverrides });
  }
  return json(res, 404, { error: 'not_found' });
}

// The interaction endpoints, as oidc-provider's documented examples write them: the interaction is
// the one the _interaction cookie names (interactionDetails), and it must be the one the URL names.
const INTERACTION_PATH = /^\/interaction\/([\w-]+)(\/login)?$/;

function loginForm(uid) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body><form method="post" action="/interaction/${encodeURIComponent(uid)}/login">
<input name="username" autofocus><button type="submit">Sign in</button>
</form></body></html>`;
}

// Consent is granted at once, for exactly what the prompt says is missing.
async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

async function login(req, res) {
  const username = new URLSearchParams(await readBody(req)).get('username') ?? '';
  const result = Object.hasOwn(config.users, username)
    ? { login: { accountId: username } }
    : { error: 'access_denied', error_description: 'unknown user' };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function interaction(req, res, [, uid, loginPath]) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return html(res, 400, 'interaction mismatch');
  const { name } = details.prompt;
  if (req.method === 'GET' && !loginPath && name === 'login') return html(res, 200, loginForm(uid));
  if (req.method === 'GET' && !loginPath && name === 'consent') return grantConsent(req, res, details);
  if (req.method === 'POST' && loginPath && name === 'login') return login(req, res);
  return html(res, 400, `unexpected ${req.method} for the ${name} prompt`);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path.startsWith('/__test/')) {
    control(req, res, path).catch((err) => json(res, 400, { error: String(err.message) }));
    return;
  }
  const interactionPath = INTERACTION_PATH.exec(path);
  if (interactionPath) {
    interaction(req, res, interactionPath).catch((err) => html(res, 400, String(err.message)));
    return;
  }
  if (outage && (path === '/jwks' || path.startsWith('/.well-known/'))) {
    json(res, 503, { error: 'temporarily_unavailable' });
    return;
  }
  handler(req, res);
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  usingProvider(buildProvider(issuer));
  console.log(`READY ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
