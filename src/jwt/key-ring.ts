import type { CryptoKey } from 'jose';
import type { Logger } from '../observability/logger.ts';
import { type JsonWebKey, loadSigningKeys, type SigningKey } from './signing-keys.ts';

/** The key that signs the next minted JWT. */
export interface Signer {
  key: CryptoKey;
  kid: string;
  alg: string;
}

/**
 * The gateway's signing keys over time (mode mint): which key signs now, which public keys are
 * published, and the reload of `jwt.mint.signingKeysFile` (SIGHUP).
 */
export interface KeyRing {
  /** The current signer; switches to a waiting first key once it has been published long enough. */
  signer(): Signer;
  /**
   * Public keys to publish now: every key of the file plus removed keys still in their grace. The
   * same (frozen) object until the ring changes, so a verifier can keep its imported keys.
   */
  publicJwks(): { keys: JsonWebKey[] };
  /**
   * Re-reads the file. Invalid → the ring is unchanged and the promise rejects with an Error
   * naming `jwt.mint.signingKeysFile` and the key index (never key material).
   */
  reload(): Promise<void>;
  /** `Cache-Control: max-age` for the published JWKS: at most half the publish-before-sign wait. */
  readonly maxAgeSeconds: number;
}

export interface KeyRingOptions {
  file: string;
  /** A new first key signs only after it has been published this long (`jwt.mint.publishBeforeSignSeconds`). */
  publishBeforeSignSeconds: number;
  /** The longest minted lifetime (`jwt.mint.lifetimeSeconds`): how long a removed key stays published. */
  lifetimeSeconds: number;
  /** Current time in epoch seconds (tests). */
  now?: () => number;
  logger: Logger;
}

/** A key's identity: its kid and its public key (a kid reused for another key is another key). */
type KeyId = string;
interface RingKey extends SigningKey {
  id: KeyId;
}
interface RetiredKey {
  id: KeyId;
  kid: string;
  publicJwk: JsonWebKey;
  /** Epoch seconds after which it is no longer published. */
  until: number;
}
/** Replaced as a whole, never mutated: a request sees either the old or the new ring. */
interface RingState {
  /** The file's keys, in file order. */
  keys: RingKey[];
  signer: RingKey;
  retired: RetiredKey[];
}

const PREFIX = 'jwt.mint.signingKeysFile';

async function readKeys(file: string): Promise<RingKey[]> {
  try {
    const loaded = await loadSigningKeys(file);
    return loaded.keys.map((k) => ({
      ...k,
      publicJwk: Object.freeze(k.publicJwk),
      id: `${k.kid}#${k.thumbprint}`,
    }));
  } catch (err) {
    // loadSigningKeys' messages name the file and key index and never quote key material.
    throw new Error(`${PREFIX}: ${(err as Error).message}`);
  }
}

/**
 * Loads `jwt.mint.signingKeysFile` and keeps the signing keys over reloads (SPEC §6: a new key is
 * published before it signs).
 *
 * - At start every key is published and the first key signs at once (nothing was published
 *   before this process, so there is nothing to wait for).
 * - On reload every key of the new file is published at once (a kid seen for the first time is
 *   "published at" now). The new first key signs once it has been published for
 *   `publishBeforeSignSeconds`; until then the previous signer keeps signing — unless the
 *   previous signer was removed from the file (compromised key): then the new first key signs at
 *   once and a warning says the wait was skipped.
 * - A key removed from the file stays published (public part only) until `lifetimeSeconds` after
 *   it last signed (after its removal if it never signed), so JWTs it signed still verify.
 *
 * Time is read on each call (no timer): the switch to a waiting key happens on the first mint
 * after its wait, as one assignment.
 */
