import {
  createLocalJWKSet,
  decodeProtectedHeader,
  type JWK,
  type JWSHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwtVerify,
} from 'jose';
import { InvalidToken, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import { createRemoteKeySet, JwksUnavailable, type RemoteKeySetOptions } from './remote-jwks.ts';

export interface VerifiedJwt {
  /** The JWT as received (or minted). Never logged. */
  jwt: string;
  claims: JWTPayload;
  /** `exp`, epoch seconds (always present: verification requires it). */
  exp: number;
}

export interface JwtVerifier {
  /** Throws InvalidToken('jwt_invalid') when the JWT is refused, TokenServiceUnavailable when its keys cannot be fetched. */
  verify(jwt: string): Promise<VerifiedJwt>;
}

export interface JwtVerifierOptions {
  /** Allow-list of JWS algorithms; `none` and `HS*` are dropped whatever the caller passes. */
  algorithms: string[];
  /** Expected `iss`, exact match. */
  issuer: string;
  /** Expected `aud` (any of them) when set. */
  audience?: string | string[];
  /** Expected `typ` header when set (case-insensitive, `application/` prefix allowed). */
  typ?: string;
  clockSkewSeconds: number;
  keys: ({ kind: 'remote' } & RemoteKeySetOptions) | { kind: 'local'; jwks: { keys: JWK[] } };
}

/** `typ` values accepted when none is configured (RFC 8725 §3.11, RFC 9068 §2.1), after normalization. */
const DEFAULT_TYPS = new Set(['jwt', 'at+jwt']);
/** RFC 7515 compact serialization: exactly three base64url parts, signature not empty. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$/;

/** `application/at+jwt` → `at+jwt`, lower-cased (RFC 7515 §4.1.9). */
function normalizeTyp(typ: string): string {
  const t = typ.toLowerCase();
  return t.startsWith('application/') ? t.slice('application/'.length) : t;
}

/** A cause for the log that carries jose's code and message but not the claims it may hold. */
function sanitize(err: unknown): Error {
  if (err instanceof joseErrors.JOSEError) {
    const e = new Error(`${err.code}: ${err.message}`);
    e.name = err.name;
    const claim = (err as { claim?: unknown }).claim;
    if (typeof claim === 'string') Object.assign(e, { claim });
    return e;
  }
  if (err instanceof Error) {
    const e = new Error(err.message);
    e.name = err.name;
    return e;
  }
  return new Error('JWT verification failed');
}

/**
 * JWT verification per RFC 8725 / RFC 9068 for JWTs the gateway receives from the token service
 * (or reads back from its cache). jose never follows `jku`, `x5u`, `jwk` or `x5c`: the key comes
 * only from the configured key set.
 */
export function createJwtVerifier(opts: JwtVerifierOptions): JwtVerifier {
  const algorithms = opts.algorithms.filter((a) => a !== 'none' && !/^HS/i.test(a));
  if (algorithms.length === 0)
    throw new Error('no usable JWS algorithm in the allow-list (none and HS* are never allowed)');
  const allowed = new Set(algorithms);
  const expectedTyp = opts.typ === undefined ? undefined : normalizeTyp(opts.typ);

  let getKey: JWTVerifyGetKey;
  const keys = opts.keys;
  if (keys.kind === 'local') {
    getKey = createLocalJWKSet({ keys: keys.jwks.keys });
  } else {
    getKey = createRemoteKeySet(keys).getKey;
  }

  function refuse(cause: unknown): never {
    throw new InvalidToken('jwt_invalid', 'The access token is invalid or expired', sanitize(cause));
  }

  return {
    async verify(jwt: string): Promise<VerifiedJwt> {
      // Structural checks first: no key lookup (and no JWKS fetch) for junk.
      if (typeof jwt !== 'string' || !COMPACT_JWS.test(jwt)) {
        refuse(new Error('not a JWS in compact serialization (JWE and unsecured JWTs are refused)'));
      }
      let header: JWSHeaderParameters;
      try {
        header = decodeProtectedHeader(jwt) as JWSHeaderParameters;
      } catch (err) {
        refuse(err);
      }
      if (typeof header.alg !== 'string' || !allowed.has(header.alg)) {
        refuse(new Error(`algorithm ${JSON.stringify(header.alg)} is not allowed`));
      }
      if ('enc' in header) refuse(new Error('JWE header members are not allowed'));
      if (typeof header.cty === 'string' && normalizeTyp(header.cty) === 'jwt') {
        refuse(new Error('nested JWTs are not accepted'));
      }
      const typ = header.typ;
      if (expectedTyp !== undefined) {
        if (typeof typ !== 'string' || normalizeTyp(typ) !== expectedTyp) {
          refuse(new Error(`unexpected "typ" header ${JSON.stringify(typ)}`));
        }
      } else if (typ !== undefined && (typeof typ !== 'string' || !DEFAULT_TYPS.has(normalizeTyp(typ)))) {
        refuse(new Error(`unexpected "typ" header ${JSON.stringify(typ)}`));
      }

      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(jwt, getKey, {
          algorithms,
          issuer: opts.issuer,
          ...(opts.audience !== undefined ? { audience: opts.audience } : {}),
          requiredClaims: ['exp'],
          clockTolerance: opts.clockSkewSeconds,
        }));
      } catch (err) {
        if (err instanceof TokenServiceUnavailable) throw err;
        if (err instanceof JwksUnavailable || err instanceof joseErrors.JWKSTimeout) {
          throw new TokenServiceUnavailable('unreachable', err);
        }
        refuse(err);
      }
      if (typeof payload.exp !== 'number') refuse(new Error('"exp" claim is required'));
      return { jwt, claims: payload, exp: payload.exp };
    },
  };
}
