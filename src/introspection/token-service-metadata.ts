import {
  allowInsecureRequests,
  Configuration,
  type CustomFetch,
  customFetch,
  discovery,
  None,
  type ServerMetadata,
} from 'openid-client';
import type { Config } from '../config/schema.ts';
import { TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { Logger } from '../observability/logger.ts';

export interface TokenServiceInfo {
  issuer: string;
  /** Where introspection requests go: `tokenService.introspectionEndpoint`, else discovery's. */
  introspectionEndpoint: string;
  /** `jwt.jwksUri`, else discovery's `jwks_uri`. */
  jwksUri?: string;
  /** openid-client view of the token service with the configured client authentication. */
  openid: Configuration;
}

export interface TokenServiceMetadata {
  /** True once the metadata is known (readiness, SPEC §8). */
  ready(): boolean;
  /** The metadata; while unknown, waits for one discovery attempt, then throws TokenServiceUnavailable('unreachable'). */
  get(): Promise<TokenServiceInfo>;
  /** First discovery attempt: resolves when it succeeded, rejects when it failed (retries continue in the background). */
  start(): Promise<void>;
  /**
   * A sign that the metadata may be stale (the introspection endpoint failed at the network level
   * or answered 404/410): rediscover in the background, at most once per MIN_REFRESH_GAP_MS. A
   * no-op while the metadata is unknown (the retries run anyway) or when nothing is discovered.
   */
  refreshSoon(reason: string): void;
  /** Stops background retries and refreshes. */
  stop(): void;
}

/**
 * The discovered metadata names another issuer than `tokenService.issuer` (RFC 8414 §3.3, OIDC
 * Discovery §4.3): a configuration error, not an outage. Fatal at startup (exit 2).
 */
export class IssuerMismatchError extends Error {
  override name = 'IssuerMismatchError';
  readonly expected: string;
  readonly got: string | undefined;
  constructor(expected: string, got: string | undefined, cause?: unknown) {
    super(
      `tokenService.issuer: the token service metadata names issuer ${got === undefined ? '(none)' : JSON.stringify(got)}, ` +
        `but tokenService.issuer is ${JSON.stringify(expected)} (they must be identical)`,
      cause === undefined ? undefined : { cause },
    );
    this.expected = expected;
    this.got = got;
  }
}

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
/** A request that finds the metadata unknown starts an attempt only if the last one ended longer ago than this. */
const MIN_ATTEMPT_INTERVAL_MS = 1000;
/** Known metadata is rediscovered this often (± 10 % jitter, so replicas spread out). */
export const REFRESH_INTERVAL_MS = 60 * 60 * 1000;
/** Refreshes asked for by introspection failures (refreshSoon) start at most once per this. */
export const MIN_REFRESH_GAP_MS = 30_000;

/**
 * openid-client timeouts are in seconds and end up in `AbortSignal.timeout(seconds * 1000)`,
 * which throws for a non-integer: 1001 / 1000 * 1000 = 1000.9999999999999. Use the exact value
 * when it survives the round trip, else whole seconds rounded up (our own fetch wrapper enforces
 * the exact millisecond timeout anyway).
 */
export function openidTimeoutSeconds(ms: number): number {
  const s = ms / 1000;
  return Number.isInteger(s * 1000) ? s : Math.ceil(s);
}

function describe(err: unknown): { message: string; code?: string } {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const causeCode = (err.cause as { code?: unknown } | undefined)?.code;
    const c = typeof code === 'string' ? code : typeof causeCode === 'string' ? causeCode : undefined;
    return c === undefined ? { message: err.message } : { message: err.message, code: c };
  }
  return { message: String(err) };
}

/**
 * Token service metadata (RFC 8414 / OpenID Connect Discovery) with openid-client. When the
 * introspection endpoint and the key source are configured, no discovery happens and the
 * metadata is known at once. Otherwise the first attempt runs at start(); after a failure the
 * module retries in the background (1 s doubling to 30 s) until it succeeds. Known discovered
 * metadata is refreshed every `refreshIntervalMs` and on refreshSoon(); a failed refresh (or one
 * naming another issuer) keeps the previous metadata.
 */
