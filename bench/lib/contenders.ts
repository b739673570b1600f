import type { ChildProcess } from 'node:child_process';
import { createReadStream, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { type DevTokenService, startDevTokenService } from '../../src/demo/token-service.ts';
import { generateSigningKeysFile } from '../../src/jwt/signing-keys.ts';
import type { CurityStub } from '../../test/helpers/curity-stub.ts';
import { freePort } from '../../test/helpers/free-port.ts';
import { spawnTracked, stopProcess, waitForHttp } from './procs.ts';

/**
 * The throughput contenders: each a separate process (servers pinned to the server CPUs), all
 * in front of the same lean upstream, all answering `GET <url>/api/items/7` with 200.
 */

export const ROOT = resolve(import.meta.dirname, '../..');
const GATEWAY_BIN = join(ROOT, 'bin/phantom-gateway');
const NODE_FLAGS = ['--disable-warning=ExperimentalWarning'];

/** Request path every contender serves (a gateway route `/api`, the upstream answers anything). */
export const ITEM_PATH = '/api/items/7';
/** Download path (the upstream answers `/bytes/<n>` anywhere in the path). */
export const download = (bytes: number) => `/api/bytes/${bytes}`;

export const AUDIENCE = 'https://api.bench.test';
export const GW_CLIENT_ID = 'phantom-gateway';
export const GW_SECRET = 'bench-introspection-secret-0123456789';
/** 48 characters: the HMAC key for cache tags (a bench-only value, never a real secret). */
export const CACHE_KEY = 'bench-cache-key-'.padEnd(48, 'x');

export interface Contender {
  name: string;
  /** One line for the report: what this contender is. */
  description: string;
  /** Origin, e.g. http://127.0.0.1:4321 */
  url: string;
  /** Fixed request headers (a single warmed token). */
  headers?: Record<string, string>;
  /** Per-request tokens: a file of tokens, used once each (miss) or round-robin (L2 pool). */
  tokens?: TokenPool;
  /** Gateway stdout+stderr (JSON log lines), for the cache-level check. */
  logFile?: string;
  /** Gateway admin origin (readyz). */
  adminUrl?: string;
  pid?: number;
  stop(): Promise<void>;
}

export interface TokenPool {
  file: string;
  /** true: round-robin over the file (L2 pool); false: each token once (miss). */
  cycle: boolean;
  /** Next unused token in the file (miss only). */
  offset: number;
  /** Makes sure `count` unused tokens exist from `offset` on (registers more, rewrites the file). */
  ensure?(count: number): void;
}

export interface SharedEnv {
  tmpDir: string;
  serverCpus?: string;
  /** --profile: each Node contender writes a V8 CPU profile (`--cpu-prof`) into `<profileDir>/<name>/` on exit. */
  profileDir?: string;
  upstreamUrl: string;
  redisUrl: string;
  stub: CurityStub;
}

/** NODE_OPTIONS asking Node for a CPU profile of the whole process life (written at exit), when profiling. */
function profileEnv(env: { profileDir?: string }, name: string): NodeJS.ProcessEnv {
  if (env.profileDir === undefined) return {};
  return { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${join(env.profileDir, name)}` };
}

/** Starts a bench helper script (upstream, node-proxy, express-proxy) as its own pinned process. */
export async function startScript(
  name: string,
  script: string,
  args: string[],
  env: { serverCpus?: string; tmpDir: string; profileDir?: string },
): Promise<{ url: string; child: ChildProcess; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawnTracked(
    process.execPath,
    [...NODE_FLAGS, resolve(import.meta.dirname, script), '--port', String(port), ...args],
    { name, cpus: env.serverCpus, logFile: join(env.tmpDir, `${name}.log`), env: profileEnv(env, name) },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}${ITEM_PATH}`, name, { child, timeoutMs: 20_000 });
  return { url, child, stop: () => stopProcess(child) };
}

export async function startProxyContenders(env: SharedEnv): Promise<Contender[]> {
  const node = await startScript('node-proxy', 'node-proxy.ts', ['--upstream', env.upstreamUrl], env);
  const exp = await startScript('express-proxy', 'express-proxy.ts', ['--upstream', env.upstreamUrl], env);
  return [
    {
      name: 'node-proxy',
      description: 'minimal node:http proxy adding one header, keep-alive upstream agent (the Node limit)',
      url: node.url,
      pid: node.child.pid,
      stop: node.stop,
    },
    {
      name: 'express-proxy',
      description: 'express 5 + http-proxy-middleware 4, no auth (the stack limit)',
      url: exp.url,
      pid: exp.child.pid,
      stop: exp.stop,
    },
  ];
}

/** The real gateway (`bin/phantom-gateway serve`) with `config` written as YAML; resolves when ready. */
async function startGatewayProcess(
  name: string,
  config: Record<string, unknown>,
  env: SharedEnv,
): Promise<{ url: string; adminUrl: string; logFile: string; child: ChildProcess }> {
  const [port, adminPort] = [await freePort(), await freePort()];
  const cfg = {
    ...config,
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: adminPort },
  };
  const file = join(env.tmpDir, `${name}.yaml`);
  writeFileSync(file, stringify(cfg));
  const logFile = join(env.tmpDir, `${name}.log`);
  // LOG_LEVEL is left at its default (info: one access line per request), written to a file.
  const child = spawnTracked(GATEWAY_BIN, ['serve', '--config', file], {
    name,
    cpus: env.serverCpus,
    cwd: ROOT,
    env: {
      BENCH_GW_SECRET: GW_SECRET,
      PHANTOM_CACHE_KEY: CACHE_KEY,
      LOG_LEVEL: undefined,
      ...profileEnv(env, name),
    },
    logFile,
  });
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  // Ready = token service metadata known and Redis connected (an unconnected Redis is a miss).
  await waitForHttp(`${adminUrl}/readyz`, name, {
    child,
    timeoutMs: 60_000,
    ok: (status, body) => status === 200 && body.includes('"redis":"ready"'),
  });
  return { url: `http://127.0.0.1:${port}`, adminUrl, logFile, child };
}

