import { inspect } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, ConfigSchema } from '../../../src/config/schema.ts';
import { type GatewayError, TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import { createClientAuth } from '../../../src/introspection/client-auth.ts';
import {
  createIntrospectionClient,
  type Introspection,
  type IntrospectionFailure,
  maxAgeOf,
  retryAfterSeconds,
} from '../../../src/introspection/introspection-client.ts';
import {
  createTokenServiceMetadata,
  IssuerMismatchError,
  openidTimeoutSeconds,
  type TokenServiceMetadata,
} from '../../../src/introspection/token-service-metadata.ts';
import { createJwtVerifier } from '../../../src/jwt/verify-jwt.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';

type DevTokenService = Awaited<ReturnType<typeof startDevTokenService>>;

/** Secrets with characters that need form-encoding in HTTP Basic (RFC 6749 §2.3.1); oidc-provider only takes VSCHAR. */
const GW_SECRET = 'p@ss:w rd/+%~*';
const STUB_SECRET = 'stub secret:+/ü';

function config(tokenService: Record<string, unknown>, jwt: Record<string, unknown> = {}): Config {
  return ConfigSchema.parse({
    tokenService: { timeoutMs: 2000, ...tokenService },
    jwt,
    routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
  });
}

function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

/** Every string an operator's log or a debugger could show for this error. */
function serialize(err: unknown): string {
  return (
    inspect(err, { depth: 20, showHidden: true }) + JSON.stringify(err, Object.getOwnPropertyNames(err ?? {}))
  );
}

const started: TokenServiceMetadata[] = [];

async function clientFor(cfg: Config, fetchImpl?: typeof fetch) {
  const clientAuth = await createClientAuth(cfg, fetchImpl ? { fetch: fetchImpl } : {});
  const metadata = createTokenServiceMetadata(cfg, { logger: silentLogger(), fetch: clientAuth.fetch });
  started.push(metadata);
  const client = createIntrospectionClient(cfg, { metadata, logger: silentLogger(), clientAuth });
  return { metadata, client };
}

/** Introspects expecting TokenServiceUnavailable; checks the status and that the token leaks nowhere. */
async function expectFailure(
  p: Promise<Introspection>,
  token: string,
  status: 502 | 503,
): Promise<TokenServiceUnavailable> {
  const err = await p.then(
    (v) => {
      throw new Error(`expected a failure, got ${JSON.stringify(v)}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TokenServiceUnavailable);
  const e = err as TokenServiceUnavailable;
  expect(e.status).toBe(status);
  expect(e.error).toBe('token_service_unavailable');
  if (status === 503) expect(e.headers['Retry-After']).toMatch(/^\d+$/);
  else expect(e.headers['Retry-After']).toBeUndefined();
  expect(e.message).not.toContain(token);
  expect(serialize(e)).not.toContain(token);
  return e;
}

afterAll(() => {
  for (const m of started) m.stop();
});

describe('against oidc-provider (dev token service)', () => {
  let dev: DevTokenService;

  beforeAll(async () => {
    dev = await startDevTokenService({
      port: await freePort(),
      clients: [
        { client_id: 'gw-basic', client_secret: GW_SECRET, grant_types: [] },
        {
          client_id: 'gw-post',
          client_secret: GW_SECRET,
          grant_types: [],
          token_endpoint_auth_method: 'client_secret_post',
        },
        { client_id: 'app', client_secret: 'app-secret', scope: 'invoice_read invoice_write' },
        { client_id: 'other-app', client_secret: 'other-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read', 'invoice_write'],
      introspectionClientId: ['gw-basic', 'gw-post'],
    });
  });
  afterAll(async () => {
    await dev?.close();
  });

  const mintCfg = (extra: Record<string, unknown> = {}) =>
    config({ issuer: dev.issuer, clientId: 'gw-basic', clientSecret: GW_SECRET, mode: 'mint', ...extra });

  it('discovers the metadata with openid-client; ready() flips after start()', async () => {
    const { metadata } = await clientFor(mintCfg());
    expect(metadata.ready()).toBe(false);
    await metadata.start();
    expect(metadata.ready()).toBe(true);
    const info = await metadata.get();
    expect(info.issuer).toBe(dev.issuer);
    expect(info.introspectionEndpoint).toBe(dev.introspectionEndpoint);
    expect(info.jwksUri).toBe(dev.jwksUri);
    expect(info.openid.serverMetadata().token_endpoint).toBe(dev.tokenEndpoint);
    expect(info.openid.timeout).toBe(2);
  });

  it('is ready at once, without discovery, when the introspection endpoint is configured (mode mint)', async () => {
    const { metadata } = await clientFor(mintCfg({ introspectionEndpoint: dev.introspectionEndpoint }));
    expect(metadata.ready()).toBe(true);
    expect((await metadata.get()).introspectionEndpoint).toBe(dev.introspectionEndpoint);
  });

  it('mint mode: an active opaque token introspects to its RFC 7662 claims, without a JWT', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const { client } = await clientFor(mintCfg());
    const r = await client.introspect(access_token, { requestId: 'req-1' });
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
  });

  it('client_secret_post works as well as client_secret_basic', async () => {
    const { access_token } = await dev.issueToken('other-app', 'other-secret');
    const { client } = await clientFor(mintCfg({ clientId: 'gw-post', clientAuth: 'client_secret_post' }));
    const r = await client.introspect(access_token, { requestId: 'req-2' });
    expect(r).toMatchObject({ active: true, claims: { client_id: 'other-app' } });
  });

  it('a revoked token and a random token are inactive', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret', 'invoice_read');
    const { client } = await clientFor(mintCfg());
    expect((await client.introspect(access_token, { requestId: 'r' })).active).toBe(true);
    await dev.revoke(access_token);
    expect(await client.introspect(access_token, { requestId: 'r' })).toEqual({ active: false });
    expect(await client.introspect('x'.repeat(43), { requestId: 'r' })).toEqual({ active: false });
  });

  it('a wrong client secret is 502 bad_answer (our own credentials rejected), never 401', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret');
    const { client } = await clientFor(mintCfg({ clientSecret: 'wrong' }));
    const e = await expectFailure(client.introspect(access_token, { requestId: 'r' }), access_token, 502);
    expect(serialize(e)).toContain('invalid_client');
  });

  it('claim mode: an answer without the JWT member is 502', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret');
    const { client } = await clientFor(
      config({
        issuer: dev.issuer,
        clientId: 'gw-basic',
        clientSecret: GW_SECRET,
        mode: 'claim',
        jwtClaim: 'phantom_token',
      }),
    );
    await expectFailure(client.introspect(access_token, { requestId: 'r' }), access_token, 502);
  });

  it('accept-jwt mode: a server that answers JSON instead of a JWT is 502', async () => {
    const { access_token } = await dev.issueToken('app', 'app-secret');
    const { client } = await clientFor(
      config({ issuer: dev.issuer, clientId: 'gw-basic', clientSecret: GW_SECRET }),
    );
    await expectFailure(client.introspect(access_token, { requestId: 'r' }), access_token, 502);
  });
});

describe('against the Curity stub (Accept: application/jwt)', () => {
  let stub: CurityStub;

  beforeAll(async () => {
    stub = await startCurityStub({ clientId: 'gw', clientSecret: STUB_SECRET });
  });
  afterAll(async () => {
    await stub?.close();
  });

  const cfgFor = (extra: Record<string, unknown> = {}) =>
    config(
      {
        issuer: stub.issuer,
        introspectionEndpoint: stub.introspectionEndpoint,
        clientId: 'gw',
        clientSecret: STUB_SECRET,
        mode: 'accept-jwt',
        ...extra,
      },
      { jwksUri: stub.jwksUri },
    );

  /** A registered (active) token. */
  function active(opts: { maxAge?: number } = {}): string {
    const t = stub.newToken();
    stub.register(t, { sub: 'alice', scope: 'invoice_read', client_id: 'web' }, opts);
    return t;
  }

  function withBehaviour<T>(
    b: CurityStub['behaviour'],
    fn: () => Promise<T>,
    headers: Record<string, string> = {},
  ) {
    stub.behaviour = b;
    stub.responseHeaders = headers;
    return fn().finally(() => {
      stub.behaviour = 'ok';
      stub.responseHeaders = {};
    });
  }

  it('200 application/jwt: returns the JWT and the Cache-Control max-age; the JWT verifies', async () => {
    const token = active({ maxAge: 60 });
    const { client, metadata } = await clientFor(cfgFor());
    expect(metadata.ready()).toBe(true);
    const r = await client.introspect(token, {
      requestId: 'req-42',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(r).toMatchObject({ active: true, claims: {}, maxAgeSeconds: 60 });
    if (!r.active) return;
    const verifier = createJwtVerifier({
      algorithms: ['ES256'],
      issuer: stub.issuer,
      clockSkewSeconds: 30,
      keys: { kind: 'remote', jwksUri: async () => stub.jwksUri, timeoutMs: 2000 },
    });
    expect((await verifier.verify(r.jwt!)).claims).toMatchObject({ sub: 'alice', scope: 'invoice_read' });
  });

  it('sends POST form token + token_type_hint, Basic auth (form-encoded), Accept, X-Request-Id and traceparent', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor());
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    await client.introspect(token, { requestId: 'req-shape', traceparent });
    const req = stub.requests.at(-1)!;
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(req.headers.accept).toBe('application/jwt');
    expect(req.headers['x-request-id']).toBe('req-shape');
    expect(req.headers.traceparent).toBe(traceparent);
    expect(req.body.get('token')).toBe(token);
    expect(req.body.get('token_type_hint')).toBe('access_token');
    expect(req.body.get('client_secret')).toBeNull();
    const basic = Buffer.from(req.headers.authorization!.replace(/^Basic /, ''), 'base64').toString('utf8');
    expect(basic).toBe(`gw:${new URLSearchParams({ s: STUB_SECRET }).toString().slice(2)}`);
  });

  it('client_secret_post: credentials in the form, no Authorization header', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor({ clientAuth: 'client_secret_post' }));
    expect((await client.introspect(token, { requestId: 'r' })).active).toBe(true);
    const req = stub.requests.at(-1)!;
    expect(req.headers.authorization).toBeUndefined();
    expect(req.body.get('client_id')).toBe('gw');
    expect(req.body.get('client_secret')).toBe(STUB_SECRET);
  });

  it('200 without Cache-Control has no maxAgeSeconds', async () => {
    const { client } = await clientFor(cfgFor());
    const r = await client.introspect(active(), { requestId: 'r' });
    expect(r.active && r.maxAgeSeconds).toBeUndefined();
  });

  it('204 means inactive', async () => {
    const { client } = await clientFor(cfgFor());
    expect(await client.introspect(stub.newToken(), { requestId: 'r' })).toEqual({ active: false });
  });

  it('discovers the stub from its issuer (no endpoint configured) and ready() flips', async () => {
    const cfg = config({ issuer: stub.issuer, clientId: 'gw', clientSecret: STUB_SECRET });
    const { metadata, client } = await clientFor(cfg);
    expect(metadata.ready()).toBe(false);
    // A request while unknown triggers one attempt itself.
    expect((await client.introspect(active(), { requestId: 'r' })).active).toBe(true);
    expect(metadata.ready()).toBe(true);
    expect((await metadata.get()).jwksUri).toBe(stub.jwksUri);
  });

  it.each([
    ['status:500', 502],
    ['status:502', 502],
    ['status:504', 502],
    ['status:503', 503],
    ['status:429', 503],
    ['status:401', 502],
    ['status:403', 502],
    ['status:400', 502],
    ['status:404', 502],
    ['status:302', 502],
    ['status:307', 502],
    ['status:201', 502],
    ['status:200', 502],
    ['garbage', 502],
    ['html', 502],
    ['jwt-claim:phantom_token', 502],
  ] as const)('behaviour %s maps to %i', async (behaviour, status) => {
    const token = active();
    const { client } = await clientFor(cfgFor());
    const calls = stub.calls;
    const e = await withBehaviour(behaviour, () =>
      expectFailure(client.introspect(token, { requestId: 'r' }), token, status),
    );
    if (status === 503) expect(e.headers['Retry-After']).toBe('5');
    expect(stub.calls).toBe(calls + 1); // one request, redirects not followed
  });

  it('429 with Retry-After: 7 → 503 with Retry-After 7', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor());
    const e = await withBehaviour(
      'status:429',
      () => expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      {
        'retry-after': '7',
      },
    );
    expect(e.headers['Retry-After']).toBe('7');
  });

  it('503 with an absurd Retry-After → 5; with an HTTP date → the seconds until then', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor());
    const absurd = await withBehaviour(
      'status:503',
      () => expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      {
        'retry-after': '100000',
      },
    );
    expect(absurd.headers['Retry-After']).toBe('5');
    const date = new Date(Date.now() + 20_000).toUTCString();
    const dated = await withBehaviour(
      'status:503',
      () => expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      {
        'retry-after': date,
      },
    );
    expect(Number(dated.headers['Retry-After'])).toBeGreaterThanOrEqual(18);
    expect(Number(dated.headers['Retry-After'])).toBeLessThanOrEqual(21);
  });

  it('a token service that never answers → 503 after timeoutMs', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor({ timeoutMs: 300 }));
    const t0 = performance.now();
    await withBehaviour('hang', () =>
      expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
    );
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(2000);
  });

  it('a slow answer within timeoutMs is fine; beyond it → 503', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor({ timeoutMs: 1000 }));
    expect((await withBehaviour('slow:100', () => client.introspect(token, { requestId: 'r' }))).active).toBe(
      true,
    );
    const fast = (await clientFor(cfgFor({ timeoutMs: 200 }))).client;
    await withBehaviour('slow:1500', () =>
      expectFailure(fast.introspect(token, { requestId: 'r' }), token, 503),
    );
  });

  it('connection refused → 503 with Retry-After', async () => {
    const port = await freePort();
    const token = stub.newToken();
    const { client } = await clientFor(
      cfgFor({ introspectionEndpoint: `http://127.0.0.1:${port}/introspect` }),
    );
    const e = await expectFailure(client.introspect(token, { requestId: 'r' }), token, 503);
    expect(e.headers['Retry-After']).toBe('5');
    expect(serialize(e)).toContain('ECONNREFUSED');
  });

  it('an unresolvable host → 503', async () => {
    const token = stub.newToken();
    const { client } = await clientFor(
      cfgFor({ introspectionEndpoint: 'http://phantom-gateway-test.invalid/introspect', timeoutMs: 1500 }),
    );
    await expectFailure(client.introspect(token, { requestId: 'r' }), token, 503);
  });

  it('wrong client credentials (the stub answers 401 invalid_client) → 502', async () => {
    const token = active();
    const { client } = await clientFor(cfgFor({ clientSecret: 'nope' }));
    await expectFailure(client.introspect(token, { requestId: 'r' }), token, 502);
  });

  describe('one retry after a connection reset (introspection is idempotent)', () => {
    /** The real fetch, counting the requests it is asked to send. */
    function counting() {
      const c = { n: 0 };
      const f: typeof fetch = (input, init) => {
        c.n++;
        return fetch(input, init);
      };
      return { c, f };
    }

    it('a reset before any answer is retried once, with fresh client authentication, and logged without the token', async () => {
      const token = active();
      const { logger, lines } = capturingLogger();
      const cfg = cfgFor({ clientAuth: 'client_secret_post' });
      const clientAuth = await createClientAuth(cfg);
      const metadata = createTokenServiceMetadata(cfg, { logger, fetch: clientAuth.fetch });
      const client = createIntrospectionClient(cfg, { metadata, logger, clientAuth });
      const before = stub.requests.length;
      const r = await withBehaviour('reset-once', () => client.introspect(token, { requestId: 'req-reset' }));
      expect(r.active).toBe(true);
      const sent = stub.requests.slice(before);
      expect(sent).toHaveLength(2);
      for (const req of sent) {
        expect(req.body.get('token')).toBe(token);
        expect(req.body.get('client_secret')).toBe(STUB_SECRET);
      }
      const retry = lines.find((l) => String(l['msg']).includes('retrying the introspection once'));
      expect(retry).toMatchObject({ level: 40, requestId: 'req-reset' });
      expect(['ECONNRESET', 'UND_ERR_SOCKET']).toContain(retry!['code']);
      expect(JSON.stringify(lines)).not.toContain(token);
    });

    it('a second reset is 503: never more than one retry', async () => {
      const token = active();
      const { c, f } = counting();
      const { client } = await clientFor(cfgFor(), f);
      const e = await withBehaviour('reset', () =>
        expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      );
      expect(c.n).toBe(2);
      expect(['ECONNRESET', 'UND_ERR_SOCKET']).toContain((e.cause as IntrospectionFailure).code);
    });

    it('no retry when the reset came too late to leave a useful share of timeoutMs', async () => {
      const token = active();
      const { c, f } = counting();
      // timeoutMs 400: a retry needs 100 ms (a quarter) left after the jitter; the reset comes at 350 ms.
      const { client } = await clientFor(cfgFor({ timeoutMs: 400 }), f);
      await withBehaviour('reset-after:350', () =>
        expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      );
      expect(c.n).toBe(1);
    });

    it('no retry after a timeout, a refused connection or an answer', async () => {
      const token = active();
      const hang = counting();
      const { client: slow } = await clientFor(cfgFor({ timeoutMs: 200 }), hang.f);
      await withBehaviour('hang', () =>
        expectFailure(slow.introspect(token, { requestId: 'r' }), token, 503),
      );
      expect(hang.c.n).toBe(1);

      const refused = counting();
      const port = await freePort();
      const { client: dead } = await clientFor(
        cfgFor({ introspectionEndpoint: `http://127.0.0.1:${port}/introspect` }),
        refused.f,
      );
      await expectFailure(dead.introspect(token, { requestId: 'r' }), token, 503);
      expect(refused.c.n).toBe(1);

      const answered = counting();
      const { client } = await clientFor(cfgFor(), answered.f);
      await withBehaviour('status:503', () =>
        expectFailure(client.introspect(token, { requestId: 'r' }), token, 503),
      );
      expect(answered.c.n).toBe(1);
    });
  });

  describe('claim mode', () => {
    const claimCfg = () => cfgFor({ mode: 'claim', jwtClaim: 'phantom_token' });

    it('returns the JWT from the configured member and the JSON claims', async () => {
      const token = active();
      const { client } = await clientFor(claimCfg());
      const r = await withBehaviour('jwt-claim:phantom_token', () =>
        client.introspect(token, { requestId: 'r' }),
      );
      expect(r).toMatchObject({ active: true, claims: { active: true, sub: 'alice' } });
      if (r.active) expect(r.jwt).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      expect(stub.requests.at(-1)!.headers.accept).toBe('application/json');
    });

    it('inactive JSON answer → inactive', async () => {
      const { client } = await clientFor(claimCfg());
      const r = await withBehaviour('jwt-claim:phantom_token', () =>
        client.introspect(stub.newToken(), { requestId: 'r' }),
      );
      expect(r).toEqual({ active: false });
    });

    it('active without the configured member → 502', async () => {
      const token = active();
      const { client } = await clientFor(claimCfg());
      await withBehaviour('jwt-claim:jwt', () =>
        expectFailure(client.introspect(token, { requestId: 'r' }), token, 502),
      );
    });

    it.each([
      ['active not boolean', '{"active":"true","phantom_token":"a.b.c"}'],
      ['active missing', '{"phantom_token":"a.b.c"}'],
      ['member not a string', '{"active":true,"phantom_token":42}'],
      ['member not a JWT', '{"active":true,"phantom_token":"opaque"}'],
      ['a JSON array', '[{"active":true}]'],
      ['not JSON', 'active=true'],
    ])('%s → 502', async (_name, body) => {
      const token = stub.newToken();
      const fake: typeof fetch = async () =>
        new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
      const { client } = await clientFor(claimCfg(), fake);
      await expectFailure(client.introspect(token, { requestId: 'r' }), token, 502);
    });
  });

  describe('mint mode', () => {
    it('active JSON answer → claims, no JWT', async () => {
      const token = active();
      const { client } = await clientFor(cfgFor({ mode: 'mint' }));
      expect(await client.introspect(token, { requestId: 'r' })).toEqual({
        active: true,
        claims: { active: true, iss: stub.issuer, sub: 'alice', scope: 'invoice_read', client_id: 'web' },
      });
    });

    it('a 204 is not a valid JSON-mode answer → 502', async () => {
      const token = stub.newToken();
      const fake: typeof fetch = async () => new Response(null, { status: 204 });
      const { client } = await clientFor(cfgFor({ mode: 'mint' }), fake);
      await expectFailure(client.introspect(token, { requestId: 'r' }), token, 502);
    });
  });
});

