// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * The Shared Signals receiver end to end: a real oidc-provider token service (mint mode), one
 * redis-server shared by two real gateway processes, and a transmitter whose JWKS is served by a
 * tiny HTTP server here. Replica A receives the SETs (`ssf` configured); replica B has no `ssf`
 * block and must see A's evictions through Redis.
 */
type TokenService = Awaited<ReturnType<typeof startDevTokenService>>;
type Redis = Awaited<ReturnType<typeof startRedisServer>>;

const TRANSMITTER = 'https://transmitter.test';
const AUDIENCE = 'https://gateway.test/ssf';
const GW_SECRET = 'gw-introspection-secret-0123456789';
const CACHE_KEY = 'k'.repeat(48);
const SSF_AUTH = 'Bearer ssf-push-secret-0123456789';
const CAEP = 'https://schemas.openid.net/secevent/caep/event-type/';
const RISC = 'https://schemas.openid.net/secevent/risc/event-type/';
/** Issue 4: a purge reaches every replica within one second. */
const PROPAGATION_BOUND_MS = 1000;

let ts: TokenService;
let redis: Redis;
let up: EchoUpstream;
let a: GatewayProcess;
let b: GatewayProcess;
let dir: string;
let jwksServer: Server;
let jwksMode: 'ok' | 'error' = 'ok';
let key: { privateKey: CryptoKey; jwk: JWK };
let attacker: CryptoKey;
const issuedTokens: string[] = [];
const postedSets: string[] = [];

/** The subject of writer's tokens: client_credentials has no sub, so the minted sub is the client_id. */
const SUB = 'writer';

async function token(): Promise<string> {
  const t = (await ts.issueToken('writer', 'writer-secret', 'invoice_read')).access_token;
  issuedTokens.push(t);
  return t;
}
const api = (gw: GatewayProcess, t: string) =>
  request(`${gw.url}/api/invoices`, { headers: { authorization: `Bearer ${t}` } });

let jtiCounter = 0;
async function signSet(
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  signingKey: CryptoKey = key.privateKey,
): Promise<string> {
  const payload: Record<string, unknown> = {
    iss: TRANSMITTER,
    aud: AUDIENCE,
    iat: Math.floor(Date.now() / 1000),
    jti: `set-${process.pid}-${++jtiCounter}`,
    sub_id: { format: 'iss_sub', iss: ts.issuer, sub: SUB },
    events: { [`${CAEP}session-revoked`]: { event_timestamp: Math.floor(Date.now() / 1000) } },
    ...claims,
  };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  const set = await new SignJWT(payload)
    .setProtectedHeader({ alg: 'ES256', kid: 'transmitter-1', typ: 'secevent+jwt', ...header })
    .sign(signingKey);
  postedSets.push(set);
  return set;
}

function push(
  set: string,
  opts: { contentType?: string; authorization?: string | null; to?: GatewayProcess } = {},
): Promise<SimpleResponse> {
  const headers: Record<string, string> = { 'content-type': opts.contentType ?? 'application/secevent+jwt' };
  if (opts.authorization !== null) headers['authorization'] = opts.authorization ?? SSF_AUTH;
  return request(`${(opts.to ?? a).adminUrl}/ssf/events`, { method: 'POST', headers, body: set });
}

/** A fresh token cached in both replicas' L1 (introspected once, through A; B filled from Redis). */
async function cachedInBoth(): Promise<string> {
  const t = await token();
  const before = ts.introspectionCount();
  expect((await api(a, t)).status).toBe(200);
  expect((await api(b, t)).status).toBe(200);
  expect((await api(b, t)).status).toBe(200);
  expect((await api(a, t)).status).toBe(200);
  expect(ts.introspectionCount() - before).toBe(1);
  return t;
}

/**
 * Requests `t` at B until it is introspected again (B's L1 evicted) or answers `status`, bounded
 * by PROPAGATION_BOUND_MS; returns the last status and how long it took.
 */
async function untilReintrospectedAtB(t: string, before: number): Promise<{ status: number; ms: number }> {
  const started = Date.now();
  let status = 0;
  for (let i = 0; i < 200; i++) {
    status = (await api(b, t)).status;
    if (ts.introspectionCount() > before || status !== 200) break;
    if (Date.now() - started > PROPAGATION_BOUND_MS) break;
    await sleep(10);
  }
  return { status, ms: Date.now() - started };
}

