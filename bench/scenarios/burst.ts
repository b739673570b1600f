import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type DevTokenService, startDevTokenService } from '../../src/demo/token-service.ts';
import { generateSigningKeysFile } from '../../src/jwt/signing-keys.ts';
import { type CurityStub, startCurityStub } from '../../test/helpers/curity-stub.ts';
import { freePort } from '../../test/helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../test/helpers/gateway-process.ts';
import { type RedisServerHandle, startRedisServer } from '../../test/helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../test/helpers/upstream.ts';
import { getStatus, round1, waitGatewayReady } from '../lib/http-client.ts';
import { pinProcess } from '../lib/procs.ts';
import { type BenchOptions, type CountResult, STANDALONE_OPTIONS } from '../lib/types.ts';
import { NGINX_AUTHREQ_NOTE, NGINX_JWT_HEADER, type NginxAuthReq, startNginxAuthReq } from './nginx.ts';

/**
 * The burst scenario (issue 6): 200 concurrent first requests carrying ONE fresh token, spread
 * over 3 replicas (67/67/66), all sent at once over keep-alive connections opened beforehand, so
 * they really overlap; repeated for TOKENS fresh tokens. Counted: introspections per token at the
 * token service, non-2xx answers, the latency of the burst's requests.
 *
 * Contenders: phantom-gateway ×3 sharing one redis-server (accept-jwt against the Curity-style
 * stub, whose per-token count is exact; and mint mode against the real oidc-provider), nginx-authreq
 * ×3 (proxy_cache_lock, one cache per instance), and a reference without cross-replica locking:
 * phantom-gateway ×3 without Redis (per-process single-flight only).
 */

const REPLICAS = 3;
const BURST = 200;
const TOKENS = 5;
/** Bound of one burst (all its requests answered or failed). */
const BURST_BOUND_MS = 20_000;
const CLIENT_ID = 'phantom-gateway';
const GW_SECRET = 'bench-burst-introspection-secret-0123456789';
const CACHE_KEY = 'bench-burst-cache-key-'.padEnd(48, 'k');
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, LOG_LEVEL: 'warn' };
const ROUTE_SCOPE = 'invoice_read';
const MINT_CLIENT = { id: 'burst-client', secret: 'burst-client-secret-0123456789' };

const GOAL_GATEWAY = 'exactly 1 introspection for 200 concurrent first requests across 3 replicas';
const GOAL_NGINX = '1 introspection per nginx instance (proxy_cache_lock), 3 for 3 instances';
const GOAL_REFERENCE = 'reference without cross-replica locking: at most 1 per replica (≤ 3)';

/** One burst target: a base URL and a keep-alive agent with BURST/REPLICAS sockets already open. */
interface Target {
  url: string;
  agent: http.Agent;
}

interface BurstOutcome {
  statuses: number[];
  latenciesMs: number[];
}

/**
 * A keep-alive agent for `url` with `sockets` connections opened now (concurrent requests without
 * a token: 401 at once, no token service involved), so the burst does not pay connection setup.
 */
async function preconnected(url: string, sockets: number): Promise<Target> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets, maxFreeSockets: sockets });
  const target = { url, agent };
  await Promise.all(
    Array.from({ length: sockets }, () =>
      getStatus(`${url}/api/invoices/warm`, { agent, timeoutMs: BURST_BOUND_MS }),
    ),
  );
  return target;
}

