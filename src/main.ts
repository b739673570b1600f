import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type Server } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { createGateway, type Gateway, StartupConfigError } from './app.ts';
import { announceListening, runPrimary, workerCount } from './cluster/cluster.ts';
import { loadConfig } from './config/load-config.ts';
import { ConfigError } from './config/parse-config.ts';
import type { Config } from './config/schema.ts';
import { describeError } from './errors/error-handler.ts';
import { IssuerMismatchError } from './introspection/token-service-metadata.ts';
import { createLogger, type Logger } from './observability/logger.ts';
import { initTracing, type Tracing } from './observability/tracing.ts';
import { createConfigReloader, type ReloadOutcome, type ReloadTrigger } from './reload.ts';

/** Exit codes of SPEC §2. */
export const EXIT = { ok: 0, config: 1, startup: 2 } as const;

export interface RunningGateway {
  gateway: Gateway;
  publicServer: Server;
  adminServer: Server | undefined;
  /** The forward-auth listener (config.forwardAuth), when configured. */
  forwardAuthServer?: Server | undefined;
  /** Stop accepting, let in-flight requests finish (up to the grace period), close Redis. */
  shutdown(): Promise<void>;
  /** Config hot reload (SIGHUP, file change): see reload.ts. */
  reload(trigger: ReloadTrigger): Promise<ReloadOutcome>;
}

/** Builds the public server (http, or https with optional client certificates). */
function createPublicServer(config: Config): Server {
  const tls = config.listen.tls;
  // headersTimeout and requestTimeout are enforced by a sweep every connectionsCheckingInterval
  // (node's default 30 s would let a slowloris client hold a socket for up to 45 s, not 15 s).
  const serverOpts = {
    headersTimeout: 15_000,
    requestTimeout: 300_000,
    keepAliveTimeout: 5_000,
    connectionsCheckingInterval: 1_000,
  };
  const server = tls === undefined ? http.createServer(serverOpts) : createTlsServer(serverOpts, tls);
  applyMaxConnections(server, config);
  return server;
}

/** listen.maxConnections: connections beyond it are accepted and closed at once (node net.Server). */
function applyMaxConnections(server: Server, config: Config): void {
  server.maxConnections = config.listen.maxConnections ?? Number.POSITIVE_INFINITY;
}