/** Nothing was evicted: both replicas still serve `t` without asking the token service. */
async function expectStillCached(t: string): Promise<void> {
  await sleep(200); // longer than a purge takes to propagate (were one published)
  const before = ts.introspectionCount();
  expect((await api(b, t)).status).toBe(200);
  expect((await api(a, t)).status).toBe(200);
  expect(ts.introspectionCount()).toBe(before);
}

const ssfLines = (gw: GatewayProcess) =>
  gw.logs().filter((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('ssf event'));

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-ssf-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  const pair = await generateKeyPair('ES256', { extractable: true });
  key = {
    privateKey: pair.privateKey,
    jwk: { ...(await exportJWK(pair.publicKey)), kid: 'transmitter-1', alg: 'ES256', use: 'sig' },
  };
  attacker = (await generateKeyPair('ES256')).privateKey;
  jwksServer = createServer((_req, res) => {
    if (jwksMode === 'error') return void res.writeHead(500).end();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [key.jwk] }));
  });
  await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
  const jwksUri = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks`;

  [ts, redis, up] = await Promise.all([
    startDevTokenService({
      host: '127.0.0.1',
      port: await freePort(),
      clients: [
        { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'writer', client_secret: 'writer-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: 'phantom-gateway',
    }),
    startRedisServer(),
    startEchoUpstream(),
  ]);
  const config: Record<string, unknown> = {
    tokenService: {
      issuer: ts.issuer,
      clientId: 'phantom-gateway',
      clientSecret: '${GW_SECRET}',
      mode: 'mint',
      timeoutMs: 2000,
    },
    jwt: { mint: { issuer: 'https://gateway.test', signingKeysFile: keysFile, lifetimeSeconds: 120 } },
    cache: { redis: { url: redis.url, commandTimeoutMs: 100 } },
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices' },
        upstream: up.url,
        scopes: ['invoice_read'],
      },
    ],
  };
  const env = { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, SSF_AUTH };
  [a, b] = await Promise.all([
    startGateway(
      {
        ...config,
        ssf: { issuer: TRANSMITTER, jwksUri, audience: AUDIENCE, authorizationHeader: '${SSF_AUTH}' },
      },
      { env },
    ),
    startGateway(config, { env }),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await Promise.all([ts?.close(), redis?.stop(), up?.close()]);
  if (jwksServer) {
    jwksServer.closeAllConnections();
    await new Promise((r) => jwksServer.close(r));
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('POST /ssf/events', () => {
  // First, before A has ever fetched the transmitter's keys.
  it('503 when the transmitter JWKS cannot be fetched (not an invalid SET), and nothing is evicted', async () => {
    const t = await cachedInBoth();
    jwksMode = 'error';
    try {
      const res = await push(await signSet());
      expect(res.status).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
    } finally {
      jwksMode = 'ok';
    }
    await expectStillCached(t);
  });

  it('answers 404 on a replica without an ssf block', async () => {
    const res = await push(await signSet(), { to: b });
    expect(res.status).toBe(404);
  });

  it('a session-revoked SET at A → 202, and B re-introspects the token within one second', async () => {
    const t = await cachedInBoth();
    const before = ts.introspectionCount();
    const res = await push(await signSet());
    expect(res.status).toBe(202);
    expect(res.body).toBe('');
    const { status, ms } = await untilReintrospectedAtB(t, before);
    expect(status).toBe(200);
    expect(ts.introspectionCount() - before).toBe(1);
    expect(ms).toBeLessThanOrEqual(PROPAGATION_BOUND_MS);
    console.log(`ssf session-revoked: B re-introspected ${ms} ms after the 202`);
  });

  it('a token revoked at the token service, then signalled → B answers 401', async () => {
    const t = await cachedInBoth();
    await ts.revoke(t);
    expect((await api(b, t)).status).toBe(200); // still cached: the gateway has not heard yet
    const before = ts.introspectionCount();
    expect((await push(await signSet())).status).toBe(202);
    const { status, ms } = await untilReintrospectedAtB(t, before);
    expect(status).toBe(401);
    expect(ms).toBeLessThanOrEqual(PROPAGATION_BOUND_MS);
    expect((await api(a, t)).status).toBe(401);
  });

  it.each([
    [
      'credential-change (opaque sub_id)',
      `${CAEP}credential-change`,
      (): Record<string, unknown> => ({ sub_id: { format: 'opaque', id: SUB } }),
    ],
    [
      'account-disabled (complex sub_id)',
      `${RISC}account-disabled`,
      (): Record<string, unknown> => ({
        sub_id: {
          format: 'complex',
          user: { format: 'iss_sub', iss: ts.issuer, sub: SUB },
          session: { format: 'opaque', id: 's-1' },
        },
      }),
    ],
    [
      'account-purged (subject in the event)',
      `${RISC}account-purged`,
      (): Record<string, unknown> => ({
        sub_id: undefined,
        events: { [`${RISC}account-purged`]: { subject: { format: 'iss_sub', iss: ts.issuer, sub: SUB } } },
      }),
    ],
  ])('%s evicts too', async (_name, type, claims) => {
    const t = await cachedInBoth();
    const before = ts.introspectionCount();
    expect((await push(await signSet({ events: { [type]: {} }, ...claims() }))).status).toBe(202);
    const { status } = await untilReintrospectedAtB(t, before);
    expect(status).toBe(200);
    expect(ts.introspectionCount() - before).toBe(1);
  });

  it('a replayed SET → 202 and nothing is done again', async () => {
    const set = await signSet();
    await cachedInBoth();
    expect((await push(set)).status).toBe(202);
    await sleep(100); // let the first purge reach B before caching a new token of the subject
    const t = await cachedInBoth(); // cached again after the first delivery
    expect((await push(set)).status).toBe(202);
    await expectStillCached(t);
    const jti = JSON.parse(Buffer.from(set.split('.')[1]!, 'base64url').toString())['jti'];
    const lines = ssfLines(a).filter((l) => l['jti'] === jti);
    expect(lines.map((l) => l['msg'])).toEqual(['ssf event applied', 'ssf event already applied']);
    expect(lines[0]).toMatchObject({ events: ['session-revoked'], purged: expect.any(Number) });
  });
});

describe('refused SETs evict nothing', () => {
  let t: string;
  beforeAll(async () => {
    t = await cachedInBoth();
  });

  async function expectRefused(res: SimpleResponse, status: number, err: string): Promise<void> {
    expect(res.status).toBe(status);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.json()).toEqual({ err, description: expect.any(String) });
    await expectStillCached(t);
  }

  it('bad signature → 400 invalid_key', async () => {
    await expectRefused(await push(await signSet({}, {}, attacker)), 400, 'invalid_key');
  });

  it('wrong audience → 400 invalid_audience', async () => {
    await expectRefused(
      await push(await signSet({ aud: 'https://someone-else.test' })),
      400,
      'invalid_audience',
    );
  });

  it('wrong issuer → 400 invalid_issuer', async () => {
    await expectRefused(await push(await signSet({ iss: 'https://impostor.test' })), 400, 'invalid_issuer');
  });

  it('unknown event type → 400 invalid_request', async () => {
    const events = { [`${CAEP}token-claims-change`]: {} };
    await expectRefused(await push(await signSet({ events })), 400, 'invalid_request');
  });

  it('typ JWT → 400 invalid_request', async () => {
    await expectRefused(await push(await signSet({}, { typ: 'JWT' })), 400, 'invalid_request');
  });

  it('wrong content type → 400 invalid_request', async () => {
    await expectRefused(
      await push(await signSet(), { contentType: 'application/jwt' }),
      400,
      'invalid_request',
    );
  });

  it('a subject of another issuer → 403 access_denied', async () => {
    const sub_id = { format: 'iss_sub', iss: 'https://other-idp.test', sub: SUB };
    await expectRefused(await push(await signSet({ sub_id })), 403, 'access_denied');
  });

  it('missing or wrong transmitter Authorization → 401 authentication_failed', async () => {
    const set = await signSet();
    await expectRefused(await push(set, { authorization: null }), 401, 'authentication_failed');
    await expectRefused(await push(set, { authorization: 'Bearer wrong' }), 401, 'authentication_failed');
  });

  it('an expired SET (iat older than maxAgeSeconds) → 400 invalid_request', async () => {
    const iat = Math.floor(Date.now() / 1000) - 300 - 30 - 5;
    await expectRefused(await push(await signSet({ iat })), 400, 'invalid_request');
  });
});

describe('secrets', () => {
  it('never logs a SET, a token, the transmitter secret or the subject of an SSF event', async () => {
    for (const gw of [a, b]) {
      const out = gw.output();
      for (const s of postedSets) expect(out.includes(s)).toBe(false);
      for (const t of issuedTokens) expect(out.includes(t)).toBe(false);
      expect(out).not.toContain('ssf-push-secret');
    }
    const lines = ssfLines(a);
    expect(lines.length).toBeGreaterThan(5);
    for (const l of lines) expect(JSON.stringify(l)).not.toContain(`"${SUB}"`);
  });
});
