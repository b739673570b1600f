import cluster from 'node:cluster';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Express } from 'express';
import type { Registry } from 'prom-client';
import { createAdminApp, createPublicJwksEndpoint } from './admin/admin-app.ts';
import type { CacheEntry } from './cache/cache-entry.ts';
import { createCacheEvents } from './cache/cache-events.ts';
import { createCacheKeyer, resolveCacheSecret } from './cache/cache-key.ts';
import { type CacheMetrics, cacheMetricsSnapshot, createCacheMetrics } from './cache/cache-metrics.ts';
import { createCoalescer } from './cache/coalescer.ts';
import { createMemoryCache, type MemoryCache } from './cache/memory-cache.ts';
import { createRedisStore, type RedisStore } from './cache/redis-store.ts';
import { createRevocation, type Revocation } from './cache/revocation.ts';
import { createTieredCache } from './cache/tiered-cache.ts';
import { createValueCipher } from './cache/value-crypto.ts';
import { CLUSTER_METRICS, callPrimary, shareMetricsWithPrimary, workerPeerBus } from './cluster/cluster.ts';
import type { Config } from './config/schema.ts';
import { createErrorHandler, describeError } from './errors/error-handler.ts';
import { createForwardAuthApp } from './forward-auth/forward-auth-app.ts';
import { type ClientAuth, createClientAuth } from './introspection/client-auth.ts';
import { createIntrospectionClient, type IntrospectionClient } from './introspection/introspection-client.ts';
import { createJwtIntrospectionVerifierFromConfig } from './introspection/jwt-introspection.ts';
import {
  createTokenServiceMetadata,
  type TokenServiceMetadata,
} from './introspection/token-service-metadata.ts';
import { createKeyRing, type KeyRing } from './jwt/key-ring.ts';
import { createMinter, type Minter } from './jwt/mint-jwt.ts';
import { SIGNING_ALGORITHMS } from './jwt/signing-keys.ts';
import { createJwtVerifier, type JwtVerifier } from './jwt/verify-jwt.ts';
import { createAccessLog } from './observability/access-log.ts';
import type { Logger } from './observability/logger.ts';
import { configHash, createMetrics, type GatewayMetrics } from './observability/metrics.ts';
import type { Tracing } from './observability/tracing.ts';
import { createAuthorizeScopes } from './pipeline/authorize-scopes.ts';
import { chain } from './pipeline/chain.ts';
import { createExtractToken } from './pipeline/extract-token.ts';
import { createForward } from './pipeline/forward.ts';
import { createMatchRoute } from './pipeline/match-route.ts';
import { createRequestId } from './pipeline/request-id.ts';
import { cacheEntryOf, cacheVariant, createJwtResolver } from './pipeline/resolve-jwt.ts';
import { RouteTable } from './routing/route-table.ts';
import { createSsfReceiverFromConfig } from './ssf/ssf-receiver.ts';

/** Thrown while wiring the gateway when the configuration points at something unusable (exit 1). */
export class StartupConfigError extends Error {
  override name = 'StartupConfigError';
}

/**
 * What a reloaded gateway takes over from the one it replaces (config hot reload): the parts
 * whose configuration did not change, so a routes-only reload keeps its caches, Redis connection,
 * token-service discovery, JWKS cache and mint key ring (whose rotation state must survive).
 */
export interface SharedParts {
  /** Always: the counters continue across reloads. */
  gatewayMetrics: GatewayMetrics;
  cacheMetrics: CacheMetrics;
  /** The cache key secret (a random one lives as long as the process). */
  secret: Buffer;
  /** Same `cache.redis` (a different one needs a restart: reload.ts). */
  redis: RedisStore | undefined;
  /** Same `tokenService`: client authentication, discovery and the introspection client. */
  tokenService?: {
    clientAuth: ClientAuth;
    metadata: TokenServiceMetadata;
    introspection: IntrospectionClient;
  };
  /** Same `tokenService` and `jwt`: the verifier (its JWKS cache), the mint key ring and minter. */
  jwt?: { verifier: JwtVerifier; keyRing?: KeyRing; minter?: Minter };
  /** Same `tokenService`, `jwt` and `cache`: the in-process L1 (its entries were verified under the same rules). */
  memory?: MemoryCache;
}

