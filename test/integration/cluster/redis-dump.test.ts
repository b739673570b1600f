import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import type { DevTokenService } from '../../helpers/dev-token-service.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';
import {
  ADMIN_TOKEN,
  bearer,
  cacheLevel,
  GATEWAY_ENV,
  KEY_PREFIX,
  MINT_ISSUER,
  mintConfig,
  scanAll,
  startOidcTokenService,
  waitReady,
} from './cluster-fixture.ts';

/**
 * Issue 4, "a dump of Redis yields no token, no JWT and no claims": after real traffic through two
 * replicas (active tokens of two clients, unknown and revoked tokens, a purge), every key and
 * every value in Redis — and every command the gateways sent, seen through MONITOR — is free of
 * opaque tokens, JWTs and claim values, and every key has a TTL.
 */

const MAX_TTL_SECONDS = 120;
const NEGATIVE_TTL_SECONDS = 60;
const ALPHA = { id: 'dump-client-alpha', secret: 'dump-alpha-secret-01' };
const BETA = { id: 'dump-client-beta', secret: 'dump-beta-secret-02' };
const EXTRA_SCOPE = 'ledger_export_marker_scope';

let ts: DevTokenService;
let redis: RedisServerHandle;
let up: EchoUpstream;
let dir: string;
let a: GatewayProcess;
let b: GatewayProcess;
let client: Redis;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-dump-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  [ts, redis, up] = await Promise.all([
    startOidcTokenService(
      [
        { client_id: ALPHA.id, client_secret: ALPHA.secret, scope: `invoice_read ${EXTRA_SCOPE}` },
        { client_id: BETA.id, client_secret: BETA.secret, scope: 'invoice_read' },
      ],
      ['invoice_read', EXTRA_SCOPE],
    ),
    startRedisServer(),
    startEchoUpstream(),
  ]);
  const config = mintConfig({
    ts,
    keysFile,
    redisUrl: redis.url,
    upstream: up.url,
    cache: { maxTtlSeconds: MAX_TTL_SECONDS, negativeTtlSeconds: NEGATIVE_TTL_SECONDS },
    admin: { token: '${ADMIN_TOKEN}' },
  });
  [a, b] = await Promise.all([
    startGateway(config, { env: GATEWAY_ENV }),
    startGateway(config, { env: GATEWAY_ENV }),
  ]);
  await Promise.all([a, b].map((g) => waitReady(g)));
  client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
}, 60_000);

