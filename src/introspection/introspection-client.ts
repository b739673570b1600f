import type { Config } from '../config/schema.ts';
import { GatewayError, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { Logger } from '../observability/logger.ts';
import { readBodyLimited } from '../util/read-body.ts';
import type { ClientAuth } from './client-auth.ts';
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

export interface IntrospectionClient {
  /** Throws TokenServiceUnavailable (503 unreachable / 502 bad answer); never a verdict on the token. */
  introspect(token: string, ctx: { requestId: string; traceparent?: string }): Promise<Introspection>;
}

/** Upper bound on an introspection response body. */
const MAX_BODY_BYTES = 1024 * 1024;
/** Retry-After we send when the token service gives none (or an absurd one). */
const DEFAULT_RETRY_AFTER = 5;
/** Shape of a compact JWS; an empty signature is let through so the verifier refuses it as jwt_invalid (401). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

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

/** Network-level failure (refused, DNS, TLS, reset, timeout) → "could not ask". */
function networkFailure(err: unknown, timeoutMs: number): TokenServiceUnavailable {
  const e = err as Error & { cause?: { code?: unknown; message?: unknown } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') {
    return unreachable(`introspection request timed out after ${timeoutMs} ms`, { code: 'TIMEOUT' });
  }
  const code = typeof e?.cause?.code === 'string' ? e.cause.code : undefined;
  // undici's cause ("connect ECONNREFUSED 127.0.0.1:8443") names host and port: fine for the
  // operator's log, and it never contains the request body (where the token is).
  const detail = typeof e?.cause?.message === 'string' ? e.cause.message : e?.message;
  return unreachable(`introspection request failed: ${detail ?? 'network error'}`, code ? { code } : {});
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
  deps: { metadata: TokenServiceMetadata; logger: Logger; clientAuth: ClientAuth },
): IntrospectionClient {
  const ts = cfg.tokenService;
  const fetchImpl = deps.clientAuth.fetch;
  if (ts.mode === 'claim' && ts.jwtClaim === undefined)
    throw new Error('tokenService.jwtClaim: required in mode claim');

  async function send(token: string, ctx: { requestId: string; traceparent?: string }) {
    const { introspectionEndpoint } = await deps.metadata.get();
    const body = new URLSearchParams({ token, token_type_hint: 'access_token' });
    const headers = new Headers({
      'content-type': 'application/x-www-form-urlencoded',
      accept: ts.mode === 'accept-jwt' ? 'application/jwt' : 'application/json',
      'x-request-id': ctx.requestId,
    });
    if (ctx.traceparent !== undefined) headers.set('traceparent', ctx.traceparent);
    await deps.clientAuth.apply({ headers, body, endpoint: introspectionEndpoint });
    // One deadline for connect, headers and body.
    const signal = AbortSignal.timeout(ts.timeoutMs);
    let res: Response;
    try {
      res = await fetchImpl(introspectionEndpoint, {
        method: 'POST',
        headers,
        body,
        redirect: 'manual',
        signal,
      });
    } catch (err) {
      throw networkFailure(err, ts.timeoutMs);
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

  return {
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
        if (!COMPACT_JWS.test(text)) {
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

      const json = parseJson(res, bytes);
      if (json['active'] === false) return { active: false };
      if (ts.mode === 'claim') {
        const jwt = json[ts.jwtClaim!];
        if (typeof jwt !== 'string' || !COMPACT_JWS.test(jwt)) {
          throw badAnswer(`active introspection response has no JWT in member "${ts.jwtClaim}"`, { status });
        }
        return { active: true, jwt, claims: json };
      }
      return { active: true, claims: json };
    },
  };
}