/** Sends BURST requests with `token` at once, request i to targets[i % n]; bounded. */
async function burst(targets: Target[], token: string): Promise<BurstOutcome> {
  const latenciesMs: number[] = [];
  const started = performance.now();
  const all = Array.from({ length: BURST }, (_, i) =>
    getStatus(`${targets[i % targets.length]!.url}/api/invoices/${i}`, {
      agent: targets[i % targets.length]!.agent,
      headers: { authorization: `Bearer ${token}` },
      timeoutMs: BURST_BOUND_MS,
    }).then((s) => {
      latenciesMs.push(performance.now() - started);
      return s;
    }),
  );
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`burst not answered in ${BURST_BOUND_MS} ms`)), BURST_BOUND_MS);
  });
  try {
    return { statuses: await Promise.race([Promise.all(all), bound]), latenciesMs };
  } finally {
    clearTimeout(timer);
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/**
 * Runs one contender: a warm-up burst (not counted: JIT, JWKS fetch), then TOKENS bursts, each
 * with a fresh token from `newToken`; `introspections(token)` counts the token service's calls
 * for it, per counted instance.
 */
async function measure(
  urls: string[],
  newToken: () => Promise<string>,
  introspections: (token: string) => number[],
): Promise<{ figures: Record<string, number>; perToken: number[][] }> {
  const perReplica = Math.ceil(BURST / urls.length);
  const targets = await Promise.all(urls.map((u) => preconnected(u, perReplica)));
  try {
    await burst(targets, await newToken());
    let non2xx = 0;
    const perToken: number[][] = [];
    const latencies: number[] = [];
    for (let i = 0; i < TOKENS; i++) {
      const token = await newToken();
      const out = await burst(targets, token);
      non2xx += out.statuses.filter((s) => s < 200 || s > 299).length;
      latencies.push(...out.latenciesMs);
      await sleep(50); // let the last counters settle (answers are sent before counting ends)
      perToken.push(introspections(token));
    }
    latencies.sort((a, b) => a - b);
    const totals = perToken.map((c) => c.reduce((a, b) => a + b, 0));
    return {
      perToken,
      figures: {
        tokens: TOKENS,
        requestsPerToken: BURST,
        replicas: urls.length,
        requests: BURST * TOKENS,
        non2xx,
        introspectionsMaxPerToken: Math.max(...totals),
        introspectionsMinPerToken: Math.min(...totals),
        introspectionsTotal: totals.reduce((a, b) => a + b, 0),
        latencyP50Ms: round1(percentile(latencies, 50)),
        latencyP99Ms: round1(percentile(latencies, 99)),
        latencyMaxMs: round1(latencies.at(-1) ?? 0),
      },
    };
  } finally {
    for (const t of targets) t.agent.destroy();
  }
}

async function startReplicas(
  config: Record<string, unknown>,
  cpus: string | undefined,
): Promise<GatewayProcess[]> {
  const gws: GatewayProcess[] = [];
  try {
    // One after the other: three node processes booting at once on 2 cores only slow each other.
    for (let i = 0; i < REPLICAS; i++) {
      const gw = await startGateway(config, { env: ENV, waitForListening: false });
      gws.push(gw);
      pinProcess(gw.pid, cpus);
      await waitGatewayReady(gw, (config['cache'] as { redis?: unknown } | undefined)?.redis !== undefined);
    }
    return gws;
  } catch (err) {
    await Promise.all(gws.map((g) => g.stop()));
    throw err;
  }
}

function acceptJwtConfig(
  stub: CurityStub,
  up: EchoUpstream,
  redisUrl: string | undefined,
): Record<string, unknown> {
  return {
    tokenService: {
      issuer: stub.issuer,
      introspectionEndpoint: stub.introspectionEndpoint,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 5000,
    },
    jwt: { jwksUri: stub.jwksUri },
    // A generous Redis command timeout: under a burst the gateways' own event-loop lag can exceed
    // the default 50 ms, and a timed-out lock command means no cross-replica coordination.
    cache: redisUrl === undefined ? {} : { redis: { url: redisUrl, commandTimeoutMs: 1000 } },
    routes: [
      { name: 'invoices', match: { pathPrefix: '/api/invoices' }, upstream: up.url, scopes: [ROUTE_SCOPE] },
    ],
  };
}

function result(
  contender: string,
  m: { figures: Record<string, number>; perToken: number[][] },
  goal: string,
  met: boolean,
  note: string,
): CountResult {
  return { scenario: 'burst', contender, figures: m.figures, goal, met, note };
}

export async function run(opts: BenchOptions): Promise<CountResult[]> {
  const results: CountResult[] = [];
  const cpus = opts.serverCpus;
  let stub: CurityStub | undefined;
  let redis: RedisServerHandle | undefined;
  let up: EchoUpstream | undefined;
  let ts: DevTokenService | undefined;
  let gws: GatewayProcess[] = [];
  let nginxes: NginxAuthReq[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'phantom-bench-burst-'));
  const stopGateways = async () => {
    await Promise.all(gws.map((g) => g.stop()));
    gws = [];
  };
  try {
    [stub, redis, up] = await Promise.all([
      startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
      startRedisServer(),
      startEchoUpstream(),
    ]);
    pinProcess(redis.pid, cpus);
    stub.jwtHeader = NGINX_JWT_HEADER; // for nginx-authreq; the gateways ignore it
    const s = stub;
    const stubToken = async () => {
      s.requests.length = 0;
      const t = s.newToken();
      s.register(t, { sub: 'burst-user', scope: ROUTE_SCOPE });
      return t;
    };
    const stubCount = (t: string) => [s.requests.filter((r) => r.body.get('token') === t).length];
    const clearUpstream = () => {
      up!.requests.length = 0;
    };

    // 1. phantom-gateway ×3 + Redis, accept-jwt (Curity-style stub).
    gws = await startReplicas(acceptJwtConfig(s, up, redis.url), cpus);
    let m = await measure(
      gws.map((g) => g.url),
      stubToken,
      stubCount,
    );
    results.push(
      result(
        'phantom-gateway ×3 + Redis (accept-jwt, stub)',
        m,
        GOAL_GATEWAY,
        m.figures['non2xx'] === 0 && m.perToken.every(([c]) => c === 1),
        `introspections per token: ${m.perToken.map(([c]) => c).join(', ')}`,
      ),
    );
    await stopGateways();
    clearUpstream();

    // 2. phantom-gateway ×3 + Redis, mint mode against the real oidc-provider.
    const keysFile = join(dir, 'mint-keys.json');
    await generateSigningKeysFile(keysFile);
    ts = await startDevTokenService({
      host: '127.0.0.1',
      port: await freePort(),
      clients: [
        { client_id: CLIENT_ID, client_secret: GW_SECRET, grant_types: [] },
        { client_id: MINT_CLIENT.id, client_secret: MINT_CLIENT.secret, scope: ROUTE_SCOPE },
      ],
      scopes: [ROUTE_SCOPE],
      introspectionClientId: CLIENT_ID,
      accessTokenTtlSeconds: 600,
    });
    const oidc = ts;
    gws = await startReplicas(
      {
        tokenService: {
          issuer: oidc.issuer,
          introspectionEndpoint: oidc.introspectionEndpoint,
          clientId: CLIENT_ID,
          clientSecret: '${GW_SECRET}',
          mode: 'mint',
          timeoutMs: 5000,
        },
        jwt: {
          mint: { issuer: 'https://gateway.bench.test', signingKeysFile: keysFile, lifetimeSeconds: 300 },
        },
        cache: { redis: { url: redis.url, commandTimeoutMs: 1000 } },
        routes: [
          {
            name: 'invoices',
            match: { pathPrefix: '/api/invoices' },
            upstream: up.url,
            scopes: [ROUTE_SCOPE],
          },
        ],
      },
      cpus,
    );
    // Rounds run one after the other: the count's delta over a round is that round's token's.
    let before = 0;
    m = await measure(
      gws.map((g) => g.url),
      async () => {
        const t = (await oidc.issueToken(MINT_CLIENT.id, MINT_CLIENT.secret, ROUTE_SCOPE)).access_token;
        before = oidc.introspectionCount();
        return t;
      },
      () => [oidc.introspectionCount() - before],
    );
    results.push(
      result(
        'phantom-gateway ×3 + Redis (mint, oidc-provider)',
        m,
        GOAL_GATEWAY,
        m.figures['non2xx'] === 0 && m.perToken.every(([c]) => c === 1),
        `introspections per token: ${m.perToken.map(([c]) => c).join(', ')}`,
      ),
    );
    await stopGateways();
    await oidc.close();
    ts = undefined;
    clearUpstream();

    // 3. nginx-authreq ×3 (each its own cache and lock), same stub.
    const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${GW_SECRET}`).toString('base64')}`;
    const started = [];
    let skipped: string | undefined;
    for (let i = 0; i < REPLICAS && skipped === undefined; i++) {
      const n = await startNginxAuthReq({
        upstreamUrl: up.url,
        introspectionUrl: s.introspectionEndpoint,
        clientAuthHeader: basic,
        ...(cpus !== undefined ? { serverCpus: cpus } : {}),
        instance: `nginx-${i}`,
      });
      if ('skipped' in n) skipped = n.skipped;
      else started.push(n);
    }
    nginxes = started;
    if (skipped !== undefined) {
      results.push({
        scenario: 'burst',
        contender: 'nginx-authreq ×3',
        figures: {},
        goal: GOAL_NGINX,
        note: `skipped: ${skipped}`,
      });
    } else {
      const perInstance = (t: string) =>
        nginxes.map(
          (_, i) =>
            s.requests.filter(
              (r) => r.body.get('token') === t && r.headers['x-bench-instance'] === `nginx-${i}`,
            ).length,
        );
      m = await measure(
        nginxes.map((n) => n.url),
        stubToken,
        perInstance,
      );
      m.figures['introspectionsMaxPerInstance'] = Math.max(...m.perToken.flat());
      results.push(
        result(
          'nginx-authreq ×3 (proxy_cache_lock)',
          m,
          GOAL_NGINX,
          m.figures['non2xx'] === 0 && m.perToken.every((c) => c.every((n) => n === 1)),
          `introspections per token per instance: ${m.perToken.map((c) => c.join('/')).join(', ')}; ${NGINX_AUTHREQ_NOTE}`,
        ),
      );
    }
    await Promise.all(nginxes.map((n) => n.stop()));
    nginxes = [];
    clearUpstream();

    // 4. Reference: phantom-gateway ×3 WITHOUT Redis (L1 and per-process single-flight only).
    gws = await startReplicas(acceptJwtConfig(s, up, undefined), cpus);
    m = await measure(
      gws.map((g) => g.url),
      stubToken,
      stubCount,
    );
    results.push(
      result(
        'reference: phantom-gateway ×3 without Redis (no cross-replica lock)',
        m,
        GOAL_REFERENCE,
        m.figures['non2xx'] === 0 && m.perToken.every(([c]) => c! <= REPLICAS),
        `introspections per token: ${m.perToken.map(([c]) => c).join(', ')}`,
      ),
    );
    return results;
  } finally {
    await stopGateways();
    await Promise.all(nginxes.map((n) => n.stop()));
    await Promise.all([stub?.close(), redis?.stop(), up?.close(), ts?.close()]);
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const results = await run(STANDALONE_OPTIONS);
  console.log(JSON.stringify(results, null, 2));
}
