import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, type as osType, release, tmpdir, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { type CurityStub, startCurityStub } from '../test/helpers/curity-stub.ts';
import { type RedisServerHandle, startRedisServer } from '../test/helpers/redis-server.ts';
import {
  AUDIENCE,
  type Contender,
  cacheLevels,
  download,
  GW_CLIENT_ID,
  GW_SECRET,
  ITEM_PATH,
  logSize,
  ROOT,
  type SharedEnv,
  startPgL1,
  startPgL2,
  startPgMintL1,
  startPgMiss,
  startProxyContenders,
  startScript,
  warmTokens,
} from './lib/contenders.ts';
import { type LoadSample, type LoadSpec, runLoad } from './lib/load.ts';
import {
  defaultCpuSplit,
  hasTaskset,
  installCleanupHooks,
  killAllSync,
  livePids,
  pinSelf,
  processCpuMs,
} from './lib/procs.ts';
import { summariseProfileDir } from './lib/profile-summary.ts';
import {
  costLines,
  evaluateGoals,
  markdownReport,
  type RunInfo,
  SCENARIO_TITLES,
  svgChart,
  terminalTable,
} from './lib/report.ts';
import { median, spread } from './lib/stats.ts';
import type { BenchOptions, CountResult, LoadResult } from './lib/types.ts';

/**
 * `npm run bench`: every contender in one run, interleaved over rounds, on loopback; the
 * report goes to bench/results/<date>.md / .json / .svg and the tables to stdout.
 *
 *   npm run bench                      steady keep-alive 5 rounds × 3 s, the rest 3 × 5 s; 50 connections
 *   npm run bench -- --quick           1 round × 2 s (a smoke check; figures are not a measurement)
 *   npm run bench -- --only pg-l1,pg-l2,burst
 *   npm run bench -- --rounds 5 --duration 10 --connections 100
 *
 * Every process it starts is tracked by PID and killed on exit, Ctrl-C and errors.
 */

const USAGE = `usage: npm run bench -- [--quick] [--only name,name…] [--rounds N] [--duration S] [--connections N] [--profile]
  contenders: direct node-proxy express-proxy nginx-authreq pg-l1 pg-l2 pg-miss pg-mint-l1 pg-l1-10k-routes
  scenarios:  steady-keepalive no-keepalive upload-1mib download-1mib (load; naming any keeps only those)
              burst flood workers (count scenarios; workers: listen.workers 1 vs one per CPU)
  defaults:   steady keep-alive 5 rounds × 3 s, the other load scenarios 3 rounds × 5 s;
              --rounds / --duration set every scenario
  --only keeps direct and express-proxy (the ratio baselines), and pg-l1 with pg-l1-10k-routes.
  --profile writes a V8 CPU profile per Node contender to bench/results/profiles/<date>/ and prints
            where each spent its time (self time by function and by package).`;

const ONE_MIB = 1024 * 1024;
/** Contenders of the no-keep-alive and 1 MiB scenarios (the brief: the proxies and the L1 hit). */
const STREAM_SET = new Set(['direct', 'node-proxy', 'express-proxy', 'pg-l1']);
const LOAD_SCENARIOS = ['steady-keepalive', 'no-keepalive', 'upload-1mib', 'download-1mib'];
const ALL = [
  'direct',
  'node-proxy',
  'express-proxy',
  'nginx-authreq',
  'pg-l1',
  'pg-l2',
  'pg-miss',
  'pg-mint-l1',
  'pg-l1-10k-routes',
  'burst',
  'flood',
  'workers',
  ...LOAD_SCENARIOS,
];
/** Bound of one of B2's count scenarios (they bound their own waits too). */
const COUNT_SCENARIO_BOUND_MS = 240_000;

