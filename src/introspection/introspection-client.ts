import type { Config } from '../config/schema.ts';
import { describeError } from '../errors/error-handler.ts';
import { GatewayError, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { Logger } from '../observability/logger.ts';
import type { IntrospectionMetrics } from '../observability/metrics.ts';
import { readBodyLimited } from '../util/read-body.ts';
import type { ClientAuth } from './client-auth.ts';
import { type JwtIntrospectionVerifier, TOKEN_INTROSPECTION_JWT } from './jwt-introspection.ts';
import type { TokenServiceMetadata } from './token-service-metadata.ts';

/** The answer of one introspection, already checked against the mode's contract (SPEC §6). */
export type Introspection =
  | { active: false }
  | {
      active: true;
      /** accept-jwt / claim: the JWT to verify and forward. Absent in mint mode. */
      jwt?: string;
      /** claim / mint: the RFC 7662 answer; accept-jwt: `{}` (the claims are in the JWT). */
      claims: Record<string, unknown>;
      /** `Cache-Control: max-age` of an accept-jwt answer (0 for no-store / no-cache). */
      maxAgeSeconds?: number;
    };

/** What one introspection is done for: the request, and its trace when tracing is on. */
export interface IntrospectionContext {
  requestId: string;
  /** Sent as the `traceparent` header. */
  traceparent?: string;
  /**
   * The `introspection` span (observability/tracing.ts): gets the token service's address, the
   * HTTP status and the outcome. Never the token or the answer.
   */
  span?: { setAttribute(key: string, value: string | number): unknown };
}

export interface IntrospectionClient {
  /** Throws TokenServiceUnavailable (503 unreachable / 502 bad answer); never a verdict on the token. */
  introspect(token: string, ctx: IntrospectionContext): Promise<Introspection>;
}

/** Upper bound on an introspection response body. */
const MAX_BODY_BYTES = 1024 * 1024;
/** Retry-After we send when the token service gives none (or an absurd one). */
const DEFAULT_RETRY_AFTER = 5;
/** Random wait (ms) before the one retry after a connection reset, so replicas do not retry in step. */
const RESET_RETRY_JITTER_MS = [10, 100] as const;
/** The retry after a reset runs only if this much of the deadline is left (the larger of the two). */
const RESET_RETRY_MIN_BUDGET_MS = 50;
const RESET_RETRY_MIN_BUDGET_SHARE = 0.25;
/**
 * Whether an answer is meant as a JWT: 3 (JWS) or 5 (JWE) dot-separated parts of base64url text
 * (whitespace tolerated, so that a JWT with a line break in it is judged — and refused — by the
 * verifier as jwt_invalid, 401). Anything else (HTML, JSON, junk) is an unusable answer (502).
 */
function looksLikeJwt(text: string): boolean {
  const parts = text.split('.');
  return (
    (parts.length === 3 || parts.length === 5) &&
    /[A-Za-z0-9_-]/.test(parts[0]!) &&
    parts.every((p) => /^[A-Za-z0-9_\-\s]*$/.test(p))
  );
}

/**
 * Why an introspection failed, for the operator's log (the `cause` of the gateway error). Built
 * only from status codes, header values and fixed text: never from the token or the request.
 */
export class IntrospectionFailure extends Error {
  override name = 'IntrospectionFailure';
  readonly status: number | undefined;
  readonly code: string | undefined;
  constructor(message: string, details: { status?: number; code?: string } = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.status = details.status;
    this.code = details.code;
  }
}

/** Retry-After (delta-seconds or HTTP-date) when it is within 1..300 s, else our default. */
export function retryAfterSeconds(header: string | null, nowMs = Date.now()): number {
  if (header === null) return DEFAULT_RETRY_AFTER;
  const v = header.trim();
  let secs: number;
  if (/^\d{1,9}$/.test(v)) secs = Number(v);
  else {
    const at = Date.parse(v);
    if (Number.isNaN(at)) return DEFAULT_RETRY_AFTER;
    secs = Math.ceil((at - nowMs) / 1000);
  }
  return secs >= 1 && secs <= 300 ? secs : DEFAULT_RETRY_AFTER;
}

/** `max-age` of a Cache-Control header; 0 for no-store / no-cache; undefined when absent. */
export function maxAgeOf(header: string | null): number | undefined {
  if (header === null) return undefined;
  let maxAge: number | undefined;
  for (const part of header.split(',')) {
    const [rawName, ...rest] = part.split('=');
    const name = rawName!.trim().toLowerCase();
    if (name === 'no-store' || name === 'no-cache' || name === 'private') return 0;
    if (name === 'max-age') {
      const value = rest
        .join('=')
        .trim()
        .replace(/^"(.*)"$/, '$1');
      if (/^\d{1,10}$/.test(value)) maxAge = Math.min(maxAge ?? Infinity, Number(value));
    }
  }
  return maxAge;
}

function unreachable(
  message: string,
  details: { status?: number; code?: string },
  retryAfter?: number,
  cause?: unknown,
) {
  return new TokenServiceUnavailable(
    'unreachable',
    new IntrospectionFailure(message, details, cause),
    retryAfter,
  );
}

function badAnswer(message: string, details: { status?: number; code?: string } = {}) {
  return new TokenServiceUnavailable('bad_answer', new IntrospectionFailure(message, details));
}

/** The fetch ended because the deadline (AbortSignal.timeout) fired. */
function isTimeout(err: unknown): boolean {
  const name = (err as { name?: unknown } | undefined)?.name;
  return name === 'TimeoutError' || name === 'AbortError';
}

/** Network-level failure (refused, DNS, TLS, reset, timeout) → "could not ask". */
function networkFailure(err: unknown, timeoutMs: number): TokenServiceUnavailable {
  const e = err as Error & { cause?: { code?: unknown; message?: unknown } };
  if (isTimeout(err)) {
    return unreachable(`introspection request timed out after ${timeoutMs} ms`, { code: 'TIMEOUT' });
  }
  const code = typeof e?.cause?.code === 'string' ? e.cause.code : undefined;
  // undici's cause ("connect ECONNREFUSED 127.0.0.1:8443") names host and port: fine for the
  // operator's log, and it never contains the request body (where the token is).
  const detail = typeof e?.cause?.message === 'string' ? e.cause.message : e?.message;
  return unreachable(`introspection request failed: ${detail ?? 'network error'}`, code ? { code } : {});
}

/** undici's error code of a failed fetch (`cause.code`), if any. */
function networkCode(err: unknown): string | undefined {
  const code = (err as { cause?: { code?: unknown } } | undefined)?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * The wait before the one retry of an introspection whose connection was reset or closed before
 * any answer (introspection is idempotent; typically a keep-alive connection the token service
 * had just closed), or undefined when no retry is due: any other failure (refused, DNS, TLS,
 * timeout), or too little of the deadline left after the jitter.
 */
function resetRetryDelay(err: unknown, leftMs: number, timeoutMs: number): number | undefined {
  if (isTimeout(err)) return undefined;
  const code = networkCode(err);
  if (code !== 'ECONNRESET' && code !== 'UND_ERR_SOCKET' && code !== 'EPIPE') return undefined;
  const [min, max] = RESET_RETRY_JITTER_MS;
  const wait = min + Math.random() * (max - min);
  const needed = Math.max(RESET_RETRY_MIN_BUDGET_MS, timeoutMs * RESET_RETRY_MIN_BUDGET_SHARE);
  return leftMs - wait >= needed ? wait : undefined;
}

async function readBody(res: Response): Promise<Uint8Array> {
  const body = await readBodyLimited(res, MAX_BODY_BYTES);
  if (body === undefined) {
    throw badAnswer(`introspection response larger than ${MAX_BODY_BYTES} bytes`, { status: res.status });
  }
  return body;
}

/** A short, token-free summary of an OAuth error body (`{"error":"invalid_client"}`) for the log. */
function oauthErrorCode(body: Uint8Array, token: string): string | undefined {
  try {
    const json = JSON.parse(Buffer.from(body).toString('utf8')) as { error?: unknown };
    const code = json?.error;
    if (
      typeof code === 'string' &&
      /^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$/.test(code) &&
      !code.includes(token)
    ) {
      return code;
    }
  } catch {
    /* not JSON */
  }
  return undefined;
}

/**
 * RFC 7662 introspection at the token service, one request per call (single-flight and caching
 * are the caller's). The three modes of SPEC §6; the failure mapping of SPEC §5.
 */
export function createIntrospectionClient(
  cfg: Config,
  deps: {
    metadata: TokenServiceMetadata;
    logger: Logger;
    clientAuth: ClientAuth;
    /** Mode mint with `introspectionFormat: jwt`: verifies the RFC 9701 signed answers (required then). */
    jwtResponses?: JwtIntrospectionVerifier;
    /** Count, duration and outcome of every introspection (phantom_gateway_introspection*). */
    metrics?: IntrospectionMetrics;
  },
): IntrospectionClient {
  const ts = cfg.tokenService;
  // accept-jwt: Curity's phantom token answer; claim: JSON (Keycloak returns its `jwt` member only
  // when asked with Accept: application/jwt, hence introspectionAccept); mint: JSON or RFC 9701.
  const acceptHeader =
    ts.mode === 'accept-jwt'
      ? 'application/jwt'
      : ts.mode === 'claim'
        ? ts.introspectionAccept
        : ts.introspectionFormat === 'jwt'
          ? TOKEN_INTROSPECTION_JWT
          : 'application/json';
  const fetchImpl = deps.clientAuth.fetch;
  if (ts.mode === 'claim' && ts.jwtClaim === undefined)
    throw new Error('tokenService.jwtClaim: required in mode claim');
  // RFC 9701 signed answers: mode mint only (parse-config.ts), verified by deps.jwtResponses.
  const jwtResponses = ts.mode === 'mint' && ts.introspectionFormat === 'jwt' ? deps.jwtResponses : undefined;
  if (ts.mode === 'mint' && ts.introspectionFormat === 'jwt' && jwtResponses === undefined)
    throw new Error('tokenService.introspectionFormat: jwt needs a verifier for the signed answers');

  async function send(token: string, ctx: IntrospectionContext) {
    const { introspectionEndpoint } = await deps.metadata.get();
    if (ctx.span !== undefined) {
      const u = new URL(introspectionEndpoint);
      ctx.span.setAttribute('http.request.method', 'POST');
      ctx.span.setAttribute('server.address', u.hostname.replace(/^\[(.*)\]$/, '$1'));
      ctx.span.setAttribute(
        'server.port',
        u.port !== '' ? Number(u.port) : u.protocol === 'https:' ? 443 : 80,
      );
    }
    const body = new URLSearchParams({ token, token_type_hint: 'access_token' });
    const headers = new Headers({
      'content-type': 'application/x-www-form-urlencoded',
      accept: acceptHeader,
      'x-request-id': ctx.requestId,
    });
    if (ctx.traceparent !== undefined) headers.set('traceparent', ctx.traceparent);
    // One deadline for connect, headers and body, shared by the retry after a reset.
    const signal = AbortSignal.timeout(ts.timeoutMs);
    const deadline = performance.now() + ts.timeoutMs;
    let res: Response;
    for (let attempt = 1; ; attempt++) {
      // Client authentication per attempt: a private_key_jwt assertion (jti) is single-use.
      const attemptHeaders = new Headers(headers);
      const attemptBody = new URLSearchParams(body);
      await deps.clientAuth.apply({
        headers: attemptHeaders,
        body: attemptBody,
        endpoint: introspectionEndpoint,
      });
      try {
        res = await fetchImpl(introspectionEndpoint, {
          method: 'POST',
          headers: attemptHeaders,
          body: attemptBody,
          redirect: 'manual',
          signal,
        });
        break;
      } catch (err) {
        const left = deadline - performance.now();
        const wait = attempt === 1 ? resetRetryDelay(err, left, ts.timeoutMs) : undefined;
        if (wait === undefined) {
          // Refused, DNS, TLS, reset: the endpoint may have moved (a timeout says nothing of that).
          if (!isTimeout(err)) deps.metadata.refreshSoon('introspection request failed');
          throw networkFailure(err, ts.timeoutMs);
        }
        deps.logger.warn(
          { requestId: ctx.requestId, code: networkCode(err), retryInMs: Math.round(wait) },
          'token service closed the connection before answering; retrying the introspection once',
        );
        await new Promise((r) => setTimeout(r, wait));
      }
    }
    ctx.span?.setAttribute('http.response.status_code', res.status);
    // An endpoint that is gone (moved after a redeploy?): look at the metadata again.
    if (res.status === 404 || res.status === 410) {
      deps.metadata.refreshSoon(`introspection endpoint answered HTTP ${res.status}`);
    }
    let bytes: Uint8Array;
    try {
      bytes = await readBody(res);
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      throw networkFailure(err, ts.timeoutMs);
    }
    return { res, bytes };
  }

  function parseJson(res: Response, bytes: Uint8Array): Record<string, unknown> {
    let json: unknown;
    try {
      json = JSON.parse(Buffer.from(bytes).toString('utf8'));
    } catch {
      throw badAnswer('introspection response is not JSON', {
        status: res.status,
        code: res.headers.get('content-type')?.slice(0, 64) ?? 'no content-type',
      });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw badAnswer('introspection response is not a JSON object', { status: res.status });
    }
    const active = (json as Record<string, unknown>)['active'];
    if (typeof active !== 'boolean') {
      throw badAnswer('introspection response has no boolean "active" member', { status: res.status });
    }
    return json as Record<string, unknown>;
  }

  const client: IntrospectionClient = {
    async introspect(token, ctx): Promise<Introspection> {
      const { res, bytes } = await send(token, ctx);
      const status = res.status;

      if (status === 503 || status === 429) {
        throw unreachable(
          `token service answered HTTP ${status}`,
          { status },
          retryAfterSeconds(res.headers.get('retry-after')),
        );
      }
      if (status === 401 || status === 403) {
        const code = oauthErrorCode(bytes, token);
        throw badAnswer(
          `token service rejected the gateway's client credentials (HTTP ${status}${code ? ` ${code}` : ''})`,
          code ? { status, code } : { status },
        );
      }
      if (res.type === 'opaqueredirect' || (status >= 300 && status < 400)) {
        throw badAnswer(
          `token service answered with a redirect (HTTP ${status}); redirects are not followed`,
          { status },
        );
      }
      if (status !== 200 && !(status === 204 && ts.mode === 'accept-jwt')) {
        const code = oauthErrorCode(bytes, token);
        throw badAnswer(
          `token service answered HTTP ${status}${code ? ` ${code}` : ''}`,
          code ? { status, code } : { status },
        );
      }

      if (ts.mode === 'accept-jwt') {
        if (status === 204) return { active: false };
        const text = Buffer.from(bytes).toString('utf8').trim();
        if (!looksLikeJwt(text)) {
          throw badAnswer('introspection response is not a JWT (Accept: application/jwt)', {
            status,
            code: res.headers.get('content-type')?.slice(0, 64) ?? 'no content-type',
          });
        }
        const maxAge = maxAgeOf(res.headers.get('cache-control'));
        return {
          active: true,
          jwt: text,
          claims: {},
          ...(maxAge !== undefined ? { maxAgeSeconds: maxAge } : {}),
        };
      }

      // Mode mint, RFC 9701: the verdict is in the signed JWT; a JSON answer here is unusable (502).
      if (jwtResponses !== undefined) {
        return jwtResponses.verify({ contentType: res.headers.get('content-type'), body: bytes });
      }

      const json = parseJson(res, bytes);
      if (json['active'] === false) return { active: false };
      if (ts.mode === 'claim') {
        const jwt = json[ts.jwtClaim!];
        if (typeof jwt !== 'string' || !looksLikeJwt(jwt)) {
          throw badAnswer(`active introspection response has no JWT in member "${ts.jwtClaim}"`, { status });
        }
        return { active: true, jwt, claims: json };
      }
      return { active: true, claims: json };
    },
  };

  const metrics = deps.metrics;
  return {
    // Why the token service could not be used goes to the operator's log once per introspection
    // (the access line of every request that waited on it carries the cause too; the response only
    // says token_service_unavailable). The causes hold no token (see IntrospectionFailure).
    // Every introspection is counted here once, with its outcome and duration: a 502 answer is
    // bad_answer, anything else that is not a verdict (503, no metadata, a bug) unavailable.
    async introspect(token, ctx): Promise<Introspection> {
      const started = performance.now();
      try {
        const answer = await client.introspect(token, ctx);
        const outcome = answer.active ? 'active' : 'inactive';
        metrics?.introspection(outcome, (performance.now() - started) / 1000);
        ctx.span?.setAttribute('phantom.introspection.outcome', outcome);
        return answer;
      } catch (err) {
        const outcome = err instanceof GatewayError && err.status === 502 ? 'bad_answer' : 'unavailable';
        metrics?.introspection(outcome, (performance.now() - started) / 1000);
        ctx.span?.setAttribute('phantom.introspection.outcome', outcome);
        if (err instanceof TokenServiceUnavailable) {
          deps.logger.warn(
            { requestId: ctx.requestId, status: err.status, err: describeError(err.cause) },
            'token service introspection failed',
          );
        }
        throw err;
      }
    },
  };
}