afterAll(async () => {
  client?.disconnect();
  await Promise.all([a, b].map((g) => g?.stop()));
  await Promise.all([ts?.close(), redis?.stop(), up?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Every value stored under `key`, as text, whatever its type. */
async function valuesOf(key: string): Promise<{ type: string; values: string[] }> {
  const type = await client.type(key);
  switch (type) {
    case 'string':
      return { type, values: [(await client.get(key)) ?? ''] };
    case 'set':
      return { type, values: await client.smembers(key) };
    case 'hash':
      return { type, values: Object.entries(await client.hgetall(key)).flat() };
    case 'list':
      return { type, values: await client.lrange(key, 0, -1) };
    case 'zset':
      return { type, values: await client.zrange(key, '0', '-1', 'WITHSCORES') };
    default:
      return { type, values: [] };
  }
}

/** The plain text and, for base64url-looking parts, the decoded bytes (latin1) of a string. */
function readings(s: string): string[] {
  const out = [s];
  for (const part of s.split(/[^A-Za-z0-9_-]+/)) {
    if (part.length >= 16) out.push(Buffer.from(part, 'base64url').toString('latin1'));
  }
  return out;
}

describe('what Redis holds after traffic', () => {
  it('no token, no JWT, no claim value in any key, value or command; every key has a TTL', async () => {
    const monitor = await client.duplicate().monitor();
    const commands: string[][] = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      commands.push(args);
    });
    await sleep(100); // MONITOR is in place

    const issue = async (c: { id: string; secret: string }, scope: string) =>
      (await ts.issueToken(c.id, c.secret, scope)).access_token;
    const active = [
      ...(await Promise.all([0, 1, 2, 3].map(() => issue(ALPHA, `invoice_read ${EXTRA_SCOPE}`)))),
      ...(await Promise.all([0, 1].map(() => issue(BETA, 'invoice_read')))),
    ];
    const unknown = Array.from({ length: 5 }, () => randomBytes(32).toString('base64url'));
    const revokedBeforeUse = await issue(BETA, 'invoice_read');
    const revokedAfterUse = await issue(BETA, 'invoice_read');
    const get = (gw: GatewayProcess, t: string) =>
      request(`${gw.url}/api/invoices/dump`, { headers: bearer(t), timeoutMs: 10_000 });

    for (const t of active) {
      const first = await get(a, t);
      expect(first.status).toBe(200);
      expect(await cacheLevel(a, first)).toBe('introspection');
      const second = await get(b, t);
      expect(second.status).toBe(200);
      expect(await cacheLevel(b, second)).toBe('l2');
    }
    expect((await get(a, revokedAfterUse)).status).toBe(200);
    await ts.revoke(revokedAfterUse);
    await ts.revoke(revokedBeforeUse);
    const purge = await request(`${a.adminUrl}/cache/purge`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ token: revokedAfterUse }),
    });
    expect(purge.status).toBe(200);
    const inactive = [...unknown, revokedBeforeUse, revokedAfterUse];
    for (const t of inactive) {
      expect((await get(a, t)).status).toBe(401);
      expect((await get(b, t)).status).toBe(401);
    }
    await sleep(200);
    monitor.disconnect();

    // What must never be readable: the tokens, the JWTs (whole, header, payload) and claim values.
    const jwts = [
      ...new Set(
        up.requests
          .map((r) => String(r.headers.authorization).replace(/^Bearer /, ''))
          .filter((j) => j !== ''),
      ),
    ];
    expect(jwts.length).toBeGreaterThanOrEqual(active.length);
    const claimValues = new Set<string>();
    for (const jwt of jwts) {
      const [header, payload] = jwt.split('.') as [string, string];
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
      expect([ALPHA.id, BETA.id]).toContain(claims['sub']);
      for (const k of ['sub', 'client_id', 'jti', 'iss', 'aud']) claimValues.add(String(claims[k]));
      for (const scope of String(claims['scope']).split(' ')) claimValues.add(scope);
      claimValues.add(header);
      claimValues.add(payload);
    }
    expect(claimValues).toContain(EXTRA_SCOPE);
    expect(claimValues).toContain(MINT_ISSUER);
    const forbidden = [
      ...active,
      ...inactive,
      ...jwts,
      ...claimValues,
      ALPHA.id,
      BETA.id,
      'invoice_read',
      ts.issuer,
      'eyJ',
    ];
    const leaks = (text: string): string[] =>
      forbidden.filter((f) => readings(text).some((r) => r.includes(f)));

    // The detector itself finds a secret in plain text and base64url-encoded.
    expect(leaks(`x:${active[0]}:y`)).toContain(active[0]);
    expect(leaks(`v1.${Buffer.from(`..${jwts[0]}..`).toString('base64url')}`)).toContain(jwts[0]);
    expect(leaks(`{"sub":"${ALPHA.id}"}`)).toContain(ALPHA.id);

    // Every key, every value.
    const keys = await scanAll(client);
    const kinds = { jwt: 0, neg: 0, sub: 0, lock: 0 };
    const problems: string[] = [];
    const tag = '\\{[A-Za-z0-9_-]{43}\\}';
    const prefix = KEY_PREFIX.replace(/[:]/g, '\\:');
    for (const key of keys) {
      const { type, values } = await valuesOf(key);
      const pttl = await client.pttl(key);
      for (const f of leaks(key)) problems.push(`key ${key} contains ${f.slice(0, 12)}…`);
      for (const v of values)
        for (const f of leaks(v)) problems.push(`value of ${key} contains ${f.slice(0, 12)}…`);
      if (pttl <= 0) problems.push(`key ${key} has PTTL ${pttl}`);
      if (new RegExp(`^${prefix}${tag}:jwt(:[A-Za-z0-9_-]{16})?$`).test(key)) {
        kinds.jwt++;
        expect(type).toBe('string');
        expect(values[0]).toMatch(/^v1\.[A-Za-z0-9_-]+$/);
        expect(pttl).toBeLessThanOrEqual(MAX_TTL_SECONDS * 1000);
      } else if (new RegExp(`^${prefix}${tag}:neg$`).test(key)) {
        kinds.neg++;
        expect(type).toBe('string');
        expect(pttl).toBeLessThanOrEqual(NEGATIVE_TTL_SECONDS * 1000);
      } else if (new RegExp(`^${prefix}sub:${tag}$`).test(key)) {
        kinds.sub++;
        expect(type).toBe('set');
        for (const m of values) expect(m).toMatch(/^[A-Za-z0-9_-]{43}$/);
        expect(pttl).toBeLessThanOrEqual(MAX_TTL_SECONDS * 1000);
      } else if (new RegExp(`^${prefix}${tag}:lock`).test(key)) {
        kinds.lock++;
      } else {
        problems.push(`unexpected key ${key} (${type})`);
      }
    }
    // Every command the gateways sent (the pub/sub messages included).
    const sent = commands.filter((c) => c[0] !== 'monitor');
    for (const args of sent) {
      for (const arg of args)
        for (const f of leaks(arg)) problems.push(`command ${args[0]} carried ${f.slice(0, 12)}…`);
    }
    console.log(
      `redis dump: ${keys.length} keys (${JSON.stringify(kinds)}), ${sent.length} commands seen by MONITOR ` +
        `(${sent.filter((c) => c[0]?.toLowerCase() === 'publish').length} PUBLISH), ` +
        `${forbidden.length} secret strings searched, ${problems.length} problems`,
    );
    expect(problems).toEqual([]);
    // The traffic did reach Redis: one entry per active token (the purged one is gone), one verdict
    // per inactive token, one subject index per client.
    expect(kinds.jwt).toBe(active.length);
    expect(kinds.neg).toBe(inactive.length);
    expect(kinds.sub).toBe(2);
    expect(sent.length).toBeGreaterThan(0);
  });
});