function parseOptions() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      rounds: { type: 'string' },
      duration: { type: 'string' },
      connections: { type: 'string' },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const int = (v: string | undefined, dflt: number, name: string) => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
    return n;
  };
  const quick = values.quick === true;
  const selected = new Set(values.only === undefined ? ALL : values.only.split(',').map((s) => s.trim()));
  for (const s of selected) if (!ALL.includes(s)) throw new Error(`--only: unknown name ${s}\n${USAGE}`);
  if (values.only !== undefined) {
    selected.add('direct');
    selected.add('express-proxy');
    if (selected.has('pg-l1-10k-routes')) selected.add('pg-l1');
  }
  const split = defaultCpuSplit(MACHINE_CPUS);
  const bench: BenchOptions = {
    durationSeconds: int(values.duration, quick ? 2 : 5, 'duration'),
    rounds: int(values.rounds, quick ? 1 : 3, 'rounds'),
    steadyDurationSeconds: int(values.duration, quick ? 2 : 3, 'duration'),
    steadyRounds: int(values.rounds, quick ? 1 : 5, 'rounds'),
    connections: int(values.connections, 50, 'connections'),
    ...(split && hasTaskset ? split : {}),
  };
  return { bench, quick, selected, profile: values.profile === true };
}

/** Imports one of B2's modules if it exists; undefined when the file is not there. */
async function optionalModule<T>(rel: string): Promise<T | undefined> {
  const file = resolve(import.meta.dirname, rel);
  if (!existsSync(file)) return undefined;
  return (await import(file)) as T;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

interface Scenario {
  name: keyof typeof SCENARIO_TITLES;
  contenders: Contender[];
  rounds: number;
  spec(c: Contender): LoadSpec;
}

/** CPUs of the machine, read before the runner pins itself (availableParallelism follows the affinity). */
const MACHINE_CPUS = availableParallelism();

async function main(): Promise<void> {
  const started = new Date();
  const { bench, quick, selected, profile } = parseOptions();
  // --profile: CPU profiles of every Node contender, summarised after the run (bench/results/profiles/).
  const profileDir = profile
    ? join(ROOT, 'bench/results/profiles', started.toISOString().slice(0, 10))
    : undefined;
  const tmpDir = mkdtempSync(join(tmpdir(), 'phantom-bench-'));
  const contenders: Contender[] = [];
  const inProcess: Array<() => Promise<unknown>> = [];
  const notes: string[] = [];
  let stub: CurityStub | undefined;
  let redis: RedisServerHandle | undefined;

  const stopAll = async () => {
    await Promise.allSettled(contenders.map((c) => c.stop()));
    await Promise.allSettled(inProcess.map((f) => f()));
    await redis?.stop();
    await stub?.close();
    rmSync(tmpDir, { recursive: true, force: true });
  };
  installCleanupHooks(stopAll);
  try {
    await benchmark();
  } finally {
    await stopAll();
    const left = livePids();
    if (left.length > 0) {
      console.error(`bench: processes still running after stop: ${left.join(', ')}; killing`);
      killAllSync();
    }
  }

  async function benchmark(): Promise<void> {
    const { serverCpus, loadCpus } = bench;
    // In-process servers (token service stub, oidc-provider) share the servers' CPUs, never the load CPU.
    const pinned = serverCpus !== undefined && pinSelf(serverCpus);
    const pinning = pinned
      ? `Pinned with taskset: servers (every contender, upstream, redis-server, the runner with its in-process token services) on CPU ${serverCpus}, the load generator on CPU ${loadCpus}.`
      : 'Not pinned (taskset missing or fewer than 2 CPUs): load generator and servers share the CPUs.';
    console.error(`bench: ${pinning}`);
    const log = (msg: string) => console.error(`bench: ${msg}`);

    // Shared pieces: the lean upstream, Redis, the Curity-style token service stub.
    const upstream = await startScript('upstream', 'upstream.ts', [], { serverCpus, tmpDir });
    inProcess.push(upstream.stop);
    redis = await startRedisServer();
    if (serverCpus !== undefined && hasTaskset)
      spawnSync('taskset', ['-pc', serverCpus, String(redis.pid)], { stdio: 'ignore' });
    stub = await startCurityStub({
      clientId: GW_CLIENT_ID,
      clientSecret: GW_SECRET,
      jwtLifetimeSeconds: 3600,
    });
    const env: SharedEnv = {
      tmpDir,
      serverCpus,
      upstreamUrl: upstream.url,
      redisUrl: redis.url,
      stub,
      ...(profileDir !== undefined ? { profileDir } : {}),
    };

    const want = (n: string) => selected.has(n);
    if (want('direct')) {
      contenders.push({
        name: 'direct',
        description: 'client → the lean sample upstream (node:http, small JSON body), no proxy: the ceiling',
        url: upstream.url,
        pid: upstream.child.pid,
        stop: async () => {},
      });
    }
    if (want('node-proxy') || want('express-proxy')) {
      const proxies = await startProxyContenders(env);
      contenders.push(...proxies.filter((p) => want(p.name)));
      for (const p of proxies) if (!want(p.name)) await p.stop();
    }
    const skipped: LoadResult[] = [];
    if (want('nginx-authreq')) {
      // ── B2 call site: bench/scenarios/nginx.ts startNginxAuthReq(NginxAuthReqOptions) ──
      type NginxModule = typeof import('./scenarios/nginx.ts');
      const mod = await optionalModule<NginxModule>('scenarios/nginx.ts');
      const skip = (why: string) =>
        skipped.push({
          contender: 'nginx-authreq',
          scenario: 'steady-keepalive',
          rps: { median: 0, min: 0, max: 0 },
          latencyMs: { p50: 0, p99: 0, p999: 0 },
          errors: 0,
          rounds: 0,
          note: `skipped: ${why}`,
        });
      if (mod === undefined) skip('module not available');
      else {
        stub.jwtHeader = mod.NGINX_JWT_HEADER; // nginx's auth_request reads headers only; the gateways ignore it
        const basic = Buffer.from(`${GW_CLIENT_ID}:${GW_SECRET}`).toString('base64');
        const ngx = await mod.startNginxAuthReq({
          upstreamUrl: upstream.url,
          introspectionUrl: stub.introspectionEndpoint,
          clientAuthHeader: `Basic ${basic}`,
          serverCpus,
          cacheTtlSeconds: 900,
        });
        if ('skipped' in ngx) skip(ngx.skipped);
        else {
          inProcess.push(ngx.stop);
          const t = stub.newToken();
          stub.register(t, { sub: 'bench-user', aud: AUDIENCE, scope: 'read' });
          await warmTokens(`${ngx.url}${ITEM_PATH}`, [t]);
          contenders.push({
            name: 'nginx-authreq',
            description: mod.NGINX_AUTHREQ_NOTE,
            url: ngx.url,
            pid: ngx.pid,
            headers: { authorization: `Bearer ${t}` },
            stop: async () => {},
          });
        }
      }
    }
    if (want('pg-l1')) contenders.push(await startPgL1(env));
    if (want('pg-l2')) contenders.push(await startPgL2(env));
    if (want('pg-miss')) contenders.push(await startPgMiss(env));
    if (want('pg-mint-l1')) {
      const { contender, tokenService } = await startPgMintL1(env);
      inProcess.push(() => tokenService.close());
      contenders.push(contender);
    }
    if (want('pg-l1-10k-routes')) contenders.push(await startPgL1(env, 'pg-l1-10k-routes', 10_000));
    log(`contenders up: ${contenders.map((c) => c.name).join(', ')}`);

    const loadOpts = { loadCpus, tmpDir };
    const streamConnections = Math.min(10, bench.connections);
    const small = (
      c: Contender,
      keepAlive: boolean,
      connections = bench.connections,
      durationSeconds = bench.durationSeconds,
    ): LoadSpec => ({
      url: `${c.url}${ITEM_PATH}`,
      headers: c.headers,
      connections,
      durationSeconds,
      keepAlive,
      ...(c.tokens
        ? { tokensFile: c.tokens.file, tokenOffset: c.tokens.offset, tokensCycle: c.tokens.cycle }
        : {}),
    });
    const scenarios: Scenario[] = [
      {
        name: 'steady-keepalive',
        contenders,
        rounds: bench.steadyRounds,
        spec: (c) => small(c, true, bench.connections, bench.steadyDurationSeconds),
      },
      {
        name: 'no-keepalive',
        contenders: contenders.filter((c) => STREAM_SET.has(c.name)),
        rounds: bench.rounds,
        spec: (c) => small(c, false),
      },
      {
        name: 'upload-1mib',
        contenders: contenders.filter((c) => STREAM_SET.has(c.name)),
        rounds: bench.rounds,
        spec: (c) => ({ ...small(c, true, streamConnections), bodyBytes: ONE_MIB }),
      },
      {
        name: 'download-1mib',
        contenders: contenders.filter((c) => STREAM_SET.has(c.name)),
        rounds: bench.rounds,
        spec: (c) => ({ ...small(c, true, streamConnections), url: `${c.url}${download(ONE_MIB)}` }),
      },
    ];

    /** One measured run; the miss pool gets enough fresh tokens first, the stub's records are dropped after. */
    const measure = async (
      c: Contender,
      spec: LoadSpec,
    ): Promise<{ sample: LoadSample; levels?: Record<string, number>; cpuUs?: number; upCpuUs?: number }> => {
      if (c.tokens?.ensure) {
        // Enough unused tokens for a generous request rate; exhaustion is reported, never hidden.
        c.tokens.ensure(20_000 * spec.durationSeconds);
        spec = { ...spec, tokenOffset: c.tokens.offset };
      }
      const from = c.logFile === undefined ? 0 : logSize(c.logFile);
      const cpuPid = c.name === 'nginx-authreq' ? undefined : c.pid;
      // The upstream's own CPU in the same slot: the unit of the host-speed-independent cost ratio.
      const upPid = cpuPid === upstream.child.pid ? undefined : upstream.child.pid;
      const cpuBefore = processCpuMs(cpuPid);
      const upBefore = processCpuMs(upPid);
      const sample = await runLoad(spec, loadOpts);
      const cpuAfter = processCpuMs(cpuPid);
      const upAfter = processCpuMs(upPid);
      const perRequest = (before?: number, after?: number) =>
        before !== undefined && after !== undefined && sample.requests > 0
          ? ((after - before) * 1000) / sample.requests
          : undefined;
      const cpuUs = perRequest(cpuBefore, cpuAfter);
      const upCpuUs = perRequest(upBefore, upAfter);
      if (c.tokens && !c.tokens.cycle) c.tokens.offset += sample.tokensUsed;
      stub!.requests.length = 0;
      // The access line is written when the response closes: give the last ones a moment.
      let levels: Record<string, number> | undefined;
      if (c.logFile !== undefined) {
        await new Promise((r) => setTimeout(r, 200));
        levels = await cacheLevels(c.logFile, from);
      }
      return {
        sample,
        levels,
        ...(cpuUs !== undefined ? { cpuUs } : {}),
        ...(upCpuUs !== undefined && upCpuUs > 0 ? { upCpuUs } : {}),
      };
    };

    // Warm-up (JIT, pools, connections): one short unrecorded run per contender.
    for (const c of contenders) await measure(c, { ...small(c, true), durationSeconds: 1 });
    log('warm-up done');

    const results: LoadResult[] = [...skipped];
    /** Every round's raw sample, for the JSON (scenario → contender → rounds). */
    const raw: Record<string, Record<string, LoadSample[]>> = {};
    const namedLoad = LOAD_SCENARIOS.filter(want);
    for (const sc of scenarios) {
      if (sc.contenders.length === 0) continue;
      if (namedLoad.length > 0 && !namedLoad.includes(sc.name)) continue;
      const samples = new Map<
        string,
        Array<{ sample: LoadSample; levels?: Record<string, number>; cpuUs?: number; upCpuUs?: number }>
      >();
      for (let round = 1; round <= sc.rounds; round++) {
        // Each round starts one contender later: no contender always runs right after the same
        // neighbour (whatever one leaves behind — closing connections, flushing logs — lands on
        // a different contender every round instead of always on the same one).
        const shift = (round - 1) % sc.contenders.length;
        for (const c of [...sc.contenders.slice(shift), ...sc.contenders.slice(0, shift)]) {
          const m = await measure(c, sc.spec(c));
          samples.set(c.name, [...(samples.get(c.name) ?? []), m]);
          const perContender = raw[sc.name] ?? {};
          raw[sc.name] = perContender;
          perContender[c.name] = [...(perContender[c.name] ?? []), m.sample];
          log(
            `${sc.name} round ${round}/${sc.rounds} ${c.name}: ${Math.round(m.sample.rps)} req/s, p99 ${m.sample.latencyMs.p99} ms` +
              (m.cpuUs !== undefined ? `, ${Math.round(m.cpuUs)} µs CPU/req` : '') +
              (m.sample.errors + m.sample.non2xx > 0
                ? `, ${m.sample.errors} errors, ${m.sample.non2xx} non-2xx`
                : ''),
          );
        }
      }
      for (const c of sc.contenders) {
        const runs = samples.get(c.name) ?? [];
        const s = runs.map((r) => r.sample);
        const levels: Record<string, number> = {};
        for (const r of runs)
          for (const [k, v] of Object.entries(r.levels ?? {})) levels[k] = (levels[k] ?? 0) + v;
        const stream = sc.name === 'upload-1mib' || sc.name === 'download-1mib';
        const exhausted = s.reduce((a, x) => a + x.tokensExhausted, 0);
        const bad = s.reduce((a, x) => a + x.errors + x.non2xx + x.timeouts, 0);
        const noteParts = [
          ...(bad > 0
            ? [
                `invalid figure: ${bad} errors / non-2xx / timeouts (status codes ${JSON.stringify(s.map((x) => x.statusCodes))})`,
              ]
            : []),
          ...(exhausted > 0 ? [`token pool exhausted: ${exhausted} requests reused a token`] : []),
        ];
        results.push({
          contender: c.name,
          scenario: sc.name,
          rps: spread(s.map((x) => x.rps)),
          latencyMs: {
            p50: median(s.map((x) => x.latencyMs.p50)),
            p99: median(s.map((x) => x.latencyMs.p99)),
            p999: median(s.map((x) => x.latencyMs.p999)),
          },
          errors: bad,
          rounds: s.length,
          ...(runs.every((r) => r.cpuUs !== undefined) && runs.length > 0
            ? { cpuUsPerRequest: Math.round(median(runs.map((r) => r.cpuUs!)) * 10) / 10 }
            : {}),
          ...(runs.length > 0 && runs.every((r) => r.cpuUs !== undefined && r.upCpuUs !== undefined)
            ? { cpuPerUpstream: Math.round(median(runs.map((r) => r.cpuUs! / r.upCpuUs!)) * 100) / 100 }
            : {}),
          ...(stream
            ? {
                mibPerSec: spread(
                  s.map((x) => (sc.name === 'upload-1mib' ? x.rps : x.bytesPerSec / ONE_MIB)),
                ),
              }
            : {}),
          ...(c.logFile !== undefined && Object.keys(levels).length > 0 ? { cacheLevels: levels } : {}),
          ...(noteParts.length > 0 ? { note: noteParts.join('; ') } : {}),
        });
      }
    }

    // Free the CPUs and memory before B2's count scenarios start their own processes.
    await Promise.allSettled(contenders.map((c) => c.stop()));
    if (profileDir !== undefined) {
      // The contenders wrote their profiles on exit (whole life: warm-up and every scenario).
      const summary = summariseProfileDir(profileDir);
      writeFileSync(join(profileDir, 'summary.md'), summary);
      console.log(summary);
      log(`CPU profiles and summary.md in ${profileDir}`);
    }

    // ── B2 call sites: bench/scenarios/burst.ts and flood.ts, run(opts: BenchOptions): Promise<CountResult[]> ──
    const counts: CountResult[] = [];
    for (const name of ['burst', 'flood', 'workers'] as const) {
      if (!want(name)) continue;
      const skip = (note: string) => counts.push({ scenario: name, contender: '—', figures: {}, note });
      try {
        const mod = await optionalModule<{ run(o: BenchOptions): Promise<CountResult[]> }>(
          `scenarios/${name}.ts`,
        );
        if (mod === undefined) {
          skip('skipped: module not available');
          continue;
        }
        log(`${name}: running`);
        counts.push(...(await withTimeout(mod.run(bench), COUNT_SCENARIO_BOUND_MS, name)));
      } catch (err) {
        skip(`failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }

    const finished = new Date();
    const date = started.toISOString().slice(0, 10);
    notes.push(
      'The Curity-style token service stub (test/helpers/curity-stub.ts) and oidc-provider (pg-mint-l1) run inside the runner process, pinned with the servers. ' +
        'For the hit contenders they are off the hot path (one introspection while warming); for pg-miss the stub signs one ES256 JWT per request and is part of what is measured.',
      "Every phantom-gateway contender is the real `bin/phantom-gateway serve` as shipped, with Redis configured (one redis-server for all), LOG_LEVEL at its default (info: one JSON access line per request), stdout and stderr written to a file in the run's temp dir. The `cache level` column counts the access lines' `cache` field of the measured requests.",
      "pg-l2 and pg-miss set a different Authorization per request through autocannon's setupRequest, which costs the load generator a little (it has its own CPU).",
      'No keep-alive: autocannon 9 cannot measure it (`reconnectRate: 1` drops every response from its statistics; `Connection: close` leaves stale requests in its pipeline queue and reports ~1 s p99), so that scenario uses a bounded node:http loop in the load process: `connections` concurrent loops, each request on a fresh TCP connection (no agent, `Connection: close`).',
      `Latency percentiles are computed from every 2xx response time (float ms) autocannon reports, not from its histogram (whole milliseconds). 1 MiB scenarios use ${streamConnections} connections; upload MiB/s = completed uploads per second.`,
    );
    const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
    const info: RunInfo = {
      date,
      startedAt: started.toISOString(),
      finishedAt: finished.toISOString(),
      elapsedSeconds: (finished.getTime() - started.getTime()) / 1000,
      machine: {
        cpu: cpuModel.trim(),
        cpus: MACHINE_CPUS,
        memoryGiB: Math.round(totalmem() / 2 ** 30),
        os: `${osType()} ${release()}`,
        node: process.versions.node,
      },
      pinning,
      options: {
        connections: bench.connections,
        streamConnections,
        durationSeconds: bench.durationSeconds,
        rounds: bench.rounds,
        steadyDurationSeconds: bench.steadyDurationSeconds,
        steadyRounds: bench.steadyRounds,
        quick,
      },
      contenders: contenders.map((c) => ({ name: c.name, description: c.description })),
      notes,
    };
    const goals = evaluateGoals(results);
    const outDir = join(ROOT, 'bench/results');
    mkdirSync(outDir, { recursive: true });
    const md = markdownReport(info, results, counts, goals);
    writeFileSync(join(outDir, `${date}.md`), md);
    writeFileSync(
      join(outDir, `${date}.json`),
      `${JSON.stringify({ info, results, counts, goals, raw }, null, 2)}\n`,
    );
    writeFileSync(
      join(outDir, `${date}.svg`),
      svgChart(results, `phantom-gateway bench ${date}: steady keep-alive`),
    );

    for (const [scenario, title] of Object.entries(SCENARIO_TITLES)) {
      if (!results.some((r) => r.scenario === scenario)) continue;
      console.log(`\n${title}\n${terminalTable(results, scenario)}`);
    }
    const costs = costLines(results);
    if (costs.length > 0)
      console.log(`\nCPU per request ÷ express-proxy's (in upstream units)\n${costs.join('\n')}`);
    console.log('\nGoals');
    for (const g of goals)
      console.log(`  ${g.met === undefined ? 'n/a ' : g.met ? 'met ' : 'NOT '} ${g.goal}: ${g.measured}`);
    for (const c of counts) {
      console.log(
        `  ${c.met === undefined ? 'n/a ' : c.met ? 'met ' : 'NOT '} ${c.scenario} ${c.contender}: ${JSON.stringify(c.figures)} ${c.note ?? ''}`,
      );
    }
    console.log(
      `\nreport: ${relative(process.cwd(), join(outDir, `${date}.md`))} (+ .json, .svg), ${Math.round(info.elapsedSeconds)} s`,
    );
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    killAllSync();
    process.exit(1);
  },
);
