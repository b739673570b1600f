import {
  type CompactVerifyGetKey,
  compactVerify,
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  type JSONWebKeySet,
  type JWSHeaderParameters,
  errors as joseErrors,
} from 'jose';
import { LRUCache } from 'lru-cache';
import { jwksFetch } from '../jwt/jwks-fetch.ts';
import { normalizeTyp } from '../jwt/verify-jwt.ts';

/**
 * Verification of Security Event Tokens (RFC 8417) pushed by a Shared Signals Framework
 * transmitter (RFC 8935 delivery), for the events that must evict a subject's cached tokens.
 */

/** The event types this receiver acts on, by their short names (used in logs). */
export const SUPPORTED_EVENTS: ReadonlyMap<string, string> = new Map([
  ['https://schemas.openid.net/secevent/caep/event-type/session-revoked', 'session-revoked'],
  ['https://schemas.openid.net/secevent/caep/event-type/credential-change', 'credential-change'],
  ['https://schemas.openid.net/secevent/risc/event-type/account-disabled', 'account-disabled'],
  ['https://schemas.openid.net/secevent/risc/event-type/account-purged', 'account-purged'],
]);

/** RFC 8935 §2.4 Security Event Token error codes. */
export type SetErrorCode =
  | 'invalid_request'
  | 'invalid_key'
  | 'invalid_issuer'
  | 'invalid_audience'
  | 'authentication_failed'
  | 'access_denied';

/** HTTP status per code: 400 for a SET that is refused, 401/403 for the transmitter's authentication. */
const STATUS: Record<SetErrorCode, number> = {
  invalid_request: 400,
  invalid_key: 400,
  invalid_issuer: 400,
  invalid_audience: 400,
  authentication_failed: 401,
  access_denied: 403,
};

/** A SET (or its delivery) refused; `description` is fixed text, never taken from the SET. */
export class SetError extends Error {
  override name = 'SetError';
  readonly status: number;
  readonly code: SetErrorCode;
  readonly description: string;
  constructor(code: SetErrorCode, description: string) {
    super(`${code}: ${description}`);
    this.code = code;
    this.description = description;
    this.status = STATUS[code];
  }
}

/** The transmitter's keys could not be obtained: "could not ask" (503), not an invalid SET. */
export class SetKeysUnavailable extends Error {
  override name = 'SetKeysUnavailable';
}

export interface VerifiedSet {
  jti: string;
  iat: number;
  /** The subject whose tokens must be evicted (a token `sub`). Never logged. */
  sub: string;
  /** The event type URIs of the SET (each one of SUPPORTED_EVENTS). */
  events: string[];
}

/** Where the transmitter's public keys come from; tests inject a local key set. */
export type SetKeySource = CompactVerifyGetKey;

export interface SetVerifierOptions {
  /** The transmitter's `iss`, exact match. */
  issuer: string;
  /** Our receiver audience(s): the SET's `aud` must contain one. */
  audience: string | string[];
  /** Allow-list of JWS algorithms; `none` and `HS*` are dropped whatever the caller passes. */
  algorithms: string[];
  /** A SET whose `iat` is older than this (plus skew) is refused. */
  maxAgeSeconds: number;
  clockSkewSeconds: number;
  /**
   * Issuers an `iss_sub` subject may name (the token service's, whose `sub`s our cached tokens
   * carry); the transmitter's own issuer is always accepted.
   */
  subjectIssuers: string[];
  keys: SetKeySource;
  /** Current time in epoch seconds (tests). */
  now?: () => number;
}

export interface SetVerifier {
  /** Throws SetError (refused) or SetKeysUnavailable (the keys cannot be fetched). */
  verify(set: string): Promise<VerifiedSet>;
}

/** RFC 7515 compact serialization: three base64url parts, signature not empty. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$/;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function decodePayload(part: string): Record<string, unknown> | undefined {
  try {
    const json: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return isObject(json) ? json : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The transmitter's JWKS over HTTP (jose's remote key set: cached 10 min, an unknown `kid`
 * refetches at most once per 30 s), every failure to obtain a key set surfacing as
 * SetKeysUnavailable. jose never follows `jku`, `x5u`, `jwk` or `x5c`.
 */
export function remoteSetKeys(opts: {
  jwksUri: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}): SetKeySource {
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  return createRemoteJWKSet(new URL(opts.jwksUri), {
    timeoutDuration: Math.max(1, Math.round(opts.timeoutMs)),
    cooldownDuration: 30_000,
    cacheMaxAge: 600_000,
    [customFetch]: jwksFetch(fetchImpl, (message) => new SetKeysUnavailable(message)),
  });
}

