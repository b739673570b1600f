import { type ChildProcess, type StdioOptions, spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Process management for the bench: every child is tracked by PID and killed when the runner
 * exits, is interrupted (SIGINT/SIGTERM) or fails; every wait is bounded. Servers and the load
 * generator are pinned to separate CPUs with `taskset` when it exists.
 */

const live = new Map<number, { child: ChildProcess; name: string }>();

/** True when `taskset` (util-linux) can pin processes on this machine. */
export const hasTaskset: boolean = (() => {
  try {
    return spawnSync('taskset', ['--version'], { stdio: 'ignore' }).status === 0;
  } catch {
    return false;
  }
})();

export interface SpawnOptions {
  /** Human name for messages. */
  name: string;
  /** CPU list for taskset (`"0"`, `"1"`, `"0,1"`); ignored when taskset is missing. */
  cpus?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Write stdout and stderr to this file (opened for writing, truncated); default: discarded. */
  logFile?: string;
  /** Pipe stdout back to the runner (load worker results); stderr still goes to logFile / ignore. */
  pipeStdout?: boolean;
}

/** Spawns `cmd args` (wrapped in `taskset -c cpus` when possible: taskset execs, so the PID is the command's). */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions): ChildProcess {
  const pinned = opts.cpus !== undefined && hasTaskset;
  const file = pinned ? 'taskset' : cmd;
  const argv = pinned ? ['-c', opts.cpus!, cmd, ...args] : args;
  const fd = opts.logFile === undefined ? undefined : openSync(opts.logFile, 'w');
  const out = fd ?? 'ignore';
  const stdio: StdioOptions = ['ignore', opts.pipeStdout ? 'pipe' : out, out];
  const child = spawn(file, argv, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio });
  if (fd !== undefined) closeSync(fd); // the child holds its own copy of the descriptor
  if (child.pid === undefined) {
    throw new Error(`${opts.name}: could not start ${cmd}`);
  }
  live.set(child.pid, { child, name: opts.name });
  child.once('exit', () => live.delete(child.pid!));
  return child;
}

/** Waits (bounded) for a child to exit; true if it did. */
export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
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

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone (bounded). */
export async function stopProcess(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(child.pid, 'SIGTERM');
  } catch {
    return; // already gone
  }
  if (await waitForExit(child, graceMs)) return;
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitForExit(child, 2000);
}

/** Kills every tracked child still running, by PID (SIGKILL: used on the way out). */
export function killAllSync(): void {
  for (const [pid] of live) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited in between
    }
  }
  live.clear();
}

/** PIDs of the children still running (for the report's cleanup check). */
export function livePids(): number[] {
  return [...live.keys()];
}

let hooksInstalled = false;
/**
 * Installs the last-resort cleanup: on exit, SIGINT, SIGTERM and uncaught errors every child is
 * killed by PID. `onSignal` runs first (e.g. to stop in-process servers) and is bounded.
 */
export function installCleanupHooks(onSignal: () => Promise<void>): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.once('exit', killAllSync);
  const fatal = (why: string, code: number) => {
    process.stderr.write(`\nbench: ${why}; stopping every process it started\n`);
    killAllSync();
    void Promise.race([onSignal(), sleep(3000)]).finally(() => process.exit(code));
  };
  process.once('SIGINT', () => fatal('interrupted', 130));
  process.once('SIGTERM', () => fatal('terminated', 143));
  process.once('uncaughtException', (err) => {
    process.stderr.write(`${err.stack ?? String(err)}\n`);
    fatal('uncaught exception', 1);
  });
  process.once('unhandledRejection', (err) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    fatal('unhandled rejection', 1);
  });
}

/** Pins a running process (all its threads) to `cpus` when taskset exists; false when it could not. */
export function pinProcess(pid: number, cpus: string | undefined): boolean {
  if (cpus === undefined || !hasTaskset) return false;
  return (
    spawnSync('taskset', ['-a', '-pc', cpus, String(pid)], { stdio: 'ignore', timeout: 5000 }).status === 0
  );
}

/** Pins the runner process itself (all its threads) to `cpus`, so in-process servers stay off the load CPU. */
export function pinSelf(cpus: string): boolean {
  return pinProcess(process.pid, cpus);
}

/**
 * Polls `url` until it answers with a status accepted by `ok` (bounded by `timeoutMs`); throws
 * with `what` and the last failure otherwise. Fails fast when `child` exits meanwhile.
 */
export async function waitForHttp(
  url: string,
  what: string,
  opts: { timeoutMs?: number; child?: ChildProcess; ok?: (status: number, body: string) => boolean } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let last = 'no answer';
  for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
    if (opts.child !== undefined && (opts.child.exitCode !== null || opts.child.signalCode !== null)) {
      throw new Error(`${what}: the process exited during startup (code ${opts.child.exitCode})`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      const body = await res.text();
      if ((opts.ok ?? ((s) => s < 500))(res.status, body)) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(50);
  }
  throw new Error(`${what}: not ready in time (${last})`);
}

/** CPU count this process may use, and the split into server / load CPUs (2 cores: "0" / "1"). */
export function defaultCpuSplit(cpuCount: number): { serverCpus: string; loadCpus: string } | undefined {
  if (cpuCount < 2) return undefined;
  const half = Math.floor(cpuCount / 2);
  const range = (from: number, to: number) => (from === to ? String(from) : `${from}-${to}`);
  return { serverCpus: range(0, cpuCount - half - 1), loadCpus: range(cpuCount - half, cpuCount - 1) };
}

/** Resident memory of a process in MB, one decimal (`VmRSS` of /proc/<pid>/status); 0 when unreadable. */
export function rssMb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? 0 : Math.round(Number(m[1]) / 102.4) / 10;
  } catch {
    return 0;
  }
}

/** CPU time (user + system, ms) a process has used so far, from /proc; undefined where unreadable. */
export function processCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return Number.isFinite(ticks) ? (ticks * 1000) / CLOCK_TICKS : undefined;
  } catch {
    return undefined;
  }
}

/** USER_HZ: clock ticks per second of /proc's times (100 on Linux; `getconf CLK_TCK`). */
const CLOCK_TICKS: number = (() => {
  try {
    const n = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim());
    return n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();