const apiRoute = (upstream: string) => ({
  name: 'api',
  match: { pathPrefix: '/api' },
  upstream,
  scopes: ['read'],
});

/** Registers a fresh opaque token at the stub (accept-jwt: the stub signs a JWT for it). */
function stubToken(stub: CurityStub): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'bench-user', aud: AUDIENCE, scope: 'read' });
  return t;
}

/** Sends one request per token, `parallel` at a time, and checks each answered 200 (warms the caches). */
export async function warmTokens(url: string, tokens: readonly string[], parallel = 16): Promise<void> {
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < tokens.length) {
      const t = tokens[next++]!;
      const res = await fetch(url, {
        headers: { authorization: `Bearer ${t}` },
        signal: AbortSignal.timeout(10_000),
      });
      await res.arrayBuffer();
      if (res.status !== 200) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, tokens.length) }, worker));
  if (failed > 0) throw new Error(`warming ${url}: ${failed} of ${tokens.length} requests were not 200`);
}

function acceptJwtConfig(env: SharedEnv, extra: { maxEntries?: number; routes?: unknown[] } = {}) {
  return {
    tokenService: {
      issuer: env.stub.issuer,
      clientId: GW_CLIENT_ID,
      clientSecret: '${BENCH_GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 5000,
    },
    jwt: { audience: AUDIENCE },
    cache: {
      redis: { url: env.redisUrl },
      ...(extra.maxEntries !== undefined ? { memory: { maxEntries: extra.maxEntries } } : {}),
    },
    routes: extra.routes ?? [apiRoute(env.upstreamUrl)],
  };
}

function gatewayContender(
  name: string,
  description: string,
  gw: Awaited<ReturnType<typeof startGatewayProcess>>,
  more: Partial<Contender>,
): Contender {
  return {
    name,
    description,
    url: gw.url,
    adminUrl: gw.adminUrl,
    logFile: gw.logFile,
    pid: gw.child.pid,
    stop: () => stopProcess(gw.child, 15_000),
    ...more,
  };
}

/** pg-l1: accept-jwt, one warmed token: every measured request is an L1 hit. */
export async function startPgL1(env: SharedEnv, name = 'pg-l1', routeCount = 1): Promise<Contender> {
  const routes: unknown[] = [];
  // 10 000 routes: distinct prefixes; the measured route comes last (worst case for a linear scan).
  for (let i = 0; i < routeCount - 1; i++) {
    routes.push({ ...apiRoute(env.upstreamUrl), name: `svc-${i}`, match: { pathPrefix: `/svc-${i}/v1` } });
  }
  routes.push(apiRoute(env.upstreamUrl));
  const gw = await startGatewayProcess(name, acceptJwtConfig(env, { routes }), env);
  const token = stubToken(env.stub);
  await warmTokens(`${gw.url}${ITEM_PATH}`, [token]);
  return gatewayContender(
    name,
    routeCount === 1
      ? 'phantom-gateway accept-jwt, L1 hit (one warmed token), Redis configured'
      : `pg-l1 with ${routeCount.toLocaleString('en-US')} routes in the config (the measured route is the last one)`,
    gw,
    { headers: { authorization: `Bearer ${token}` } },
  );
}

