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
  /** Stops background retries. */
  stop(): void;
}

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
/** A request that finds the metadata unknown starts an attempt only if the last one ended longer ago than this. */
const MIN_ATTEMPT_INTERVAL_MS = 1000;

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
 * module retries in the background (1 s doubling to 30 s) until it succeeds.
 */
export function createTokenServiceMetadata(
  cfg: Config,
  deps: { logger: Logger; fetch?: typeof fetch },
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
    const introspectionEndpoint = ts.introspectionEndpoint ?? as.introspection_endpoint;
    if (introspectionEndpoint === undefined) {
      throw new Error(
        'the token service metadata has no introspection_endpoint (set tokenService.introspectionEndpoint)',
      );
    }
    const jwksUri = cfg.jwt.jwksUri ?? as.jwks_uri;
    if (jwksUri === undefined && ts.mode !== 'mint') {
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
    ts.introspectionEndpoint !== undefined && (ts.mode === 'mint' || cfg.jwt.jwksUri !== undefined);
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

  async function discover(): Promise<TokenServiceInfo> {
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
        return info;
      })
      .catch((err: unknown) => {
        failures++;
        const d = describe(err);
        if (d.code === 'OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED') {
          const got = (err as { cause?: { body?: { issuer?: unknown } } }).cause?.body?.issuer;
          logger.error(
            { expected: ts.issuer, got: typeof got === 'string' ? got : undefined, attempt: failures },
            'token service metadata issuer does not match tokenService.issuer',
          );
        } else {
          logger.warn({ issuer: ts.issuer, err: d, attempt: failures }, 'token service discovery failed');
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

  return {
    ready: () => known !== undefined,

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
    },
  };
}
