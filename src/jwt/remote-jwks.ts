import {
  createLocalJWKSet,
  type FlattenedJWSInput,
  type JWK,
  type JWSHeaderParameters,
  type JWTVerifyGetKey,
  errors as joseErrors,
} from 'jose';
import { TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import { fetchJwks } from './jwks-fetch.ts';

/** The JWKS could not be obtained: "could not ask", not "said no". */
export class JwksUnavailable extends Error {
  override name = 'JwksUnavailable';
}

/** A fetched key set is used this long, then refetched on the next lookup. */
export const JWKS_MAX_AGE_MS = 10 * 60_000;
/**
 * At most one refetch for an unknown `kid` per this window, so tokens with random `kid`s cannot
 * make the gateway hammer the JWKS endpoint. Only unknown-kid refetches start the window. Also the
 * pause before another try after a failed max-age refetch.
 */
export const UNKNOWN_KID_COOLDOWN_MS = 30_000;

export interface RemoteKeySetOptions {
  /** Resolved on every lookup: the URI may only be known after discovery (and may change). */
  jwksUri: () => Promise<string>;
  timeoutMs: number;
  fetch?: typeof fetch;
  /** Epoch milliseconds (default `Date.now`). */
  now?: () => number;
}

export interface RemoteKeySet {
  /**
   * jose key getter. Throws TokenServiceUnavailable when the URI is unknown, JwksUnavailable when
   * the key set cannot be fetched, a jose error when no key matches.
   */
  getKey: JWTVerifyGetKey;
  /**
   * Whether the last fetched key set has a key with this `kid`: undefined when no key set has been
   * fetched yet or `kid` is undefined (cannot tell). Synchronous and cheap (asked on cache hits).
   */
  isPublished(kid: string | undefined): boolean | undefined;
}

interface FetchedSet {
  getKey: ReturnType<typeof createLocalJWKSet>;
  kids: ReadonlySet<string>;
  fetchedAt: number;
}

/** Everything known about one JWKS URI; a new URI (rediscovery) starts from scratch. */
interface UriState {
  uri: string;
  set?: FetchedSet;
  /** The fetch every concurrent lookup shares. */
  inflight?: Promise<FetchedSet>;
  /** When the last unknown-kid refetch started (the 30 s window). */
  lastUnknownKidFetch?: number;
  /** After a failed max-age refetch: no new try before this (the old set is used meanwhile). */
  retryAt?: number;
}

/**
 * The token service's signing keys from its JWKS URI. Only this key set is ever consulted: `jku`,
 * `x5u`, `jwk` and `x5c` headers are never followed.
 *
 * - The first lookup fetches; lookups share one in-flight fetch.
 * - A set older than JWKS_MAX_AGE_MS is refetched; when that fails the old set stays in use
 *   (nothing is surfaced: a token service outage must not turn valid JWTs into 503s) and the next
 *   try waits UNKNOWN_KID_COOLDOWN_MS.
 * - A `kid` (or alg) no key matches triggers a refetch at most once per UNKNOWN_KID_COOLDOWN_MS,
 *   counted from the previous unknown-kid refetch only: a token service may rotate shortly after the
 *   gateway started, while a flood of random `kid`s costs one fetch per window.
 */
export function createRemoteKeySet(opts: RemoteKeySetOptions): RemoteKeySet {
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  const now = opts.now ?? (() => Date.now());
  const unavailable = (message: string, cause?: unknown) =>
    new JwksUnavailable(message, cause === undefined ? undefined : { cause });
  let state: UriState | undefined;

  function refresh(s: UriState): Promise<FetchedSet> {
    s.inflight ??= (async () => {
      try {
        const jwks = await fetchJwks(fetchImpl, s.uri, opts.timeoutMs, unavailable);
        let getKey: FetchedSet['getKey'];
        try {
          getKey = createLocalJWKSet(jwks);
        } catch (err) {
          throw unavailable('JWKS response is not a usable JWK Set', err);
        }
        const kids = new Set(
          jwks.keys.map((k: JWK) => k.kid).filter((k): k is string => typeof k === 'string'),
        );
        const set: FetchedSet = { getKey, kids, fetchedAt: now() };
        s.set = set;
        s.retryAt = undefined;
        return set;
      } finally {
        s.inflight = undefined;
      }
    })();
    return s.inflight;
  }

  async function currentState(): Promise<UriState> {
    // The URI provider may throw TokenServiceUnavailable (metadata unknown): passed through.
    let uri: string;
    try {
      uri = await opts.jwksUri();
    } catch (err) {
      if (err instanceof TokenServiceUnavailable) throw err;
      // e.g. the metadata has no jwks_uri: the token service's answer is unusable, not the token.
      throw new TokenServiceUnavailable('bad_answer', err);
    }
    if (state === undefined || state.uri !== uri) state = { uri };
    return state;
  }

  return {
    getKey: async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
      const s = await currentState();
      let set = s.set;
      if (set === undefined) {
        set = await refresh(s);
      } else if (
        now() - set.fetchedAt >= JWKS_MAX_AGE_MS &&
        (s.retryAt === undefined || now() >= s.retryAt)
      ) {
        try {
          set = await refresh(s);
        } catch {
          s.retryAt = now() + UNKNOWN_KID_COOLDOWN_MS;
        }
      }
      try {
        return await set.getKey(header, token);
      } catch (err) {
        if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err;
        // No key for this kid/alg: a fetch already under way may bring it; else refetch when the
        // window allows. A failed refetch is "could not ask" (JwksUnavailable → 503).
        if (s.inflight !== undefined) {
          set = await s.inflight;
        } else if (
          s.lastUnknownKidFetch === undefined ||
          now() - s.lastUnknownKidFetch >= UNKNOWN_KID_COOLDOWN_MS
        ) {
          s.lastUnknownKidFetch = now();
          set = await refresh(s);
        } else if (s.set !== undefined && s.set !== set) {
          set = s.set; // another lookup refreshed meanwhile
        } else {
          throw err;
        }
        return set.getKey(header, token);
      }
    },

    isPublished(kid) {
      const set = state?.set;
      if (set === undefined || kid === undefined) return undefined;
      return set.kids.has(kid);
    },
  };
}
