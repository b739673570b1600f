import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateSigningKeysFile } from '../../src/jwt/signing-keys.ts';
import { startDevTokenService } from './dev-token-service.ts';
import { freePort } from './free-port.ts';
import type { GatewayProcess } from './gateway-process.ts';
import { request } from './http.ts';
import { type EchoUpstream, startEchoUpstream } from './upstream.ts';

/**
 * What the HA tests (Sentinel, Cluster) share: a real oidc-provider token service issuing opaque
 * tokens, an echo upstream, mint-mode signing keys, a gateway configuration around a given
 * `cache.redis`, and a steady request loop across two gateway replicas.
 */
export const GW_SECRET = 'gw-introspection-secret-0123456789';
export const CACHE_KEY = 'ha-test-cache-key-'.padEnd(48, 'k');
export const GATEWAY_ENV = { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY };

type TokenService = Awaited<ReturnType<typeof startDevTokenService>>;

export interface HaFixture {
  ts: TokenService;
  up: EchoUpstream;
  /** A gateway configuration (mint mode, one protected route) using `redis` as `cache.redis`. */
  config(redis: Record<string, unknown>): Record<string, unknown>;
  /** A fresh opaque access token with scope invoice_read. */
  token(): Promise<string>;
  close(): Promise<void>;
}

export async function startHaFixture(): Promise<HaFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'phantom-ha-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  const [ts, up] = await Promise.all([
    startDevTokenService({
      host: '127.0.0.1',
      port: await freePort(),
      clients: [
        { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'reader', client_secret: 'reader-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: 'phantom-gateway',
      accessTokenTtlSeconds: 600,
    }),
    startEchoUpstream(),
  ]);
  return {
    ts,
    up,
    config: (redis) => ({
      tokenService: {
        issuer: ts.issuer,
        clientId: 'phantom-gateway',
        clientSecret: '${GW_SECRET}',
        mode: 'mint',
        timeoutMs: 2000,
      },
      jwt: { mint: { issuer: 'https://gateway.test', signingKeysFile: keysFile, lifetimeSeconds: 300 } },
      cache: { redis },
      routes: [
        {
          name: 'invoices',
          match: { pathPrefix: '/api/invoices' },
          upstream: up.url,
          scopes: ['invoice_read'],
        },
      ],
    }),
    token: async () => (await ts.issueToken('reader', 'reader-secret', 'invoice_read')).access_token,
    async close() {
      await Promise.all([ts.close(), up.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface LoopSample {
  /** Epoch ms when the request was sent. */
  at: number;
  /** 'A' fills the cache (first use of the token), 'B' reads it through Redis. */
  replica: 'A' | 'B';
  status: number;
  requestId: string;
  ms: number;
}

export interface SteadyLoop {
  /** Stops the loop (waits for the requests in flight) and returns every sample. */
  stop(): Promise<LoopSample[]>;
  /** Samples so far. */
  samples(): readonly LoopSample[];
}

/**
 * Each iteration: a fresh token, one request at replica A (introspection, fills L1 of A and Redis),
 * then one at replica B — an L2 hit when Redis works, an introspection when Redis missed.
 * `concurrency` workers, `pauseMs` between iterations, never longer than `maxMs`. A failed request
 * (connection error, timeout) is a sample with status 0.
 */
export function startSteadyLoop(opts: {
  a: GatewayProcess;
  b: GatewayProcess;
  token: () => Promise<string>;
  concurrency?: number;
  pauseMs?: number;
  maxMs?: number;
}): SteadyLoop {
  const samples: LoopSample[] = [];
  let stopped = false;
  const deadline = Date.now() + (opts.maxMs ?? 30_000);
  const one = async (gw: GatewayProcess, replica: 'A' | 'B', token: string) => {
    const at = Date.now();
    try {
      const res = await request(`${gw.url}/api/invoices/1`, {
        headers: { authorization: `Bearer ${token}` },
        timeoutMs: 10_000,
      });
      samples.push({
        at,
        replica,
        status: res.status,
        requestId: String(res.headers['x-request-id']),
        ms: Date.now() - at,
      });
    } catch {
      samples.push({ at, replica, status: 0, requestId: '', ms: Date.now() - at });
    }
  };
  const worker = async () => {
    while (!stopped && Date.now() < deadline) {
      const token = await opts.token();
      await one(opts.a, 'A', token);
      await one(opts.b, 'B', token);
      await sleep(opts.pauseMs ?? 10);
    }
  };
  const workers = Array.from({ length: opts.concurrency ?? 4 }, worker);
  return {
    samples: () => samples,
    async stop() {
      stopped = true;
      await Promise.all(workers);
      return samples;
    },
  };
}

/** The `cache` field of the access line of each request id (looked up in the gateway's logs). */
export function cacheLevels(gw: GatewayProcess): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of gw.logs()) {
    if (line['msg'] === 'request' && typeof line['requestId'] === 'string') {
      map.set(line['requestId'], String(line['cache']));
    }
  }
  return map;
}

/** Epoch ms of each "redis state changed" line of a gateway, with from/to. */
export function redisStateChanges(gw: GatewayProcess): Array<{ at: number; from: string; to: string }> {
  return gw
    .logs()
    .filter((l) => l['msg'] === 'redis state changed')
    .map((l) => ({ at: Date.parse(String(l['time'])), from: String(l['from']), to: String(l['to']) }));
}
