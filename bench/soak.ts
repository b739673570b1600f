import http from 'node:http';
import { parseArgs } from 'node:util';
import { type CurityStub, startCurityStub } from '../test/helpers/curity-stub.ts';
import { type GatewayProcess, startGateway, waitFor } from '../test/helpers/gateway-process.ts';
import { type RedisServerHandle, startRedisServer } from '../test/helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../test/helpers/upstream.ts';
import { getStatus, waitGatewayReady } from './lib/http-client.ts';
import { rssMb } from './lib/procs.ts';

/**
 * `npm run soak` (issue 8): the real gateway (accept-jwt, Redis, default cache bounds) under a
 * steady request rate for `--minutes` (default 10), tokens drawn from `--tokens` (default
 * 1 000 000) distinct opaque tokens (half from a small hot set: cache hits; half uniformly from
 * the million: misses that fill and churn the bounded caches), while faults are injected on a
 * schedule: Redis killed and restarted, Redis frozen (SIGSTOP), the token service answering 503,
 * hanging, slow, the upstream resetting. Every 10 s it samples the gateway's memory (RSS from
 * /proc, V8 heap from /metrics); at the end it prints the memory table and the verdict: memory
 * flat within the cache bounds, and zero 5xx that no injected fault explains.
 * Loopback only; every process is stopped by PID; every wait is bounded.
 *
 *   npm run soak                         10 minutes, 400 req/s
 *   npm run soak -- --minutes 2 --rate 200
 */

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    rate: { type: 'string', default: '400' },
    tokens: { type: 'string', default: '1000000' },
  },
});
const MINUTES = Number(values.minutes);
const RATE = Number(values.rate);
const TOKENS = Number(values.tokens);
if (!(MINUTES > 0 && MINUTES <= 120) || !(RATE > 0 && RATE <= 5000) || !(TOKENS >= 1000))
  throw new Error('usage: npm run soak -- [--minutes 0<m≤120] [--rate 0<r≤5000] [--tokens ≥1000]');

const CLIENT_ID = 'phantom-gateway';
const GW_SECRET = 'soak-introspection-secret-0123456789';
const CACHE_KEY = 'soak-cache-key-'.padEnd(48, 's');
const AUD = 'https://api.soak.test';
const HOT = 2_000;
const MAX_IN_FLIGHT = 400;
const REQUEST_TIMEOUT_MS = 10_000;
const SAMPLE_EVERY_MS = 10_000;
const FAULT_EVERY_MS = 45_000;
/** 5xx this long after a fault ends still count as caused by it (in-flight requests, timeouts). */
const FAULT_GRACE_MS = 3_000;
/** Verdict bounds: RSS growth over the second half, and the peak. */
const RSS_GROWTH_BOUND_MB = 64;
const RSS_PEAK_BOUND_MB = 768;

/** `soak-<n>`, n < TOKENS: active (claims derived from n); anything else is inactive. */
const tokenOf = (n: number) => `soak-${n.toString(36).padStart(8, '0')}-token`;
function claimsOf(token: string) {
  const m = /^soak-([0-9a-z]{8})-token$/.exec(token);
  if (m === null || Number.parseInt(m[1]!, 36) >= TOKENS) return undefined;
  return { claims: { sub: `user-${m[1]}`, aud: AUD, scope: 'read' } };
}

interface Fault {
  name: string;
  start(): Promise<void>;
  end(): Promise<void>;
  durationMs: number;
  /** 5xx this fault may cause (Redis faults: none, SPEC §5). */
  explains: ReadonlySet<number>;
}

async function main(): Promise<void> {
  const stub: CurityStub = await startCurityStub({
    clientId: CLIENT_ID,
    clientSecret: GW_SECRET,
    jwtLifetimeSeconds: 3600,
  });
  stub.resolve = claimsOf;
  const redis: RedisServerHandle = await startRedisServer();
  const up: EchoUpstream = await startEchoUpstream();
  let gw: GatewayProcess | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: MAX_IN_FLIGHT });
  const stopAll = async () => {
    agent.destroy();
    await gw?.stop();
    await Promise.allSettled([redis.stop(), stub.close(), up.close()]);
  };
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));
  try {
    gw = await startGateway(
      {
        tokenService: {
          issuer: stub.issuer,
          clientId: CLIENT_ID,
          clientSecret: '${SOAK_GW_SECRET}',
          mode: 'accept-jwt',
          timeoutMs: 1000,
        },
        jwt: { audience: AUD },
        cache: { redis: { url: redis.url } },
        routes: [{ name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] }],
      },
      // Access lines at info would be millions of lines through a pipe into this process: warn.
      {
        env: { SOAK_GW_SECRET: GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, LOG_LEVEL: 'warn' },
        waitForListening: false,
      },
    );
    const g = gw;
    // No "listening" line at warn: ready = /readyz 200 with Redis connected (bounded).
    await waitGatewayReady(g, true);
    up.requests.length = 0;
    await run(g, stub, redis, up, agent);
  } finally {
    await stopAll();
  }
}

