import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { type CurityStub, startCurityStub } from '../helpers/curity-stub.ts';
import { type GatewayProcess, startGateway, waitFor } from '../helpers/gateway-process.ts';
import { recordSecret } from '../helpers/leak-registry.ts';
import { type RedisServerHandle, startRedisServer } from '../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../helpers/upstream.ts';

/**
 * The fault suite's world and its request loop (issue 8 part 2): the REAL gateway process
 * (accept-jwt), a Curity-style token service stub reached through a TCP relay the test can close
 * (a refusing token service: a closed port), an echo upstream and, when asked, a real
 * redis-server. `runFaultLoop` sends a steady stream of requests — hot (cached) tokens and fresh
 * ones that need an introspection — while a fault is injected and removed; `checkFault` asserts
 * the five promises of each fault: statuses per SPEC §5, no request past its timeout (+ margin),
 * the process alive, no descriptor leak, recovery by itself.
 */

export const CLIENT_ID = 'faults-gateway';
export const GW_SECRET = 'faults-suite-gateway-secret-0123456789';
export const AUD = 'https://api.faults.test';
/** tokenService.timeoutMs: the bound of every introspection (SPEC §5: a timeout is 503). */
export const TS_TIMEOUT_MS = 1000;
/** routes[].timeoutMs of the main route: upstream inactivity → 504. */
export const ROUTE_TIMEOUT_MS = 1000;
/** cache.redis.commandTimeoutMs. */
export const REDIS_TIMEOUT_MS = 50;
/** Added to a configured timeout for the per-request bound: loaded CI machines, process scheduling. */
export const MARGIN_MS = 2000;
/** Descriptors the gateway may hold after recovery beyond its baseline (pooled keep-alive sockets). */
export const FD_SLACK = 8;
/** Hot (cached) tokens the loop cycles through. */
const HOT_TOKENS = 16;

/** A TCP relay in front of the token service: `refuse()` closes its port, `accept()` reopens it. */
export interface TcpRelay {
  port: number;
  url: string;
  refuse(): Promise<void>;
  accept(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpRelay(targetPort: number): Promise<TcpRelay> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream).pipe(client);
  });
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  await listen(0);
  const port = (server.address() as { port: number }).port;
  const closeAll = async () => {
    const closed = new Promise<void>((r) => (server.listening ? server.close(() => r()) : r()));
    for (const s of sockets) s.destroy();
    sockets.clear();
    await closed;
  };
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    refuse: closeAll,
    async accept() {
      // The port was ours a moment ago; a fresh bind can briefly fail: a few bounded tries.
      for (let i = 0; ; i++) {
        try {
          return await listen(port);
        } catch (err) {
          if (i >= 10) throw err;
          await sleep(100);
        }
      }
    },
    close: closeAll,
  };
}

export interface FaultEnv {
  stub: CurityStub;
  relay: TcpRelay;
  up: EchoUpstream;
  /** A TCP relay in front of `up` for route `/gone` (a refusing upstream: its port closed). */
  upRelay: TcpRelay;
  /** A second upstream for per-test behaviours (route `/slow`), so the loop's route stays healthy. */
  up2: EchoUpstream;
  redis: RedisServerHandle | undefined;
  gw: GatewayProcess;
  /** Tokens registered at the stub and already cached by the gateway. */
  hot: string[];
  /** Descriptors of the gateway after warm-up and settling. */
  baselineFds: number;
  /** A new registered token (not cached yet). */
  fresh(): string;
  close(): Promise<void>;
}

export interface FaultEnvOptions {
  redis?: boolean;
  /** cache.memory.maxEntries (small with Redis: hot tokens then come from L2). */
  l1Entries?: number;
  /** routes[].timeoutMs of route `/slow` (default ROUTE_TIMEOUT_MS). */
  slowRouteTimeoutMs?: number;
  /** Merged into the gateway's `listen` block (e.g. maxConnections). */
  listen?: Record<string, unknown>;
}

