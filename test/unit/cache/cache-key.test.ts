import { describe, expect, it } from 'vitest';
import { createCacheKeyer, resolveCacheSecret } from '../../../src/cache/cache-key.ts';

const SECRET = 'a'.repeat(32);
const TOKEN = 'opaque-token-_.~+/value-1234567890';

describe('cache key', () => {
  it('is deterministic for the same secret and token', () => {
    expect(createCacheKeyer(SECRET)(TOKEN)).toBe(createCacheKeyer(SECRET)(TOKEN));
  });

  it('is the HMAC-SHA-256 of the token as base64url', async () => {
    const { createHmac } = await import('node:crypto');
    const expected = createHmac('sha256', SECRET).update(TOKEN).digest('base64url');
    expect(createCacheKeyer(SECRET)(TOKEN)).toBe(expected);
    expect(createCacheKeyer(SECRET)(TOKEN)).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('accepts the secret as a string or as a Buffer with the same result', () => {
    expect(createCacheKeyer(Buffer.from(SECRET))(TOKEN)).toBe(createCacheKeyer(SECRET)(TOKEN));
  });

  it('differs per secret', () => {
    expect(createCacheKeyer('b'.repeat(32))(TOKEN)).not.toBe(createCacheKeyer(SECRET)(TOKEN));
  });

  it('differs per token', () => {
    const key = createCacheKeyer(SECRET);
    expect(key(TOKEN)).not.toBe(key(TOKEN + 'x'));
  });

  it('differs per variant and from no variant', () => {
    const key = createCacheKeyer(SECRET);
    expect(key(TOKEN, 'aud-a')).not.toBe(key(TOKEN, 'aud-b'));
    expect(key(TOKEN, 'aud-a')).not.toBe(key(TOKEN));
    expect(key(TOKEN, '')).not.toBe(key(TOKEN));
  });

  it('never contains the token', () => {
    const key = createCacheKeyer(SECRET);
    for (const t of [TOKEN, 'abc', 'A'.repeat(43), 'short']) {
      expect(key(t)).not.toContain(t);
      expect(key(t, 'v')).not.toContain(t);
    }
  });

  it('rejects an empty secret', () => {
    expect(() => createCacheKeyer('')).toThrow();
  });
});

describe('resolveCacheSecret', () => {
  it('uses PHANTOM_CACHE_KEY when it has at least 32 characters', () => {
    const r = resolveCacheSecret({ PHANTOM_CACHE_KEY: SECRET }, true);
    expect(r.generated).toBe(false);
    expect(r.secret.equals(Buffer.from(SECRET))).toBe(true);
  });

  it('rejects a PHANTOM_CACHE_KEY shorter than 32 characters, naming the variable and the minimum', () => {
    expect(() => resolveCacheSecret({ PHANTOM_CACHE_KEY: 'x'.repeat(31) }, false)).toThrow(
      /PHANTOM_CACHE_KEY.*32/,
    );
    expect(() => resolveCacheSecret({ PHANTOM_CACHE_KEY: '' }, false)).toThrow(/PHANTOM_CACHE_KEY.*32/);
  });

  it('requires PHANTOM_CACHE_KEY when Redis is configured', () => {
    expect(() => resolveCacheSecret({}, true)).toThrow(
      'PHANTOM_CACHE_KEY is required when cache.redis is configured: every replica must derive the same keys',
    );
  });

  it('generates 32 random bytes per call without Redis', () => {
    const a = resolveCacheSecret({}, false);
    const b = resolveCacheSecret({}, false);
    expect(a.generated).toBe(true);
    expect(a.secret).toHaveLength(32);
    expect(a.secret.equals(b.secret)).toBe(false);
  });
});
