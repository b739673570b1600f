import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis, type RedisOptions } from 'ioredis';

/**
 * Building blocks for the Sentinel and Cluster helpers: redis-server processes started in the
 * foreground (we own their PIDs, stopped by PID), short-lived inspection clients, bounded waits.
 */

export interface RedisProcess {
  readonly port: number;
  readonly pid: number;
  /** True once the process has exited. */
  exited(): boolean;
  /** What the process printed (first 16 KiB), for failure messages. */
  output(): string;
  /** SIGCONT + SIGTERM, SIGKILL after a bounded wait; resolves when it has exited. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit (a crashed node). */
  kill(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort if a test file forgets stop(): never leave an orphaned redis-server behind.
  process.once('exit', () => {
    for (const child of live) {
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

const hasExited = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null;

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (hasExited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    child.once('exit', onExit);
  });
}

function signal(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || hasExited(child)) return;
  try {
    process.kill(child.pid, sig);
  } catch {
    // exited in between
  }
}

/**
 * Spawns `redis-server ...args` and waits (bounded) until `ready()` says yes. The process is
 * killed and an error thrown (with its output) when it exits or does not get ready in time.
 */
export async function spawnRedisProcess(
  args: string[],
  opts: { port: number; ready: () => Promise<boolean>; startTimeoutMs?: number; stopTimeoutMs?: number },
): Promise<RedisProcess> {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  installExitHook();
  child.once('exit', () => live.delete(child));
  let out = '';
  const collect = (d: Buffer) => {
    if (out.length < 16_384) out += d.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  let spawnError: Error | undefined;
  child.once('error', (err) => {
    spawnError = err;
  });
  const stopTimeoutMs = opts.stopTimeoutMs ?? 3000;
  const handle: RedisProcess = {
    port: opts.port,
    pid: child.pid ?? -1,
    exited: () => hasExited(child),
    output: () => out,
    async stop() {
      if (hasExited(child)) return;
      signal(child, 'SIGCONT');
      signal(child, 'SIGTERM');
      if (await waitForExit(child, stopTimeoutMs)) return;
      signal(child, 'SIGKILL');
      if (!(await waitForExit(child, stopTimeoutMs)))
        throw new Error(`redis-server ${child.pid} did not exit`);
    },
    async kill() {
      signal(child, 'SIGKILL');
      if (!(await waitForExit(child, stopTimeoutMs)))
        throw new Error(`redis-server ${child.pid} did not exit`);
    },
  };
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  for (let i = 0; i < 1000 && Date.now() < deadline; i++) {
    if (spawnError !== undefined) throw new Error(`redis-server could not be started: ${spawnError.message}`);
    if (hasExited(child))
      throw new Error(`redis-server exited during start (port ${opts.port}): ${out.trim()}`);
    if (await opts.ready().catch(() => false)) return handle;
    await sleep(50);
  }
  await handle.kill().catch(() => undefined);
  throw new Error(`redis-server on port ${opts.port} did not get ready in time: ${out.trim()}`);
}

/** Stops every process (by PID), in parallel, ignoring the ones that already exited. */
export async function stopAll(procs: readonly (RedisProcess | undefined)[]): Promise<void> {
  await Promise.all(procs.map((p) => p?.stop()));
}

/**
 * Opens a short-lived client to 127.0.0.1:`port`, runs `fn`, disconnects. Every step is bounded
 * (connect 1 s, each command 2 s, no retries): a dead or frozen server is an error, not a hang.
 */
export async function withClient<T>(
  port: number,
  fn: (c: Redis) => Promise<T>,
  options: RedisOptions = {},
): Promise<T> {
  const c = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    connectTimeout: 1000,
    commandTimeout: 2000,
    maxRetriesPerRequest: 0,
    retryStrategy: null,
    enableOfflineQueue: false,
    protocol: 2,
    ...options,
  });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return await fn(c);
  } finally {
    c.disconnect();
  }
}

/** PING answered (with the given auth), within the helper client's bounds. */
export async function answersPing(port: number, options: RedisOptions = {}): Promise<boolean> {
  try {
    return (await withClient(port, (c) => c.ping(), options)) === 'PONG';
  } catch {
    return false;
  }
}

/** Polls `cond` (errors count as "not yet") until true; bounded in time and iterations. */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const max = Math.ceil(timeoutMs / intervalMs) + 1;
  for (let i = 0; i < max && Date.now() < deadline; i++) {
    if (
      await Promise.resolve()
        .then(cond)
        .catch(() => false)
    )
      return;
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** `INFO section` as a key → value map. */
export function parseInfo(info: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of info.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) map.set(line.slice(0, i), line.slice(i + 1));
  }
  return map;
}

/** Whether 127.0.0.1:`port` can be bound right now. */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** Runs a CLI (e.g. redis-cli) to completion with a time bound; rejects on a non-zero exit. */
export function run(
  file: string,
  args: string[],
  timeoutMs = 20_000,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}