export async function startFaultEnv(opts: FaultEnvOptions = {}): Promise<FaultEnv> {
  const [stub, up, up2, redis] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
    startEchoUpstream(),
    opts.redis ? startRedisServer() : Promise.resolve(undefined),
  ]);
  const relay = await startTcpRelay(stub.port);
  const upRelay = await startTcpRelay(up.port);
  const config: Record<string, unknown> = {
    ...(opts.listen !== undefined ? { listen: opts.listen } : {}),
    tokenService: {
      issuer: stub.issuer,
      // Static endpoints (no discovery): introspection through the relay, JWKS directly.
      introspectionEndpoint: `${relay.url}/introspect`,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: TS_TIMEOUT_MS,
    },
    jwt: { audience: AUD, jwksUri: stub.jwksUri },
    cache: {
      ...(redis ? { redis: { url: redis.url, commandTimeoutMs: REDIS_TIMEOUT_MS } } : {}),
      ...(opts.l1Entries !== undefined ? { memory: { maxEntries: opts.l1Entries } } : {}),
      negativeTtlSeconds: 0,
    },
    routes: [
      {
        name: 'api',
        match: { pathPrefix: '/api' },
        upstream: up.url,
        scopes: ['read'],
        timeoutMs: ROUTE_TIMEOUT_MS,
      },
      {
        name: 'gone',
        match: { pathPrefix: '/gone' },
        upstream: upRelay.url,
        scopes: ['read'],
        timeoutMs: ROUTE_TIMEOUT_MS,
      },
      {
        name: 'slow',
        match: { pathPrefix: '/slow' },
        upstream: up2.url,
        scopes: ['read'],
        timeoutMs: opts.slowRouteTimeoutMs ?? ROUTE_TIMEOUT_MS,
      },
    ],
  };
  let gw: GatewayProcess;
  try {
    gw = await startGateway(config, {
      env: { GW_SECRET, PHANTOM_CACHE_KEY: randomBytes(32).toString('base64') },
    });
  } catch (err) {
    await Promise.all([stub.close(), up.close(), up2.close(), relay.close(), upRelay.close(), redis?.stop()]);
    throw err;
  }
  const fresh = () => {
    const t = stub.newToken();
    stub.register(t, { sub: `user-${t.slice(0, 6)}`, aud: AUD, scope: 'read' });
    recordSecret(t);
    return t;
  };
  const hot = Array.from({ length: HOT_TOKENS }, fresh);
  for (const t of hot) {
    const r = await send(gw, '/api/warm', t);
    expect(r.outcome).toBe('200');
  }
  const env: FaultEnv = {
    stub,
    relay,
    up,
    upRelay,
    up2,
    redis,
    gw,
    hot,
    baselineFds: await settledFds(gw.pid),
    fresh,
    async close() {
      await gw.stop();
      await Promise.all([
        stub.close(),
        up.close(),
        up2.close(),
        relay.close(),
        upRelay.close(),
        redis?.stop(),
      ]);
    },
  };
  return env;
}

/** Open file descriptors of a process (sockets, listeners, pipes, files). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * The descriptor count once pooled keep-alive sockets had their chance to close: polled until it
 * stops falling (bounded: keepAliveTimeout of the peers is 5 s).
 */
export async function settledFds(pid: number, maxMs = 8000): Promise<number> {
  let last = fdCount(pid);
  let stableFor = 0;
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline && stableFor < 1500) {
    await sleep(250);
    const n = fdCount(pid);
    stableFor = n >= last ? stableFor + 250 : 0;
    last = Math.min(last, n);
  }
  return last;
}

export interface Outcome {
  /** '200', '502', … ; '200-cut' (status line came, the body did not complete); 'error:<code>' (no answer). */
  outcome: string;
  retryAfter: string | undefined;
  bodyBytes: number;
}

/** One request on its own connection (no keep-alive), bounded at 20 s; never rejects. */
export function send(
  gw: GatewayProcess,
  path: string,
  token: string,
  opts: { timeoutMs?: number } = {},
): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      resolve(o);
    };
    const req = http.request(`${gw.url}${path}`, {
      headers: { authorization: `Bearer ${token}` },
      agent: false,
    });
    req.setTimeout(opts.timeoutMs ?? 20_000, () =>
      req.destroy(Object.assign(new Error('t'), { code: 'TIMEOUT' })),
    );
    req.on('error', (err: NodeJS.ErrnoException) =>
      finish({ outcome: `error:${err.code ?? err.message}`, retryAfter: undefined, bodyBytes: 0 }),
    );
    req.on('response', (res) => {
      let bytes = 0;
      const retryAfter =
        typeof res.headers['retry-after'] === 'string' ? res.headers['retry-after'] : undefined;
      res.on('data', (c: Buffer) => (bytes += c.length));
      res.on('end', () => finish({ outcome: String(res.statusCode), retryAfter, bodyBytes: bytes }));
      res.on('error', () => {});
      res.on('close', () => finish({ outcome: `${res.statusCode}-cut`, retryAfter, bodyBytes: bytes }));
    });
    req.end();
  });
}