export async function createKeyRing(opts: KeyRingOptions): Promise<KeyRing> {
  const now = opts.now ?? (() => Date.now() / 1000);
  const { logger, publishBeforeSignSeconds, lifetimeSeconds } = opts;
  const publishedAt = new Map<KeyId, number>();
  const lastSigned = new Map<KeyId, number>();

  const initial = await readKeys(opts.file);
  const t0 = now();
  for (const k of initial) publishedAt.set(k.id, t0);
  let state: RingState = { keys: initial, signer: initial[0]!, retired: [] };

  /** When the file's first key may sign (epoch seconds). */
  const signsFrom = (k: RingKey) => (publishedAt.get(k.id) ?? now()) + publishBeforeSignSeconds;

  /** Switches to the file's first key once its wait is over; drops removed keys past their grace. */
  function advance(t: number): void {
    const first = state.keys[0]!;
    if (first.id !== state.signer.id && signsFrom(first) <= t) {
      logger.info(
        { kid: first.kid, previousKid: state.signer.kid },
        'mint signing key switched: the first key of jwt.mint.signingKeysFile now signs',
      );
      state = { ...state, signer: first };
    }
    if (state.retired.some((r) => r.until <= t)) {
      const gone = state.retired.filter((r) => r.until <= t);
      for (const r of gone) {
        publishedAt.delete(r.id);
        lastSigned.delete(r.id);
      }
      logger.info({ kids: gone.map((r) => r.kid) }, 'removed mint signing keys are no longer published');
      state = { ...state, retired: state.retired.filter((r) => r.until > t) };
    }
  }

  async function load(): Promise<void> {
    const keys = await readKeys(opts.file);
    // Everything below is synchronous: the new state replaces the old one in one step.
    const t = now();
    advance(t);
    const old = state;
    const ids = new Set(keys.map((k) => k.id));
    const kids = new Set(keys.map((k) => k.kid));
    for (const k of keys) if (!publishedAt.has(k.id)) publishedAt.set(k.id, t);

    // Removed keys keep being published until the JWTs they signed have expired.
    const retired: RetiredKey[] = old.retired.filter((r) => !ids.has(r.id));
    for (const k of old.keys) {
      if (ids.has(k.id)) continue;
      retired.push({
        id: k.id,
        kid: k.kid,
        publicJwk: k.publicJwk,
        until: (lastSigned.get(k.id) ?? t) + lifetimeSeconds,
      });
    }
    // Two published keys with one kid would be ambiguous: the file wins.
    const reused = retired.filter((r) => kids.has(r.kid));
    if (reused.length > 0) {
      logger.warn(
        { kids: reused.map((r) => r.kid) },
        'jwt.mint.signingKeysFile: a kid of a removed key was reused for another key; the removed key is no longer published and JWTs it signed no longer verify',
      );
    }
    for (const r of reused) {
      publishedAt.delete(r.id);
      lastSigned.delete(r.id);
    }

    const first = keys[0]!;
    const previous = keys.find((k) => k.id === old.signer.id);
    let signer: RingKey;
    if (first.id === old.signer.id || signsFrom(first) <= t) signer = first;
    else if (previous !== undefined) signer = previous;
    else {
      signer = first;
      logger.warn(
        { kid: first.kid, removedKid: old.signer.kid },
        'jwt.mint.signingKeysFile: the signing key was removed from the file; the new first key signs at once (publish-before-sign wait skipped)',
      );
    }
    state = { keys, signer, retired: retired.filter((r) => !kids.has(r.kid)) };
    logger.info(
      {
        published: [...keys.map((k) => k.kid), ...state.retired.map((r) => r.kid)],
        signingKid: signer.kid,
        ...(signer.id !== first.id
          ? { nextKid: first.kid, nextSignsAt: new Date(signsFrom(first) * 1000).toISOString() }
          : {}),
      },
      'jwt.mint.signingKeysFile reloaded',
    );
  }

  // One reload at a time, in the order the signals came.
  let queue: Promise<void> = Promise.resolve();
  let published: { of: RingState; jwks: { keys: JsonWebKey[] } } | undefined;

  return {
    maxAgeSeconds: Math.min(60, Math.floor(publishBeforeSignSeconds / 2)),
    signer(): Signer {
      const t = now();
      advance(t);
      const s = state.signer;
      lastSigned.set(s.id, t);
      return { key: s.privateKey, kid: s.kid, alg: s.alg };
    },
    publicJwks() {
      advance(now());
      if (published?.of !== state) {
        const keys = [...state.keys.map((k) => k.publicJwk), ...state.retired.map((r) => r.publicJwk)];
        published = { of: state, jwks: Object.freeze({ keys: Object.freeze(keys) as JsonWebKey[] }) };
      }
      return published.jwks;
    },
    reload() {
      const run = queue.then(load);
      queue = run.catch(() => {});
      return run;
    },
  };
}
