/** What the cache holds for one active token: the JWT to forward and its decoded claims. */
export interface CacheEntry {
  /** The JWT forwarded upstream. Never logged. */
  jwt: string;
  /** Decoded claims of `jwt` (scopes, sub, …). */
  claims: Record<string, unknown>;
  /** Expiry of the JWT, epoch seconds. */
  exp: number;
  /** HMAC of the JWT's `sub` (purge by subject evicts every entry with it). */
  subTag?: string;
  /** `kid` of the key that signed `jwt`: an L1 hit whose key is no longer published is dropped. */
  kid?: string;
}

/**
 * How long an entry may be cached, in whole seconds:
 * `floor(min(exp − now − clockSkew, maxTtl, maxAge ?? ∞))`.
 * The entry leaves the cache `clockSkewSeconds` before the JWT expires, so an upstream with a
 * slightly fast clock never receives an expired JWT from us. A result ≤ 0 means "do not cache".
 */
export function cacheTtlSeconds(
  exp: number,
  nowSeconds: number,
  clockSkewSeconds: number,
  maxTtlSeconds: number,
  maxAgeSeconds?: number,
): number {
  const ttl = Math.floor(
    Math.min(exp - nowSeconds - clockSkewSeconds, maxTtlSeconds, maxAgeSeconds ?? Infinity),
  );
  return Number.isFinite(ttl) ? ttl : 0;
}
