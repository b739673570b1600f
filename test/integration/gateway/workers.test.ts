import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { type GatewayProcess, runCli, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { parsePrometheusText, samplesOf } from '../../helpers/prometheus-text.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * `listen.workers` (node:cluster): the real gateway process with 2 workers sharing the public and
 * admin listeners, no Redis — each worker has its own L1, purges reach both through the primary,
 * SIGHUP reaches both, a dead worker is replaced, SIGTERM drains them all and exits 0, and a start
 * failure in the workers is the process's exit code.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'workers-gateway-secret-0123456789';
const ADMIN_TOKEN = 'workers-admin-token-0123456789';
const AUD = 'https://api.example.test';
const ENV = { GW_SECRET, ADMIN_TOKEN };

let stub: CurityStub;
let up: EchoUpstream;
let gw: GatewayProcess;
let config: Record<string, unknown>;

const logsWith = (msg: string) => gw.logs().filter((l) => l['msg'] === msg);
const introspections = (t: string) => stub.requests.filter((r) => r.body.get('token') === t).length;

function activeToken(): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', aud: AUD, scope: 'read' });
  return t;
}

/** One request on a new connection (the primary hands connections to the workers in turn). */
async function call(t: string): Promise<{ status: number; id: string }> {
  const id = `w-${randomUUID()}`;
  const res = await request(`${gw.url}/api/items/1`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { status: res.status, id };
}

/** The pid of the worker that logged the access line of request `id`. */
async function servedBy(id: string): Promise<number> {
  let pid: number | undefined;
  await waitFor(
    () => {
      pid = gw.logs().find((l) => l['msg'] === 'request' && l['requestId'] === id)?.['pid'] as number;
      return pid !== undefined;
    },
    5_000,
    `the access line of ${id}`,
  );
  return pid!;
}

/** Sends requests (bounded) until both workers have served one; returns the pids seen. */
async function hitBothWorkers(t: string, max = 40): Promise<Set<number>> {
  const pids = new Set<number>();
  for (let i = 0; i < max && pids.size < 2; i++) {
    const { status, id } = await call(t);
    expect(status).toBe(200);
    pids.add(await servedBy(id));
  }
  return pids;
}

function workerPids(): number[] {
  const line = logsWith('phantom-gateway workers listening').at(-1);
  return (line?.['pids'] as number[] | undefined) ?? [];
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

beforeAll(async () => {
  [stub, up] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
  ]);
  config = {
    listen: { workers: 2 },
    admin: { token: '${ADMIN_TOKEN}' },
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 1000,
    },
    jwt: { audience: AUD },
    routes: [{ name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] }],
  };
  gw = await startGateway(config, { env: ENV, waitForListening: false });
  await waitFor(
    () => logsWith('phantom-gateway workers listening').length > 0,
    30_000,
    'both workers to listen',
  );
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await Promise.all([stub?.close(), up?.close()]);
});

