import type { ReasonCode } from './reason-codes.ts';

/** What the single error renderer needs to write an RFC 6750 §3 challenge. */
export type Challenge =
  /** `Bearer realm="…"` with no error attribute (RFC 6750 §3.1: no credentials at all). */
  | { kind: 'bare' }
  /** `Bearer realm="…", error="…"` (+ description, + scope for insufficient_scope). */
  | { kind: 'error'; scope?: readonly string[] };

/**
 * A request failure. Stages throw these; `error-handler.ts` is the only place that renders them.
 * `description` is always safe to show a client: never a host, URL, token or stack.
 */
export class GatewayError extends Error {
  readonly status: number;
  /** The `error` member of the JSON body (OAuth error code or gateway code). */
  readonly error: string;
  readonly reason: ReasonCode;
  readonly description: string;
  readonly challenge: Challenge | undefined;
  /** Extra response headers (Allow, Retry-After). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(opts: {
    status: number;
    error: string;
    reason: ReasonCode;
    description: string;
    challenge?: Challenge;
    headers?: Record<string, string>;
    /** Internal detail for the log line only; never rendered. */
    cause?: unknown;
  }) {
    super(opts.description, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.status = opts.status;
    this.error = opts.error;
    this.reason = opts.reason;
    this.description = opts.description;
    this.challenge = opts.challenge;
    this.headers = opts.headers ?? {};
  }
}

/** 401, bare challenge: no Authorization header, or a scheme other than Bearer. */
export class TokenMissing extends GatewayError {
  constructor(description = 'A bearer access token is required') {
    super({
      status: 401,
      error: 'unauthorized',
      reason: 'token_missing',
      description,
      challenge: { kind: 'bare' },
    });
  }
}

/** 400 invalid_request: malformed or duplicated credential (with challenge) or a rejected path (without). */
export class InvalidRequest extends GatewayError {
  constructor(reason: 'token_malformed' | 'path_rejected', description: string) {
    super({
      status: 400,
      error: 'invalid_request',
      reason,
      description,
      ...(reason === 'token_malformed' ? { challenge: { kind: 'error' } as const } : {}),
    });
  }
}

/** 401 invalid_token: inactive, expired or unknown token, or a JWT that fails verification. */
export class InvalidToken extends GatewayError {
  constructor(
    reason: 'token_inactive' | 'jwt_invalid' | 'token_malformed',
    description = 'The access token is invalid or expired',
    cause?: unknown,
  ) {
    super({ status: 401, error: 'invalid_token', reason, description, challenge: { kind: 'error' }, cause });
  }
}

/** 403 insufficient_scope; `scope` lists every scope of the route's rule. */
export class InsufficientScope extends GatewayError {
  constructor(scope: readonly string[]) {
    super({
      status: 403,
      error: 'insufficient_scope',
      reason: 'scope_missing',
      description: 'The access token does not grant the scope this resource requires',
      challenge: { kind: 'error', scope },
    });
  }
}

/** 404: no route matches the path (deny by default). */
export class RouteNotFound extends GatewayError {
  constructor() {
    super({
      status: 404,
      error: 'route_not_found',
      reason: 'route_not_found',
      description: 'No route matches this path',
    });
  }
}

/** 405 with `Allow`: routes exist for the path, none for the method. */
export class MethodNotAllowed extends GatewayError {
  constructor(allow: readonly string[]) {
    super({
      status: 405,
      error: 'method_not_allowed',
      reason: 'method_not_allowed',
      description: 'This method is not allowed on this path',
      headers: { Allow: allow.join(', ') },
    });
  }
}

/**
 * The token service could not answer usefully. 503 + Retry-After when it is unreachable, timed
 * out, or said 503/429 ("could not ask"); 502 when it answered wrongly (other 5xx, rejected our
 * credentials, unusable body). Never a 401: an outage is not a verdict on the token.
 */
export class TokenServiceUnavailable extends GatewayError {
  constructor(kind: 'unreachable' | 'bad_answer', cause?: unknown, retryAfterSeconds = 5) {
    super({
      status: kind === 'unreachable' ? 503 : 502,
      error: 'token_service_unavailable',
      reason: 'token_service_unavailable',
      description:
        kind === 'unreachable'
          ? 'The token service is temporarily unavailable'
          : 'The token service returned an unusable answer',
      ...(kind === 'unreachable' ? { headers: { 'Retry-After': String(retryAfterSeconds) } } : {}),
      cause,
    });
  }
}

/** 502: the upstream refused or reset the connection. */
export class UpstreamUnavailable extends GatewayError {
  constructor(cause?: unknown) {
    super({
      status: 502,
      error: 'upstream_unavailable',
      reason: 'upstream_unavailable',
      description: 'The upstream service is unavailable',
      cause,
    });
  }
}

/** 504: the upstream did not connect or answer in time. */
export class UpstreamTimeout extends GatewayError {
  constructor(cause?: unknown) {
    super({
      status: 504,
      error: 'upstream_timeout',
      reason: 'upstream_timeout',
      description: 'The upstream service did not answer in time',
      cause,
    });
  }
}
