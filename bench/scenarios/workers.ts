import { mkdtempSync, rmSync } from 'node:fs';
import { cpus as machineCpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCurityStub } from '../../test/helpers/curity-stub.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../test/helpers/gateway-process.ts';
import { AUDIENCE, GW_CLIENT_ID, GW_SECRET, ITEM_PATH, startScript } from '../lib/contenders.ts';
import { round1 } from '../lib/http-client.ts';
import { runLoad } from '../lib/load.ts';
import { pinProcess, processCpuMs } from '../lib/procs.ts';
import { median } from '../lib/stats.ts';
import type { BenchOptions, CountResult } from '../lib/types.ts';

/**
 * `listen.workers` scaling (issue 6): the same L1-hit load against phantom-gateway with 1 worker
 * (no cluster) and with one worker per CPU, interleaved over the rounds. Nothing is pinned here —
 * the gateway's processes may use every CPU, as they would in production — so the upstream and the
 * load generator share the CPUs with it: on a 2-CPU machine this shows what a second worker buys
 * when the machine has no spare core, not the ideal N× of a dedicated host.
 */

const CACHE_KEY = 'bench-workers-cache-key-'.padEnd(48, 'w');

export async function run(opts: BenchOptions): Promise<CountResult[]> {
  // Every CPU of the machine (the runner's own affinity is the server CPUs only).
  const cpus = machineCpus().length;
  const all = `0-${cpus - 1}`;
  const tmpDir = mkdtempSync(join(tmpdir(), 'phantom-bench-workers-'));
  const stub = await startCurityStub({
    clientId: GW_CLIENT_ID,
    clientSecret: GW_SECRET,
    jwtLifetimeSeconds: 3600,
  });
  const upstream = await startScript('workers-upstream', 'upstream.ts', [], { tmpDir });
  const gateways: Array<{ workers: number; gw: GatewayProcess; pids: number[] }> = [];
  try {
    for (const workers of [1, cpus]) {
      const gw = await startGateway(
        {
          listen: { workers },
          tokenService: {
            issuer: stub.issuer,
            clientId: GW_CLIENT_ID,
            clientSecret: '${BENCH_GW_SECRET}',
            mode: 'accept-jwt',
            timeoutMs: 5000,
          },
          jwt: { audience: AUDIENCE },
          routes: [{ name: 'api', match: { pathPrefix: '/api' }, upstream: upstream.url, scopes: ['read'] }],
        },
        {
          env: { BENCH_GW_SECRET: GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY, LOG_LEVEL: 'info' },
          waitForListening: false,
        },
      );
      const listening = workers === 1 ? 'phantom-gateway listening' : 'phantom-gateway workers listening';
      await waitFor(
        () => gw.logs().some((l) => l['msg'] === listening),
        30_000,
        `${workers} worker(s) to listen`,
      );
      const workerPids =
        workers === 1
          ? []
          : ((gw.logs().find((l) => l['msg'] === listening)?.['pids'] as number[] | undefined) ?? []);
      const pids = [gw.pid, ...workerPids];
      // The runner is pinned to the server CPUs and its children inherit that: give them every CPU.
      for (const pid of pids) pinProcess(pid, all);
      gateways.push({ workers, gw, pids });
    }
    const token = stub.newToken();
    stub.register(token, { sub: 'bench-user', aud: AUDIENCE, scope: 'read' });
    const spec = (gw: GatewayProcess, durationSeconds: number) => ({
      url: `${gw.url}${ITEM_PATH}`,
      headers: { authorization: `Bearer ${token}` },
      connections: opts.connections,
      durationSeconds,
      keepAlive: true,
    });
    // Warm-up: JIT, and the token into every worker's L1.
    for (const g of gateways) await runLoad(spec(g.gw, 1), { tmpDir });
    const rps = new Map<number, number[]>();
    const cpuUs = new Map<number, number[]>();
    let bad = 0;
    for (let round = 0; round < opts.rounds; round++) {
      for (const g of gateways) {
        const cpu = () => g.pids.reduce((a, pid) => a + (processCpuMs(pid) ?? 0), 0);
        const before = cpu();
        const s = await runLoad(spec(g.gw, opts.durationSeconds), { tmpDir });
        const after = cpu();
        bad += s.errors + s.non2xx + s.timeouts;
        rps.set(g.workers, [...(rps.get(g.workers) ?? []), s.rps]);
        if (s.requests > 0)
          cpuUs.set(g.workers, [...(cpuUs.get(g.workers) ?? []), ((after - before) * 1000) / s.requests]);
      }
    }
    const one = median(rps.get(1) ?? [0]);
    const many = median(rps.get(cpus) ?? [0]);
    return [
      {
        scenario: 'workers',
        contender: `pg-l1, listen.workers 1 vs ${cpus}`,
        figures: {
          cpus,
          rpsWorkers1: Math.round(one),
          [`rpsWorkers${cpus}`]: Math.round(many),
          scaling: one > 0 ? Math.round((many / one) * 100) / 100 : 0,
          cpuUsPerRequestWorkers1: round1(median(cpuUs.get(1) ?? [0])),
          [`cpuUsPerRequestWorkers${cpus}`]: round1(median(cpuUs.get(cpus) ?? [0])),
          errors: bad,
        },
        note:
          `unpinned (gateway, upstream and load generator share the ${cpus} CPUs); ${opts.connections} connections, ` +
          `${opts.rounds} × ${opts.durationSeconds} s interleaved; CPU µs/request counts the primary and every worker`,
      },
    ];
  } finally {
    await Promise.allSettled(gateways.map((g) => g.gw.stop()));
    await upstream.stop();
    await stub.close();
    rmSync(tmpDir, { recursive: true, force: true });
  }
}