export interface Sample extends Outcome {
  /** ms since the loop started, when the request was sent. */
  at: number;
  ms: number;
  hot: boolean;
  /** before: finished before the fault began; fault: sent while it was on; after: sent after it. */
  phase: 'before' | 'fault' | 'after';
}

export interface LoopReport {
  name: string;
  samples: Sample[];
  faultFrom: number;
  faultTo: number;
  fdsBefore: number;
  fdsAfter: number;
}

export interface Fault {
  name: string;
  inject(): void | Promise<void>;
  remove(): void | Promise<void>;
}

export interface LoopOptions {
  /** Request path (default /api/steady). */
  path?: string;
  beforeMs?: number;
  faultMs?: number;
  afterMs?: number;
  /** A request is started this often (default 50 ms: 20 req/s). */
  everyMs?: number;
  /** Every n-th request uses a fresh token (default 3). */
  freshEvery?: number;
}

/**
 * The steady loop: `beforeMs` of traffic, `fault.inject()`, `faultMs` of traffic, `fault.remove()`,
 * `afterMs` of traffic; then waits (bounded) for every request sent to finish. Bounded in count
 * (duration / everyMs requests) and in time.
 */
export async function runFaultLoop(env: FaultEnv, fault: Fault, opts: LoopOptions = {}): Promise<LoopReport> {
  const beforeMs = opts.beforeMs ?? 1000;
  const faultMs = opts.faultMs ?? 2500;
  const afterMs = opts.afterMs ?? 2000;
  const everyMs = opts.everyMs ?? 50;
  const freshEvery = opts.freshEvery ?? 3;
  const path = opts.path ?? '/api/steady';
  const fdsBefore = fdCount(env.gw.pid);
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  let faultFrom = Number.POSITIVE_INFINITY;
  let faultTo = Number.POSITIVE_INFINITY;
  const samples: Sample[] = [];
  const pending: Promise<void>[] = [];
  const total = beforeMs + faultMs + afterMs;
  const controller = (async () => {
    await sleep(beforeMs);
    faultFrom = now();
    await fault.inject();
    await sleep(Math.max(0, faultMs - (now() - faultFrom)));
    faultTo = now();
    await fault.remove();
  })();
  const max = Math.ceil(total / everyMs) + 1;
  for (let i = 0; i < max && now() < total + 5000; i++) {
    const hot = i % freshEvery !== 0;
    const token = hot ? env.hot[i % env.hot.length]! : env.fresh();
    const at = now();
    pending.push(
      send(env.gw, path, token).then((o) => {
        const end = now();
        // 'before': over before the fault began (one sent just before it may still meet it).
        const phase = end < faultFrom ? 'before' : at < faultTo ? 'fault' : 'after';
        samples.push({ ...o, at, ms: end - at, hot, phase });
      }),
    );
    if (now() >= total && faultTo !== Number.POSITIVE_INFINITY) break;
    await sleep(Math.max(0, (i + 1) * everyMs - now()));
  }
  await controller;
  await Promise.all(pending);
  samples.sort((a, b) => a.at - b.at);
  return { name: fault.name, samples, faultFrom, faultTo, fdsBefore, fdsAfter: -1 };
}

/** `{ outcome: count }` of a set of samples. */
export function tally(samples: readonly Sample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples) out[s.outcome] = (out[s.outcome] ?? 0) + 1;
  return out;
}

export interface FaultExpectation {
  /** Outcomes allowed (besides '200') for a request of this kind started while the fault was on or after. */
  allowed: (s: Sample) => readonly string[];
  /** At least one request must have seen one of these during the fault (the fault did bite). */
  mustSee?: readonly string[];
  /** Per-request bound: the configured timeout on this path + MARGIN_MS. */
  boundMs: number;
  /** Requests started this long after the fault was removed must all be 200 (recovery). */
  recoverWithinMs: number;
}