describe('token service metadata lifecycle', () => {
  it('unreachable at boot: start() rejects, get() is 503, background retries find it once it is up', async () => {
    const port = await freePort();
    const issuer = `http://127.0.0.1:${port}`;
    const { logger, lines } = capturingLogger();
    const metadata = createTokenServiceMetadata(config({ issuer, clientId: 'gw', clientSecret: 's' }), {
      logger,
    });
    started.push(metadata);
    await expect(metadata.start()).rejects.toBeDefined();
    expect(metadata.ready()).toBe(false);
    const err = await metadata.get().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenServiceUnavailable);
    expect((err as GatewayError).status).toBe(503);
    expect(lines.some((l) => l['msg'] === 'token service discovery failed')).toBe(true);

    const late = await startCurityStub({ clientId: 'gw', clientSecret: 's', port });
    try {
      const deadline = Date.now() + 10_000;
      while (!metadata.ready() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(metadata.ready()).toBe(true);
      expect((await metadata.get()).introspectionEndpoint).toBe(late.introspectionEndpoint);
    } finally {
      metadata.stop();
      await late.close();
    }
  });

  it('an issuer mismatch in the metadata is logged as an error and treated as a failure', async () => {
    const stub = await startCurityStub({
      clientId: 'gw',
      clientSecret: 's',
      issuer: 'https://impostor.example.com',
    });
    try {
      const { logger, lines } = capturingLogger();
      const metadata = createTokenServiceMetadata(
        config({ issuer: stub.origin, clientId: 'gw', clientSecret: 's' }),
        { logger },
      );
      started.push(metadata);
      await expect(metadata.start()).rejects.toBeInstanceOf(IssuerMismatchError);
      metadata.stop();
      expect(metadata.ready()).toBe(false);
      const line = lines.find((l) => l['level'] === 50);
      expect(line).toMatchObject({
        msg: 'token service metadata issuer does not match tokenService.issuer',
        got: 'https://impostor.example.com',
      });
    } finally {
      await stub.close();
    }
  });
});