/** The public listener's request handler (node:http). */
export type PublicHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface Gateway {
  /** The configuration this gateway was built from. */
  config: Config;
  /** The public listener's request handler. */
  app: PublicHandler;
  /** The admin listener's request handler (/livez, /readyz, /.well-known/jwks.json). */
  admin: Express;
  /** The forward-auth listener's request handler (config.forwardAuth; absent when not configured). */
  forwardAuth?: Express;
  metadata: TokenServiceMetadata;
  redis: RedisStore | undefined;
  /** The cache's counters (exposed by /metrics as phantom_gateway_cache_*). */
  metrics: CacheMetrics;
  /** This gateway's Prometheus registry (admin GET /metrics): phantom_gateway_*, process_*, nodejs_*. */
  metricsRegistry: Registry;
  /** phantom_gateway_config_info's hash of `config` (observability/metrics.ts configHash). */
  configHash: string;
  /** The counters plus Redis errors and circuit state, read at call time. */
  cacheMetrics(): ReturnType<typeof cacheMetricsSnapshot>;
  revocation: Revocation;
  /**
   * SIGHUP: re-reads key material from files — the mint signing keys (jwt.mint.signingKeysFile)
   * and the client credentials (client auth). Each part logs its own success or failure; a
   * failure keeps that part's old material. Never throws; false when a part failed.
   */
  reloadKeys(): Promise<boolean>;
  /**
   * One reload done (phantom_gateway_config_reloads_total); a success also makes this gateway's
   * hash the one phantom_gateway_config_info shows.
   */
  countReload(result: 'success' | 'failure'): void;
  /** The parts a gateway built from `next` can take over (see SharedParts). */
  reusableFor(next: Config): SharedParts;
  /**
   * Stops background work and closes Redis and upstream connections — except the parts in
   * `keep` (handed to the gateway that replaced this one).
   */
  close(keep?: SharedParts): Promise<void>;
}

/** Two parts of parsed configurations are the same setting (plain data: JSON equality). */
export const sameSetting = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * Composition root: the only module that knows every part. The public app is the SPEC §4
 * pipeline, read top to bottom.
 */