describe('listen.workers: 2', () => {
  it('runs two worker processes that both serve the public listener', async () => {
    const pids = workerPids();
    expect(pids).toHaveLength(2);
    expect(pids).not.toContain(gw.pid);
    for (const pid of pids) expect(alive(pid)).toBe(true);
    const t = activeToken();
    const served = await hitBothWorkers(t);
    expect([...served].sort()).toEqual([...pids].sort());
    // Without Redis each worker has its own L1: at most one introspection per worker.
    expect(introspections(t)).toBeGreaterThanOrEqual(1);
    expect(introspections(t)).toBeLessThanOrEqual(2);
    // Both workers answer the admin listener too.
    const ready = await request(`${gw.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
  });

  it('answers /metrics from any worker with the sum over both workers', async () => {
    const t = activeToken();
    const pids = await hitBothWorkers(t);
    expect(pids.size).toBe(2);
    // Requests of this test, per worker (each pid's access lines with this token's requests are
    // not distinguishable by token, so compare totals: the aggregate counts every worker's lines).
    const accessLines = gw.logs().filter((l) => l['msg'] === 'request').length;
    for (let i = 0; i < 4; i++) {
      // Several scrapes on new connections: whichever worker answers, the figures are the sum.
      const res = await request(`${gw.adminUrl}/metrics`);
      expect(res.status).toBe(200);
      const families = parsePrometheusText(res.body);
      const total = samplesOf(families, 'phantom_gateway_requests_total').reduce((a, x) => a + x.value, 0);
      expect(total).toBeGreaterThanOrEqual(accessLines);
      const info = samplesOf(families, 'phantom_gateway_config_info');
      expect(info).toHaveLength(1);
      expect(info[0]!.value).toBe(1);
    }
  });

  it('applies an admin purge in every worker (relayed by the primary, no Redis)', async () => {
    const t = activeToken();
    await hitBothWorkers(t);
    const before = introspections(t);
    expect(before).toBeLessThanOrEqual(2);
    const purge = await request(`${gw.adminUrl}/cache/purge`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ token: t }),
    });
    expect(purge.status).toBeLessThan(300);
    // The purge reached both L1s: each worker introspects the token again on its next request.
    const pids = await hitBothWorkers(t);
    expect(pids.size).toBe(2);
    expect(introspections(t) - before).toBe(2);
  });

  it('forwards SIGHUP to every worker', async () => {
    const mark = logsWith('signal received: reloading the configuration and key material').length;
    gw.signal('SIGHUP');
    await waitFor(
      () => logsWith('signal received: reloading the configuration and key material').length >= mark + 2,
      10_000,
      'both workers to reload',
    );
    const pids = new Set(
      logsWith('signal received: reloading the configuration and key material')
        .slice(mark)
        .map((l) => l['pid']),
    );
    expect([...pids].sort()).toEqual([...workerPids()].sort());
    expect(alive(gw.pid)).toBe(true);
  });

  it('replaces a worker that dies, and keeps serving meanwhile', async () => {
    const [victim, other] = workerPids();
    process.kill(victim!, 'SIGKILL');
    await waitFor(
      () => logsWith('a worker died: starting a new one').length > 0,
      10_000,
      'the primary to notice',
    );
    // Requests in the meantime still succeed (the other worker takes them).
    const t = activeToken();
    for (let i = 0; i < 5; i++) expect((await call(t)).status).toBe(200);
    await waitFor(
      () => gw.logs().filter((l) => l['msg'] === 'phantom-gateway listening').length >= 3,
      20_000,
      'the replacement worker to listen',
    );
    const replacement = gw
      .logs()
      .filter((l) => l['msg'] === 'phantom-gateway listening')
      .at(-1)!['pid'] as number;
    expect(replacement).not.toBe(victim);
    expect(alive(replacement)).toBe(true);
    expect(alive(other!)).toBe(true);
    const served = await hitBothWorkers(activeToken());
    expect([...served].sort()).toEqual([other!, replacement].sort());
  }, 40_000);

  it('drains every worker on SIGTERM and exits 0', async () => {
    const pids = [
      ...new Set(
        gw
          .logs()
          .filter((l) => l['msg'] === 'phantom-gateway listening')
          .map((l) => l['pid'] as number),
      ),
    ];
    const code = await gw.stop();
    expect(code).toBe(0);
    for (const pid of pids) expect(alive(pid)).toBe(false);
  }, 30_000);
});

describe('a start failure in the workers', () => {
  it('exits 2 when the port is in use, without restarting workers forever', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as { port: number }).port;
    try {
      const failing = await startGateway(
        { ...config, listen: { workers: 2, host: '127.0.0.1', port } },
        { env: ENV, waitForListening: false },
      );
      const code = await Promise.race([
        failing.exited,
        new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000)),
      ]);
      if (code === 'hung') await failing.stop();
      expect(code).toBe(2);
      expect(failing.logs().some((l) => l['msg'] === 'a worker failed to start: stopping')).toBe(true);
    } finally {
      blocker.close();
    }
  }, 30_000);

  it('validate accepts auto and a number, and names the path of a bad value', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'phantom-workers-'));
    try {
      const check = async (workers: unknown) => {
        const file = join(dir, `w-${String(workers)}.yaml`);
        writeFileSync(file, stringify({ ...config, listen: { workers } }));
        return runCli(['validate', '--config', file], ENV);
      };
      expect((await check('auto')).code).toBe(0);
      expect((await check(4)).code).toBe(0);
      for (const bad of [0, 65, 'many']) {
        const r = await check(bad);
        expect(r.code).toBe(1);
        expect(r.stdout + r.stderr).toContain('listen.workers');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
