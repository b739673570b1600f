import { randomUUID } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { parsePrometheusText, sampleValue } from '../../helpers/prometheus-text.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Config hot reload (issue 7 part 4) with the real gateway process: SIGHUP and a change of the
 * file (written in place, replaced by rename, and Kubernetes' `..data` symlink swap) load,
 * validate and swap routes and scopes atomically; requests in flight finish on the configuration
 * that accepted them; an invalid file or a restart-only change is rejected with its problems
 * logged while the running configuration keeps serving; /readyz and phantom_gateway_config_info
 * show the active hash; a routes-only reload keeps the cache (no new introspection).
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'reload-gateway-secret-0123456789';
const AUD = 'https://api.example.test';
const ENV = { GW_SECRET };

let stub: CurityStub;
let upA: EchoUpstream;
let upB: EchoUpstream;
let gw: GatewayProcess;
let base: Record<string, unknown>;

const logsWith = (msg: string) => gw.logs().filter((l) => l['msg'] === msg);
const introspections = (t: string) => stub.requests.filter((r) => r.body.get('token') === t).length;

function activeToken(scope = 'read'): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', aud: AUD, scope });
  return t;
}

async function call(path: string, t: string) {
  const id = `r-${randomUUID()}`;
  const res = await request(`${gw.url}${path}`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { status: res.status, id, body: res.body };
}

/** The running file, parsed (it holds the listen/admin ports the helper chose). */
const currentFile = () => parse(readFileSync(gw.configFile, 'utf8')) as Record<string, unknown>;

/** Writes `cfg` as the config file: in place, or by rename (an editor's atomic save). */
function writeConfig(cfg: Record<string, unknown>, how: 'in-place' | 'rename' = 'in-place'): void {
  if (how === 'in-place') writeFileSync(gw.configFile, stringify(cfg));
  else {
    const tmp = `${gw.configFile}.tmp-${randomUUID()}`;
    writeFileSync(tmp, stringify(cfg));
    renameSync(tmp, gw.configFile);
  }
}

async function readyz(): Promise<Record<string, unknown>> {
  return (await request(`${gw.adminUrl}/readyz`)).json();
}

async function reloads(result: 'success' | 'failure'): Promise<number> {
  const text = (await request(`${gw.adminUrl}/metrics`)).body;
  return sampleValue(parsePrometheusText(text), 'phantom_gateway_config_reloads_total', { result }) ?? 0;
}

/** Waits for the n-th log line `msg` (bounded) and returns it. */
async function nth(msg: string, n: number): Promise<Record<string, unknown>> {
  await waitFor(() => logsWith(msg).length >= n, 10_000, `log line #${n} "${msg}"`);
  return logsWith(msg)[n - 1]!;
}

const routeA = () => ({ name: 'api', match: { pathPrefix: '/api' }, upstream: upA.url, scopes: ['read'] });

beforeAll(async () => {
  [stub, upA, upB] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
    startEchoUpstream(),
  ]);
  base = {
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 1000,
    },
    jwt: { audience: AUD },
    routes: [routeA()],
  };
  gw = await startGateway(base, { env: ENV });
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await Promise.all([stub?.close(), upA?.close(), upB?.close()]);
});

