import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { type CurityStub, startCurityStub } from '../../test/helpers/curity-stub.ts';
import { type GatewayProcess, startGateway } from '../../test/helpers/gateway-process.ts';
import { type RedisServerHandle, startRedisServer } from '../../test/helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../test/helpers/upstream.ts';
import { getStatus, round1, waitGatewayReady } from '../lib/http-client.ts';
import { pinProcess, rssMb } from '../lib/procs.ts';
import { type BenchOptions, type CountResult, STANDALONE_OPTIONS } from '../lib/types.ts';

/**
 * The token-scanning flood (issue 6): one phantom-gateway (accept-jwt, Redis, the default
 * negativeTtlSeconds) in front of the Curity-style stub, which answers 204 (inactive) for every
 * unknown token. Two floods:
 *
 * - DISTINCT requests, each with its own random invalid token: every one costs one token-service
 *   call (a negative cache only helps repeats); measured: the calls, the answers (all 401) and the
 *   gateway's resident memory (VmRSS) before, half-way, after and at its peak, sampled meanwhile;
 * - POOL_REQUESTS requests cycling over a pool of POOL invalid tokens: the negative cache bounds
 *   the calls to about POOL per negativeTtlSeconds.
 */

const DISTINCT = 20_000;
const POOL = 100;
const POOL_REQUESTS = 10_000;
const CONCURRENCY = 50;
/** Time bound of each flood: requests not sent by then are not sent (and the goal is not met). */
const FLOOD_BOUND_MS = 120_000;
/** The gateway's default (SPEC §3 cache.negativeTtlSeconds). */
const NEGATIVE_TTL_SECONDS = 5;
/** Memory bounds of the verdict: peak RSS, and growth over the second half of the distinct flood. */
const RSS_PEAK_BOUND_MB = 512;
const RSS_GROWTH_BOUND_MB = 64;

const CLIENT_ID = 'phantom-gateway';
const GW_SECRET = 'bench-flood-introspection-secret-0123456789';
const CACHE_KEY = 'bench-flood-cache-key-'.padEnd(48, 'f');

const GOAL = 'token-service calls bounded by the negative cache; gateway memory bounded';

interface FloodOutcome {
  sent: number;
  statuses: Map<number, number>;
  seconds: number;
}

/** `count` requests, token `tokenAt(i)` for the i-th, CONCURRENCY in flight; bounded by FLOOD_BOUND_MS. */
async function flood(
  url: string,
  count: number,
  tokenAt: (i: number) => string,
  stub: CurityStub,
  onProgress?: (sent: number) => void,
): Promise<FloodOutcome> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const statuses = new Map<number, number>();
  const t0 = performance.now();
  const deadline = Date.now() + FLOOD_BOUND_MS;
  let next = 0;
  const worker = async () => {
    while (next < count && Date.now() < deadline) {
      const i = next++;
      const status = await getStatus(url, {
        agent,
        headers: { authorization: `Bearer ${tokenAt(i)}` },
        timeoutMs: 15_000,
      });
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      if (stub.requests.length > 1000) stub.requests.length = 0; // the stub records every request
      onProgress?.(i + 1);
    }
  };
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  } finally {
    agent.destroy();
  }
  return { sent: next, statuses, seconds: (performance.now() - t0) / 1000 };
}

const statusText = (s: Map<number, number>) =>
  [...s]
    .sort(([a], [b]) => a - b)
    .map(([k, v]) => `${k}×${v}`)
    .join(', ');

