import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  type JWK,
  jwtVerify,
} from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';
import { pollUntil } from '../../helpers/wait.ts';

/**
 * Mint-mode key rotation end to end: the real gateway process, the real oidc-provider token
 * service, a real upstream. The keys file is rewritten and the process gets SIGHUP while a
 * request loop runs; the new key is published at once, signs after publishBeforeSignSeconds, and
 * a removed key stays published until the JWTs it signed have expired.
 */
type TokenService = Awaited<ReturnType<typeof startDevTokenService>>;
type Redis = Awaited<ReturnType<typeof startRedisServer>>;

const MINT_ISSUER = 'https://gateway.test';
const GW_SECRET = 'gw-introspection-secret-0123456789';
const PUBLISH = 2;
const LIFETIME = 5;
const JWKS_PATH = '/.well-known/gateway-jwks.json';

let ts: TokenService;
let up: EchoUpstream;
let redis: Redis;
let gw: GatewayProcess;
let dir: string;
let keysFile: string;
let oldKey: JWK;
let newKey: JWK;

async function privateJwk(kid: string): Promise<JWK> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg: 'ES256', use: 'sig' };
}
const writeKeys = (keys: JWK[]) => writeFileSync(keysFile, JSON.stringify({ keys }), { mode: 0o600 });
const token = async () => (await ts.issueToken('app', 'app-secret', 'invoice_read')).access_token;
const adminJwks = async () =>
  (await request(`${gw.adminUrl}/.well-known/jwks.json`)).json() as { keys: JWK[] };
const publishedKids = async () => (await adminJwks()).keys.map((k) => k.kid);
/** Epoch seconds of the last log line with this message. */
function loggedAt(msg: string): Record<string, unknown> & { at: number } {
  const line = gw.logs().findLast((l) => l['msg'] === msg);
  if (line === undefined) throw new Error(`no log line "${msg}"`);
  return { ...line, at: Date.parse(String(line['time'])) / 1000 };
}

interface Seen {
  id: string;
  status: number;
  kid?: string;
  iat?: number;
  /** The forwarded JWT verified against the admin JWKS fetched right after the response. */
  verified?: boolean;
}