/** pg-l2: L1 of one entry and a pool of warmed tokens used round-robin: L1 misses, Redis hits. */
export async function startPgL2(env: SharedEnv, poolSize = 200): Promise<Contender> {
  const gw = await startGatewayProcess('pg-l2', acceptJwtConfig(env, { maxEntries: 1 }), env);
  const tokens = Array.from({ length: poolSize }, () => stubToken(env.stub));
  await warmTokens(`${gw.url}${ITEM_PATH}`, tokens, 1);
  const file = join(env.tmpDir, 'pg-l2.tokens');
  writeFileSync(file, `${tokens.join('\n')}\n`);
  return gatewayContender(
    'pg-l2',
    `phantom-gateway accept-jwt, L2 hit: cache.memory.maxEntries 1, ${poolSize} warmed tokens round-robin`,
    gw,
    { tokens: { file, cycle: true, offset: 0 } },
  );
}

/** pg-miss: a fresh token per request (registered at the stub in advance): introspection every time. */
export async function startPgMiss(env: SharedEnv): Promise<Contender> {
  const gw = await startGatewayProcess('pg-miss', acceptJwtConfig(env), env);
  const file = join(env.tmpDir, 'pg-miss.tokens');
  const tokens: string[] = [];
  const pool: TokenPool = {
    file,
    cycle: false,
    offset: 0,
    ensure(count) {
      const missing = pool.offset + count - tokens.length;
      if (missing <= 0) return;
      for (let i = 0; i < missing; i++) tokens.push(stubToken(env.stub));
      writeFileSync(file, `${tokens.join('\n')}\n`);
    },
  };
  return gatewayContender(
    'pg-miss',
    'phantom-gateway accept-jwt, a fresh token per request: introspection (stub signs an ES256 JWT) + Redis lock/fill',
    gw,
    { tokens: pool },
  );
}

/** pg-mint-l1: mode mint against the real oidc-provider token service, one warmed token (L1 hit). */
export async function startPgMintL1(
  env: SharedEnv,
): Promise<{ contender: Contender; tokenService: DevTokenService }> {
  const ts = await startDevTokenService({
    host: '127.0.0.1',
    port: await freePort(),
    clients: [
      { client_id: GW_CLIENT_ID, client_secret: GW_SECRET, grant_types: [] },
      { client_id: 'bench-client', client_secret: 'bench-client-secret', scope: 'read' },
    ],
    scopes: ['read'],
    accessTokenTtlSeconds: 3600,
    introspectionClientId: GW_CLIENT_ID,
  });
  try {
    const keysFile = join(env.tmpDir, 'mint-keys.json');
    await generateSigningKeysFile(keysFile);
    const gw = await startGatewayProcess(
      'pg-mint-l1',
      {
        tokenService: {
          issuer: ts.issuer,
          clientId: GW_CLIENT_ID,
          clientSecret: '${BENCH_GW_SECRET}',
          mode: 'mint',
          timeoutMs: 5000,
        },
        jwt: {
          mint: { issuer: 'https://gateway.bench.test', signingKeysFile: keysFile, lifetimeSeconds: 3600 },
        },
        cache: { redis: { url: env.redisUrl } },
        routes: [apiRoute(env.upstreamUrl)],
      },
      env,
    );
    const token = (await ts.issueToken('bench-client', 'bench-client-secret', 'read')).access_token;
    await warmTokens(`${gw.url}${ITEM_PATH}`, [token]);
    const contender = gatewayContender(
      'pg-mint-l1',
      'phantom-gateway mode mint (oidc-provider token service), L1 hit (one warmed token)',
      gw,
      { headers: { authorization: `Bearer ${token}` } },
    );
    return { contender, tokenService: ts };
  } catch (err) {
    await ts.close();
    throw err;
  }
}

/** Byte size of a log file now (the start of the next measured run's lines). */
export function logSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** Counts the access lines' `cache` field from byte `from` on: { l1: n, l2: n, introspection: n, … }. */
export async function cacheLevels(file: string, from: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const lines = createInterface({ input: createReadStream(file, { start: from }), crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.includes('"msg":"request"')) continue;
    // Requests still in flight when the load generator stopped close unfinished (client gone).
    const level = line.includes('"completed":false')
      ? 'cut-at-end'
      : (/"cache":"([a-z0-9]+)"/.exec(line)?.[1] ?? 'none');
    counts[level] = (counts[level] ?? 0) + 1;
  }
  return counts;
}