/** A fixed key set (tests, or a transmitter whose keys are configured in place). */
export function localSetKeys(jwks: JSONWebKeySet): SetKeySource {
  return createLocalJWKSet(jwks);
}

/**
 * The subject named by a Subject Identifier (RFC 9493 / SSF 1.0) as a token `sub`: `iss_sub`
 * (its `iss` must be one we trust for subjects), `opaque`, or `complex` with a `user` member of one
 * of those. Other formats (`email`, `phone_number`, …) do not identify a token `sub`: refused.
 */
function subjectOf(id: unknown, trustedIssuers: ReadonlySet<string>, depth = 0): string {
  if (!isObject(id)) throw new SetError('invalid_request', 'The subject identifier is not an object');
  // `subject_type` is the member's name in pre-SSF-1.0 RISC/CAEP drafts.
  const format = id['format'] ?? id['subject_type'];
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  switch (format) {
    case 'iss_sub': {
      const iss = str(id['iss']);
      const sub = str(id['sub']);
      if (iss === undefined || sub === undefined)
        throw new SetError('invalid_request', 'An iss_sub subject needs "iss" and "sub"');
      if (!trustedIssuers.has(iss))
        throw new SetError('access_denied', 'The subject belongs to an issuer this receiver does not serve');
      return sub;
    }
    case 'opaque': {
      const sub = str(id['id']);
      if (sub === undefined) throw new SetError('invalid_request', 'An opaque subject needs "id"');
      return sub;
    }
    case 'complex': {
      if (depth > 0 || id['user'] === undefined)
        throw new SetError('invalid_request', 'A complex subject needs a "user" member');
      return subjectOf(id['user'], trustedIssuers, depth + 1);
    }
    case 'email':
      throw new SetError('invalid_request', 'An email subject does not identify a token subject');
    default:
      throw new SetError('invalid_request', 'Unsupported subject identifier format');
  }
}

