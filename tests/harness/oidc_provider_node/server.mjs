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
// Control endpoints (header "X-Test-Control: <IDGATE_OP_CONTROL_TOKEN>"):
//   POST /__test/rotate              add a new RSA + EC signing key; new tokens are signed with it
//   POST /__test/outage {"on": bool} discovery and JWKS answer 503 while on
//   GET  /__test/state               {kids, outage}

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
// signing alg and scopes of its JWT access tokens; users: accounts a CIBA login_hint may name.
const config = JSON.parse(readFileSync(args.config, 'utf8'));

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

function signingKid(alg) {
  return keys.find((k) => k.alg === alg)?.kid;
}

function buildProvider(issuer) {
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

  const provider = new Provider(issuer, {
    clients,
    jwks: { keys },
    scopes: ['openid', ...new Set(Object.values(config.resources).flatMap((r) => r.scope.split(' ')))],
    claims: { openid: ['sub'], groups: ['groups'] },
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
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return provider;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function authorizedControl(req) {
  const given = Buffer.from(String(req.headers['x-test-control'] ?? ''));
  const expected = Buffer.from(controlToken);
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

let issuer;
let handler;

async function control(req, res, path) {
  if (!authorizedControl(req)) return json(res, 403, { error: 'forbidden' });
  if (req.method === 'POST' && path === '/__test/rotate') {
    keys = [...newSigningKeys(), ...keys];
    handler = buildProvider(issuer).callback();
    return json(res, 200, { kids: keys.map((k) => k.kid) });
  }
  if (req.method === 'POST' && path === '/__test/outage') {
    outage = (await readJson(req)).on === true;
    return json(res, 200, { outage });
  }
  if (req.method === 'GET' && path === '/__test/state') {
    return json(res, 200, { kids: keys.map((k) => k.kid), outage });
  }
  return json(res, 404, { error: 'not_found' });
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path.startsWith('/__test/')) {
    control(req, res, path).catch((err) => json(res, 400, { error: String(err.message) }));
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
  handler = buildProvider(issuer).callback();
  console.log(`READY ${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