export function createTokenServiceMetadata(
  cfg: Config,
  deps: {
    logger: Logger;
    fetch?: typeof fetch;
    /** Tests: the scheduled refresh interval (default REFRESH_INTERVAL_MS). */
    refreshIntervalMs?: number;
    /** Tests: the minimum gap between refreshSoon() refreshes (default MIN_REFRESH_GAP_MS). */
    minRefreshGapMs?: number;
  },
): TokenServiceMetadata {
  const ts = cfg.tokenService;
  const logger = deps.logger;
  const issuerUrl = new URL(ts.issuer);
  const insecure = issuerUrl.protocol === 'http:';
  // openid-client is used for discovery only (introspection is ours, client-auth.ts): no client auth here.
  const auth = None();
  const baseFetch = deps.fetch ?? globalThis.fetch;
  // Exact millisecond timeout on every openid-client request, whatever its own (seconds) timeout does.
  const fetchWithTimeout: CustomFetch = (url, options) => {
    const timeout = AbortSignal.timeout(ts.timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    return baseFetch(url, { ...options, signal } as RequestInit);
  };

  function finish(config: Configuration): TokenServiceInfo {
    config.timeout = openidTimeoutSeconds(ts.timeoutMs);
    config[customFetch] = fetchWithTimeout;
    const as = config.serverMetadata();
    // tls_client_auth: the RFC 8705 §5 alias is the endpoint that asks for client certificates.
    const mtlsAlias =
      ts.clientAuth === 'tls_client_auth' ? as.mtls_endpoint_aliases?.introspection_endpoint : undefined;
    const introspectionEndpoint = ts.introspectionEndpoint ?? mtlsAlias ?? as.introspection_endpoint;
    if (introspectionEndpoint === undefined) {
      throw new Error(
        'the token service metadata has no introspection_endpoint (set tokenService.introspectionEndpoint)',
      );
    }
    const jwksUri = cfg.jwt.jwksUri ?? as.jwks_uri;
    // The token service's keys are needed to verify its JWTs (accept-jwt, claim) or its signed
    // introspection answers (mint with introspectionFormat jwt, RFC 9701).
    const needsKeys = ts.mode !== 'mint' || ts.introspectionFormat === 'jwt';
    if (jwksUri === undefined && needsKeys) {
      throw new Error('the token service metadata has no jwks_uri (set jwt.jwksUri)');
    }
    return {
      issuer: as.issuer,
      introspectionEndpoint,
      ...(jwksUri !== undefined ? { jwksUri } : {}),
      openid: config,
    };
  }

  let known: TokenServiceInfo | undefined;
  const manual =
    ts.introspectionEndpoint !== undefined &&
    ((ts.mode === 'mint' && ts.introspectionFormat !== 'jwt') || cfg.jwt.jwksUri !== undefined);
  if (manual) {
    const server: ServerMetadata = {
      issuer: ts.issuer,
      introspection_endpoint: ts.introspectionEndpoint!,
      ...(cfg.jwt.jwksUri !== undefined ? { jwks_uri: cfg.jwt.jwksUri } : {}),
    };
    const config = new Configuration(server, ts.clientId, {}, auth);
    if (insecure || new URL(ts.introspectionEndpoint!).protocol === 'http:') allowInsecureRequests(config);
    known = finish(config);
  }

  let inFlight: Promise<TokenServiceInfo> | undefined;
  let lastAttemptEnd = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let delay = FIRST_RETRY_MS;
  let failures = 0;

  /** openid-client's issuer comparison failure, as an IssuerMismatchError; other errors unchanged. */
  function asIssuerMismatch(err: unknown): unknown {
    if ((err as { code?: unknown } | undefined)?.code !== 'OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED')
      return err;
    const got = (err as { cause?: { body?: { issuer?: unknown } } }).cause?.body?.issuer;
    return new IssuerMismatchError(ts.issuer, typeof got === 'string' ? got : undefined, err);
  }

  async function discover(): Promise<TokenServiceInfo> {
    try {
      return await discoverOnce();
    } catch (err) {
      throw asIssuerMismatch(err);
    }
  }

  async function discoverOnce(): Promise<TokenServiceInfo> {
    const options = {
      ...(insecure ? { execute: [allowInsecureRequests] } : {}),
      timeout: openidTimeoutSeconds(ts.timeoutMs),
      [customFetch]: fetchWithTimeout,
    };
    let config: Configuration;
    try {
      config = await discovery(issuerUrl, ts.clientId, {}, auth, options);
    } catch (err) {
      // No OpenID configuration document (e.g. 404)? Try RFC 8414's well-known location.
      const code = (err as { code?: unknown }).code;
      if (code !== 'OAUTH_RESPONSE_IS_NOT_CONFORM' && code !== 'OAUTH_RESPONSE_IS_NOT_JSON') throw err;
      try {
        config = await discovery(issuerUrl, ts.clientId, {}, auth, { ...options, algorithm: 'oauth2' });
      } catch {
        throw err;
      }
    }
    return finish(config);
  }

  function attempt(): Promise<TokenServiceInfo> {
    if (known) return Promise.resolve(known);
    inFlight ??= discover()
      .then((info) => {
        known = info;
        if (timer) clearTimeout(timer);
        timer = undefined;
        logger.info(
          { issuer: info.issuer, introspectionEndpoint: info.introspectionEndpoint, attempts: failures + 1 },
          'token service metadata discovered',
        );
        scheduleRefresh();
        return info;
      })
      .catch((err: unknown) => {
        failures++;
        if (err instanceof IssuerMismatchError) {
          // Not fixed by waiting, but the token service may be redeployed: keep retrying, loudly.
          logger.error(
            { expected: err.expected, got: err.got, attempt: failures },
            'token service metadata issuer does not match tokenService.issuer',
          );
        } else {
          logger.warn(
            { issuer: ts.issuer, err: describe(err), attempt: failures },
            'token service discovery failed',
          );
        }
        throw err;
      })
      .finally(() => {
        inFlight = undefined;
        lastAttemptEnd = Date.now();
      });
    return inFlight;
  }

  function scheduleRetry(): void {
    if (stopped || known || timer) return;
    const wait = delay;
    delay = Math.min(delay * 2, MAX_RETRY_MS);
    timer = setTimeout(() => {
      timer = undefined;
      attempt().catch(() => scheduleRetry());
    }, wait);
    timer.unref();
  }

  const refreshIntervalMs = deps.refreshIntervalMs ?? REFRESH_INTERVAL_MS;
  const minRefreshGapMs = deps.minRefreshGapMs ?? MIN_REFRESH_GAP_MS;
  let refreshTimer: NodeJS.Timeout | undefined;
  let refreshing: Promise<void> | undefined;
  let lastRefreshStart = Number.NEGATIVE_INFINITY;

  /** Next scheduled refresh of known, discovered metadata (one timer at a time). */
  function scheduleRefresh(): void {
    if (stopped || manual || known === undefined || refreshTimer || refreshing) return;
    const wait = refreshIntervalMs * (0.9 + Math.random() * 0.2);
    refreshTimer = setTimeout(() => {
      refreshTimer = undefined;
      void refresh('scheduled');
    }, wait);
    refreshTimer.unref();
  }

  /** Rediscovers; the new metadata replaces the old only when the discovery fully succeeded. */
  function refresh(reason: string): Promise<void> {
    if (refreshing) return refreshing;
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = undefined;
    lastRefreshStart = Date.now();
    refreshing = discover()
      .then(
        (info) => {
          const old = known;
          known = info;
          const changed =
            old === undefined ||
            old.introspectionEndpoint !== info.introspectionEndpoint ||
            old.jwksUri !== info.jwksUri;
          const fields = { reason, introspectionEndpoint: info.introspectionEndpoint, jwksUri: info.jwksUri };
          if (changed) logger.info(fields, 'token service metadata changed on refresh');
          else logger.debug(fields, 'token service metadata refreshed (unchanged)');
        },
        (err: unknown) => {
          if (err instanceof IssuerMismatchError) {
            logger.error(
              { reason, expected: err.expected, got: err.got },
              'token service metadata issuer does not match tokenService.issuer; keeping the previous metadata',
            );
          } else {
            logger.warn(
              { reason, issuer: ts.issuer, err: describe(err) },
              'token service metadata refresh failed; keeping the previous metadata',
            );
          }
        },
      )
      .finally(() => {
        refreshing = undefined;
        scheduleRefresh();
      });
    return refreshing;
  }

  return {
    ready: () => known !== undefined,

    refreshSoon(reason: string): void {
      if (stopped || manual || known === undefined || refreshing) return;
      if (Date.now() - lastRefreshStart < minRefreshGapMs) return;
      void refresh(reason);
    },

    async get(): Promise<TokenServiceInfo> {
      if (known) return known;
      try {
        if (inFlight) return await inFlight;
        if (Date.now() - lastAttemptEnd < MIN_ATTEMPT_INTERVAL_MS) {
          throw new Error('token service metadata unknown (last discovery attempt failed moments ago)');
        }
        return await attempt();
      } catch (err) {
        throw new TokenServiceUnavailable('unreachable', err);
      }
    },

    async start(): Promise<void> {
      if (known) return;
      stopped = false;
      try {
        await attempt();
      } catch (err) {
        scheduleRetry();
        throw err;
      }
    },

    stop(): void {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (refreshTimer) clearTimeout(refreshTimer);
      refreshTimer = undefined;
    },
  };
}
