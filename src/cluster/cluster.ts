import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../observability/logger.ts';

/**
 * `listen.workers` (issue 6): N worker processes (node:cluster) share the public and admin
 * listeners; the primary only supervises. Each worker is a whole gateway (own L1, own token-service
 * client); Redis, when configured, is shared as between replicas. Without Redis, purges reach every
 * worker's L1 through the primary (the `bus` messages below).
 *
 * Primary ⇄ worker messages (IPC, JSON):
 *   worker → primary  { phantom: 'listening' }          the worker's listeners are up
 *   worker → primary  { phantom: 'bus', message }       relay `message` to every other worker
 *   primary → worker  { phantom: 'bus', message }       a message another worker sent
 *   worker → primary  { phantom: 'rpc', id, method }    a request the primary answers (e.g. cluster metrics)
 *   primary → worker  { phantom: 'rpc-reply', id, result | error }
 */

/** Worker count for `listen.workers`: `auto` = the CPUs this process may use. */
export function workerCount(setting: Config['listen']['workers']): number {
  return setting === 'auto' ? Math.max(1, availableParallelism()) : setting;
}

type WorkerMessage =
  | { phantom: 'listening' }
  | { phantom: 'bus'; message: string }
  | { phantom: 'rpc'; id: number; method: string };

function isWorkerMessage(m: unknown): m is WorkerMessage {
  return typeof m === 'object' && m !== null && typeof (m as { phantom?: unknown }).phantom === 'string';
}

/** The primary's method answering the workers' metrics, aggregated (admin GET /metrics in a worker). */
export const CLUSTER_METRICS = 'metrics';

/** In a worker: lets the primary's AggregatorRegistry read `registry` (prom-client's IPC protocol). */
export function shareMetricsWithPrimary(registry: Registry): void {
  AggregatorRegistry.setRegistries([registry]);
  new AggregatorRegistry(); // installs prom-client's worker-side listener (idempotent)
}

/** Calls the primary can answer for a worker (the admin listener's cluster-wide views). */
export type PrimaryMethods = Record<string, () => Promise<unknown>>;

/** Exit codes a worker uses for a failed start (SPEC §2): the primary exits with the same. */
const STARTUP_EXIT_CODES = new Set([1, 2]);
/** A worker that dies after starting is replaced after this delay; more than MAX_RESTARTS in the window → give up. */
const RESTART_DELAY_MS = 1_000;
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

/**
 * The primary: forks `count` workers running the same command line, relays their bus messages,
 * forwards SIGHUP, drains them on SIGTERM/SIGINT and replaces a worker that dies unexpectedly.
 * Resolves with the process exit code (0 after a clean stop; a worker's 1 or 2 when one fails to
 * start; 2 when workers keep dying).
 */
