import { type ChildProcess, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './free-port.ts';
import { recordOutput } from './leak-registry.ts';

/**
 * A private redis-server for one test file: its own free port on 127.0.0.1, no persistence, started
 * in the foreground (no daemonize) so that we own its PID. Every wait here is bounded.
 */
export interface RedisServerHandle {
  /** The TCP port; stays the same across restart(). */
  readonly port: number;
  /** `redis://127.0.0.1:PORT` (with `:password@` when a password was given). */
  readonly url: string;
  /** PID of the current redis-server process (changes on restart()). */
  readonly pid: number;
  /** SIGTERM, then SIGKILL after a bounded wait; resolves once the process has exited. Idempotent. */
  stop(): Promise<void>;
  /** SIGSTOP: the process keeps its sockets open but answers nothing (a frozen Redis). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** SIGKILL and wait for the exit (a crashed Redis: connections are reset). */
  kill(): Promise<void>;
  /** Start a new redis-server on the same port (stops the current one first if it still runs). */
  restart(): Promise<void>;
}

export interface StartRedisServerOptions {
  /** Sets `--requirepass`; the url then carries it. */
  password?: string;
  /** More command-line arguments for redis-server (e.g. `['--maxmemory', '10mb']`). */
  extraArgs?: string[];
  /** Bound for "answers PING" after spawning (default 5000 ms). */
  startTimeoutMs?: number;
  /** Bound for the exit after SIGTERM before SIGKILL (default 3000 ms). */
  stopTimeoutMs?: number;
}

/**
 * Every key and value of the Redis on `port` as text, recorded for the whole-run leak check
 * (bounded: 20 000 keys, 3 s; a paused, TLS-only or already dead server records nothing).
 */
async function recordRedisContents(port: number, password: string | undefined): Promise<void> {
  if (process.env['VITEST'] === undefined) return;
  const redis = new Redis({
    host: '127.0.0.1',
    port,
    ...(password !== undefined ? { password } : {}),
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    connectTimeout: 1000,
    commandTimeout: 3000,
    retryStrategy: () => null,
  });
  redis.on('error', () => {});
  try {
    await redis.connect();
    const lines: string[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) {
        const type = await redis.type(key);
        const value =
          type === 'string'
            ? await redis.get(key)
            : type === 'set'
              ? (await redis.smembers(key)).join(' ')
              : type === 'hash'
                ? JSON.stringify(await redis.hgetall(key))
                : type === 'list'
                  ? (await redis.lrange(key, 0, -1)).join(' ')
                  : '';
        lines.push(`${key} ${value ?? ''}`);
      }
    } while (cursor !== '0' && lines.length < 20_000);
    recordOutput(lines.join('\n'));
  } catch {
    // unreachable or refused (paused, ACL-only, TLS): nothing to record
  } finally {
    redis.disconnect();
  }
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

/** One PING over a raw socket (no client library): true on `+PONG` (or `-NOAUTH`: the server is up). */
function pingOnce(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG') || buf.startsWith('-NOAUTH'));
    });
  });
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

function signal(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, sig);
  } catch {
    // exited in between
  }
}

async function spawnOn(port: number, opts: StartRedisServerOptions): Promise<ChildProcess> {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  args.push('--daemonize', 'no', '--loglevel', 'warning');
  if (opts.password !== undefined) args.push('--requirepass', opts.password);
  args.push(...(opts.extraArgs ?? []));
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  installExitHook();
  let output = '';
  const collect = (d: Buffer) => {
    if (output.length < 4096) output += d.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  child.once('exit', () => live.delete(child));
  let spawnError: Error | undefined;
  child.once('error', (err) => {
    spawnError = err;
  });

  const deadline = Date.now() + (opts.startTimeoutMs ?? 5000);
  for (let i = 0; i < 500 && Date.now() < deadline; i++) {
    if (spawnError !== undefined) throw new Error(`redis-server could not be started: ${spawnError.message}`);
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server exited during start (port ${port}): ${output.trim()}`);
    }
    if (await pingOnce(port, 250)) return child;
    await sleep(25);
  }
  signal(child, 'SIGKILL');
  await waitForExit(child, 2000);
  throw new Error(`redis-server on port ${port} did not answer PING in time: ${output.trim()}`);
}

export async function startRedisServer(opts: StartRedisServerOptions = {}): Promise<RedisServerHandle> {
  // The port from freePort() may be taken by someone else before redis-server binds it: retry a few.
  let port = 0;
  let child: ChildProcess | undefined;
  let lastError: unknown;
  for (let attempt = 0; attempt < 3 && child === undefined; attempt++) {
    port = await freePort();
    try {
      child = await spawnOn(port, opts);
    } catch (err) {
      lastError = err;
    }
  }
  if (child === undefined) throw lastError;

  let current: ChildProcess = child;
  const stopTimeoutMs = opts.stopTimeoutMs ?? 3000;
  const auth = opts.password !== undefined ? `:${encodeURIComponent(opts.password)}@` : '';

  const stop = async (): Promise<void> => {
    const c = current;
    if (c.exitCode !== null || c.signalCode !== null) return;
    signal(c, 'SIGCONT'); // a paused process would not act on SIGTERM (nor answer the dump)
    // For the whole-run leak check: every key and value this Redis holds at the end.
    await recordRedisContents(port, opts.password);
    signal(c, 'SIGTERM');
    if (await waitForExit(c, stopTimeoutMs)) return;
    signal(c, 'SIGKILL');
    if (!(await waitForExit(c, stopTimeoutMs))) throw new Error(`redis-server ${c.pid} did not exit`);
  };

  return {
    port,
    url: `redis://${auth}127.0.0.1:${port}`,
    get pid(): number {
      return current.pid ?? -1;
    },
    stop,
    pause: () => signal(current, 'SIGSTOP'),
    resume: () => signal(current, 'SIGCONT'),
    kill: async () => {
      const c = current;
      signal(c, 'SIGKILL');
      if (!(await waitForExit(c, stopTimeoutMs))) throw new Error(`redis-server ${c.pid} did not exit`);
    },
    restart: async () => {
      await stop();
      // The port was ours a moment ago; a fresh bind can briefly fail, so try a few times.
      let err: unknown;
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          current = await spawnOn(port, opts);
          return;
        } catch (e) {
          err = e;
          await sleep(100);
        }
      }
      throw err;
    },
  };
}
