import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { CompactEncrypt, CompactSign, createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, ConfigSchema } from '../../../src/config/schema.ts';
import { TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import { createClientAuth } from '../../../src/introspection/client-auth.ts';
import {
  createIntrospectionClient,
  type Introspection,
} from '../../../src/introspection/introspection-client.ts';
import {
  createJwtIntrospectionVerifierFromConfig,
  IntrospectionJwtRefused,
} from '../../../src/introspection/jwt-introspection.ts';
import {
  createTokenServiceMetadata,
  type TokenServiceMetadata,
} from '../../../src/introspection/token-service-metadata.ts';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import {
  INTROSPECTION_JWT_TYPE,
  type JwtIntrospectionStub,
  type StubAnswer,
  startJwtIntrospectionStub,
} from '../../helpers/jwt-introspection-stub.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * RFC 9701 JWT introspection responses in mode mint (`tokenService.introspectionFormat: jwt`):
 * against real oidc-provider (`features.jwtIntrospection`), module-level and through the real
 * gateway process; hostile and broken signed answers from a stub, each a 502 and never a verdict.
 */
type DevTokenService = Awaited<ReturnType<typeof startDevTokenService>>;

const GW_SECRET = 'gw-introspection-secret-0123456789';
const MINT_ISSUER = 'https://gateway.test';
const JWT_ACCEPT = 'application/token-introspection+jwt';

let dir: string;
let keysFile: string;
const started: TokenServiceMetadata[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-rfc9701-'));
  keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
});
afterAll(() => {
  for (const m of started) m.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function serialize(err: unknown): string {
  return (
    inspect(err, { depth: 20, showHidden: true }) + JSON.stringify(err, Object.getOwnPropertyNames(err ?? {}))
  );
}

/** The introspection client as app.ts wires it for `introspectionFormat: jwt`. */
async function clientFor(cfg: Config) {
  const clientAuth = await createClientAuth(cfg);
  const metadata = createTokenServiceMetadata(cfg, { logger: silentLogger(), fetch: clientAuth.fetch });
  started.push(metadata);
  const jwtResponses = createJwtIntrospectionVerifierFromConfig(cfg, { metadata, fetch: clientAuth.fetch });
  return createIntrospectionClient(cfg, { metadata, logger: silentLogger(), clientAuth, jwtResponses });
}

async function failure(p: Promise<Introspection>, token: string): Promise<TokenServiceUnavailable> {
  const err = await p.then(
    (v) => new Error(`expected a failure, got ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TokenServiceUnavailable);
  expect(serialize(err)).not.toContain(token);
  return err as TokenServiceUnavailable;
}

describe('against oidc-provider (features.jwtIntrospection)', () => {
  let dev: DevTokenService;

  beforeAll(async () => {
    dev = await startDevTokenService({
      port: await freePort(),
      clients: [
        // The gateway's client: signed introspection answers with ES256 (RFC 9701 client metadata).
        {
          client_id: 'gw-es',
          client_secret: GW_SECRET,
          grant_types: [],
          extra: { introspection_signed_response_alg: 'ES256' },
        },
        // No introspection_signed_response_alg: oidc-provider's default is RS256.
        { client_id: 'gw-rs', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'app', client_secret: 'app-secret', scope: 'invoice_read invoice_write' },
      ],
      scopes: ['invoice_read', 'invoice_write'],
      introspectionClientId: ['gw-es', 'gw-rs'],
    });
  });
  afterAll(async () => {
    await dev?.close();
  });

  const cfg = (clientId: string, jwt: Record<string, unknown> = {}) =>
    ConfigSchema.parse({
      tokenService: {
        issuer: dev.issuer,
        clientId,
        clientSecret: GW_SECRET,
        mode: 'mint',
        introspectionFormat: 'jwt',
        timeoutMs: 2000,
      },
      jwt: { mint: { issuer: MINT_ISSUER, signingKeysFile: keysFile }, ...jwt },
      routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
    });

  it('oidc-provider answers a signed JWT (typ token-introspection+jwt, aud = our client) to our Accept header', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const basic = Buffer.from(`gw-es:${GW_SECRET}`).toString('base64');
    const res = await fetch(dev.introspectionEndpoint, {
      method: 'POST',
      headers: {
        authorization: `Basic ${basic}`,
        accept: JWT_ACCEPT,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({ token: access_token }),
      signal: AbortSignal.timeout(5000),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/token-introspection\+jwt\b/);
    const jwt = await res.text();
    expect(decodeProtectedHeader(jwt)).toMatchObject({ alg: 'ES256', typ: 'token-introspection+jwt' });
    const jwks = (await (await fetch(dev.jwksUri, { signal: AbortSignal.timeout(5000) })).json()) as {
      keys: [];
    };
    const { payload } = await jwtVerify(jwt, createLocalJWKSet(jwks), {
      issuer: dev.issuer,
      audience: 'gw-es',
    });
    expect(payload['token_introspection']).toMatchObject({ active: true, client_id: 'app' });
  });

  it('active token: the claims are the members of token_introspection (ES256)', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const r = await (await clientFor(cfg('gw-es'))).introspect(access_token, { requestId: 'r1' });
    expect(r.active).toBe(true);
    if (!r.active) return;
    expect(r.jwt).toBeUndefined();
    expect(r.claims).toMatchObject({
      active: true,
      client_id: 'app',
      scope: 'invoice_read',
      iss: dev.issuer,
    });
    expect(typeof r.claims['exp']).toBe('number');
    // The RFC 9701 envelope (aud = our client id, typ) is not mistaken for the token's claims.
    expect(r.claims['token_introspection']).toBeUndefined();
  });

  it("RS256 (oidc-provider's default for a client without introspection_signed_response_alg)", async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_write');
    const r = await (await clientFor(cfg('gw-rs'))).introspect(access_token, { requestId: 'r2' });
    expect(r).toMatchObject({ active: true, claims: { scope: 'invoice_write' } });
  });

  it('revoked and random tokens are inactive (token_introspection.active false)', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const client = await clientFor(cfg('gw-es'));
    expect((await client.introspect(access_token, { requestId: 'r' })).active).toBe(true);
    await dev.revoke(access_token);
    expect(await client.introspect(access_token, { requestId: 'r' })).toEqual({ active: false });
    expect(await client.introspect('x'.repeat(43), { requestId: 'r' })).toEqual({ active: false });
  });

  it('an answer signed with an algorithm outside jwt.algorithms is 502, not a verdict', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const client = await clientFor(cfg('gw-rs', { algorithms: ['ES256'] }));
    const e = await failure(client.introspect(access_token, { requestId: 'r' }), access_token);
    expect(e.status).toBe(502);
    expect((e.cause as Error).message).toMatch(/algorithm "RS256" is not allowed/);
  });

  describe('through the real gateway process', () => {
    let up: EchoUpstream;
    let gw: GatewayProcess;

    beforeAll(async () => {
      up = await startEchoUpstream();
      gw = await startGateway(
        {
          tokenService: {
            issuer: dev.issuer,
            // Configured endpoint, no jwt.jwksUri: the token service's keys still come from discovery.
            introspectionEndpoint: dev.introspectionEndpoint,
            clientId: 'gw-es',
            clientSecret: '${GW_SECRET}',
            mode: 'mint',
            introspectionFormat: 'jwt',
            timeoutMs: 2000,
          },
          jwt: { mint: { issuer: MINT_ISSUER, signingKeysFile: keysFile, lifetimeSeconds: 120 } },
          routes: [
            {
              name: 'invoices',
              match: { pathPrefix: '/api/invoices' },
              upstream: up.url,
              scopes: ['invoice_read'],
            },
          ],
        },
        { env: { GW_SECRET } },
      );
    }, 60_000);
    afterAll(async () => {
      await gw?.stop();
      await up?.close();
    });

    it('active token: 200 at the upstream with a JWT minted from the signed answer', async () => {
      const t = (await dev.issueToken('app', 'app-secret', 'invoice_read invoice_write')).access_token;
      const before = dev.introspectionCount();
      const res = await request(`${gw.url}/api/invoices/1`, { headers: { authorization: `Bearer ${t}` } });
      expect(res.status).toBe(200);
      // A JSON answer would have been refused (502): the 200 means the signed answer was verified.
      expect(dev.introspectionCount() - before).toBe(1);
      const jwt = String(up.requests.at(-1)!.headers.authorization).replace(/^Bearer /, '');
      const jwks = (await request(`${gw.adminUrl}/.well-known/jwks.json`)).json() as { keys: [] };
      const { payload } = await jwtVerify(jwt, createLocalJWKSet(jwks), {
        issuer: MINT_ISSUER,
        audience: up.url,
        typ: 'at+jwt',
      });
      expect(payload).toMatchObject({ sub: 'app', client_id: 'app', scope: 'invoice_read invoice_write' });
      expect(gw.output()).not.toContain(t);
    });

    it('revoked and unknown tokens: 401 invalid_token', async () => {
      const t = (await dev.issueToken('app', 'app-secret', 'invoice_read')).access_token;
      await dev.revoke(t);
      for (const token of [t, 'y'.repeat(43)]) {
        const res = await request(`${gw.url}/api/invoices`, {
          headers: { authorization: `Bearer ${token}` },
        });
        expect(res.status).toBe(401);
        expect(res.json()['error']).toBe('invalid_token');
      }
    });
  });
});

describe('hostile and broken signed answers (stub), through the real gateway process', () => {
  let stub: JwtIntrospectionStub;
  let up: EchoUpstream;
  let gw: GatewayProcess;
  /** Every answer body the stub served: none may appear in the gateway's output. */
  const served: string[] = [];
  const tokens: string[] = [];

  const gatewayConfig = (s: JwtIntrospectionStub) => ({
    tokenService: {
      issuer: s.issuer,
      introspectionEndpoint: s.introspectionEndpoint,
      clientId: s.clientId,
      clientSecret: '${GW_SECRET}',
      mode: 'mint',
      introspectionFormat: 'jwt',
      timeoutMs: 2000,
    },
    jwt: {
      jwksUri: s.jwksUri,
      clockSkewSeconds: 5,
      mint: { issuer: MINT_ISSUER, signingKeysFile: keysFile, lifetimeSeconds: 120 },
    },
    routes: [{ name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] }],
  });

  beforeAll(async () => {
    [stub, up] = await Promise.all([
      startJwtIntrospectionStub({ clientId: 'phantom-gateway', clientSecret: GW_SECRET }),
      startEchoUpstream(),
    ]);
    gw = await startGateway(gatewayConfig(stub), { env: { GW_SECRET } });
  }, 60_000);
  afterAll(async () => {
    await gw?.stop();
    await Promise.all([stub?.close(), up?.close()]);
  });

  /** A token the stub reports active with scope `read`. */
  function activeToken(): string {
    const t = stub.register({
      sub: 'alice',
      client_id: 'web',
      scope: 'read',
      exp: Math.floor(Date.now() / 1000) + 300,
    });
    tokens.push(t);
    return t;
  }
  const call = (t: string) => request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${t}` } });

  it('sends Accept: application/token-introspection+jwt; a correct signed answer → 200, an inactive one → 401', async () => {
    const t = activeToken();
    const ok = await call(t);
    expect(ok.status).toBe(200);
    expect(stub.requests.at(-1)!['accept']).toBe(JWT_ACCEPT);
    const jwt = String(up.requests.at(-1)!.headers.authorization).replace(/^Bearer /, '');
    expect(decodeProtectedHeader(jwt)).toMatchObject({ typ: 'at+jwt' });
    const inactive = await call('unregistered-token-0123456789');
    expect(inactive.status).toBe(401);
    expect(inactive.json()['error']).toBe('invalid_token');
  });

  const now = () => Math.floor(Date.now() / 1000);
  const ti = { active: true, sub: 'alice', client_id: 'web', scope: 'read' };
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const jwtAnswer = (body: string): StubAnswer => ({ contentType: INTROSPECTION_JWT_TYPE, body });

  /** Each row: how the stub answers; the gateway must say 502 token_service_unavailable. */
  const hostile: Array<[string, () => Promise<StubAnswer>]> = [
    [
      'signed with another key under the published kid',
      async () => jwtAnswer(await stub.sign(stub.payload(ti), {}, { rogue: true })),
    ],
    ['unknown kid', async () => jwtAnswer(await stub.sign(stub.payload(ti), { kid: 'unknown-kid' }))],
    [
      'attacker key embedded as jwk, jku to an attacker JWKS',
      async () =>
        jwtAnswer(
          await stub.sign(
            stub.payload(ti),
            { kid: 'attacker', jwk: stub.roguePublicJwk, jku: `${stub.issuer}/attacker-jwks` },
            { rogue: true },
          ),
        ),
    ],
    [
      'alg none',
      async () =>
        jwtAnswer(`${b64({ alg: 'none', typ: 'token-introspection+jwt' })}.${b64(stub.payload(ti))}.`),
    ],
    [
      'HS256 with the public key as the secret',
      async () => {
        const body = await new CompactSign(Buffer.from(JSON.stringify(stub.payload(ti))))
          .setProtectedHeader({ alg: 'HS256', kid: stub.kid, typ: 'token-introspection+jwt' })
          .sign(new TextEncoder().encode(stub.publicPem));
        return jwtAnswer(body);
      },
    ],
    ['typ at+jwt', async () => jwtAnswer(await stub.sign(stub.payload(ti), { typ: 'at+jwt' }))],
    ['typ absent', async () => jwtAnswer(await stub.sign(stub.payload(ti), { typ: undefined }))],
    [
      'wrong iss',
      async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), iss: 'https://evil.example' })),
    ],
    [
      'aud without our client id',
      async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), aud: ['someone-else'] })),
    ],
    [
      'iat too old (> skew + ceil(timeout))',
      async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), iat: now() - 60 })),
    ],
    [
      'iat in the future (> skew)',
      async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), iat: now() + 60 })),
    ],
    ['iat missing', async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), iat: undefined }))],
    ['expired exp', async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), exp: now() - 60 }))],
    [
      'token_introspection missing (claims at top level)',
      async () => jwtAnswer(await stub.sign({ ...stub.payload(ti), token_introspection: undefined, ...ti })),
    ],
    ['active not boolean', async () => jwtAnswer(await stub.sign(stub.payload({ ...ti, active: 'true' })))],
    ['nested JWT (cty JWT)', async () => jwtAnswer(await stub.sign(stub.payload(ti), { cty: 'JWT' }))],
    [
      'JSON content type instead of the JWT (an RFC 7662 answer)',
      async () => ({ contentType: 'application/json', body: JSON.stringify(ti) }),
    ],
    ['right content type, body not a JWT', async () => jwtAnswer('<html><body>Sign in</body></html>')],
    [
      'JWE',
      async () =>
        jwtAnswer(
          await new CompactEncrypt(Buffer.from(await stub.sign(stub.payload(ti))))
            .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', cty: 'JWT' })
            .encrypt(new Uint8Array(32)),
        ),
    ],
  ];

  it.each(hostile)(
    '%s → 502, then the same token still works (no verdict was cached)',
    async (_name, make) => {
      const t = activeToken();
      stub.answer = async () => {
        const a = await make();
        served.push(a.body);
        return a;
      };
      try {
        const res = await call(t);
        expect(res.status).toBe(502);
        expect(res.json()['error']).toBe('token_service_unavailable');
        expect(res.headers['www-authenticate']).toBeUndefined();
        expect(res.body).not.toContain(t);
      } finally {
        stub.answer = undefined;
      }
      expect((await call(t)).status).toBe(200);
    },
  );

  it('the attacker JWKS named by jku is never fetched; nothing secret reaches the log', async () => {
    expect(stub.attackerJwksCalls).toBe(0);
    const out = gw.output();
    for (const t of tokens) expect(out).not.toContain(t);
    for (const body of served) if (body.length > 20) expect(out).not.toContain(body);
  });

  it('a JWKS that cannot be fetched is 503 + Retry-After; once it is back the token works', async () => {
    // A gateway of its own: the first gateway's key set is already cached (no fetch to fail).
    const s = await startJwtIntrospectionStub({ clientId: 'phantom-gateway', clientSecret: GW_SECRET });
    let g: GatewayProcess | undefined;
    try {
      s.jwksUp = false;
      g = await startGateway(gatewayConfig(s), { env: { GW_SECRET } });
      const t = s.register({ sub: 'bob', client_id: 'web', scope: 'read' });
      const call2 = () => request(`${g!.url}/api/x`, { headers: { authorization: `Bearer ${t}` } });
      const down = await call2();
      expect(down.status).toBe(503);
      expect(down.json()['error']).toBe('token_service_unavailable');
      expect(down.headers['retry-after']).toMatch(/^\d+$/);
      expect(s.jwksCalls).toBeGreaterThan(0);
      s.jwksUp = true;
      expect((await call2()).status).toBe(200);
    } finally {
      await g?.stop();
      await s.close();
    }
  });
});