async function run(
  gw: GatewayProcess,
  stub: CurityStub,
  redis: RedisServerHandle,
  up: EchoUpstream,
  agent: http.Agent,
): Promise<void> {
  const stubBecomes = (b: CurityStub['behaviour']) => async () => {
    stub.behaviour = b;
  };
  const upstreamBecomes = (b: EchoUpstream['behaviour']) => async () => {
    up.behaviour = b;
  };
  const faults: Fault[] = [
    {
      name: 'redis killed, restarted after 8 s',
      durationMs: 8_000,
      start: () => redis.kill(),
      end: () => redis.restart(),
      explains: new Set(),
    },
    {
      name: 'redis frozen (SIGSTOP) 4 s',
      durationMs: 4_000,
      start: async () => redis.pause(),
      end: async () => redis.resume(),
      explains: new Set(),
    },
    {
      name: 'token service 503 for 6 s',
      durationMs: 6_000,
      start: stubBecomes('status:503'),
      end: stubBecomes('ok'),
      explains: new Set([503]),
    },
    {
      name: 'token service hangs 4 s',
      durationMs: 4_000,
      start: stubBecomes('hang'),
      end: stubBecomes('ok'),
      explains: new Set([503]),
    },
    {
      name: 'token service slow (1.5 s > timeoutMs) 4 s',
      durationMs: 4_000,
      start: stubBecomes('slow:1500'),
      end: stubBecomes('ok'),
      explains: new Set([503]),
    },
    {
      name: 'upstream resets connections 4 s',
      durationMs: 4_000,
      start: upstreamBecomes('reset'),
      end: upstreamBecomes('echo'),
      explains: new Set([502]),
    },
  ];
  /** Fault windows: [start, end + grace) and the statuses each explains. */
  const windows: Array<{ from: number; to: number; explains: ReadonlySet<number>; name: string }> = [];
  let active: string | undefined;

  const started = Date.now();
  const endAt = started + MINUTES * 60_000;
  const statuses = new Map<number, number>();
  let sent = 0;
  let inFlight = 0;
  let dropped = 0;
  let errors = 0;
  const unexplained: Array<{ at: number; status: number }> = [];
  const distinct = new Set<number>();
  const samples: Array<Record<string, string | number>> = [];

  const send = () => {
    if (inFlight >= MAX_IN_FLIGHT) {
      dropped++;
      return;
    }
    const n = Math.random() < 0.5 ? Math.floor(Math.random() * HOT) : Math.floor(Math.random() * TOKENS);
    if (distinct.size < 2_000_000) distinct.add(n);
    inFlight++;
    sent++;
    const at = Date.now();
    void getStatus(`${gw.url}/api/items/${n}`, {
      agent,
      headers: { authorization: `Bearer ${tokenOf(n)}` },
      timeoutMs: REQUEST_TIMEOUT_MS,
    }).then((s) => {
      inFlight--;
      if (s === 0) {
        errors++;
        return;
      }
      statuses.set(s, (statuses.get(s) ?? 0) + 1);
      if (s >= 500 && !windows.some((w) => at < w.to && Date.now() >= w.from && w.explains.has(s)))
        unexplained.push({ at: at - started, status: s });
    });
  };

  // Steady rate: every 10 ms, the requests due by now.
  const ticker = setInterval(() => {
    const due = Math.floor(((Date.now() - started) / 1000) * RATE);
    while (sent + dropped < due && Date.now() < endAt) send();
  }, 10);

  const sample = async () => {
    const rss = rssMb(gw.pid);
    let heap = 0;
    try {
      const text = await new Promise<string>((resolve, reject) => {
        http
          .get(`${gw.adminUrl}/metrics`, { timeout: 5000 }, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
      heap = Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? 0) / 2 ** 20;
    } catch {
      heap = Number.NaN;
    }
    const row = {
      t: Math.round((Date.now() - started) / 1000),
      rssMb: Math.round(rss),
      heapMb: Math.round(heap),
      requests: sent,
      s2xx: [...statuses].filter(([s]) => s < 300).reduce((a, [, c]) => a + c, 0),
      s5xx: [...statuses].filter(([s]) => s >= 500).reduce((a, [, c]) => a + c, 0),
      unexplained5xx: unexplained.length,
      fault: active ?? '',
    };
    samples.push(row);
    process.stderr.write(`soak: ${JSON.stringify(row)}\n`);
  };
  await sample();
  const sampler = setInterval(() => void sample(), SAMPLE_EVERY_MS);

  // Faults on a schedule: one every FAULT_EVERY_MS, in turn, never past the end.
  let next = 0;
  const faultLoop = (async () => {
    while (Date.now() + FAULT_EVERY_MS + 10_000 < endAt) {
      await sleepUntil(Math.min(endAt, Date.now() + FAULT_EVERY_MS));
      const f = faults[next++ % faults.length]!;
      const w = { from: Date.now(), to: Number.POSITIVE_INFINITY, explains: f.explains, name: f.name };
      windows.push(w);
      active = f.name;
      process.stderr.write(`soak: fault: ${f.name}\n`);
      await f.start();
      await sleepUntil(Date.now() + f.durationMs);
      await f.end();
      w.to = Date.now() + FAULT_GRACE_MS;
      active = undefined;
    }
  })();

  await sleepUntil(endAt);
  clearInterval(ticker);
  await faultLoop;
  await waitFor(() => inFlight === 0, REQUEST_TIMEOUT_MS + 5_000, 'in-flight requests to finish').catch(
    () => {},
  );
  clearInterval(sampler);
  await sample();

  // Verdict.
  const half = samples.filter((s) => (s['t'] as number) >= (MINUTES * 60) / 2);
  const rssHalf = (half[0]?.['rssMb'] as number) ?? 0;
  const rssEnd = (samples.at(-1)?.['rssMb'] as number) ?? 0;
  const rssPeak = Math.max(...samples.map((s) => s['rssMb'] as number));
  const growth = rssEnd - rssHalf;
  const flat = growth < RSS_GROWTH_BOUND_MB && rssPeak < RSS_PEAK_BOUND_MB;
  console.log(`\n# phantom-gateway soak — ${new Date(started).toISOString()}\n`);
  console.log(
    `${MINUTES} min at ${RATE} req/s; ${sent} requests (${dropped} not sent: ${MAX_IN_FLIGHT} in flight), ` +
      `${distinct.size} distinct tokens of ${TOKENS}; ${errors} client errors (timeouts/resets seen by the client)\n`,
  );
  console.log('| t (s) | RSS MB | heap MB | requests | 2xx | 5xx | unexplained 5xx | fault now |');
  console.log('|--:|--:|--:|--:|--:|--:|--:|---|');
  for (const s of samples)
    console.log(
      `| ${s['t']} | ${s['rssMb']} | ${s['heapMb']} | ${s['requests']} | ${s['s2xx']} | ${s['s5xx']} | ${s['unexplained5xx']} | ${s['fault']} |`,
    );
  console.log(`\nstatuses: ${[...statuses].map(([s, c]) => `${s}×${c}`).join(', ')}`);
  console.log(`faults injected: ${windows.length} (${windows.map((w) => w.name).join('; ')})`);
  console.log(
    `memory: RSS ${samples[0]?.['rssMb']} MB at start, ${rssHalf} MB at half time, ${rssEnd} MB at the end (peak ${rssPeak} MB): ` +
      `${flat ? 'flat' : 'NOT flat'} (bounds: < +${RSS_GROWTH_BOUND_MB} MB over the second half, peak < ${RSS_PEAK_BOUND_MB} MB)`,
  );
  console.log(
    `unexplained 5xx: ${unexplained.length}${unexplained.length > 0 ? ` (first: ${JSON.stringify(unexplained.slice(0, 5))})` : ''}`,
  );
  const ok = flat && unexplained.length === 0;
  console.log(`verdict: ${ok ? 'PASS' : 'FAIL'}`);
  process.exitCode = ok ? 0 : 1;
}

function sleepUntil(t: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, t - Date.now())));
}

await main();