export async function createGateway(
  config: Config,
  deps: {
    logger: Logger;
    env?: NodeJS.ProcessEnv;
    shared?: SharedParts;
    /** OpenTelemetry (observability/tracing.ts), when the environment turned it on; kept across reloads. */
    tracing?: Tracing | undefined;
  },
): Promise<Gateway> {
  const { logger, shared } = deps;
  const env = deps.env ?? process.env;
  const gatewayMetrics = shared?.gatewayMetrics ?? createMetrics();
  if (shared === undefined && cluster.isWorker) shareMetricsWithPrimary(gatewayMetrics.registry);
  const hash = configHash(config);
  // A reload sets the hash when the new gateway takes over (main.ts), not before.
  if (shared === undefined) gatewayMetrics.setConfigHash(hash);
  logger.info(
    { configHash: hash, mode: config.tokenService.mode, routes: config.routes.length },
    'configuration loaded',
  );

  let secret: Buffer;
  if (shared !== undefined) secret = shared.secret;
  else {
    try {
      const s = resolveCacheSecret(env, config.cache.redis !== undefined);
      secret = s.secret;
      if (s.generated)
        logger.info(
          'PHANTOM_CACHE_KEY not set: using a random per-process cache key (in-process cache only)',
        );
    } catch (err) {
      throw new StartupConfigError((err as Error).message);
    }
  }

  let clientAuth: ClientAuth;
  let metadata: TokenServiceMetadata;
  let introspection: IntrospectionClient;
  if (shared?.tokenService !== undefined) ({ clientAuth, metadata, introspection } = shared.tokenService);
  else
    try {
      clientAuth = await createClientAuth(config);
      metadata = createTokenServiceMetadata(config, { logger, fetch: clientAuth.fetch });
      // RFC 9701 (mode mint, introspectionFormat: jwt): signed answers verified against the token service's JWKS.
      const jwtResponses =
        config.tokenService.introspectionFormat === 'jwt'
          ? createJwtIntrospectionVerifierFromConfig(config, { metadata, fetch: clientAuth.fetch })
          : undefined;
      introspection = createIntrospectionClient(config, {
        metadata,
        logger,
        clientAuth,
        metrics: gatewayMetrics,
        ...(jwtResponses ? { jwtResponses } : {}),
      });
    } catch (err) {
      throw new StartupConfigError((err as Error).message);
    }

  let verifier: JwtVerifier;
  let keyRing: KeyRing | undefined;
  let minter: Minter | undefined;
  const mint = config.jwt.mint;
  if (shared?.jwt !== undefined) ({ verifier, keyRing, minter } = shared.jwt);
  else if (config.tokenService.mode === 'mint' && mint !== undefined) {
    try {
      keyRing = await createKeyRing({
        file: mint.signingKeysFile,
        publishBeforeSignSeconds: mint.publishBeforeSignSeconds,
        lifetimeSeconds: mint.lifetimeSeconds,
        logger,
      });
    } catch (err) {
      throw new StartupConfigError((err as Error).message);
    }
    const ring = keyRing;
    minter = createMinter({
      issuer: mint.issuer,
      lifetimeSeconds: mint.lifetimeSeconds,
      signer: () => ring.signer(),
    });
    // Minted JWTs read back from Redis are verified against our own public keys as published now
    // (removed keys stay published while JWTs they signed live). Every signing algorithm is
    // allowed: the ring's keys change on reload, and each published key is bound to its own alg.
    verifier = createJwtVerifier({
      algorithms: [...SIGNING_ALGORITHMS],
      issuer: mint.issuer,
      typ: 'at+jwt',
      clockSkewSeconds: config.jwt.clockSkewSeconds,
      keys: { kind: 'local', jwks: () => ring.publicJwks() },
    });
  } else {
    verifier = createJwtVerifier({
      algorithms: config.jwt.algorithms,
      issuer: config.jwt.issuer ?? config.tokenService.issuer,
      ...(config.jwt.audience !== undefined ? { audience: config.jwt.audience } : {}),
      ...(config.jwt.typ !== undefined ? { typ: config.jwt.typ } : {}),
      clockSkewSeconds: config.jwt.clockSkewSeconds,
      keys: {
        kind: 'remote',
        timeoutMs: config.tokenService.timeoutMs,
        fetch: clientAuth.fetch,
        jwksUri: async () => {
          if (config.jwt.jwksUri !== undefined) return config.jwt.jwksUri;
          const uri = (await metadata.get()).jwksUri;
          if (uri === undefined) throw new Error('the token service metadata has no jwks_uri');
          return uri;
        },
      },
    });
  }

  let redis: RedisStore | undefined;
  if (shared !== undefined) redis = shared.redis;
  else
    try {
      redis = config.cache.redis ? createRedisStore(config.cache.redis, { logger }) : undefined;
    } catch (err) {
      throw new StartupConfigError((err as Error).message);
    }
  const keyer = createCacheKeyer(secret);
  const metrics = shared?.cacheMetrics ?? createCacheMetrics();
  if (shared === undefined) gatewayMetrics.watchCache(metrics, redis);
  const table = new RouteTable(config);
  const memory = shared?.memory ?? createMemoryCache({ maxEntries: config.cache.memory.maxEntries });
  const cache = createTieredCache({
    memory,
    ...(redis ? { redis } : {}),
    cipher: createValueCipher(secret),
    metrics,
    variants: [...new Set(['', ...table.routes.map((r) => cacheVariant(config, r.audience))])],
    clockSkewSeconds: config.jwt.clockSkewSeconds,
    maxTtlSeconds: config.cache.maxTtlSeconds,
    revive: async (jwt: string): Promise<CacheEntry | undefined> => {
      try {
        return cacheEntryOf(await verifier.verify(jwt), keyer);
      } catch {
        return undefined;
      }
    },
    // An L1 entry whose signing key has left the key set is dropped (re-introspected).
    stillValid: (e) => verifier.isPublished(e.kid) !== false,
  });
  const events = createCacheEvents(
    redis,
    config.cache.revocation.channel ?? `${config.cache.redis?.keyPrefix ?? ''}events`,
    logger,
    // listen.workers without Redis: purges reach the other workers through the primary.
    redis === undefined ? workerPeerBus() : undefined,
  );
  const coalescer = createCoalescer({ redis, events, metrics, timeoutMs: config.tokenService.timeoutMs });
  const revocation = createRevocation({ cache, events, keyer, metrics, logger });

  const resolver = createJwtResolver({
    config,
    cache,
    coalescer,
    keyer,
    introspection,
    verifier,
    ...(minter ? { minter } : {}),
  });
  const realm = () => config.realm;
  const forward = createForward(table.routes, {
    metrics: gatewayMetrics,
    trustProxyHeaders: config.listen.trustProxyHeaders,
    tls: config.listen.tls !== undefined,
    realm,
    logger,
  });

  // The SPEC §4 stages, in order, as one handler on plain node:http (chain.ts): the public
  // listener uses nothing of express (every stage reads node's request and response), and
  // express's per-request work — prototype swaps of req/res, its router — was measured at
  // ≈ 10 µs of CPU per request. The admin and forward-auth listeners stay express apps.
  const pipeline = chain([
    createRequestId(deps.tracing),
    createAccessLog(logger, { metrics: gatewayMetrics, includeSubject: config.logging.includeSubject }),
    // jwt.mint.jwksPath: the public keys of minted JWTs, without a token, before route matching.
    ...(keyRing !== undefined && mint?.jwksPath !== undefined
      ? [createPublicJwksEndpoint(mint.jwksPath, keyRing)]
      : []),
    createMatchRoute(() => table),
    createExtractToken(),
    resolver.middleware,
    createAuthorizeScopes(),
    forward.forward,
  ]);
  const errorHandler = createErrorHandler({ realm, logger });
  const app: PublicHandler = (req, res) => {
    pipeline(req as never, res as never, (err?: unknown) => {
      // Every request ends in a stage (forward, or the JWKS path) or an error: a stage that
      // passed it on without either is a bug, answered as one.
      errorHandler(err ?? new Error('no stage answered the request'), req as never, res as never, () => {});
    });
  };

  // forwardAuth: an existing ingress asks for stages 1–5 of the same pipeline (same route table,
  // resolver — cache, introspection, coalescing — and access log), answered without a forward.
  const forwardAuth =
    config.forwardAuth === undefined
      ? undefined
      : createForwardAuthApp({
          config: config.forwardAuth,
          table: () => table,
          resolveJwt: resolver.middleware,
          realm,
          logger,
          accessLog: { metrics: gatewayMetrics, includeSubject: config.logging.includeSubject },
          tracing: deps.tracing,
        });

  // Shared Signals receiver (config.ssf): SETs from the transmitter evict a subject everywhere.
  const ssfReceiver = createSsfReceiverFromConfig(config, { revocation, logger });

  const admin = createAdminApp({
    ...(ssfReceiver ? { ssf: ssfReceiver } : {}),
    logger,
    revocation,
    ...(config.admin.token !== undefined ? { adminToken: config.admin.token } : {}),
    ready: () => metadata.ready(),
    // listen.workers: any worker may answer a scrape; it asks the primary for the sum over every
    // worker (prom-client's AggregatorRegistry), so each scrape sees the whole process.
    metricsText: cluster.isWorker ? () => callPrimary<string>(CLUSTER_METRICS) : () => gatewayMetrics.text(),
    metricsContentType: gatewayMetrics.registry.contentType,
    redisState: () => (redis ? redis.state() : 'disabled'),
    configHash: hash,
    ...(keyRing ? { jwks: keyRing } : {}),
  });

  const parts: SharedParts = {
    gatewayMetrics,
    cacheMetrics: metrics,
    secret,
    redis,
    tokenService: { clientAuth, metadata, introspection },
    jwt: { verifier, ...(keyRing ? { keyRing } : {}), ...(minter ? { minter } : {}) },
    memory,
  };

  return {
    config,
    app,
    admin,
    ...(forwardAuth ? { forwardAuth } : {}),
    metadata,
    redis,
    metrics,
    cacheMetrics: () => cacheMetricsSnapshot(metrics, redis),
    metricsRegistry: gatewayMetrics.registry,
    configHash: hash,
    revocation,
    countReload(result) {
      gatewayMetrics.configReload(result);
      if (result === 'success') gatewayMetrics.setConfigHash(hash);
    },
    async reloadKeys() {
      let ok = true;
      if (keyRing !== undefined) {
        // Success is logged by the ring (with the published kids and the signer).
        await keyRing.reload().catch((err: unknown) => {
          ok = false;
          logger.error(
            { err: describeError(err) },
            'signing keys reload failed: the previous keys stay in use',
          );
        });
      }
      try {
        await clientAuth.reload();
        logger.info('client credentials reloaded (tokenService.clientAuth)');
      } catch (err) {
        ok = false;
        logger.error(
          { err: describeError(err) },
          'client credentials reload failed (tokenService.clientAuth): the previous ones stay in use',
        );
      }
      return ok;
    },
    reusableFor(next) {
      const sameTokenService = sameSetting(config.tokenService, next.tokenService);
      const sameJwt = sameTokenService && sameSetting(config.jwt, next.jwt);
      const sameCache = sameJwt && sameSetting(config.cache, next.cache);
      return {
        gatewayMetrics,
        cacheMetrics: metrics,
        secret,
        redis,
        ...(sameTokenService ? { tokenService: parts.tokenService! } : {}),
        ...(sameJwt ? { jwt: parts.jwt! } : {}),
        ...(sameCache ? { memory } : {}),
      };
    },
    async close(keep) {
      if (keep?.tokenService?.metadata !== metadata) metadata.stop();
      forward.close();
      if (keep?.redis !== redis) await redis?.close();
    },
  };
}
