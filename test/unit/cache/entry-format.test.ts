import { describe, expect, it } from 'vitest';
import { packEntry, unpackEntry } from '../../../src/cache/tiered-cache.ts';

/** The plaintext sealed into Redis: the expiry travels with the JWT (no PTTL on read). */
describe('Redis entry plaintext', () => {
  const jwt = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln';

  it('round-trips the JWT and its expiry', () => {
    const packed = packEntry(jwt, 1_795_444_948_481.7);
    expect(packed).toBe(`e1795444948481.${jwt}`);
    expect(unpackEntry(packed)).toEqual({ jwt, expiresAtMs: 1_795_444_948_481 });
  });

  it('reads a value of the earlier format (the bare JWT) without an expiry', () => {
    expect(unpackEntry(jwt)).toEqual({ jwt });
  });

  it('passes undefined (a value that did not open) through', () => {
    expect(unpackEntry(undefined)).toBeUndefined();
  });

  it('never takes digits inside a JWT for an expiry', () => {
    // A JWT always starts with "eyJ": no digit follows the "e".
    expect(unpackEntry('e.x')).toEqual({ jwt: 'e.x' });
    expect(unpackEntry(`e12345678901234567.${jwt}`)).toEqual({ jwt: `e12345678901234567.${jwt}` });
  });
});