describe('config hot reload', () => {
  it('SIGHUP swaps the routes, keeps the cache, and shows the new hash on /readyz and /metrics', async () => {
    const t = activeToken('read reports');
    expect((await call('/api/x', t)).status).toBe(200);
    expect(introspections(t)).toBe(1);
    expect((await call('/reports/1', t)).status).toBe(404);
    const before = (await readyz())['configHash'];
    const ok = await reloads('success');

    const cfg = currentFile();
    cfg['routes'] = [
      routeA(),
      { name: 'reports', match: { pathPrefix: '/reports' }, upstream: upB.url, scopes: ['reports'] },
    ];
    writeConfig(cfg);
    // The file watch may see the write first; either way exactly one swap happens for this change.
    gw.signal('SIGHUP');
    const line = await nth('configuration reloaded', 1);
    expect(line['from']).toBe(before);

    const after = await call('/reports/1', t);
    expect(after.status).toBe(200);
    expect(upB.requests.some((r) => r.headers['x-request-id'] === after.id)).toBe(true);
    // A routes-only change keeps the L1: the token is not introspected again.
    expect((await call('/api/x', t)).status).toBe(200);
    expect(introspections(t)).toBe(1);
    const ready = await readyz();
    expect(ready['configHash']).toBe(line['to']);
    expect(ready['configHash']).not.toBe(before);
    expect(await reloads('success')).toBeGreaterThan(ok);
    const text = (await request(`${gw.adminUrl}/metrics`)).body;
    expect(
      sampleValue(parsePrometheusText(text), 'phantom_gateway_config_info', { hash: String(line['to']) }),
    ).toBe(1);
  });

  it('picks up an edited file without a signal (written in place, then replaced by rename)', async () => {
    const t = activeToken('read');
    expect((await call('/api/x', t)).status).toBe(200);
    const n = logsWith('configuration reloaded').length;
    const cfg = currentFile();
    cfg['routes'] = [{ ...routeA(), scopes: ['read', 'write'] }];
    writeConfig(cfg, 'in-place');
    const line = await nth('configuration reloaded', n + 1);
    expect(line['trigger']).toBe('file');
    expect((await call('/api/x', t)).status).toBe(403);

    cfg['routes'] = [routeA()];
    writeConfig(cfg, 'rename');
    expect((await nth('configuration reloaded', n + 2))['trigger']).toBe('file');
    expect((await call('/api/x', t)).status).toBe(200);
  });

  it('rejects an invalid file with every problem and its path, and keeps serving the running configuration', async () => {
    const t = activeToken('read');
    const hash = (await readyz())['configHash'];
    const failures = await reloads('failure');
    const msg = 'config reload rejected: the file is invalid; the running configuration stays';
    const n = logsWith(msg).length;
    const cfg = currentFile();
    try {
      writeConfig({ ...cfg, colour: 'blue', routes: [{ ...routeA(), upstream: 'not a url' }] });
      gw.signal('SIGHUP');
      const line = await nth(msg, n + 1);
      const problems = (line['problems'] as string[]).join('\n');
      expect(problems).toContain('routes[0].upstream');
      expect(problems).toContain('colour');
      expect((await call('/api/x', t)).status).toBe(200);
      expect((await readyz())['configHash']).toBe(hash);
      await waitFor(async () => (await reloads('failure')) > failures, 5_000, 'the failure to be counted');
    } finally {
      writeConfig(cfg);
    }
  });

  it('rejects a change that needs a restart (listen.port) and names the key', async () => {
    const msg =
      'config reload rejected: these keys change only with a restart; the running configuration stays';
    const n = logsWith(msg).length;
    const cfg = currentFile();
    const listen = cfg['listen'] as Record<string, unknown>;
    try {
      writeConfig({ ...cfg, listen: { ...listen, port: (listen['port'] as number) + 1 } });
      gw.signal('SIGHUP');
      const line = await nth(msg, n + 1);
      expect(line['keys']).toEqual(['listen.port']);
      expect((await call('/api/x', activeToken('read'))).status).toBe(200);
    } finally {
      writeConfig(cfg);
    }
  });

  it("follows Kubernetes' ConfigMap update: the ..data symlink swapped to a new directory", async () => {
    // The layout the kubelet writes: gateway.yaml -> ..data/gateway.yaml, ..data -> ..<timestamp>/
    const dir = mkdtempSync(join(tmpdir(), 'phantom-configmap-'));
    let proc: GatewayProcess | undefined;
    try {
      mkdirSync(join(dir, '..2026_11_23_v1'));
      symlinkSync('..2026_11_23_v1', join(dir, '..data'));
      symlinkSync('..data/gateway.yaml', join(dir, 'gateway.yaml'));
      // The helper writes the config (ports filled in) through the symlinks, into ..2026_11_23_v1/.
      proc = await startGateway(base, { env: ENV, configFile: join(dir, 'gateway.yaml') });
      const t = activeToken('read');
      const status = async () =>
        (await request(`${proc!.url}/api/x`, { headers: { authorization: `Bearer ${t}` } })).status;
      expect(await status()).toBe(200);
      const cfg = parse(readFileSync(join(dir, 'gateway.yaml'), 'utf8')) as Record<string, unknown>;
      mkdirSync(join(dir, '..2026_11_23_v2'));
      writeFileSync(
        join(dir, '..2026_11_23_v2', 'gateway.yaml'),
        stringify({ ...cfg, routes: [{ ...routeA(), scopes: ['admin'] }] }),
      );
      symlinkSync('..2026_11_23_v2', join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      const p = proc;
      await waitFor(
        () => p.logs().some((l) => l['msg'] === 'configuration reloaded' && l['trigger'] === 'file'),
        10_000,
        'the symlink swap to be picked up',
      );
      expect(await status()).toBe(403);
    } finally {
      await proc?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lets a request in flight finish on the configuration that accepted it', async () => {
    const t = activeToken('read');
    expect((await call('/api/x', t)).status).toBe(200);
    upA.behaviour = { slowMs: 1500 };
    const n = logsWith('configuration reloaded').length;
    const slow = call('/api/slow', t);
    await waitFor(() => upA.requests.some((r) => r.url === '/api/slow'), 5_000, 'the slow request upstream');
    const cfg = currentFile();
    cfg['routes'] = [{ ...routeA(), upstream: upB.url }];
    writeConfig(cfg);
    gw.signal('SIGHUP');
    await nth('configuration reloaded', n + 1);
    upA.behaviour = 'echo';
    const fresh = await call('/api/fresh', t);
    expect(fresh.status).toBe(200);
    expect(upB.requests.some((r) => r.headers['x-request-id'] === fresh.id)).toBe(true);
    // The slow one was accepted before the swap: it completes, from upstream A.
    const done = await slow;
    expect(done.status).toBe(200);
    expect(upA.requests.some((r) => r.headers['x-request-id'] === done.id)).toBe(true);
  });
});