let seq = 0;
/** One request through the gateway; returns its status and the kid/iat of the JWT the upstream got. */
async function call(t: string): Promise<Seen> {
  const id = `rotation-${++seq}`;
  const res = await request(`${gw.url}/api/invoices`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  if (res.status !== 200) return { id, status: res.status };
  const got = up.requests.find((r) => r.headers['x-request-id'] === id);
  const jwt = String(got?.headers.authorization).replace(/^Bearer /, '');
  let verified = false;
  try {
    await jwtVerify(jwt, createLocalJWKSet(await adminJwks()), { issuer: MINT_ISSUER, typ: 'at+jwt' });
    verified = true;
  } catch {}
  return {
    id,
    status: res.status,
    kid: decodeProtectedHeader(jwt).kid!,
    iat: decodeJwt(jwt).iat!,
    verified,
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-mint-rotation-'));
  keysFile = join(dir, 'keys.json');
  [oldKey, newKey] = await Promise.all([privateJwk('old-key'), privateJwk('new-key')]);
  writeKeys([oldKey]);
  [ts, up, redis] = await Promise.all([
    startDevTokenService({
      host: '127.0.0.1',
      port: await freePort(),
      clients: [
        { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'app', client_secret: 'app-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: 'phantom-gateway',
    }),
    startEchoUpstream(),
    startRedisServer(),
  ]);
  gw = await startGateway(
    {
      tokenService: {
        issuer: ts.issuer,
        clientId: 'phantom-gateway',
        clientSecret: '${GW_SECRET}',
        mode: 'mint',
        timeoutMs: 2000,
      },
      jwt: {
        // A short skew so minted JWTs (LIFETIME s) are cached: both cache hits and fresh mints.
        clockSkewSeconds: 1,
        mint: {
          issuer: MINT_ISSUER,
          signingKeysFile: keysFile,
          lifetimeSeconds: LIFETIME,
          publishBeforeSignSeconds: PUBLISH,
          jwksPath: JWKS_PATH,
        },
      },
      // One L1 entry for three cached tokens: most cache hits come from Redis, where every read
      // verifies the minted JWT against the ring's current public keys.
      cache: { memory: { maxEntries: 1 }, redis: { url: redis.url, commandTimeoutMs: 200 } },
      routes: [
        {
          name: 'invoices',
          match: { pathPrefix: '/api/invoices' },
          upstream: up.url,
          scopes: ['invoice_read'],
        },
      ],
    },
    { env: { GW_SECRET, PHANTOM_CACHE_KEY: 'k'.repeat(48) } },
  );
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await Promise.all([ts?.close(), up?.close(), redis?.stop()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('mint signing key rotation (SIGHUP)', () => {
  it('publishes a new key at once, signs with it after publishBeforeSignSeconds, keeps a removed key for the lifetime; no request fails', async () => {
    expect(await publishedKids()).toEqual(['old-key']);
    const cachedTokens = await Promise.all([token(), token(), token()]);
    const seen: Seen[] = [];

    // The load: sequential requests alternating cached tokens and fresh ones, bounded in time
    // and count, running until the steps below are done.
    let stop = false;
    const loop = (async () => {
      const deadline = Date.now() + 15_000;
      for (let i = 0; i < 3000 && !stop && Date.now() < deadline; i++) {
        const t = i % 4 === 3 ? await token() : cachedTokens[i % 3]!;
        seen.push(await call(t));
      }
    })();
    const firstOf = (kid: string) => seen.findIndex((s) => s.kid === kid);

    try {
      await pollUntil(() => seen.length >= 20, 'the request loop to run', 10_000);

      // 1. New first key + SIGHUP: published at once, the old key still signs.
      writeKeys([newKey, oldKey]);
      const mark = seen.length;
      gw.signal('SIGHUP');
      await pollUntil(
        () => gw.output().includes('jwt.mint.signingKeysFile reloaded'),
        'the reload log line',
        10_000,
      );
      expect(await publishedKids()).toEqual(['new-key', 'old-key']);
      const reload = loggedAt('jwt.mint.signingKeysFile reloaded');
      expect(reload).toMatchObject({ signingKid: 'old-key', nextKid: 'new-key' });
      const signsAt = Date.parse(String(reload['nextSignsAt'])) / 1000;
      expect(signsAt - reload.at).toBeCloseTo(PUBLISH, 1);
      // Right after the reload the minted JWTs still carry the old kid.
      const fresh = await call(await token());
      expect(fresh).toMatchObject({ status: 200, kid: 'old-key', verified: true });

      // 2. After the wait the new key signs.
      await pollUntil(() => firstOf('new-key') !== -1, 'a JWT signed by the new key', 10_000);
      expect(gw.output()).toContain('mint signing key switched');
      // Every JWT minted before the switch time carries the old kid, every one after it the new.
      const afterReload = seen.slice(mark).filter((s) => s.iat !== undefined);
      for (const s of afterReload) {
        if (s.iat! < Math.floor(signsAt)) expect(s.kid).toBe('old-key');
        if (s.iat! > Math.ceil(signsAt)) expect(s.kid).toBe('new-key');
      }

      // 3. The old key removed from the file: still published until LIFETIME after it last
      //    signed, then gone; the new key keeps signing.
      writeKeys([newKey]);
      const removalMark = gw.logs().filter((l) => l['msg'] === 'jwt.mint.signingKeysFile reloaded').length;
      gw.signal('SIGHUP');
      await pollUntil(
        () => gw.logs().filter((l) => l['msg'] === 'jwt.mint.signingKeysFile reloaded').length > removalMark,
        'the second reload',
        10_000,
      );
      expect(loggedAt('jwt.mint.signingKeysFile reloaded')).toMatchObject({
        signingKid: 'new-key',
        published: ['new-key', 'old-key'],
      });
      const lastOldIat = Math.max(...seen.filter((s) => s.kid === 'old-key').map((s) => s.iat!));
      await pollUntil(
        async () => !(await publishedKids()).includes('old-key'),
        'the removed key to leave the JWKS',
        LIFETIME * 1000 + 5_000,
        100,
      );
      const gone = loggedAt('removed mint signing keys are no longer published');
      expect(gone['kids']).toEqual(['old-key']);
      // Not before every JWT the old key signed has expired.
      expect(gone.at).toBeGreaterThanOrEqual(lastOldIat + LIFETIME);
      expect(await publishedKids()).toEqual(['new-key']);
    } finally {
      stop = true;
      await loop;
    }

    // Zero failures: every response 200, every forwarded JWT verified with the published keys.
    expect(seen.length).toBeGreaterThan(40);
    expect(seen.filter((s) => s.status !== 200)).toEqual([]);
    expect(seen.filter((s) => !s.verified)).toEqual([]);
    expect(seen.at(-1)!.kid).toBe('new-key');
    // Both kinds of requests happened: cache hits and fresh introspections + mints; JWTs of both
    // keys were read back from Redis and verified there (the read-back verifier sees the new key).
    const cacheOf = new Map(
      gw
        .logs()
        .filter((l) => l['msg'] === 'request')
        .map((l) => [l['requestId'], l['cache']]),
    );
    const sources = (kid: string) => new Set(seen.filter((s) => s.kid === kid).map((s) => cacheOf.get(s.id)));
    expect(sources('old-key')).toEqual(new Set(['introspection', 'l2']));
    expect(sources('new-key')).toEqual(new Set(['introspection', 'l2']));
  }, 40_000);

  it('an invalid keys file on SIGHUP: the process keeps serving with the old keys and logs an error', async () => {
    const { d: _d, ...publicOnly } = await privateJwk('broken-key');
    writeKeys([publicOnly, newKey]);
    gw.signal('SIGHUP');
    await pollUntil(() => gw.output().includes('signing keys reload failed'), 'the reload error', 10_000);
    const err = gw
      .logs()
      .findLast((l) => l['msg'] === 'signing keys reload failed: the previous keys stay in use')!;
    expect(err['level']).toBe('error');
    expect(JSON.stringify(err['err'])).toContain(
      `jwt.mint.signingKeysFile: ${keysFile}: keys[0]: not a private key`,
    );

    expect(await publishedKids()).toEqual(['new-key']);
    const res = await call(await token());
    expect(res).toMatchObject({ status: 200, kid: 'new-key', verified: true });
    // SIGHUP is not a shutdown.
    const livez = await request(`${gw.adminUrl}/livez`);
    expect(livez.status).toBe(200);
    expect(gw.output()).not.toContain('shutting down');
  });

  it('serves the same JWKS at jwt.mint.jwksPath on the public listener, without a token', async () => {
    const res = await request(`${gw.url}${JWKS_PATH}`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.headers['cache-control']).toBe(`public, max-age=${Math.floor(PUBLISH / 2)}`);
    expect(res.json()).toEqual(await adminJwks());
    expect(res.headers['x-request-id']).toBeTruthy();

    const withQuery = await request(`${gw.url}${JWKS_PATH}?x=1`);
    expect(withQuery.json()).toEqual(res.json());
    const head = await request(`${gw.url}${JWKS_PATH}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    // Other methods are not the JWKS: they go down the pipeline (no route here → 404).
    const post = await request(`${gw.url}${JWKS_PATH}`, { method: 'POST' });
    expect(post.status).toBe(404);
    expect(post.json()['error']).toBe('route_not_found');
  });

  it('never logs private key material', () => {
    for (const k of [oldKey, newKey]) expect(gw.output()).not.toContain(k.d);
  });
});
