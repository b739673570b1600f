import {
  decodeProtectedHeader,
  type JWSHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwtVerify,
} from 'jose';
import type { Config } from '../config/schema.ts';
import { TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import { createRemoteKeySet, JwksUnavailable } from '../jwt/remote-jwks.ts';
import { normalizeTyp, sanitizeJoseError } from '../jwt/verify-jwt.ts';
import type { Introspection } from './introspection-client.ts';
import type { TokenServiceMetadata } from './token-service-metadata.ts';

/** RFC 9701 §4: the media type we ask for (Accept) and require (Content-Type). */
export const TOKEN_INTROSPECTION_JWT = 'application/token-introspection+jwt';
/** RFC 9701 §5: the `typ` header of the answer, after normalization. */
const EXPECTED_TYP = 'token-introspection+jwt';
/** RFC 7515 compact serialization: three base64url parts, signature not empty (no `alg: none`). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** RFC 7516 compact serialization (JWE): five parts. The gateway has no decryption key. */
const COMPACT_JWE = /^[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*){4}$/;

/**
 * Why an RFC 9701 answer was refused, for the operator's log (the `cause` of the 502). Built from
 * fixed text, header names, algorithm names and jose's error codes: never from the token, the
 * JWT or its claims.
 */
export class IntrospectionJwtRefused extends Error {
  override name = 'IntrospectionJwtRefused';
}

export interface JwtIntrospectionVerifier {
  /**
   * Verifies a 200 answer to an introspection request sent with `Accept:
   * application/token-introspection+jwt` and returns its RFC 7662 verdict. Throws
   * TokenServiceUnavailable: 'bad_answer' (502) when the answer is unusable (wrong content type, not
   * a JWS, any verification failure), 'unreachable' (503) when the token service's JWKS cannot be
   * fetched. Never a verdict on the token from a failed verification.
   */
  verify(answer: { contentType: string | null; body: Uint8Array | string }): Promise<Introspection>;
}

export interface JwtIntrospectionOptions {
  /** The token service's issuer (`tokenService.issuer`): the answer's `iss`, exact match. */
  issuer: string;
  /** The gateway's client id (`tokenService.clientId`): must be in the answer's `aud`. */
  clientId: string;
  /** JWS allow-list (`jwt.algorithms`); `none` and `HS*` are dropped whatever the caller passes. */
  algorithms: readonly string[];
  clockSkewSeconds: number;
  /** The introspection timeout (`tokenService.timeoutMs`): bounds the answer's age. */
  timeoutMs: number;
  /** The token service's signing keys: the only key source (`jku`, `x5u`, `jwk`, `x5c` are never followed). */
  getKey: JWTVerifyGetKey;
  /** Current time (tests). */
  now?: () => Date;
}

/** The media type of a Content-Type header, parameters (`; charset=utf-8`) dropped, lower-cased. */
function mediaType(contentType: string | null): string | undefined {
  if (contentType === null) return undefined;
  return contentType.split(';', 1)[0]!.trim().toLowerCase();
}

function refuse(message: string, cause?: unknown): never {
  throw new TokenServiceUnavailable(
    'bad_answer',
    new IntrospectionJwtRefused(
      `RFC 9701 introspection response refused: ${message}`,
      cause === undefined ? undefined : { cause },
    ),
  );
}

/** A short, printable rendition of a header value for the log (algorithm names, typ values). */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? 'undefined';
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

/**
 * RFC 9701 JWT introspection responses (mode mint, `tokenService.introspectionFormat: jwt`).
 *
 * Checks, in order: content type `application/token-introspection+jwt`; a compact JWS (JWE and
 * unsecured JWTs refused); header `alg` in the allow-list, no `enc`, not nested (`cty: JWT`), `typ`
 * `token-introspection+jwt` (case-insensitive, `application/` prefix allowed); then with jose the
 * signature against the token service's key set, `iss` = `tokenService.issuer`, `aud` containing
 * `tokenService.clientId`, `exp`/`nbf` when present (skew as tolerance), and `iat`:
 *
 * - required;
 * - not later than now + `clockSkewSeconds`;
 * - not earlier than now − (`clockSkewSeconds` + ceil(`timeoutMs` / 1000)): the token service signs
 *   the answer while our request is open, and the request lasts at most `timeoutMs`; the skew
 *   covers the clocks' disagreement. An older answer is a replay or a cache in between.
 *
 * Finally `token_introspection` must be an object with a boolean `active`; its members are the
 * RFC 7662 claims the minter uses.
 */
export function createJwtIntrospectionVerifier(opts: JwtIntrospectionOptions): JwtIntrospectionVerifier {
  const algorithms = opts.algorithms.filter((a) => a !== 'none' && !/^HS/i.test(a));
  if (algorithms.length === 0)
    throw new Error('jwt.algorithms: no usable JWS algorithm (none and HS* are never allowed)');
  const allowed = new Set(algorithms);
  const maxTokenAge = Math.ceil(opts.timeoutMs / 1000);

  return {
    async verify({ contentType, body }): Promise<Introspection> {
      const type = mediaType(contentType);
      if (type !== TOKEN_INTROSPECTION_JWT) {
        refuse(`content type ${show(type ?? 'absent')} instead of ${TOKEN_INTROSPECTION_JWT}`);
      }
      const jwt = (typeof body === 'string' ? body : Buffer.from(body).toString('utf8')).trim();
      if (COMPACT_JWE.test(jwt)) refuse('an encrypted JWT (JWE) is not accepted');
      if (!COMPACT_JWS.test(jwt)) refuse('the body is not a signed JWT in compact serialization');

      // Header checks first: no key lookup (and no JWKS fetch) for an answer refused anyway.
      let header: JWSHeaderParameters;
      try {
        header = decodeProtectedHeader(jwt) as JWSHeaderParameters;
      } catch (err) {
        refuse('the JWS header cannot be decoded', sanitizeJoseError(err));
      }
      if (typeof header.alg !== 'string' || !allowed.has(header.alg)) {
        refuse(`algorithm ${show(header.alg)} is not allowed (jwt.algorithms)`);
      }
      if ('enc' in header) refuse('JWE header members are not allowed');
      if (typeof header.cty === 'string' && normalizeTyp(header.cty) === 'jwt') {
        refuse('nested JWTs are not accepted');
      }
      if (typeof header.typ !== 'string' || normalizeTyp(header.typ) !== EXPECTED_TYP) {
        refuse(`"typ" header ${show(header.typ)} instead of "${EXPECTED_TYP}" (RFC 9701 §5)`);
      }

      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(jwt, opts.getKey, {
          algorithms,
          issuer: opts.issuer,
          audience: opts.clientId,
          requiredClaims: ['iat'],
          maxTokenAge,
          clockTolerance: opts.clockSkewSeconds,
          ...(opts.now ? { currentDate: opts.now() } : {}),
        }));
      } catch (err) {
        if (err instanceof TokenServiceUnavailable) throw err;
        if (err instanceof JwksUnavailable || err instanceof joseErrors.JWKSTimeout) {
          throw new TokenServiceUnavailable('unreachable', err);
        }
        refuse('JWT verification failed', sanitizeJoseError(err));
      }

      const ti = payload['token_introspection'];
      if (typeof ti !== 'object' || ti === null || Array.isArray(ti)) {
        refuse('no "token_introspection" object in the JWT');
      }
      const claims = ti as Record<string, unknown>;
      if (typeof claims['active'] !== 'boolean') {
        refuse('"token_introspection" has no boolean "active" member');
      }
      if (claims['active'] === false) return { active: false };
      return { active: true, claims };
    },
  };
}

