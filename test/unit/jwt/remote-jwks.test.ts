import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  type CryptoKey,
  exportJWK,
  type FlattenedJWSInput,
  generateKeyPair,
  type JWK,
  errors as joseErrors,
} from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import {
  createRemoteKeySet,
  JWKS_MAX_AGE_MS,
  JwksUnavailable,
  type RemoteKeySet,
  UNKNOWN_KID_COOLDOWN_MS,
} from '../../../src/jwt/remote-jwks.ts';

/** One JWKS endpoint of the test server: what it serves and how often it was asked. */
interface Endpoint {
  keys: JWK[];
  calls: number;
  mode: 'ok' | 'status:500' | 'hang' | 'not-a-jwks';
  /** While set, answers wait for it (to hold a fetch in flight). */
  gate?: Promise<void>;
}

const endpoints: Record<string, Endpoint> = {};
let server: Server;
let origin: string;
const jwks: Record<string, JWK> = {};

beforeAll(async () => {
  for (const kid of ['k1', 'k2', 'k3', 'b1']) {
    const { publicKey } = await generateKeyPair('ES256', { extractable: true });
    jwks[kid] = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  }
  server = createServer((req, res) => {
    const ep = endpoints[(req.url ?? '/').slice(1)];
    if (ep === undefined) {
      res.writeHead(404).end();
      return;
    }
    ep.calls++;
    void (async () => {
      await ep.gate;
      if (ep.mode === 'hang') return; // closeAllConnections() ends it
      if (ep.mode === 'status:500') {
        res.writeHead(500).end('{}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(ep.mode === 'not-a-jwks' ? '{"keys":"nope"}' : JSON.stringify({ keys: ep.keys }));
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

/** Fresh endpoints per test: `a` serves k1, `b` serves b1. */
beforeEach(() => {
  endpoints['a'] = { keys: [jwks['k1']!], calls: 0, mode: 'ok' };
  endpoints['b'] = { keys: [jwks['b1']!], calls: 0, mode: 'ok' };
});

/** A manual clock, epoch ms. */
function clock(start = 1_700_000_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

function keySet(opts: { uri?: () => string; now?: () => number; timeoutMs?: number } = {}): RemoteKeySet {
  const uri = opts.uri ?? (() => `${origin}/a`);
  return createRemoteKeySet({
    jwksUri: async () => uri(),
    timeoutMs: opts.timeoutMs ?? 2000,
    ...(opts.now ? { now: opts.now } : {}),
  });
}

const TOKEN = { payload: '', signature: '' } as FlattenedJWSInput;
/** Looks up the key for `kid` (ES256). */
const lookup = async (set: RemoteKeySet, kid: string) => set.getKey({ alg: 'ES256', kid }, TOKEN);

async function expectNoKey(set: RemoteKeySet, kid: string): Promise<void> {
  await expect(lookup(set, kid)).rejects.toBeInstanceOf(joseErrors.JWKSNoMatchingKey);
}

describe('remote key set', () => {
  it('fetches on first use only, then answers from the fetched set', async () => {
    const set = keySet();
    expect(set.isPublished('k1')).toBeUndefined();
    expect(endpoints['a']!.calls).toBe(0); // nothing fetched before the first lookup
    const key = await lookup(set, 'k1');
    expect((key as CryptoKey).type).toBe('public');
    await lookup(set, 'k1');
    expect(endpoints['a']!.calls).toBe(1);
    expect(set.isPublished('k1')).toBe(true);
    expect(set.isPublished('k2')).toBe(false);
    expect(set.isPublished(undefined)).toBeUndefined();
  });

  it('refetches a set older than the max age (injectable clock), and not before', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    await lookup(set, 'k1');
    endpoints['a']!.keys = [jwks['k2']!];
    c.advance(JWKS_MAX_AGE_MS - 1);
    await lookup(set, 'k1');
    expect(endpoints['a']!.calls).toBe(1);
    expect(set.isPublished('k1')).toBe(true);
    c.advance(1);
    // The refetch happens before the lookup: k2 is there, k1 is gone.
    await lookup(set, 'k2');
    expect(endpoints['a']!.calls).toBe(2);
    expect(set.isPublished('k1')).toBe(false);
    expect(set.isPublished('k2')).toBe(true);
  });

  it('keeps the old set when a max-age refetch fails, and tries again only after the cooldown', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    await lookup(set, 'k1');
    endpoints['a']!.mode = 'status:500';
    c.advance(JWKS_MAX_AGE_MS);
    await expect(lookup(set, 'k1')).resolves.toBeDefined();
    expect(endpoints['a']!.calls).toBe(2);
    // No retry storm while the JWKS endpoint is down.
    for (let i = 0; i < 5; i++) await lookup(set, 'k1');
    expect(endpoints['a']!.calls).toBe(2);
    expect(set.isPublished('k1')).toBe(true);
    endpoints['a']!.mode = 'ok';
    endpoints['a']!.keys = [jwks['k1']!, jwks['k2']!];
    c.advance(UNKNOWN_KID_COOLDOWN_MS);
    await lookup(set, 'k1');
    expect(endpoints['a']!.calls).toBe(3);
    expect(set.isPublished('k2')).toBe(true);
  });

  it('refetches for an unknown kid at once after the initial fetch, then at most once per 30 s', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    await lookup(set, 'k1');
    // Rotation right after start: the initial fetch does not open the window.
    endpoints['a']!.keys = [jwks['k1']!, jwks['k2']!];
    c.advance(1000);
    await expect(lookup(set, 'k2')).resolves.toBeDefined();
    expect(endpoints['a']!.calls).toBe(2);
    // That refetch opened the window: a further new key and a flood of random kids fetch nothing.
    endpoints['a']!.keys = [jwks['k1']!, jwks['k2']!, jwks['k3']!];
    c.advance(5000);
    await expectNoKey(set, 'k3');
    for (let i = 0; i < 20; i++) await expectNoKey(set, `random-${i}`);
    expect(endpoints['a']!.calls).toBe(2);
    expect(set.isPublished('k3')).toBe(false);
    c.advance(UNKNOWN_KID_COOLDOWN_MS - 5000 - 1);
    await expectNoKey(set, 'k3');
    expect(endpoints['a']!.calls).toBe(2);
    c.advance(1);
    await expect(lookup(set, 'k3')).resolves.toBeDefined();
    expect(endpoints['a']!.calls).toBe(3);
    // A kid still unknown after the refetch is refused without another fetch.
    await expectNoKey(set, 'still-unknown');
    expect(endpoints['a']!.calls).toBe(3);
  });

  it('a max-age refetch does not open the unknown-kid window either', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    await lookup(set, 'k1');
    c.advance(JWKS_MAX_AGE_MS);
    await lookup(set, 'k1');
    expect(endpoints['a']!.calls).toBe(2);
    endpoints['a']!.keys = [jwks['k2']!];
    c.advance(1000);
    await expect(lookup(set, 'k2')).resolves.toBeDefined();
    expect(endpoints['a']!.calls).toBe(3);
  });

  it('concurrent lookups share one in-flight fetch (first fetch and unknown-kid refetch)', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    let open!: () => void;
    endpoints['a']!.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const first = Array.from({ length: 10 }, () => lookup(set, 'k1'));
    // Wait (bounded) until the single request reached the server, then let it answer.
    for (let i = 0; i < 200 && endpoints['a']!.calls === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(endpoints['a']!.calls).toBe(1);
    open();
    await Promise.all(first);
    expect(endpoints['a']!.calls).toBe(1);

    endpoints['a']!.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    endpoints['a']!.keys = [jwks['k1']!, jwks['k2']!, jwks['k3']!];
    // Different unknown kids at once: one refetch serves them all.
    const rotated = [
      ...Array.from({ length: 5 }, () => lookup(set, 'k2')),
      ...Array.from({ length: 5 }, () => lookup(set, 'k3')),
    ];
    for (let i = 0; i < 200 && endpoints['a']!.calls === 1; i++) await new Promise((r) => setTimeout(r, 5));
    open();
    await expect(Promise.all(rotated)).resolves.toHaveLength(10);
    expect(endpoints['a']!.calls).toBe(2);
  });

  it('a changed JWKS URI (rediscovery) starts over: fetch, set and unknown-kid window', async () => {
    const c = clock();
    let uri = `${origin}/a`;
    const set = keySet({ now: c.now, uri: () => uri });
    await lookup(set, 'k1');
    await expectNoKey(set, 'b1'); // unknown-kid refetch on a: the window is open for a
    expect(endpoints['a']!.calls).toBe(2);
    uri = `${origin}/b`;
    await expect(lookup(set, 'b1')).resolves.toBeDefined();
    expect(endpoints['b']!.calls).toBe(1);
    expect(set.isPublished('k1')).toBe(false);
    expect(set.isPublished('b1')).toBe(true);
    // The new URI has its own window: an unknown kid refetches at once.
    endpoints['b']!.keys = [jwks['b1']!, jwks['k2']!];
    await expect(lookup(set, 'k2')).resolves.toBeDefined();
    expect(endpoints['b']!.calls).toBe(2);
    expect(endpoints['a']!.calls).toBe(2);
  });

  it.each([
    ['HTTP 500', 'status:500'],
    ['not a JWK Set', 'not-a-jwks'],
  ] as const)(
    'a first fetch that fails (%s) is JwksUnavailable, and the next lookup tries again',
    async (_, mode) => {
      const set = keySet();
      endpoints['a']!.mode = mode;
      await expect(lookup(set, 'k1')).rejects.toBeInstanceOf(JwksUnavailable);
      expect(set.isPublished('k1')).toBeUndefined();
      endpoints['a']!.mode = 'ok';
      await expect(lookup(set, 'k1')).resolves.toBeDefined();
      expect(endpoints['a']!.calls).toBe(2);
    },
  );

  it('a JWKS endpoint that does not answer within timeoutMs is JwksUnavailable', async () => {
    endpoints['a']!.mode = 'hang';
    const set = keySet({ timeoutMs: 200 });
    const err = await lookup(set, 'k1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JwksUnavailable);
    expect((err as Error).message).toMatch(/timed out/);
  });

  it('an unknown-kid refetch that fails is JwksUnavailable ("could not ask"), the old set stays', async () => {
    const c = clock();
    const set = keySet({ now: c.now });
    await lookup(set, 'k1');
    endpoints['a']!.mode = 'status:500';
    await expect(lookup(set, 'k2')).rejects.toBeInstanceOf(JwksUnavailable);
    await expect(lookup(set, 'k1')).resolves.toBeDefined();
    // The failed refetch opened the window like any unknown-kid refetch.
    await expectNoKey(set, 'k3');
    expect(endpoints['a']!.calls).toBe(2);
  });

  it('a URI provider failure is TokenServiceUnavailable: passed through, or bad_answer (502)', async () => {
    const down = createRemoteKeySet({
      jwksUri: async () => {
        throw new TokenServiceUnavailable('unreachable');
      },
      timeoutMs: 1000,
    });
    const e1 = await lookup(down, 'k1').catch((e: unknown) => e);
    expect((e1 as TokenServiceUnavailable).status).toBe(503);
    const noUri = createRemoteKeySet({
      jwksUri: async () => {
        throw new Error('the token service metadata has no jwks_uri');
      },
      timeoutMs: 1000,
    });
    const e2 = await lookup(noUri, 'k1').catch((e: unknown) => e);
    expect(e2).toBeInstanceOf(TokenServiceUnavailable);
    expect((e2 as TokenServiceUnavailable).status).toBe(502);
  });
});
