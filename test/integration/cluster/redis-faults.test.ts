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
  bearer,
  cacheLevel,
  GATEWAY_ENV,
  mintConfig,
  readyz,
  startOidcTokenService,
  waitReady,
  within,
} from './cluster-fixture.ts';

/**
 * Issue 4, Redis faults: a steady request loop at one real gateway process (cached tokens and
 * fresh ones that need introspection) while the real redis-server is killed and restarted, paused
 * with CLIENT PAUSE, blocked by DEBUG SLEEP, and frozen with SIGSTOP. No request fails because of
 * it, none waits longer than the Redis command timeout plus the introspection time (+ margin),
 * /readyz stays 200 and reports the Redis state, and afterwards the gateway uses Redis again: an
 * entry written by replica A is read by replica B from Redis without a new introspection.
 */

const COMMAND_TIMEOUT_MS = 50;
const INTROSPECTION_TIMEOUT_MS = 2000;
/** Issue 4: "no request slower than the Redis timeout plus introspection time" (+ a generous margin). */
const LATENCY_BOUND_MS = COMMAND_TIMEOUT_MS + INTROSPECTION_TIMEOUT_MS + 1000;
const POOL_SIZE = 20;
/** A request is started every REQUEST_EVERY_MS (at most MAX_IN_FLIGHT at once). */
const REQUEST_EVERY_MS = 15;
const MAX_IN_FLIGHT = 30;
/** A fresh token (a miss everywhere: Redis lookup, lock, introspection, Redis write) this often. */
const FRESH_EVERY_MS = 100;
/** Hard bound of one loop. */
const LOOP_MAX_MS = 15_000;
const CLIENT = { id: 'faults-client', secret: 'faults-secret-0001' };

let ts: DevTokenService;
let redis: RedisServerHandle;
let up: EchoUpstream;
let dir: string;
/** The gateway under the request loop. */
let a: GatewayProcess;
/** A second replica: reads what A wrote to Redis (the recovery check). */
let b: GatewayProcess;
const pool: string[] = [];
const summaries: string[] = [];

const issue = async () => (await ts.issueToken(CLIENT.id, CLIENT.secret, 'invoice_read')).access_token;

/** A separate client for the fault commands (no command timeout; it must not be the gateway's). */
function controlClient(): Redis {
  return new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 2000, retryStrategy: () => 200 });
}

interface Sample {
  /** ms since the loop started. */
  at: number;
  ms: number;
  status: number;
  fresh: boolean;
  error?: string;
}

interface LoopReport {
  samples: Sample[];
  ready: Array<{ at: number; status: number; redis: string | undefined; error?: string }>;
  faultFrom: number;
  faultTo: number;
}

/**
 * Runs the request loop at A, the /readyz poller and the fresh-token feeder; after one second of
 * steady traffic runs `fault` (bounded), then keeps the traffic going for 1.5 s more. Everything
 * is bounded by LOOP_MAX_MS and by request counts.
 */