export function runPrimary(opts: {
  config: Config;
  count: number;
  logger: Logger;
  methods?: PrimaryMethods;
}): Promise<number> {
  const { config, count, logger } = opts;
  // The workers' metrics, summed (gauges by their own aggregator): answers CLUSTER_METRICS.
  const aggregator = new AggregatorRegistry();
  const methods: PrimaryMethods = { [CLUSTER_METRICS]: () => aggregator.clusterMetrics(), ...opts.methods };
  const ready = new Set<number>();
  const restarts: number[] = [];
  let stopping = false;
  let allReady = false;

  return new Promise<number>((resolve) => {
    const finish = (code: number) => {
      stopping = true;
      process.off('SIGHUP', onHangup);
      resolve(code);
    };

    const stopAll = (signal: NodeJS.Signals, code: number) => {
      stopping = true;
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      if (workers.length === 0) {
        finish(code);
        return;
      }
      let left = workers.length;
      // Bounded: each worker drains for up to shutdownGraceSeconds; then it is killed.
      const killTimer = setTimeout(
        () => {
          for (const w of workers) if (!w.isDead()) w.process.kill('SIGKILL');
        },
        (config.shutdownGraceSeconds + 5) * 1000,
      );
      for (const w of workers) {
        w.once('exit', () => {
          if (--left === 0) {
            clearTimeout(killTimer);
            finish(code);
          }
        });
        w.process.kill(signal);
      }
    };

    const onHangup = () => {
      logger.info({ signal: 'SIGHUP', workers: count }, 'signal received: forwarding to the workers');
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGHUP');
    };
    process.on('SIGHUP', onHangup);
    const onStop = (signal: NodeJS.Signals) => {
      logger.info({ signal, workers: count }, 'signal received: draining the workers');
      stopAll(signal, 0);
    };
    process.once('SIGTERM', onStop);
    process.once('SIGINT', onStop);

    const onMessage = (worker: Worker, m: unknown) => {
      if (!isWorkerMessage(m)) return;
      if (m.phantom === 'listening') {
        ready.add(worker.id);
        if (!allReady && ready.size >= count) {
          allReady = true;
          logger.info({ workers: count, pids: workerPids() }, 'phantom-gateway workers listening');
        }
      } else if (m.phantom === 'bus') {
        for (const w of Object.values(cluster.workers ?? {})) {
          if (w !== undefined && w.id !== worker.id && w.isConnected())
            w.send({ phantom: 'bus', message: m.message });
        }
      } else if (m.phantom === 'rpc') {
        const method = methods[m.method];
        const reply = (body: { result?: unknown; error?: string }) => {
          if (worker.isConnected()) worker.send({ phantom: 'rpc-reply', id: m.id, ...body });
        };
        if (method === undefined) reply({ error: `unknown method ${m.method}` });
        else
          method().then(
            (result) => reply({ result }),
            (err: unknown) => reply({ error: String(err) }),
          );
      }
    };

    const forkEnv: NodeJS.ProcessEnv = {};
    const fork = () => {
      const w = cluster.fork(forkEnv);
      w.on('message', (m: unknown) => onMessage(w, m));
      w.once('exit', (code, signal) => {
        const wasReady = ready.delete(w.id);
        if (stopping) return;
        if (!wasReady && code !== null && STARTUP_EXIT_CODES.has(code)) {
          // A start failure (config, port in use, token service required): the same for every worker.
          logger.error({ worker: w.id, pid: w.process.pid, code }, 'a worker failed to start: stopping');
          stopAll('SIGTERM', code);
          return;
        }
        const now = Date.now();
        restarts.push(now);
        while (restarts.length > 0 && restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift();
        if (restarts.length > MAX_RESTARTS) {
          logger.error(
            { restarts: restarts.length, windowSeconds: RESTART_WINDOW_MS / 1000 },
            'workers keep dying: stopping',
          );
          stopAll('SIGTERM', 2);
          return;
        }
        logger.error({ worker: w.id, pid: w.process.pid, code, signal }, 'a worker died: starting a new one');
        setTimeout(() => {
          if (!stopping) fork();
        }, RESTART_DELAY_MS).unref();
      });
    };
    // Without PHANTOM_CACHE_KEY each process would key its cache with its own random secret, and a
    // purge relayed from one worker (HMAC tags) would match nothing in the others: the workers get
    // one random key for this run instead (without Redis nothing outlives the run anyway).
    if (process.env['PHANTOM_CACHE_KEY'] === undefined) {
      forkEnv['PHANTOM_CACHE_KEY'] = randomBytes(32).toString('base64url');
      logger.info('PHANTOM_CACHE_KEY not set: the workers share a random cache key for this run');
    }
    for (let i = 0; i < count; i++) fork();
  });
}

function workerPids(): number[] {
  return Object.values(cluster.workers ?? {})
    .map((w) => w?.process.pid)
    .filter((p): p is number => p !== undefined);
}

/** In a worker: tells the primary this worker's listeners are up. No-op outside a cluster. */
export function announceListening(): void {
  if (cluster.isWorker) process.send?.({ phantom: 'listening' });
}

/** A channel to the other workers of this cluster (via the primary); undefined outside a cluster. */
export interface PeerBus {
  publish(message: string): void;
  subscribe(handler: (message: string) => void): void;
}

let peerBus: PeerBus | undefined;

/**
 * The worker's bus (one per process). `subscribe` replaces the handler: after a config reload
 * only the active gateway's cache events receive the other workers' purges.
 */
export function workerPeerBus(): PeerBus | undefined {
  if (!cluster.isWorker) return undefined;
  if (peerBus !== undefined) return peerBus;
  let handler: ((message: string) => void) | undefined;
  process.on('message', (m: unknown) => {
    if (isWorkerMessage(m) && m.phantom === 'bus' && typeof m.message === 'string') handler?.(m.message);
  });
  peerBus = {
    publish(message) {
      if (process.connected) process.send?.({ phantom: 'bus', message });
    },
    subscribe(h) {
      handler = h;
    },
  };
  return peerBus;
}

let nextRpcId = 1;

/** In a worker: asks the primary to run `method` (bounded by `timeoutMs`). */
export function callPrimary<T>(method: string, timeoutMs = 5_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (!cluster.isWorker || !process.connected) {
      reject(new Error('not a connected cluster worker'));
      return;
    }
    const id = nextRpcId++;
    const onReply = (m: unknown) => {
      const r = m as { phantom?: string; id?: number; result?: unknown; error?: string };
      if (r?.phantom !== 'rpc-reply' || r.id !== id) return;
      clearTimeout(timer);
      process.off('message', onReply);
      if (r.error !== undefined) reject(new Error(r.error));
      else resolve(r.result as T);
    };
    const timer = setTimeout(() => {
      process.off('message', onReply);
      reject(new Error(`the primary did not answer ${method} within ${timeoutMs} ms`));
    }, timeoutMs);
    process.on('message', onReply);
    process.send?.({ phantom: 'rpc', id, method });
  });
}
