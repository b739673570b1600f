import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

const VERSION = 'v1.';
const INFO = 'phantom-gateway/cache-value/v1';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** Seals and opens Redis values (SPEC §7: a Redis dump yields neither tokens nor JWTs). */
export interface ValueCipher {
  /** AES-256-GCM under a key derived from the opaque token; `aad` binds the value to its Redis key. */
  seal(token: string, aad: string, plaintext: string): string;
  /** The plaintext, or undefined for anything that does not authenticate (tampered, foreign, old format). */
  open(token: string, aad: string, value: string): string | undefined;
}

/**
 * Value encryption for L2. The key is `HKDF-SHA-256(ikm = opaque token, salt = PHANTOM_CACHE_KEY,
 * info = "phantom-gateway/cache-value/v1")`: it exists only while a request carrying the token is
 * being served and is never stored, so a copy of Redis — even together with PHANTOM_CACHE_KEY —
 * opens nothing without the token itself. The Redis key is the additional authenticated data, so
 * a value moved to another key does not open either.
 * Format: `v1.` + base64url(nonce ‖ ciphertext ‖ tag).
 */
export function createValueCipher(secret: Buffer): ValueCipher {
  const keyFor = (token: string): Buffer =>
    Buffer.from(hkdfSync('sha256', Buffer.from(token, 'utf8'), secret, INFO, 32));
  return {
    seal(token, aad, plaintext) {
      const nonce = randomBytes(NONCE_BYTES);
      const cipher = createCipheriv('aes-256-gcm', keyFor(token), nonce);
      cipher.setAAD(Buffer.from(aad, 'utf8'));
      const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      return VERSION + Buffer.concat([nonce, ct, cipher.getAuthTag()]).toString('base64url');
    },
    open(token, aad, value) {
      if (!value.startsWith(VERSION)) return undefined;
      const raw = Buffer.from(value.slice(VERSION.length), 'base64url');
      if (raw.length < NONCE_BYTES + TAG_BYTES + 1) return undefined;
      try {
        const decipher = createDecipheriv('aes-256-gcm', keyFor(token), raw.subarray(0, NONCE_BYTES));
        decipher.setAAD(Buffer.from(aad, 'utf8'));
        decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
        return Buffer.concat([
          decipher.update(raw.subarray(NONCE_BYTES, raw.length - TAG_BYTES)),
          decipher.final(),
        ]).toString('utf8');
      } catch {
        return undefined;
      }
    },
  };
}
