import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { freePort } from './free-port.ts';
import { recordOutput, recordSecret } from './leak-registry.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
export const BIN = join(ROOT, 'bin/phantom-gateway');

/** Every line any gateway process printed in this test run (for leak checks). */
export const allGatewayOutput: string[] = [];

export interface GatewayProcess {
  /** The YAML file the process was started with (tests rewrite it to exercise hot reload). */
  configFile: string;
  url: string;
  adminUrl: string;
  port: number;
  adminPort: number;
  pid: number;
  /** stdout + stderr so far. */
  output(): string;
  /** Parsed JSON log lines so far. */
  logs(): Array<Record<string, unknown>>;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  /** Sends a signal (e.g. SIGHUP) to the running process; no-op once it exited. */
  signal(name: NodeJS.Signals): void;
  exited: Promise<number | null>;
}

/** Waits (bounded) until `predicate` is true, polling every 20 ms. */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** The access log line of request `id` (written when the response closes: waited for, bounded). */
export async function accessLine(
  g: Pick<GatewayProcess, 'logs'>,
  id: string,
  timeoutMs = 5000,
): Promise<Record<string, unknown>> {
  let line: Record<string, unknown> | undefined;
  await waitFor(
    () => {
      line = g.logs().find((l) => l['msg'] === 'request' && l['requestId'] === id);
      return line !== undefined;
    },
    timeoutMs,
    `the access line of ${id}`,
  );
  return line!;
}

/** /metrics and /readyz of a running gateway, recorded for the leak check (bounded; failures ignored). */
async function recordAdminViews(adminUrl: string): Promise<void> {
  if (process.env['VITEST'] === undefined) return;
  await Promise.all(
    ['/metrics', '/readyz'].map(async (path) => {
      try {
        const res = await fetch(`${adminUrl}${path}`, { signal: AbortSignal.timeout(2000) });
        recordOutput(await res.text());
      } catch {
        // not listening (admin disabled, already stopping): nothing to record
      }
    }),
  );
}

/** Runs the CLI to completion (bounded) and returns its exit code and output. */
export function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(BIN, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`CLI ${args.join(' ')} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      allGatewayOutput.push(stdout, stderr);
      recordOutput(stdout);
      recordOutput(stderr);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/**
 * Writes `config` (a plain object; listen/admin ports filled with free ports when absent) to a
 * temp YAML file and starts the real gateway process (`bin/phantom-gateway serve`). Resolves
 * once it logged "phantom-gateway listening".
 */
export async function startGateway(
  config: Record<string, unknown>,
  opts: GatewayStartOptions = {},
): Promise<GatewayProcess> {
  // A free port found here can be taken by another test file's process before the gateway binds
  // it (test files run in parallel): a start that failed with EADDRINUSE on a port this helper
  // chose is retried with fresh ports (bounded). A port the test chose itself is never retried.
  const chosenByTest = (config['listen'] as { port?: unknown } | undefined)?.port !== undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      return await startGatewayOnce(config, opts);
    } catch (err) {
      if (chosenByTest || attempt >= 3 || !String((err as Error).message).includes('EADDRINUSE')) throw err;
    }
  }
}

export interface GatewayStartOptions {
  env?: NodeJS.ProcessEnv;
  waitForListening?: boolean;
  redisReadyTimeoutMs?: number;
  /** Write the config here (through a symlink if it is one) instead of a temp file; left in place. */
  configFile?: string;
}

async function startGatewayOnce(
  config: Record<string, unknown>,
  opts: GatewayStartOptions,
): Promise<GatewayProcess> {
  const port = await freePort();
  const adminPort = await freePort();
  const cfg = structuredClone(config);
  cfg['listen'] = { host: '127.0.0.1', port, ...(cfg['listen'] as object | undefined) };
  cfg['admin'] = { host: '127.0.0.1', port: adminPort, ...(cfg['admin'] as object | undefined) };
  const dir = opts.configFile === undefined ? mkdtempSync(join(tmpdir(), 'phantom-gw-')) : undefined;
  const file = opts.configFile ?? join(dir!, 'gateway.yaml');
  writeFileSync(file, stringify(cfg));
  for (const [k, v] of Object.entries(opts.env ?? {}))
    if (/SECRET|KEY|TOKEN|PASSWORD/i.test(k)) recordSecret(v);
  const child: ChildProcess = spawn(BIN, ['serve', '--config', file], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'debug', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const onData = (d: Buffer) => {
    out += d.toString();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((r) =>
    child.once('exit', (code) => {
      allGatewayOutput.push(out);
      recordOutput(out);
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      r(code);
    }),
  );
  let done = false;
  void exited.then(() => (done = true));
  const parsed = () =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return {};
        }
      });
  const gp: GatewayProcess = {
    configFile: file,
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    port,
    adminPort,
    pid: child.pid!,
    output: () => out,
    logs: parsed,
    exited,
    signal(name) {
      if (!done) child.kill(name);
    },
    async stop() {
      if (!done) {
        // For the whole-run leak check: what the admin listener shows at the end (metrics, readyz).
        await recordAdminViews(gp.adminUrl);
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        const code = await exited;
        clearTimeout(t);
        return code;
      }
      return exited;
    },
  };
  if (opts.waitForListening !== false) {
    try {
      await waitFor(() => done || out.includes('phantom-gateway listening'), 20_000, 'gateway to listen');
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    if (done) throw new Error(`gateway exited during startup:\n${out}`);
    if (cfg['cache'] !== undefined && (cfg['cache'] as Record<string, unknown>)['redis'] !== undefined) {
      // "listening" comes before the Redis connection is up; until then Redis is (correctly) a
      // miss. Tests about sharing through Redis want it connected: wait a bounded while for it,
      // without failing (some tests start a gateway whose Redis is meant to be unreachable).
      await waitFor(
        async () => {
          try {
            const res = await fetch(`${gp.adminUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
            return ((await res.json()) as { redis?: string }).redis === 'ready';
          } catch {
            return false;
          }
        },
        opts.redisReadyTimeoutMs ?? 5_000,
        'redis to be ready',
      ).catch(() => {});
    }
  }
  return gp;
}
