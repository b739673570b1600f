import { Redis } from 'ioredis';
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

/** The ioredis client type the store hands to `run`. */
export type RedisClient = Redis;

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

/**
 * ioredis 6 with options that fail fast (STACK-NOTES): no offline queue, no per-request retries,
 * a command timeout, bounded reconnect backoff. On top of ioredis' connection state this keeps a
 * small breaker: after `failureThreshold` consecutive failures on a connection ioredis still calls
 * ready (typically a frozen Redis: the socket stays open, nothing answers), the store is `down`
 * and skips commands until a probe PING answers in time, so requests stop paying the command
 * timeout. ioredis' `socketTimeout` additionally drops a connection that has received nothing
 * for a while with commands outstanding, after which ioredis reconnects by itself.
 */
export function createRedisStore(cfg: RedisConfig, deps: RedisStoreDeps): RedisStore {
  const { logger } = deps;
  const endpoint = redisEndpoint(cfg.url);
  const failureThreshold = deps.failureThreshold ?? 3;
  const probeIntervalMs = deps.probeIntervalMs ?? 500;
  const closeTimeoutMs = deps.closeTimeoutMs ?? 1000;
  const password = passwordOf(cfg.url);

  let current: RedisState = 'connecting';
  let closed = false;
  let errorCount = 0;
  let consecutiveFailures = 0;
  let lastError: string | undefined;
  let probeTimer: NodeJS.Timeout | undefined;
  let probing = false;

  const client = new Redis(cfg.url, {
    enableOfflineQueue: false,
    commandTimeout: cfg.commandTimeoutMs,
    maxRetriesPerRequest: 0,
    connectTimeout: 500,
    retryStrategy: (times: number) => Math.min(times * 100, 1000),
    lazyConnect: false,
    // Drop a connection that received nothing for this long while commands were outstanding.
    socketTimeout: Math.max(1000, cfg.commandTimeoutMs * 20),
    connectionName: 'phantom-gateway',
    // disconnect() ends the socket gracefully and destroys it after this long (default 2000 ms):
    // against a frozen Redis the FIN is never answered, so keep close() short.
    disconnectTimeout: Math.min(closeTimeoutMs, 500),
  });

  const sanitize = (msg: string): string => (password ? msg.split(password).join('***') : msg);

  const setState = (to: RedisState): void => {
    if (to === current) return;
    const from = current;
    current = to;
    if (!closed) {
      const fields = {
        redis: endpoint,
        from,
        to,
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
  });
  client.on('ready', () => {
    consecutiveFailures = 0;
    setState('ready');
  });
  client.on('close', () => setState('down'));
  client.on('end', () => setState('down'));

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

  const failed = (err: unknown): void => {
    errorCount++;
    lastError = sanitize(describe(err));
    consecutiveFailures++;
    if (consecutiveFailures >= failureThreshold && current === 'ready') setState('down');
  };

  let subscriber: Redis | undefined;
  const handlers = new Map<string, (message: string) => void>();

  function ensureSubscriber(): Redis {
    if (subscriber !== undefined) return subscriber;
    // A subscriber connection may queue SUBSCRIBE until it is connected; ioredis resubscribes
    // after every reconnect (autoResubscribe). It never carries request-path commands.
    const sub = client.duplicate({
      enableOfflineQueue: true,
      commandTimeout: undefined,
      connectionName: 'phantom-gateway-sub',
    });
    sub.on('error', (err: Error) => {
      lastError = sanitize(describe(err));
    });
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

  return {
    async run<T>(op: (c: Redis) => Promise<T>): Promise<T | undefined> {
      if (!usable()) {
        errorCount++;
        return undefined;
      }
      try {
        const v = await op(client);
        consecutiveFailures = 0;
        return v;
      } catch (err) {
        failed(err);
        return undefined;
      }
    },
    key: (key: string) => cfg.keyPrefix + key,
    async publish(channel, message) {
      if (!usable()) return false;
      try {
        await client.publish(channel, message);
        consecutiveFailures = 0;
        return true;
      } catch (err) {
        failed(err);
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
            { redis: endpoint, channel, reason: lastError },
            'redis subscribe failed; retried on reconnect',
          );
        });
    },
    async get(key) {
      if (!usable()) {
        errorCount++;
        return undefined;
      }
      try {
        const v = await client.get(cfg.keyPrefix + key);
        consecutiveFailures = 0;
        return v ?? undefined;
      } catch (err) {
        failed(err);
        return undefined;
      }
    },
    async set(key, value, ttlSeconds) {
      const ttl = Math.floor(ttlSeconds);
      if (!Number.isFinite(ttl) || ttl < 1) return;
      if (!usable()) {
        errorCount++;
        return;
      }
      try {
        await client.set(cfg.keyPrefix + key, value, 'EX', ttl);
        consecutiveFailures = 0;
      } catch (err) {
        failed(err);
      }
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

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
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