export async function run(opts: BenchOptions): Promise<CountResult[]> {
  let stub: CurityStub | undefined;
  let redis: RedisServerHandle | undefined;
  let up: EchoUpstream | undefined;
  let gw: GatewayProcess | undefined;
  try {
    [stub, redis, up] = await Promise.all([
      startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
      startRedisServer(),
      startEchoUpstream(),
    ]);
    pinProcess(redis.pid, opts.serverCpus);
    // LOG_LEVEL warn: no access line per request (the test helper keeps all output in memory).
    gw = await startGateway(
      {
        tokenService: {
          issuer: stub.issuer,
          introspectionEndpoint: stub.introspectionEndpoint,
          clientId: CLIENT_ID,
          clientSecret: '${GW_SECRET}',
          mode: 'accept-jwt',
          timeoutMs: 5000,
        },
        jwt: { jwksUri: stub.jwksUri },
        cache: { redis: { url: redis.url, commandTimeoutMs: 1000 } },
        routes: [
          {
            name: 'invoices',
            match: { pathPrefix: '/api/invoices' },
            upstream: up.url,
            scopes: ['invoice_read'],
          },
        ],
      },
      { env: { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, LOG_LEVEL: 'warn' }, waitForListening: false },
    );
    pinProcess(gw.pid, opts.serverCpus);
    await waitGatewayReady(gw, true);
    const url = `${gw.url}/api/invoices`;
    const pid = gw.pid;
    const s = stub;

    // 1. Distinct invalid tokens.
    const tokens = Array.from({ length: DISTINCT }, () => randomBytes(32).toString('base64url'));
    const rssBefore = rssMb(pid);
    let rssPeak = rssBefore;
    let rssMid = 0;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, rssMb(pid));
    }, 250);
    const calls0 = s.calls;
    let distinct: FloodOutcome;
    try {
      distinct = await flood(
        url,
        DISTINCT,
        (i) => tokens[i]!,
        s,
        (sent) => {
          if (sent === DISTINCT / 2) rssMid = rssMb(pid);
        },
      );
    } finally {
      clearInterval(sampler);
    }
    const rssAfter = rssMb(pid);
    rssPeak = Math.max(rssPeak, rssAfter);
    const distinctCalls = s.calls - calls0;
    const all401 = distinct.sent === DISTINCT && distinct.statuses.get(401) === DISTINCT;
    const growth = rssMid > 0 ? rssAfter - rssMid : Number.NaN;
    const memoryBounded = rssPeak < RSS_PEAK_BOUND_MB && growth < RSS_GROWTH_BOUND_MB;

    // 2. A pool of POOL invalid tokens, repeated (fresh ones: none of them is cached yet).
    await sleep((NEGATIVE_TTL_SECONDS + 1) * 1000); // the distinct flood's verdicts expire first
    const pool = Array.from({ length: POOL }, () => randomBytes(32).toString('base64url'));
    const calls1 = s.calls;
    const repeated = await flood(url, POOL_REQUESTS, (i) => pool[i % POOL]!, s);
    const poolCalls = s.calls - calls1;
    // Each token can be introspected once per negative-TTL window it is used in (+1 at a window edge).
    const poolBound = POOL * (Math.ceil(repeated.seconds / NEGATIVE_TTL_SECONDS) + 1);
    const pool401 = repeated.sent === POOL_REQUESTS && repeated.statuses.get(401) === POOL_REQUESTS;

    return [
      {
        scenario: 'flood',
        contender: `phantom-gateway (accept-jwt, Redis): ${DISTINCT} distinct invalid tokens`,
        figures: {
          requests: distinct.sent,
          status401: distinct.statuses.get(401) ?? 0,
          tokenServiceCalls: distinctCalls,
          seconds: round1(distinct.seconds),
          rps: Math.round(distinct.sent / distinct.seconds),
          rssBeforeMb: rssBefore,
          rssHalfwayMb: rssMid,
          rssAfterMb: rssAfter,
          rssPeakMb: rssPeak,
          rssGrowthSecondHalfMb: round1(growth),
        },
        goal: `${GOAL} (distinct tokens: 1 call each, the negative cache cannot help; peak RSS < ${RSS_PEAK_BOUND_MB} MB, growth over the second half < ${RSS_GROWTH_BOUND_MB} MB)`,
        met: all401 && distinctCalls <= DISTINCT && memoryBounded,
        note: `statuses: ${statusText(distinct.statuses)}; ${CONCURRENCY} in flight`,
      },
      {
        scenario: 'flood',
        contender: `phantom-gateway (accept-jwt, Redis): ${POOL_REQUESTS} requests over ${POOL} invalid tokens`,
        figures: {
          requests: repeated.sent,
          distinctTokens: POOL,
          status401: repeated.statuses.get(401) ?? 0,
          tokenServiceCalls: poolCalls,
          callsBound: poolBound,
          seconds: round1(repeated.seconds),
          negativeTtlSeconds: NEGATIVE_TTL_SECONDS,
        },
        goal: `${GOAL} (≤ ${POOL} calls per negativeTtlSeconds window)`,
        met: pool401 && poolCalls <= poolBound,
        note: `statuses: ${statusText(repeated.statuses)}`,
      },
    ];
  } finally {
    await gw?.stop();
    await Promise.all([stub?.close(), redis?.stop(), up?.close()]);
  }
}

if (import.meta.main) {
  const results = await run(STANDALONE_OPTIONS);
  console.log(JSON.stringify(results, null, 2));
}