describe('header parsing helpers', () => {
  it('Retry-After: seconds within 1..300, HTTP dates, else 5', () => {
    expect(retryAfterSeconds(null)).toBe(5);
    expect(retryAfterSeconds('7')).toBe(7);
    expect(retryAfterSeconds(' 300 ')).toBe(300);
    expect(retryAfterSeconds('301')).toBe(5);
    expect(retryAfterSeconds('0')).toBe(5);
    expect(retryAfterSeconds('-3')).toBe(5);
    expect(retryAfterSeconds('soon')).toBe(5);
    expect(retryAfterSeconds(new Date(60_000).toUTCString(), 0)).toBe(60);
  });

  it('Cache-Control: max-age, no-store/no-cache → 0, absent → undefined', () => {
    expect(maxAgeOf(null)).toBeUndefined();
    expect(maxAgeOf('max-age=60')).toBe(60);
    expect(maxAgeOf('public, MAX-AGE="30"')).toBe(30);
    expect(maxAgeOf('max-age=60, no-store')).toBe(0);
    expect(maxAgeOf('must-revalidate')).toBeUndefined();
  });

  it('openid-client timeouts stay usable for every timeoutMs (AbortSignal.timeout needs an integer)', () => {
    const unusable: number[] = [];
    for (let ms = 50; ms <= 60_000; ms++)
      if (!Number.isInteger(openidTimeoutSeconds(ms) * 1000)) unusable.push(ms);
    expect(unusable).toEqual([]);
    expect(openidTimeoutSeconds(2000)).toBe(2);
    expect(openidTimeoutSeconds(1001)).toBe(2);
  });
});