/**
 * The verifier for a gateway config (`introspectionFormat: jwt`): keys from `jwt.jwksUri`, else the
 * discovered `jwks_uri` — the token service's key set, fetched through `fetch` (the client-auth
 * fetch, so `tokenService.caFile` applies) with the introspection timeout.
 */
export function createJwtIntrospectionVerifierFromConfig(
  config: Config,
  deps: { metadata: TokenServiceMetadata; fetch?: typeof fetch },
): JwtIntrospectionVerifier {
  const keys = createRemoteKeySet({
    timeoutMs: config.tokenService.timeoutMs,
    ...(deps.fetch ? { fetch: deps.fetch } : {}),
    jwksUri: async () => {
      if (config.jwt.jwksUri !== undefined) return config.jwt.jwksUri;
      const uri = (await deps.metadata.get()).jwksUri;
      if (uri === undefined) throw new Error('the token service metadata has no jwks_uri (set jwt.jwksUri)');
      return uri;
    },
  });
  return createJwtIntrospectionVerifier({
    issuer: config.tokenService.issuer,
    clientId: config.tokenService.clientId,
    algorithms: config.jwt.algorithms,
    clockSkewSeconds: config.jwt.clockSkewSeconds,
    timeoutMs: config.tokenService.timeoutMs,
    getKey: keys.getKey,
  });
}
