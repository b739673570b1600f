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
  /** The protected header's `kid`, when it has one (cache entries remember it, see isPublished). */
  kid?: string;
}

export interface JwtVerifier {
  /** Throws InvalidToken('jwt_invalid') when the JWT is refused, TokenServiceUnavailable when its keys cannot be fetched. */
  verify(jwt: string): Promise<VerifiedJwt>;
  /**
   * Whether the key set currently has a key with this `kid` (a cached JWT signed by a removed key
   * is dropped on read). undefined: cannot tell (no remote key set fetched yet, or no `kid`).
   */
  isPublished(kid: string | undefined): boolean | undefined;
}

/** A JWK Set, or a function read on every verification (the mint key ring changes over time). */
export type LocalJwks = { keys: JWK[] } | (() => { keys: JWK[] });

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
  keys: ({ kind: 'remote' } & RemoteKeySetOptions) | { kind: 'local'; jwks: LocalJwks };
}

/**
 * Size limits checked before any parsing, so a broken or hostile token service cannot make us
 * decode, hash or log-describe huge input: a phantom-token JWT is a few hundred bytes to a few KiB,
 * 32 KiB is far above any real access token. The protected header is decoded before the signature
 * is checked: 4 KiB is generous for alg/kid/typ (even with an x5c chain we would ignore).
 */
export const MAX_JWT_LENGTH = 32 * 1024;
export const MAX_PROTECTED_HEADER_LENGTH = 4 * 1024;

/** `typ` values accepted when none is configured (RFC 8725 §3.11, RFC 9068 §2.1), after normalization. */
const DEFAULT_TYPS = new Set(['jwt', 'at+jwt']);
/** RFC 7515 compact serialization: exactly three base64url parts, signature not empty. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$/;

/** `application/at+jwt` → `at+jwt`, lower-cased (RFC 7515 §4.1.9). */
export function normalizeTyp(typ: string): string {
  const t = typ.toLowerCase();
  return t.startsWith('application/') ? t.slice('application/'.length) : t;
}

/** A cause for the log that carries jose's code and message but not the claims it may hold. */
export function sanitizeJoseError(err: unknown): Error {
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

  let keySet: { getKey: () => JWTVerifyGetKey; isPublished: JwtVerifier['isPublished'] };
  const keys = opts.keys;
  if (keys.kind === 'local') {
    const source = keys.jwks;
    const read = typeof source === 'function' ? source : () => source;
    // Rebuilt only when the source hands out another object (jose snapshots the set it is given).
    let built: { jwks: { keys: JWK[] }; getKey: JWTVerifyGetKey; kids: ReadonlySet<unknown> } | undefined;
    const current = () => {
      const jwks = read();
      if (built?.jwks !== jwks) {
        built = { jwks, getKey: createLocalJWKSet(jwks), kids: new Set(jwks.keys.map((k) => k.kid)) };
      }
      return built;
    };
    current(); // a malformed static set fails here, at startup
    keySet = {
      getKey: () => current().getKey,
      isPublished: (kid) => (kid === undefined ? undefined : current().kids.has(kid)),
    };
  } else {
    const remote = createRemoteKeySet(keys);
    keySet = { getKey: () => remote.getKey, isPublished: (kid) => remote.isPublished(kid) };
  }

  function refuse(cause: unknown): never {
    throw new InvalidToken('jwt_invalid', 'The access token is invalid or expired', sanitizeJoseError(cause));
  }

  return {
    async verify(jwt: string): Promise<VerifiedJwt> {
      // Structural checks first: no key lookup (and no JWKS fetch) for junk. Sizes before parsing.
      if (typeof jwt !== 'string') refuse(new Error('not a string'));
      if (jwt.length > MAX_JWT_LENGTH) refuse(new Error(`JWT longer than ${MAX_JWT_LENGTH} characters`));
      const headerLength = jwt.indexOf('.');
      if (headerLength > MAX_PROTECTED_HEADER_LENGTH) {
        refuse(new Error(`encoded protected header longer than ${MAX_PROTECTED_HEADER_LENGTH} characters`));
      }
      if (!COMPACT_JWS.test(jwt)) {
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
      // RFC 7515 §4.1.11: a recipient must refuse a JWS whose `crit` lists an extension it does not
      // understand; we understand none, and an empty list or one naming a registered header is
      // invalid anyway. (jose would accept `crit: ["b64"]`, RFC 7797, which has no place here.)
      if ('crit' in header) refuse(new Error('"crit" header is not accepted (no extension is supported)'));
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

      const getKey = keySet.getKey();
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
      // jose checks `iat` only with maxTokenAge: a JWT issued in the future is refused here
      // (RFC 7519 §4.1.6; same skew as `nbf`). jose has already refused a non-numeric `iat`.
      if (
        typeof payload.iat === 'number' &&
        payload.iat > Math.floor(Date.now() / 1000) + opts.clockSkewSeconds
      ) {
        refuse(new Error('"iat" claim is in the future beyond the clock skew'));
      }
      return {
        jwt,
        claims: payload,
        exp: payload.exp,
        ...(typeof header.kid === 'string' ? { kid: header.kid } : {}),
      };
    },
    isPublished: keySet.isPublished,
  };
}