/** Verifies a SET; see SetVerifierOptions. Replays are not detected here (see createReplayGuard). */
export function createSetVerifier(opts: SetVerifierOptions): SetVerifier {
  const algorithms = opts.algorithms.filter((a) => a !== 'none' && !/^HS/i.test(a));
  if (algorithms.length === 0)
    throw new Error('no usable JWS algorithm in the allow-list (none and HS* are never allowed)');
  const allowed = new Set(algorithms);
  const audiences = new Set(Array.isArray(opts.audience) ? opts.audience : [opts.audience]);
  const trustedIssuers = new Set([...opts.subjectIssuers, opts.issuer]);
  const now = opts.now ?? (() => Math.floor(Date.now() / 1000));
  const skew = opts.clockSkewSeconds;

  return {
    async verify(set: string): Promise<VerifiedSet> {
      // Structure first: no key lookup (and no JWKS fetch) for junk.
      if (typeof set !== 'string' || !COMPACT_JWS.test(set))
        throw new SetError('invalid_request', 'The body is not a JWS in compact serialization');
      let header: JWSHeaderParameters;
      try {
        header = decodeProtectedHeader(set) as JWSHeaderParameters;
      } catch {
        throw new SetError('invalid_request', 'The JWS header cannot be decoded');
      }
      if ('enc' in header) throw new SetError('invalid_request', 'Encrypted SETs are not accepted');
      if (typeof header.typ !== 'string' || normalizeTyp(header.typ) !== 'secevent+jwt')
        throw new SetError('invalid_request', 'The "typ" header must be secevent+jwt (RFC 8417 §2.3)');
      if (typeof header.alg !== 'string' || !allowed.has(header.alg))
        throw new SetError('invalid_key', 'The signature algorithm is not allowed');
      const unverified = decodePayload(set.split('.')[1]!);
      if (unverified === undefined)
        throw new SetError('invalid_request', 'The SET payload is not a JSON object');
      // Refused early (never accepted) on unverified content: a SET of another issuer costs no key lookup.
      if (unverified['iss'] !== opts.issuer)
        throw new SetError('invalid_issuer', 'The SET issuer is not accepted');

      let bytes: Uint8Array;
      try {
        ({ payload: bytes } = await compactVerify(set, opts.keys, { algorithms }));
      } catch (err) {
        if (err instanceof SetKeysUnavailable) throw err;
        if (err instanceof joseErrors.JWKSTimeout) throw new SetKeysUnavailable('JWKS request timed out');
        throw new SetError('invalid_key', 'The SET signature cannot be verified with the transmitter keys');
      }
      let claims: Record<string, unknown>;
      try {
        const parsed: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
        if (!isObject(parsed)) throw new Error('not an object');
        claims = parsed;
      } catch {
        throw new SetError('invalid_request', 'The SET payload is not a JSON object');
      }

      if (claims['iss'] !== opts.issuer)
        throw new SetError('invalid_issuer', 'The SET issuer is not accepted');
      const aud = claims['aud'];
      const auds = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
      if (!auds.some((a) => typeof a === 'string' && audiences.has(a)))
        throw new SetError('invalid_audience', 'The SET audience does not name this receiver');

      const t = now();
      const iat = claims['iat'];
      if (typeof iat !== 'number' || !Number.isFinite(iat))
        throw new SetError('invalid_request', 'The SET has no numeric "iat"');
      if (iat > t + skew) throw new SetError('invalid_request', 'The SET "iat" is in the future');
      if (t - iat > opts.maxAgeSeconds + skew) throw new SetError('invalid_request', 'The SET is too old');
      // SETs normally have no exp (RFC 8417 §2.2); one that has it must not have expired.
      const exp = claims['exp'];
      if (exp !== undefined) {
        if (typeof exp !== 'number' || !Number.isFinite(exp))
          throw new SetError('invalid_request', 'The SET "exp" is not numeric');
        if (exp <= t - skew) throw new SetError('invalid_request', 'The SET has expired');
      }
      const nbf = claims['nbf'];
      if (nbf !== undefined && (typeof nbf !== 'number' || nbf > t + skew))
        throw new SetError('invalid_request', 'The SET is not valid yet');
      const jti = claims['jti'];
      if (typeof jti !== 'string' || jti === '' || jti.length > 256)
        throw new SetError('invalid_request', 'The SET has no usable "jti"');

      const events = claims['events'];
      if (!isObject(events) || Object.keys(events).length === 0)
        throw new SetError('invalid_request', 'The SET "events" claim must be a non-empty object');
      const types = Object.keys(events);
      // Any unsupported event type refuses the whole SET: acting on part of it would be guessing.
      if (!types.every((type) => SUPPORTED_EVENTS.has(type)))
        throw new SetError('invalid_request', 'The SET contains an unsupported event type');

      // The subject: SSF 1.0's top-level sub_id, or (CAEP/RISC drafts) each event's `subject`.
      const subjects: string[] = [];
      if (claims['sub_id'] !== undefined) subjects.push(subjectOf(claims['sub_id'], trustedIssuers));
      for (const type of types) {
        const payload = events[type];
        if (!isObject(payload)) throw new SetError('invalid_request', 'An event payload is not an object');
        if (payload['subject'] !== undefined) subjects.push(subjectOf(payload['subject'], trustedIssuers));
      }
      if (subjects.length === 0) throw new SetError('invalid_request', 'The SET names no subject');
      if (subjects.some((s) => s !== subjects[0]))
        throw new SetError('invalid_request', 'The SET names more than one subject');

      return { jti, iat, sub: subjects[0]!, events: types };
    },
  };
}

export interface ReplayGuard {
  /** True the first time a (iss, jti) is claimed within its window; false for a replay. */
  claim(iss: string, jti: string, iat: number): boolean;
  /** Forgets a claim (the event could not be applied: let the transmitter retry). */
  release(iss: string, jti: string): void;
}

/**
 * Remembers seen `jti`s until their SET would be refused as too old anyway (iat + maxAge + skew),
 * in a bounded LRU: a flood of SETs cannot grow memory. Evicting one early only means a replay of
 * it is applied again, which is harmless (a purge is idempotent).
 */
export function createReplayGuard(opts: {
  maxAgeSeconds: number;
  clockSkewSeconds: number;
  maxEntries?: number;
  now?: () => number;
}): ReplayGuard {
  const now = opts.now ?? (() => Math.floor(Date.now() / 1000));
  const seen = new LRUCache<string, number>({ max: opts.maxEntries ?? 10_000 });
  const key = (iss: string, jti: string) => JSON.stringify([iss, jti]);
  return {
    claim(iss, jti, iat) {
      const k = key(iss, jti);
      const t = now();
      const until = seen.get(k);
      if (until !== undefined && until >= t) return false;
      const expires = iat + opts.maxAgeSeconds + opts.clockSkewSeconds;
      seen.set(k, expires, { ttl: Math.max(1, expires - t + 1) * 1000 });
      return true;
    },
    release(iss, jti) {
      seen.delete(key(iss, jti));
    },
  };
}