function createTlsServer(serverOpts: http.ServerOptions, tls: NonNullable<Config['listen']['tls']>): Server {
  return https.createServer({
    ...serverOpts,
    cert: readFileSync(tls.certFile),
    key: readFileSync(tls.keyFile),
    ...(tls.clientCaFile
      ? { ca: readFileSync(tls.clientCaFile), requestCert: true, rejectUnauthorized: false }
      : {}),
  }) as unknown as Server;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Resolves when every socket in the set has closed. */
function allClosed(sockets: Set<Duplex>): Promise<void> {
  return Promise.all([...sockets].map((s) => new Promise<void>((r) => s.once('close', () => r())))).then(
    () => {},
  );
}

function portOf(server: Server): number {
  const a = server.address();
  return a !== null && typeof a === 'object' ? a.port : 0;
}

/**
 * Starts the gateway from a parsed configuration. Throws StartupConfigError (exit 1) or a
 * startup error (exit 2: port in use, token service required at startup but unreachable).
 */
export async function startGateway(
  config: Config,
  logger: Logger,
  opts: { configFile?: string; tracing?: Tracing | undefined } = {},
): Promise<RunningGateway> {
  const { tracing } = opts;
  const gateway = await createGateway(config, { logger, tracing });
  // The first discovery attempt (bounded by tokenService.timeoutMs) always runs before listening:
  // an issuer mismatch is a configuration error and stops the start (exit 2) whatever
  // requireAtStartup says; an unreachable token service stops it only with requireAtStartup
  // (otherwise readyz is false and the metadata module retries in the background).
  try {
    await gateway.metadata.start();
  } catch (err) {
    if (err instanceof IssuerMismatchError) {
      await gateway.close();
      throw err;
    }
    if (config.tokenService.requireAtStartup) {
      await gateway.close();
      throw Object.assign(
        new Error('token service discovery failed at startup (tokenService.requireAtStartup is true)'),
        {
          cause: err,
        },
      );
    }
  }

  let publicServer: Server;
  try {
    publicServer = createPublicServer(config);
  } catch (err) {
    await gateway.close();
    throw new StartupConfigError(
      `listen.tls: cannot read certificate or key (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
  // Config hot reload swaps `current`; every request runs on the gateway that accepted it, and a
  // replaced gateway is closed once its last in-flight request is done (bounded).
  let current: Gateway = gateway;
  const inflight = new Map<Gateway, number>();
  const retiring = new Map<Gateway, () => void>();
  const track = (res: http.ServerResponse): Gateway => {
    const g = current;
    inflight.set(g, (inflight.get(g) ?? 0) + 1);
    res.once('close', () => {
      const n = (inflight.get(g) ?? 1) - 1;
      inflight.set(g, n);
      if (n === 0) retiring.get(g)?.();
    });
    return g;
  };
  publicServer.on('request', (req: IncomingMessage, res: http.ServerResponse) => {
    track(res).app(req as never, res as never);
  });
  // Upgraded (WebSocket) connections leave the HTTP server's bookkeeping: track them for shutdown.
  const upgraded = new Set<Duplex>();
  publicServer.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgraded.add(socket);
    socket.once('close', () => upgraded.delete(socket));
    // Run the same pipeline; forward() sees `upgradeSocket` and hands the socket to the proxy.
    const res = new http.ServerResponse(req) as http.ServerResponse & {
      upgradeSocket?: Duplex;
      upgradeHead?: Buffer;
    };
    res.assignSocket(socket as never);
    res.upgradeSocket = socket;
    res.upgradeHead = head;
    current.app(req as never, res as never);
  });
  publicServer.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    // An answer already on its way (status line sent): a 400 now would land inside its body, read
    // by a pooling front proxy as the answer to its next request. Cut the connection instead.
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (socket.writable && inFlight?.headersSent !== true) {
      // Headers over node's maxHeaderSize (16 KiB): 431 (RFC 6585), as node's own handler answers.
      const status =
        err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    } else socket.destroy();
  });

  const adminServer =
    config.admin.port === 0
      ? undefined
      : http.createServer((req, res) => current.admin(req as never, res as never));
  // forwardAuth: its own listener. Idle keep-alive longer than an ingress's own idle timeout for
  // upstream connections (nginx: 60 s), so the ingress never reuses a connection we are closing.
  const forwardAuth = config.forwardAuth;
  const forwardAuthServer =
    forwardAuth !== undefined && gateway.forwardAuth !== undefined
      ? http.createServer(
          { headersTimeout: 15_000, requestTimeout: 60_000, keepAliveTimeout: 65_000 },
          (req, res) => {
            const g = track(res);
            g.forwardAuth!(req as never, res as never);
          },
        )
      : undefined;
  try {
    await listen(publicServer, config.listen.port, config.listen.host);
    if (adminServer) await listen(adminServer, config.admin.port, config.admin.host);
    if (forwardAuthServer) await listen(forwardAuthServer, forwardAuth!.port, forwardAuth!.host);
  } catch (err) {
    publicServer.close();
    adminServer?.close();
    await gateway.close();
    throw err;
  }
  logger.info(
    {
      listen: `${config.listen.host}:${portOf(publicServer)}`,
      admin: adminServer ? `${config.admin.host}:${portOf(adminServer)}` : 'disabled',
      forwardAuth: forwardAuthServer ? `${forwardAuth!.host}:${portOf(forwardAuthServer)}` : 'disabled',
      mode: config.tokenService.mode,
      routes: config.routes.length,
      redis: config.cache.redis ? 'configured' : 'disabled',
    },
    'phantom-gateway listening',
  );

  /** Makes `next` the active gateway; the previous one closes after its last in-flight request. */
  const activate = (next: Gateway) => {
    const old = current;
    current = next;
    applyMaxConnections(publicServer, next.config);
    const keep = old.reusableFor(next.config);
    let done = false;
    const retire = () => {
      if (done) return;
      done = true;
      clearTimeout(bound);
      retiring.delete(old);
      inflight.delete(old);
      old.close(keep).catch((err: unknown) => {
        logger.warn({ err: describeError(err) }, 'closing the replaced configuration failed');
      });
    };
    // Bounded: requests still running after the grace period keep their sockets, not the old
    // gateway's timers and upstream agents.
    const bound = setTimeout(retire, Math.max(config.shutdownGraceSeconds, 30) * 1000);
    bound.unref();
    retiring.set(old, retire);
    if ((inflight.get(old) ?? 0) === 0) retire();
  };
  const reloader =
    opts.configFile === undefined
      ? undefined
      : createConfigReloader({
          file: opts.configFile,
          logger,
          current: () => current,
          build: (next, shared) => createGateway(next, { logger, shared, tracing }),
          activate,
        });
  reloader?.watch();

  let stopping: Promise<void> | undefined;
  const shutdown = () => {
    stopping ??= (async () => {
      logger.info(
        { graceSeconds: config.shutdownGraceSeconds },
        'shutting down: draining in-flight requests',
      );
      const closed = new Promise<void>((resolve) => publicServer.close(() => resolve()));
      publicServer.closeIdleConnections();
      adminServer?.close();
      // In-flight forward-auth calls are drained like the public listener's.
      const forwardAuthClosed = new Promise<void>((resolve) =>
        forwardAuthServer ? forwardAuthServer.close(() => resolve()) : resolve(),
      );
      forwardAuthServer?.closeIdleConnections();
      const grace = new Promise<void>((resolve) =>
        setTimeout(resolve, config.shutdownGraceSeconds * 1000).unref(),
      );
      await Promise.race([
        Promise.all([
          upgraded.size === 0 ? closed : Promise.all([closed, allClosed(upgraded)]),
          forwardAuthClosed,
        ]),
        grace,
      ]);
      publicServer.closeAllConnections();
      adminServer?.closeAllConnections();
      forwardAuthServer?.closeAllConnections();
      for (const socket of upgraded) socket.destroy();
      reloader?.stop();
      // Replaced configurations still draining close now, keeping what the current one uses.
      for (const [old] of retiring) await old.close(old.reusableFor(current.config)).catch(() => {});
      await current.close();
      // The spans still buffered are exported (bounded) before the exit.
      await tracing?.shutdown();
      logger.info('shutdown complete');
    })();
    return stopping;
  };
  return {
    get gateway() {
      return current;
    },
    publicServer,
    adminServer,
    forwardAuthServer,
    shutdown,
    reload: (trigger) =>
      reloader === undefined ? Promise.resolve('unchanged' as const) : reloader.reload(trigger),
  };
}

/**
 * SIGHUP: reload the configuration file and re-read key material from files (mint signing keys,
 * client credentials) — reload.ts. Never a shutdown and never a crash: failures are logged and
 * the old configuration and keys stay. Installed before startup so an early SIGHUP does not kill
 * the process (its default action); ignored until the gateway runs.
 */
function createHangupHandler(logger: Logger, running: () => RunningGateway | undefined): () => void {
  return () => {
    const r = running();
    if (r === undefined) {
      logger.warn({ signal: 'SIGHUP' }, 'signal received before the gateway started: ignored');
      return;
    }
    logger.info({ signal: 'SIGHUP' }, 'signal received: reloading the configuration and key material');
    r.reload('SIGHUP').catch((err: unknown) => {
      logger.error({ err: describeError(err) }, 'reload failed');
    });
  };
}

/** `phantom-gateway serve`: returns the process exit code. */
export async function serve(configFile: string): Promise<number> {
  const logger = createLogger();
  let config: Config;
  try {
    const loaded = loadConfig(configFile);
    config = loaded.config;
    // With listen.workers, the primary has printed them already.
    if (!cluster.isWorker) for (const w of loaded.warnings) logger.warn({ configFile }, w);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return EXIT.config;
    }
    throw err;
  }
  const workers = workerCount(config.listen.workers);
  if (workers > 1 && cluster.isPrimary) {
    logger.info({ workers }, 'starting worker processes (listen.workers)');
    return runPrimary({ config, count: workers, logger });
  }
  let running: RunningGateway;
  let started: RunningGateway | undefined;
  process.on(
    'SIGHUP',
    createHangupHandler(logger, () => started),
  );
  // OpenTelemetry only when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set (each worker has its own);
  // without it nothing of the SDK is loaded. A failure to set it up is logged, never fatal.
  const tracing = await initTracing(logger).catch((err: unknown) => {
    logger.error({ err: describeError(err) }, 'tracing could not be set up: running without it');
    return undefined;
  });
  try {
    running = await startGateway(config, logger, { configFile, tracing });
    started = running;
  } catch (err) {
    if (err instanceof StartupConfigError) {
      logger.error({ configFile }, err.message);
      process.stderr.write(`${configFile}: ${err.message}\n`);
      logger.flush();
      return EXIT.config;
    }
    logger.error({ err: describeError(err) }, 'startup failed');
    process.stderr.write(
      `startup failed: ${(err as Error).message}${(err as NodeJS.ErrnoException).code ? ` (${(err as NodeJS.ErrnoException).code})` : ''}\n`,
    );
    logger.flush();
    return EXIT.startup;
  }
  announceListening();
  return new Promise<number>((resolve) => {
    const onSignal = (signal: string) => {
      logger.info({ signal }, 'signal received');
      running.shutdown().then(
        () => resolve(EXIT.ok),
        (err) => {
          logger.error({ err: describeError(err) }, 'error during shutdown');
          resolve(EXIT.ok);
        },
      );
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
}
