import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../observability/logger.ts';

/**
 * - `connecting`: not connected yet since start (commands are skipped).
 * - `ready`: connected and answering in time.
 * - `down`: connection lost or refused, or commands keep timing out (a frozen or overloaded Redis);
 *   commands are skipped until the connection is back or a probe PING answers in time.
 */
export type RedisState = 'connecting' | 'ready' | 'down';

/** L2 store. `get`/`set` never throw or reject: Redis trouble is a cache miss (SPEC §5, §7). */
export interface RedisStore {
  /** The value, or undefined on a miss, an error, a timeout, or when not ready (no waiting). */
  get(key: string): Promise<string | undefined>;
  /** `SET prefix+key value EX ttl`; a no-op when `ttlSeconds` < 1 (never a key without TTL). */
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  state(): RedisState;
  /** PING within the command timeout; never rejects (readiness checks). */
  ping(): Promise<boolean>;
  /** get/set calls that did not reach Redis successfully (errors, timeouts, skipped while not ready). */
  errors(): number;
  /**
   * Runs any command(s) on the client under the same rules as get/set: skipped (undefined) when
   * Redis is not usable, errors and timeouts counted and turned into undefined. Never rejects.
   * Keys passed to `op` must already carry the key prefix (see `key`).
   */
  run<T>(op: (client: RedisClient) => Promise<T>): Promise<T | undefined>;
  /** The configured key prefix + `key`. */
  key(key: string): string;
  /** PUBLISH; best effort (false when not delivered to Redis). */
  publish(channel: string, message: string): Promise<boolean>;
  /**
   * Subscribes on a dedicated connection that resubscribes by itself after reconnects.
   * `onMessage` must not throw (errors are logged).
   */
  subscribe(channel: string, onMessage: (message: string) => void): void;
  /** QUIT with a bounded wait, then disconnect. Idempotent; get/set are no-ops afterwards. */
  close(): Promise<void>;
}

/**
 * The ioredis client the store hands to `run`: a `Redis` (standalone, or following the master a
 * Sentinel set names) or a `Cluster`. Code given to `run` uses only commands both have, and keys
 * of one command share a hash tag (one Cluster slot).
 */
export type RedisClient = Redis | Cluster;

export type RedisConfig = NonNullable<Config['cache']['redis']>;

export interface RedisStoreDeps {
  logger: Logger;
  onStateChange?: (state: RedisState) => void;
  /** Consecutive command failures (timeouts/errors) on a live connection that mark Redis down (default 3). */
  failureThreshold?: number;
  /** Interval of the PING probe while marked down on a live connection (default 500 ms). */
  probeIntervalMs?: number;
  /** Bound of close()'s graceful QUIT (default 1000 ms). */
  closeTimeoutMs?: number;
}

/** `host:port` of a redis URL, for logs. The URL itself may carry a password and is never logged. */
export function redisEndpoint(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || 'localhost'}:${u.port || '6379'}`;
  } catch {
    return 'redis';
  }
}

/** The deployment kind `cfg` describes (parse-config.ts guarantees exactly one of them). */
export function redisMode(cfg: RedisConfig): 'standalone' | 'sentinel' | 'cluster' {
  if (cfg.sentinels !== undefined) return 'sentinel';
  if (cfg.cluster !== undefined) return 'cluster';
  return 'standalone';
}

/** The configured endpoints as a `host:port,host:port` list, for logs (never a password). */
export function redisEndpoints(cfg: RedisConfig): string {
  const nodes = cfg.sentinels ?? cfg.cluster;
  if (nodes !== undefined) return nodes.map((n) => `${n.host}:${n.port}`).join(',');
  return cfg.url === undefined ? 'redis' : redisEndpoint(cfg.url);
}

/** A configuration the store cannot use (an unreadable `caFile`); raised at startup only. */
export class RedisConfigError extends Error {
  override name = 'RedisConfigError';
}

/**
 * ioredis 6 with options that fail fast (STACK-NOTES): no offline queue, no per-request retries,
 * a command timeout, bounded reconnect backoff. On top of ioredis' connection state this keeps a
 * small breaker: after `failureThreshold` consecutive failures on a connection ioredis still calls
 * ready (typically a frozen Redis: the socket stays open, nothing answers), the store is `down`
 * and skips commands until a probe PING answers in time, so requests stop paying the command
 * timeout. ioredis' `socketTimeout` additionally drops a connection that has received nothing
 * for a while with commands outstanding, after which ioredis reconnects by itself.
 *
 * Deployments (exactly one, see the config):
 * - `url`: one Redis (`redis://` or `rediss://`, ACL user and password in the URL).
 * - `sentinels` + `name`: ioredis asks the sentinels for the master of `name`, connects to it and
 *   checks its role; on a failover (the old master drops its clients, or a sentinel announces
 *   `+switch-master`, or a write answers READONLY) it reconnects and asks the sentinels again.
 * - `cluster`: ioredis' Cluster client; seed nodes, slot map refreshed on MOVED and periodically.
 *   A dead node fails the commands for its slots at once (a miss), the other nodes keep serving;
 *   only failures that cost the command timeout count towards the breaker, so one dead node
 *   does not switch the whole cluster off.
 */
