import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import {
  type DevClient,
  type DevTokenService,
  startDevTokenService,
} from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import type { GatewayProcess } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';

/**
 * What the cluster-scale cache tests (issue 4) share: secrets, a real oidc-provider token service,
 * gateway configurations, readiness waits, access-log lookups, process memory and Redis key
 * naming. Each test file starts its own redis-server, token service and gateway processes.
 */

export const GW_SECRET = 'cluster-gw-introspection-secret-0123456789';
/** PHANTOM_CACHE_KEY: the same on every replica of one test file. */
export const CACHE_KEY = 'cluster-test-cache-key-'.padEnd(48, 'q');
export const ADMIN_TOKEN = 'cluster-admin-token-0123456789abcdef';
export const GATEWAY_ENV = { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, ADMIN_TOKEN };
export const MINT_ISSUER = 'https://gateway.cluster.test';
export const KEY_PREFIX = 'phantom:';

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** A real oidc-provider token service; `phantom-gateway` (secret GW_SECRET) may introspect every token. */
export function startOidcTokenService(clients: DevClient[], scopes: string[]): Promise<DevTokenService> {
  return freePort().then((port) =>
    startDevTokenService({
      host: '127.0.0.1',
      port,
      clients: [{ client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] }, ...clients],
      scopes,
      introspectionClientId: 'phantom-gateway',
      accessTokenTtlSeconds: 600,
    }),
  );
}

/**
 * A mint-mode gateway configuration against `ts` (introspection endpoint given: no discovery, ready
 * at once) with `cache.redis` at `redisUrl` and one protected route `/api/invoices` (invoice_read).
 */
export function mintConfig(opts: {
  ts: DevTokenService;
  keysFile: string;
  redisUrl: string;
  upstream: string;
  redis?: Record<string, unknown>;
  cache?: Record<string, unknown>;
  admin?: Record<string, unknown>;
  timeoutMs?: number;
}): Record<string, unknown> {
  return {
    tokenService: {
      issuer: opts.ts.issuer,
      introspectionEndpoint: opts.ts.introspectionEndpoint,
      clientId: 'phantom-gateway',
      clientSecret: '${GW_SECRET}',
      mode: 'mint',
      timeoutMs: opts.timeoutMs ?? 2000,
    },
    jwt: { mint: { issuer: MINT_ISSUER, signingKeysFile: opts.keysFile, lifetimeSeconds: 300 } },
    cache: { redis: { url: opts.redisUrl, ...opts.redis }, ...opts.cache },
    ...(opts.admin !== undefined ? { admin: opts.admin } : {}),
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices' },
        upstream: opts.upstream,
        scopes: ['invoice_read'],
      },
    ],
  };
}

export interface Readyz {
  status: number;
  redis: string | undefined;
}

export async function readyz(gw: GatewayProcess, timeoutMs = 5000): Promise<Readyz> {
  const res = await request(`${gw.adminUrl}/readyz`, { timeoutMs });
  let redis: string | undefined;
  try {
    redis = String(res.json()['redis']);
  } catch {
    redis = undefined;
  }
  return { status: res.status, redis };
}

/** Waits (bounded) until /readyz is 200 and reports the wanted Redis state. */
export async function waitReady(gw: GatewayProcess, redisState = 'ready', timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: Readyz | string = 'no answer';
  for (let i = 0; i < 1000 && Date.now() < deadline; i++) {
    try {
      last = await readyz(gw, 2000);
      if (last.status === 200 && last.redis === redisState) return;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(25);
  }
  throw new Error(`gateway ${gw.url} not ready with redis ${redisState}: ${JSON.stringify(last)}`);
}

/** The `cache` field (l1|l2|introspection|none) of the access line of one request, waiting for it (bounded). */
export async function cacheLevel(gw: GatewayProcess, res: SimpleResponse, timeoutMs = 5000): Promise<string> {
  const id = String(res.headers['x-request-id']);
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 500 && Date.now() < deadline; i++) {
    const line = gw.logs().find((l) => l['msg'] === 'request' && l['requestId'] === id);
    if (line !== undefined) return String(line['cache']);
    await sleep(10);
  }
  throw new Error(`no access line for request ${id}`);
}

/** Resident memory of a process in KiB (`VmRSS` of /proc/<pid>/status). */
export function rssKb(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** The gateway's cache tag of a token: HMAC-SHA-256(PHANTOM_CACHE_KEY, token), base64url (README "Keys"). */
export function cacheTag(token: string): string {
  return createHmac('sha256', CACHE_KEY).update(token, 'utf8').digest('base64url');
}

/** Every key in Redis (SCAN, bounded). */
export async function scanAll(client: Redis, match = '*'): Promise<string[]> {
  const keys = new Set<string>();
  let cursor = '0';
  for (let i = 0; i < 100_000; i++) {
    const [next, batch] = await client.scan(cursor, 'MATCH', match, 'COUNT', 1000);
    for (const k of batch) keys.add(k);
    cursor = next;
    if (cursor === '0') return [...keys];
  }
  throw new Error('SCAN did not finish');
}

/** Races `p` against a bound; rejects with a clear message when the bound passes. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}