/** One line per fault for the summary printed at the end of a file. */
export const summaries: string[] = [];

/**
 * The five promises of a fault, asserted on a loop report: (1) statuses per SPEC §5, (2) every
 * request within its bound, (3) the process alive, (4) descriptors back to the baseline (+ slack)
 * after idle sockets closed, (5) recovery without a restart.
 */
export async function checkFault(env: FaultEnv, report: LoopReport, exp: FaultExpectation): Promise<void> {
  const { samples } = report;
  const describeBad = (bad: Sample[]) =>
    JSON.stringify(
      bad.slice(0, 5).map((s) => ({ at: Math.round(s.at), ms: Math.round(s.ms), o: s.outcome, hot: s.hot })),
    );
  expect(samples.length).toBeGreaterThan(40);
  // (1) Before the fault: all 200. During and after: 200 or what SPEC §5 says for this fault.
  const before = samples.filter((s) => s.phase === 'before');
  expect(before.length).toBeGreaterThan(0);
  expect(
    before.filter((s) => s.outcome !== '200'),
    'before the fault',
  ).toEqual([]);
  const wrong = samples.filter((s) => s.outcome !== '200' && !exp.allowed(s).includes(s.outcome));
  expect(wrong, `${report.name}: outcomes outside SPEC §5 ${describeBad(wrong)}`).toEqual([]);
  // 503 always carries Retry-After (SPEC §5).
  const no503RetryAfter = samples.filter((s) => s.outcome === '503' && !/^\d+$/.test(s.retryAfter ?? ''));
  expect(no503RetryAfter, '503 without Retry-After').toEqual([]);
  if (exp.mustSee !== undefined) {
    const seen = samples.filter((s) => exp.mustSee!.includes(s.outcome));
    expect(seen.length, `${report.name}: the fault was seen (${exp.mustSee.join('/')})`).toBeGreaterThan(0);
  }
  // (2) No request past its configured timeout + margin.
  const slow = samples.filter((s) => s.ms > exp.boundMs);
  expect(slow, `${report.name}: requests over ${exp.boundMs} ms ${describeBad(slow)}`).toEqual([]);
  // (3) Alive.
  expect(() => process.kill(env.gw.pid, 0)).not.toThrow();
  const live = await fetch(`${env.gw.adminUrl}/livez`, { signal: AbortSignal.timeout(5000) });
  expect(live.status).toBe(200);
  // (5) Recovery by itself: the loop's tail, then a fresh and a hot token once more.
  const tail = samples.filter((s) => s.at >= report.faultTo + exp.recoverWithinMs);
  expect(tail.length, 'requests after the recovery window').toBeGreaterThan(5);
  expect(
    tail.filter((s) => s.outcome !== '200'),
    `${report.name}: not recovered ${describeBad(tail.filter((s) => s.outcome !== '200'))}`,
  ).toEqual([]);
  expect((await send(env.gw, '/api/after', env.fresh())).outcome).toBe('200');
  expect((await send(env.gw, '/api/after', env.hot[0]!)).outcome).toBe('200');
  // (4) No descriptor leak: back to the baseline (+ slack) once idle keep-alive sockets closed.
  let fds = fdCount(env.gw.pid);
  await waitFor(
    () => {
      fds = fdCount(env.gw.pid);
      return fds <= env.baselineFds + FD_SLACK;
    },
    15_000,
    `${report.name}: gateway descriptors back to ≤ ${env.baselineFds} + ${FD_SLACK}`,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (now ${fds})`);
  });
  report.fdsAfter = fds;
  const maxMs = Math.round(Math.max(...samples.map((s) => s.ms)));
  summaries.push(
    `${report.name}: fault ${JSON.stringify(tally(samples.filter((s) => s.phase === 'fault')))}, ` +
      `after ${JSON.stringify(tally(samples.filter((s) => s.phase === 'after')))}, max ${maxMs} ms ≤ ${exp.boundMs}, ` +
      `fds baseline ${env.baselineFds} before ${report.fdsBefore} after ${report.fdsAfter}`,
  );
}