export function createRedisStore(cfg: RedisConfig, deps: RedisStoreDeps): RedisStore {
  const { logger } = deps;
  const mode = redisMode(cfg);
  const endpoint = redisEndpoints(cfg);
  const failureThreshold = deps.failureThreshold ?? 3;
  const probeIntervalMs = deps.probeIntervalMs ?? 500;
  const closeTimeoutMs = deps.closeTimeoutMs ?? 1000;
  const secrets = [
    cfg.url === undefined ? undefined : passwordOf(cfg.url),
    cfg.password,
    cfg.sentinelPassword,
  ].filter((s): s is string => s !== undefined && s !== '');
  // Extra log fields that say which deployment `redis` (the endpoint list) points at.
  const where =
    mode === 'standalone'
      ? { redis: endpoint }
      : { redis: endpoint, redisMode: mode, ...(cfg.name !== undefined ? { redisMaster: cfg.name } : {}) };

  let current: RedisState = 'connecting';
  let closed = false;
  let errorCount = 0;
  let consecutiveFailures = 0;
  let lastError: string | undefined;
  let probeTimer: NodeJS.Timeout | undefined;
  let probing = false;

  const client = createClient(cfg, mode, closeTimeoutMs);

  const sanitize = (msg: string): string => secrets.reduce((m, secret) => m.split(secret).join('***'), msg);

  /** `host:port` of the node a standalone/Sentinel client is connected to (the current master). */
  const connectedTo = (): string | undefined => {
    if (!(client instanceof Redis)) return undefined;
    const stream = (client as unknown as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
    return stream?.remoteAddress !== undefined && stream.remotePort !== undefined
      ? `${stream.remoteAddress}:${stream.remotePort}`
      : undefined;
  };

  const setState = (to: RedisState): void => {
    if (to === current) return;
    const from = current;
    current = to;
    if (!closed) {
      const master = mode === 'sentinel' && to === 'ready' ? connectedTo() : undefined;
      const fields = {
        ...where,
        from,
        to,
        ...(master !== undefined ? { master } : {}),
        ...(to === 'down' && lastError ? { reason: lastError } : {}),
      };
      if (to === 'down') logger.warn(fields, 'redis state changed');
      else logger.info(fields, 'redis state changed');
    }
    if (to !== 'ready') scheduleProbe();
    try {
      deps.onStateChange?.(to);
    } catch (err) {
      logger.error({ err }, 'redis onStateChange callback failed');
    }
  };

  // Handled 'error' events: ioredis emits one per failed (re)connect; without a listener they
  // would be reported as unhandled. Logged only through the state change they cause.
  client.on('error', (err: Error) => {
    lastError = sanitize(describe(err));
    // Sentinel: no sentinel answered (ioredis keeps asking them, without a 'close' event): not
    // connected, and nobody knows when it will be, so say so instead of staying 'connecting'.
    if (mode === 'sentinel' && client.status !== 'ready') setState('down');
  });
  // Cluster: per-node connection errors (a dead node); Sentinel: a sentinel that did not answer.
  client.on('node error', (err: Error, node: string) => {
    lastError = sanitize(`${node}: ${describe(err)}`);
  });
  client.on('sentinelError', (err: Error) => {
    lastError = sanitize(describe(err));
  });
  client.on('ready', () => {
    consecutiveFailures = 0;
    setState('ready');
  });
  client.on('close', () => setState('down'));
  client.on('end', () => setState('down'));
  // Cluster: the whole cluster is being reconnected (no node answered the slot map).
  if (mode === 'cluster') client.on('reconnecting', () => setState('down'));

  function scheduleProbe(): void {
    if (closed || probeTimer !== undefined) return;
    probeTimer = setTimeout(runProbe, probeIntervalMs);
    probeTimer.unref();
  }

  function runProbe(): void {
    probeTimer = undefined;
    if (closed || current === 'ready') return;
    // Without a live connection ioredis reconnects by itself and its 'ready' event recovers us.
    if (client.status !== 'ready') return;
    if (probing) {
      scheduleProbe();
      return;
    }
    probing = true;
    client
      .ping()
      .then(
        () => {
          consecutiveFailures = 0;
          if (client.status === 'ready') setState('ready');
        },
        (err: unknown) => {
          lastError = sanitize(describe(err));
        },
      )
      .finally(() => {
        probing = false;
        if (current !== 'ready') scheduleProbe();
      });
  }

  const usable = (): boolean => !closed && current === 'ready' && client.status === 'ready';

  const failed = (err: unknown, startedAt: number): void => {
    errorCount++;
    lastError = sanitize(describe(err));
    // Cluster: a failure that did not wait (a dead node's slots, CLUSTERDOWN) costs requests
    // nothing and says nothing about the other nodes; only slow ones feed the breaker.
    if (mode === 'cluster' && Date.now() - startedAt < cfg.commandTimeoutMs) return;
    consecutiveFailures++;
    if (consecutiveFailures >= failureThreshold && current === 'ready') setState('down');
  };

  let subscriber: RedisClient | undefined;
  const handlers = new Map<string, (message: string) => void>();

  function ensureSubscriber(): RedisClient {
    if (subscriber !== undefined) return subscriber;
    // A subscriber connection may queue SUBSCRIBE until it is connected; ioredis resubscribes
    // after every reconnect (autoResubscribe; a Cluster moves its subscriber to another node).
    // It never carries request-path commands.
    const sub: RedisClient =
      client instanceof Cluster
        ? client.duplicate([], {
            enableOfflineQueue: true,
            redisOptions: { ...client.options.redisOptions, connectionName: 'phantom-gateway-sub' },
          })
        : client.duplicate({
            enableOfflineQueue: true,
            commandTimeout: undefined,
            connectionName: 'phantom-gateway-sub',
          });
    sub.on('error', (err: Error) => {
      lastError = sanitize(describe(err));
    });
    sub.on('node error', () => undefined);
    sub.on('message', (channel: string, message: string) => {
      const h = handlers.get(channel);
      if (h === undefined) return;
      try {
        h(message);
      } catch (err) {
        logger.error({ err: sanitize(describe(err)), channel }, 'redis subscription handler failed');
      }
    });
    subscriber = sub;
    return sub;
  }

  /** Runs one call on the client under the store's rules; `undefined` when skipped or failed. */
  async function guarded<T>(op: () => Promise<T>): Promise<T | undefined> {
    if (!usable()) {
      errorCount++;
      return undefined;
    }
    const startedAt = Date.now();
    try {
      const v = await op();
      consecutiveFailures = 0;
      return v;
    } catch (err) {
      failed(err, startedAt);
      return undefined;
    }
  }

  return {
    run: <T>(op: (c: RedisClient) => Promise<T>) => guarded(() => op(client)),
    key: (key: string) => cfg.keyPrefix + key,
    async publish(channel, message) {
      if (!usable()) return false;
      const startedAt = Date.now();
      try {
        await client.publish(channel, message);
        consecutiveFailures = 0;
        return true;
      } catch (err) {
        failed(err, startedAt);
        return false;
      }
    },
    subscribe(channel, onMessage) {
      if (closed) return;
      handlers.set(channel, onMessage);
      ensureSubscriber()
        .subscribe(channel)
        .catch((err: unknown) => {
          lastError = sanitize(describe(err));
          logger.warn(
            { ...where, channel, reason: lastError },
            'redis subscribe failed; retried on reconnect',
          );
        });
    },
    async get(key) {
      const v = await guarded(() => client.get(cfg.keyPrefix + key));
      return v ?? undefined;
    },
    async set(key, value, ttlSeconds) {
      const ttl = Math.floor(ttlSeconds);
      if (!Number.isFinite(ttl) || ttl < 1) return;
      await guarded(() => client.set(cfg.keyPrefix + key, value, 'EX', ttl));
    },
    state: () => current,
    async ping() {
      if (closed || client.status !== 'ready') return false;
      try {
        return (await client.ping()) === 'PONG';
      } catch {
        return false;
      }
    },
    errors: () => errorCount,
    async close() {
      if (closed) return;
      closed = true;
      subscriber?.disconnect();
      if (probeTimer !== undefined) clearTimeout(probeTimer);
      probeTimer = undefined;
      if (client.status === 'ready') {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          client.quit().catch(() => undefined),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, closeTimeoutMs);
          }),
        ]);
        clearTimeout(timer);
      }
      if (client.status !== 'end') {
        const ended = new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, closeTimeoutMs);
          client.once('end', () => {
            clearTimeout(timer);
            resolve();
          });
        });
        client.disconnect();
        await ended;
      }
      current = 'down';
    },
  };
}

