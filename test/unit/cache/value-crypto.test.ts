import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createValueCipher } from '../../../src/cache/value-crypto.ts';

const SECRET = Buffer.from('k'.repeat(32), 'utf8');
const OTHER_SECRET = Buffer.from('z'.repeat(32), 'utf8');
const TOKEN = 'opaque-token-_.~+/value-1234567890';
const OTHER_TOKEN = 'opaque-token-_.~+/value-1234567891';
const AAD = 'phantom:{tag-one}:jwt';
// Shaped like a JWT so that its encodings are long and distinctive.
const PLAINTEXT =
  'eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSIsInNjb3BlIjoicmVhZCJ9.c2lnbmF0dXJlLWJ5dGVz';

const cipher = createValueCipher(SECRET);

/** Replaces the byte at `index` of the sealed body (after the version prefix) with a different one. */
function flipByte(sealed: string, index: number): string {
  const raw = Buffer.from(sealed.slice(3), 'base64url');
  raw[index] = (raw[index] ?? 0) ^ 0x01;
  return `v1.${raw.toString('base64url')}`;
}

/** Every form in which a string could leak into a stored value. */
function encodings(s: string): string[] {
  const buf = Buffer.from(s, 'utf8');
  return [s, buf.toString('base64'), buf.toString('base64url'), buf.toString('hex')];
}

describe('value cipher (AES-256-GCM, key derived from the token)', () => {
  it('round-trips a value with the same token and AAD', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    expect(sealed.startsWith('v1.')).toBe(true);
    expect(cipher.open(TOKEN, AAD, sealed)).toBe(PLAINTEXT);
    // Non-ASCII survives too.
    const unicode = 'ünïcødé ✓ 🚀';
    expect(cipher.open(TOKEN, AAD, cipher.seal(TOKEN, AAD, unicode))).toBe(unicode);
  });

  it('a second cipher with the same secret opens it (another replica)', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    expect(createValueCipher(Buffer.from(SECRET)).open(TOKEN, AAD, sealed)).toBe(PLAINTEXT);
  });

  it('does not open with a wrong token', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    expect(cipher.open(OTHER_TOKEN, AAD, sealed)).toBeUndefined();
    expect(cipher.open('', AAD, sealed)).toBeUndefined();
  });

  it('does not open under a different AAD (the value was moved to another key)', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    expect(cipher.open(TOKEN, 'phantom:{tag-two}:jwt', sealed)).toBeUndefined();
    expect(cipher.open(TOKEN, `${AAD}:variant`, sealed)).toBeUndefined();
    expect(cipher.open(TOKEN, '', sealed)).toBeUndefined();
  });

  it('does not open with a different PHANTOM_CACHE_KEY secret', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    expect(createValueCipher(OTHER_SECRET).open(TOKEN, AAD, sealed)).toBeUndefined();
  });

  it('returns undefined for a flipped byte anywhere (nonce, ciphertext, tag) and never throws', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    const length = Buffer.from(sealed.slice(3), 'base64url').length;
    // Nonce (0..11), ciphertext (12..len-17), tag (last 16 bytes).
    const positions = [0, 5, 11, 12, 13, Math.floor(length / 2), length - 17, length - 16, length - 1];
    for (const i of positions) {
      const tampered = flipByte(sealed, i);
      expect(tampered).not.toBe(sealed);
      expect(() => cipher.open(TOKEN, AAD, tampered), `byte ${i}`).not.toThrow();
      expect(cipher.open(TOKEN, AAD, tampered), `byte ${i}`).toBeUndefined();
    }
  });

  it('returns undefined for truncated values and never throws', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    const cuts = [sealed.length - 1, sealed.length - 4, sealed.length - 22, 40, 20, 3, 2, 0];
    for (const n of cuts) {
      const truncated = sealed.slice(0, n);
      expect(() => cipher.open(TOKEN, AAD, truncated), `length ${n}`).not.toThrow();
      expect(cipher.open(TOKEN, AAD, truncated), `length ${n}`).toBeUndefined();
    }
    // The body without its last 16 bytes (no tag at all).
    const raw = Buffer.from(sealed.slice(3), 'base64url');
    const noTag = `v1.${raw.subarray(0, raw.length - 16).toString('base64url')}`;
    expect(cipher.open(TOKEN, AAD, noTag)).toBeUndefined();
  });

  it('returns undefined for a wrong or missing version prefix', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    const body = sealed.slice(3);
    for (const v of [`v2.${body}`, `V1.${body}`, `v1${body}`, body, `.${body}`, `v0.${body}`]) {
      expect(() => cipher.open(TOKEN, AAD, v)).not.toThrow();
      expect(cipher.open(TOKEN, AAD, v)).toBeUndefined();
    }
  });

  it('returns undefined for garbage and never throws', () => {
    const garbage = [
      '',
      'v1.',
      'v1.!!!!',
      'v1.' + '\u0000'.repeat(64),
      'v1.' + 'A'.repeat(200),
      'v1.' + randomBytes(64).toString('base64url'),
      'v1.' + randomBytes(4096).toString('base64url'),
      'v1.' + randomBytes(64).toString('base64'),
      randomBytes(128).toString('latin1'),
      PLAINTEXT,
      '{"jwt":"x"}',
      'v1.🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀🚀',
    ];
    for (const g of garbage) {
      expect(() => cipher.open(TOKEN, AAD, g)).not.toThrow();
      expect(cipher.open(TOKEN, AAD, g)).toBeUndefined();
    }
  });

  it('seals the same value differently each time (random nonce), and both open', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) seen.add(cipher.seal(TOKEN, AAD, PLAINTEXT));
    expect(seen.size).toBe(20);
    for (const s of seen) expect(cipher.open(TOKEN, AAD, s)).toBe(PLAINTEXT);
    // The nonces (first 12 bytes of the body) differ as well.
    const nonces = new Set(
      [...seen].map((s) => Buffer.from(s.slice(3), 'base64url').subarray(0, 12).toString('hex')),
    );
    expect(nonces.size).toBe(20);
  });

  it('the sealed value contains neither the token nor the plaintext nor their encodings', () => {
    const sealed = cipher.seal(TOKEN, AAD, PLAINTEXT);
    const decodedBody = Buffer.from(sealed.slice(3), 'base64url');
    const views = [sealed, decodedBody.toString('latin1'), decodedBody.toString('utf8')];
    const needles = [
      ...encodings(TOKEN),
      ...encodings(PLAINTEXT),
      // Each part of the JWT on its own (header, claims, signature).
      ...PLAINTEXT.split('.'),
      // The decoded claims and a claim value.
      Buffer.from(PLAINTEXT.split('.')[1] ?? '', 'base64url').toString('utf8'),
      'alice@example.com',
      ...encodings('alice@example.com'),
    ];
    for (const view of views) {
      for (const needle of needles) {
        expect(needle.length).toBeGreaterThan(8);
        expect(view.includes(needle), `leaks ${needle.slice(0, 20)}…`).toBe(false);
      }
    }
  });

  it('is bound to the token: the same plaintext under two tokens gives unrelated values', () => {
    const a = cipher.seal(TOKEN, AAD, PLAINTEXT);
    const b = cipher.seal(OTHER_TOKEN, AAD, PLAINTEXT);
    expect(cipher.open(TOKEN, AAD, b)).toBeUndefined();
    expect(cipher.open(OTHER_TOKEN, AAD, a)).toBeUndefined();
    expect(cipher.open(OTHER_TOKEN, AAD, b)).toBe(PLAINTEXT);
  });
});