async function underFault(fault: () => Promise<void>): Promise<LoopReport> {
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  let stop = false;
  const samples: Sample[] = [];
  const ready: LoopReport['ready'] = [];
  const inFlight = new Set<Promise<void>>();

  const one = (token: string, fresh: boolean): Promise<void> => {
    const started = now();
    // A new connection per request (no keep-alive agent): an idle keep-alive connection that the
    // gateway closes (keepAliveTimeout 5 s) just as it is reused would fail a request for a reason
    // that has nothing to do with Redis.
    const p = request(`${a.url}/api/invoices/steady`, { headers: bearer(token), timeoutMs: 10_000 })
      .then(
        (res) => {
          const sample: Sample = { at: started, ms: now() - started, status: res.status, fresh };
          if (res.status !== 200) sample.error = res.body.slice(0, 200);
          samples.push(sample);
        },
        (err: Error) => {
          samples.push({ at: started, ms: now() - started, status: 0, fresh, error: err.message });
        },
      )
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
    return p;
  };

  const requests = (async () => {
    const maxRequests = Math.ceil(LOOP_MAX_MS / REQUEST_EVERY_MS);
    for (let i = 0; i < maxRequests && !stop && now() < LOOP_MAX_MS; i++) {
      if (inFlight.size < MAX_IN_FLIGHT) void one(pool[i % pool.length]!, false);
      await sleep(REQUEST_EVERY_MS);
    }
  })();

  const fresh = (async () => {
    const max = Math.ceil(LOOP_MAX_MS / FRESH_EVERY_MS);
    for (let i = 0; i < max && !stop && now() < LOOP_MAX_MS; i++) {
      const started = now();
      const token = await issue();
      await one(token, true);
      // The fresh token joins the pool (replacing the oldest): later requests hit the cache.
      pool.push(token);
      if (pool.length > POOL_SIZE) pool.shift();
      await sleep(Math.max(0, FRESH_EVERY_MS - (now() - started)));
    }
  })();

  const readiness = (async () => {
    const max = Math.ceil(LOOP_MAX_MS / 50);
    for (let i = 0; i < max && !stop && now() < LOOP_MAX_MS; i++) {
      const at = now();
      try {
        const r = await readyz(a, 5000);
        ready.push({ at, ...r });
      } catch (err) {
        ready.push({ at, status: 0, redis: undefined, error: (err as Error).message });
      }
      await sleep(50);
    }
  })();

  await sleep(1000);
  const faultFrom = now();
  let faultError: unknown;
  try {
    await within(fault(), 10_000, 'the fault');
  } catch (err) {
    faultError = err;
  }
  const faultTo = now();
  await sleep(1500);
  stop = true;
  await within(Promise.all([requests, fresh, readiness]), 15_000, 'the loops to stop');
  await within(Promise.all([...inFlight]), 15_000, 'the last requests');
  if (faultError !== undefined) throw faultError;
  return { samples, ready, faultFrom, faultTo };
}

/** Every check of one fault run, with a summary line for the log. */
async function expectUnharmed(name: string, r: LoopReport): Promise<void> {
  const failed = r.samples.filter((s) => s.status < 200 || s.status > 299);
  const slow = r.samples.filter((s) => s.ms > LATENCY_BOUND_MS);
  const notReady = r.ready.filter((s) => s.status !== 200);
  const during = r.samples.filter((s) => s.at >= r.faultFrom && s.at <= r.faultTo);
  const maxMs = Math.max(...r.samples.map((s) => s.ms));
  const maxFreshMs = Math.max(0, ...r.samples.filter((s) => s.fresh).map((s) => s.ms));
  const states = [...new Set(r.ready.map((s) => s.redis))];
  for (const s of failed) {
    console.log(
      `redis faults — ${name}: request at ${Math.round(s.at)} ms failed: ${s.status} ${s.error ?? ''}`,
    );
  }
  const summary =
    `${name}: ${r.samples.length} requests (${r.samples.filter((s) => s.fresh).length} with fresh tokens, ` +
    `${during.length} during the ${Math.round(r.faultTo - r.faultFrom)} ms fault), ` +
    `${failed.length} non-2xx, slowest ${Math.round(maxMs)} ms (fresh ${Math.round(maxFreshMs)} ms), ` +
    `/readyz: ${r.ready.length} polls, ${notReady.length} not 200, redis states seen ${JSON.stringify(states)}`;
  summaries.push(summary);
  console.log(`redis faults — ${summary}`);
  expect(
    failed.map(
      (s) =>
        `${s.status} ${s.error ?? ''} at ${Math.round(s.at)} ms (fault ${Math.round(r.faultFrom)}–${Math.round(r.faultTo)})`,
    ),
  ).toEqual([]);
  expect(slow.map((s) => `${Math.round(s.ms)} ms at ${Math.round(s.at)}`)).toEqual([]);
  expect(notReady).toEqual([]);
  expect(r.samples.length).toBeGreaterThan(100);
  expect(during.length).toBeGreaterThan(0);
  expect(during.some((s) => s.fresh)).toBe(true);
}

/**
 * After the fault: both replicas report Redis ready, then a new token introspected at A is
 * served by B from Redis (no second introspection).
 */