describe('module level: the cause names what was wrong (for the operator), never the token', () => {
  let stub: JwtIntrospectionStub;
  beforeAll(async () => {
    stub = await startJwtIntrospectionStub({ clientId: 'phantom-gateway', clientSecret: GW_SECRET });
  });
  afterAll(async () => {
    await stub?.close();
  });

  const cfg = () =>
    ConfigSchema.parse({
      tokenService: {
        issuer: stub.issuer,
        introspectionEndpoint: stub.introspectionEndpoint,
        clientId: stub.clientId,
        clientSecret: GW_SECRET,
        mode: 'mint',
        introspectionFormat: 'jwt',
      },
      jwt: { jwksUri: stub.jwksUri, mint: { issuer: MINT_ISSUER, signingKeysFile: keysFile } },
      routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
    });

  it('wrong iss, JSON answer, wrong typ: 502 with a precise IntrospectionJwtRefused cause', async () => {
    const client = await clientFor(cfg());
    const t = stub.register({ sub: 'alice', scope: 'read' });
    const rows: Array<[() => Promise<StubAnswer>, RegExp]> = [
      [
        async () => ({
          contentType: INTROSPECTION_JWT_TYPE,
          body: await stub.sign({ ...stub.payload({ active: true }), iss: 'x' }),
        }),
        /"iss" claim/,
      ],
      [
        async () => ({ contentType: 'application/json', body: '{"active":true}' }),
        /content type "application\/json"/,
      ],
      [
        async () => ({
          contentType: INTROSPECTION_JWT_TYPE,
          body: await stub.sign(stub.payload({ active: true }), { typ: 'JWT' }),
        }),
        /"typ" header "JWT"/,
      ],
    ];
    for (const [make, cause] of rows) {
      stub.answer = make;
      try {
        const e = await failure(client.introspect(t, { requestId: 'r' }), t);
        expect(e.status).toBe(502);
        expect(e.cause).toBeInstanceOf(IntrospectionJwtRefused);
        const c = e.cause as Error;
        expect(`${c.message} ${(c.cause as Error | undefined)?.message ?? ''}`).toMatch(cause);
      } finally {
        stub.answer = undefined;
      }
    }
  });

  it("the gateway's own credentials rejected (401 from the token service) stays 502, as in JSON mode", async () => {
    const client = await clientFor(
      ConfigSchema.parse({ ...cfg(), tokenService: { ...cfg().tokenService, clientSecret: 'wrong' } }),
    );
    const t = stub.register({ sub: 'alice' });
    expect((await failure(client.introspect(t, { requestId: 'r' }), t)).status).toBe(502);
  });
});
