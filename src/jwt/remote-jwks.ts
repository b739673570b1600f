import { createRemoteJWKSet, customFetch, type JWSHeaderParameters, type JWTVerifyGetKey } from 'jose';
import { TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import { jwksFetch } from './jwks-fetch.ts';

/** The JWKS could not be obtained: "could not ask", not "said no". */
export class JwksUnavailable extends Error {
  override name = 'JwksUnavailable';
}

export interface RemoteKeySetOptions {
  /** Resolved on every lookup: the URI may only be known after discovery (and may change). */
  jwksUri: () => Promise<string>;
  timeoutMs: number;
  fetch?: typeof fetch;
}

export interface RemoteKeySet {
  /**
   * jose key getter. Throws TokenServiceUnavailable when the URI is unknown, JwksUnavailable when
   * the key set cannot be fetched, a jose error when no key matches.
   */
  getKey: JWTVerifyGetKey;
}

/**
 * The token service's signing keys from its JWKS URI. Only this key set is ever consulted: `jku`,
 * `x5u`, `jwk` and `x5c` headers are never followed.
 */
export function createRemoteKeySet(opts: RemoteKeySetOptions): RemoteKeySet {
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  let current: { uri: string; set: ReturnType<typeof createRemoteJWKSet> } | undefined;
  return {
    getKey: async (header: JWSHeaderParameters, token) => {
      // The URI provider may throw TokenServiceUnavailable (metadata unknown): passed through.
      let uri: string;
      try {
        uri = await opts.jwksUri();
      } catch (err) {
        if (err instanceof TokenServiceUnavailable) throw err;
        // e.g. the metadata has no jwks_uri: the token service's answer is unusable, not the token.
        throw new TokenServiceUnavailable('bad_answer', err);
      }
      if (current === undefined || current.uri !== uri) {
        current = {
          uri,
          set: createRemoteJWKSet(new URL(uri), {
            timeoutDuration: Math.max(1, Math.round(opts.timeoutMs)),
            cooldownDuration: 30_000,
            cacheMaxAge: 600_000,
            [customFetch]: jwksFetch(
              fetchImpl,
              (message, cause) => new JwksUnavailable(message, cause === undefined ? undefined : { cause }),
            ),
          }),
        };
      }
      return current.set(header, token);
    },
  };
}