/** Reconnect backoff: 100 ms, 200 ms, … at most 1 s (never gives up). */
const backoff = (times: number): number => Math.min(times * 100, 1000);

/**
 * The ioredis client for `cfg`, with the fail-fast options in every mode: no offline queue, no
 * per-request retries, `commandTimeout`, a short connect timeout and a bounded reconnect backoff.
 */
function createClient(
  cfg: RedisConfig,
  mode: ReturnType<typeof redisMode>,
  closeTimeoutMs: number,
): RedisClient {
  const tls = tlsOptions(cfg);
  const failFast = {
    commandTimeout: cfg.commandTimeoutMs,
    maxRetriesPerRequest: 0,
    connectTimeout: 500,
    // Drop a connection that received nothing for this long while commands were outstanding.
    socketTimeout: Math.max(1000, cfg.commandTimeoutMs * 20),
    connectionName: 'phantom-gateway',
    // disconnect() ends the socket gracefully and destroys it after this long (default 2000 ms):
    // against a frozen Redis the FIN is never answered, so keep close() short.
    disconnectTimeout: Math.min(closeTimeoutMs, 500),
  } satisfies RedisOptions;
  const auth = {
    ...(cfg.username !== undefined ? { username: cfg.username } : {}),
    ...(cfg.password !== undefined ? { password: cfg.password } : {}),
  };
  const db = cfg.db !== undefined ? { db: cfg.db } : {};

  if (mode === 'cluster') {
    const options: ClusterOptions = {
      enableOfflineQueue: false,
      // The whole cluster unreachable: reconnect with the same bounded backoff.
      clusterRetryStrategy: backoff,
      // No delayed retries inside ioredis: a command for a dead node or a cluster that is down
      // fails at once and the request misses (a delayed retry would make the request wait).
      retryDelayOnFailover: 0,
      retryDelayOnClusterDown: 0,
      retryDelayOnTryAgain: 0,
      maxRedirections: 6,
      slotsRefreshTimeout: Math.max(500, cfg.commandTimeoutMs * 10),
      // Notice slot moves and dead or new nodes without waiting for a MOVED.
      slotsRefreshInterval: 5000,
      redisOptions: { ...failFast, ...auth, ...(tls !== undefined ? { tls } : {}) },
    };
    return new Cluster(
      (cfg.cluster ?? []).map((n) => ({ host: n.host, port: n.port })),
      options,
    );
  }

  const common = {
    ...failFast,
    enableOfflineQueue: false,
    retryStrategy: backoff,
    lazyConnect: false,
  } satisfies RedisOptions;

  if (mode === 'sentinel') {
    return new Redis({
      ...common,
      ...auth,
      ...db,
      sentinels: (cfg.sentinels ?? []).map((n) => ({ host: n.host, port: n.port })),
      name: cfg.name!,
      ...(cfg.sentinelUsername !== undefined ? { sentinelUsername: cfg.sentinelUsername } : {}),
      ...(cfg.sentinelPassword !== undefined ? { sentinelPassword: cfg.sentinelPassword } : {}),
      // All sentinels unreachable: ask them again after a bounded wait (ioredis keeps trying).
      sentinelRetryStrategy: backoff,
      // A frozen sentinel must not hold up the master lookup; the next sentinel is asked.
      sentinelCommandTimeout: Math.max(500, cfg.commandTimeoutMs * 10),
      // Subscribe to +switch-master on the sentinels: reconnect to the new master as soon as a
      // failover is announced, not only when the old master drops the connection.
      failoverDetector: true,
      sentinelReconnectStrategy: (times: number) => Math.min(times * 500, 5000),
      // A write that reaches a demoted master (now a replica): reconnect, asking the sentinels.
      reconnectOnError: (err: Error) => err.message.startsWith('READONLY'),
      ...(tls !== undefined ? { tls, enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
    });
  }

  return new Redis(cfg.url ?? 'redis://localhost:6379', {
    ...common,
    ...db,
    ...(tls !== undefined ? { tls } : {}),
  });
}

/**
 * TLS options, or undefined for plain TCP: `rediss://` or `tls: true`, trusting `caFile` (read
 * once, at startup) instead of the system CAs when it is given.
 * @throws RedisConfigError when `caFile` cannot be read.
 */
function tlsOptions(cfg: RedisConfig): ConnectionOptions | undefined {
  const wanted = cfg.url !== undefined ? /^rediss:/i.test(cfg.url) : cfg.tls === true;
  if (!wanted) return undefined;
  if (cfg.caFile === undefined) return cfg.url !== undefined ? undefined : {};
  try {
    return { ca: readFileSync(cfg.caFile) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new RedisConfigError(`cache.redis.caFile: cannot read the file (${code})`);
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const text =
      typeof code === 'string' && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
    // Cluster: "Failed to refresh slots cache." says little; the last node's error says why.
    const last = (err as { lastNodeError?: unknown }).lastNodeError;
    return last instanceof Error ? `${text} (${describe(last)})` : text;
  }
  return String(err);
}

function passwordOf(url: string): string | undefined {
  try {
    const u = new URL(url);
    const pw = decodeURIComponent(u.password);
    return pw === '' ? undefined : pw;
  } catch {
    return undefined;
  }
}
