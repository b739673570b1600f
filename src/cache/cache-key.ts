import { createHmac, createSecretKey, randomBytes } from 'node:crypto';

/** Minimum length of `PHANTOM_CACHE_KEY` in characters (≈ 32 bytes of entropy for a random key). */
export const MIN_CACHE_KEY_LENGTH = 32;

/** Derives a cache key from a token: never the token itself, never reversible without the secret. */
export type CacheKeyer = (token: string, variant?: string) => string;

/**
 * `HMAC-SHA-256(secret, token)` — or `HMAC-SHA-256(secret, token + "\0" + variant)` when a variant
 * (e.g. a mode or audience that changes the cached value) is given — as base64url (43 characters).
 * Raw tokens are never used as keys (SPEC §7).
 */
export function createCacheKeyer(secret: string | Buffer): CacheKeyer {
  const key = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
  if (key.length === 0) throw new Error('cache key secret must not be empty');
  // A KeyObject made once: createHmac with a Buffer key builds one per call (≈ 6× the cost of the
  // HMAC itself on Node 24, measured), and this runs on every request.
  const keyObject = createSecretKey(key);
  return (token, variant) => {
    const mac = createHmac('sha256', keyObject).update(token, 'utf8');
    if (variant !== undefined) mac.update('\0', 'utf8').update(variant, 'utf8');
    return mac.digest('base64url');
  };
}

/**
 * The HMAC secret for cache keys, from `PHANTOM_CACHE_KEY` (at least 32 characters).
 * Without it: an error when Redis is configured (every replica must derive the same keys),
 * otherwise 32 random bytes for this process (`generated: true`; L1 only, so that is fine).
 */
export function resolveCacheSecret(
  env: Readonly<Record<string, string | undefined>>,
  redisConfigured: boolean,
): { secret: Buffer; generated: boolean } {
  const value = env['PHANTOM_CACHE_KEY'];
  if (value !== undefined) {
    if (value.length < MIN_CACHE_KEY_LENGTH) {
      throw new Error(
        `PHANTOM_CACHE_KEY is too short: it must be at least ${MIN_CACHE_KEY_LENGTH} characters (32 bytes of entropy, e.g. \`openssl rand -base64 32\`)`,
      );
    }
    return { secret: Buffer.from(value, 'utf8'), generated: false };
  }
  if (redisConfigured) {
    throw new Error(
      'PHANTOM_CACHE_KEY is required when cache.redis is configured: every replica must derive the same keys',
    );
  }
  return { secret: randomBytes(32), generated: true };
}