async function expectRedisUsedAgain(name: string): Promise<void> {
  await Promise.all([waitReady(a, 'ready', 15_000), waitReady(b, 'ready', 15_000)]);
  const token = await issue();
  const before = ts.introspectionCount();
  const atA = await request(`${a.url}/api/invoices/after`, { headers: bearer(token) });
  expect(atA.status).toBe(200);
  expect(await cacheLevel(a, atA)).toBe('introspection');
  const atB = await request(`${b.url}/api/invoices/after`, { headers: bearer(token) });
  expect(atB.status).toBe(200);
  expect(await cacheLevel(b, atB), `${name}: replica B reads A's entry from Redis`).toBe('l2');
  expect(ts.introspectionCount() - before).toBe(1);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-faults-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  [ts, redis, up] = await Promise.all([
    startOidcTokenService(
      [{ client_id: CLIENT.id, client_secret: CLIENT.secret, scope: 'invoice_read' }],
      ['invoice_read'],
    ),
    startRedisServer({ extraArgs: ['--enable-debug-command', 'yes'] }),
    startEchoUpstream(),
  ]);
  const config = mintConfig({
    ts,
    keysFile,
    redisUrl: redis.url,
    upstream: up.url,
    redis: { commandTimeoutMs: COMMAND_TIMEOUT_MS },
    timeoutMs: INTROSPECTION_TIMEOUT_MS,
  });
  // Info level: the loops make thousands of requests; debug lines are not needed here.
  const env = { ...GATEWAY_ENV, LOG_LEVEL: 'info' };
  [a, b] = await Promise.all([startGateway(config, { env }), startGateway(config, { env })]);
  await Promise.all([a, b].map((g) => waitReady(g)));
  pool.push(...(await Promise.all(Array.from({ length: POOL_SIZE }, issue))));
  for (const t of pool) {
    expect((await request(`${a.url}/api/invoices/warm`, { headers: bearer(t) })).status).toBe(200);
  }
}, 60_000);

afterAll(async () => {
  if (summaries.length > 0) console.log(`redis faults summary:\n  ${summaries.join('\n  ')}`);
  await Promise.all([a, b].map((g) => g?.stop()));
  await Promise.all([ts?.close(), redis?.stop(), up?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('a steady request loop while Redis fails', () => {
  it('Redis SIGKILLed, then restarted: no failed or slow request, /readyz 200 and reports redis down', async () => {
    let downSeenAt: number | undefined;
    const r = await underFault(async () => {
      await redis.kill();
      const killedAt = performance.now();
      // Down for a while (bounded), watching /readyz report it.
      for (let i = 0; i < 100 && performance.now() - killedAt < 1500; i++) {
        const s = await readyz(a);
        if (s.redis === 'down' && downSeenAt === undefined) downSeenAt = performance.now() - killedAt;
        await sleep(50);
      }
      await redis.restart();
    });
    await expectUnharmed('SIGKILL + restart', r);
    expect(downSeenAt, '/readyz reported redis down while it was dead').toBeDefined();
    const downPolls = r.ready.filter((s) => s.at >= r.faultFrom && s.at <= r.faultTo && s.redis === 'down');
    expect(downPolls.length).toBeGreaterThan(0);
    await expectRedisUsedAgain('SIGKILL + restart');
  }, 60_000);

  it('CLIENT PAUSE 2000 ALL from another client: no failed or slow request, /readyz 200', async () => {
    const ctl = controlClient();
    try {
      const r = await underFault(async () => {
        expect(await within(ctl.call('CLIENT', 'PAUSE', '2000', 'ALL'), 3000, 'CLIENT PAUSE')).toBe('OK');
        await sleep(2300);
      });
      await expectUnharmed('CLIENT PAUSE 2000 ALL', r);
      await expectRedisUsedAgain('CLIENT PAUSE');
    } finally {
      ctl.disconnect();
    }
  }, 60_000);

  it('DEBUG SLEEP 1.5 from another client: no failed or slow request, /readyz 200', async () => {
    const ctl = controlClient();
    try {
      await within(ctl.ping(), 3000, 'control client PING');
      const r = await underFault(async () => {
        // Redis is blocked for 1.5 s; its reply is awaited for at most 5 s.
        await within(ctl.call('DEBUG', 'SLEEP', '1.5'), 5000, 'DEBUG SLEEP');
      });
      await expectUnharmed('DEBUG SLEEP 1.5', r);
      await expectRedisUsedAgain('DEBUG SLEEP');
    } finally {
      ctl.disconnect();
    }
  }, 60_000);

  it('redis-server SIGSTOPped for 2 s, then SIGCONT: no failed or slow request, /readyz 200', async () => {
    const r = await underFault(async () => {
      redis.pause();
      try {
        await sleep(2000);
      } finally {
        redis.resume();
      }
    });
    await expectUnharmed('SIGSTOP 2 s + SIGCONT', r);
    await expectRedisUsedAgain('SIGSTOP/SIGCONT');
  }, 60_000);
});
