import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLocalJWKSet, exportJWK, generateKeyPair, type JWK, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyRing, type KeyRing } from '../../../src/jwt/key-ring.ts';
import { createMinter } from '../../../src/jwt/mint-jwt.ts';
import { createLogger } from '../../../src/observability/logger.ts';

const PUBLISH = 600;
const LIFETIME = 300;
const T0 = 1_800_000_000;
const ISSUER = 'https://gateway.example.com';

let dir: string;
let A: JWK;
let B: JWK;
let C: JWK;

async function privateJwk(kid: string, alg: 'ES256' | 'RS256' = 'ES256'): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-key-ring-'));
  [A, B, C] = await Promise.all([privateJwk('key-a'), privateJwk('key-b', 'RS256'), privateJwk('key-c')]);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A ring on a temp file with a hand-moved clock and a log kept in memory. */
async function ring(keys: JWK[], publishBeforeSignSeconds = PUBLISH) {
  const file = join(dir, `keys-${Math.random().toString(36).slice(2)}.json`);
  const write = (content: unknown) =>
    writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  write({ keys });
  const clock = { t: T0 };
  const lines: string[] = [];
  const logger = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    }),
  });
  const r = await createKeyRing({
    file,
    publishBeforeSignSeconds,
    lifetimeSeconds: LIFETIME,
    now: () => clock.t,
    logger,
  });
  const logs = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { r, file, write, clock, logs };
}

const published = (r: KeyRing) => r.publicJwks().keys.map((k) => k.kid);
const signing = (r: KeyRing) => r.signer().kid;

describe('createKeyRing', () => {
  it('at start publishes every key (public members only) and the first key signs at once', async () => {
    const { r } = await ring([A, B]);
    expect(signing(r)).toBe('key-a');
    expect(r.signer().alg).toBe('ES256');
    expect(published(r)).toEqual(['key-a', 'key-b']);
    for (const k of r.publicJwks().keys) {
      for (const m of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(k).not.toHaveProperty(m);
    }
    expect(r.maxAgeSeconds).toBe(60);
  });

  it('reload with a new first key: published at once, the old key signs until publishBeforeSignSeconds', async () => {
    const { r, write, clock, logs } = await ring([A]);
    clock.t += 10;
    write({ keys: [C, A] });
    await r.reload();
    expect(published(r)).toEqual(['key-c', 'key-a']);
    expect(signing(r)).toBe('key-a');
    expect(logs().at(-1)).toMatchObject({ msg: 'jwt.mint.signingKeysFile reloaded', nextKid: 'key-c' });

    clock.t += PUBLISH - 1;
    expect(signing(r)).toBe('key-a');
    clock.t += 1;
    expect(signing(r)).toBe('key-c');
    expect(logs().some((l) => l['kid'] === 'key-c' && String(l['msg']).includes('switched'))).toBe(true);
    // The old key is still in the file: still published.
    expect(published(r)).toEqual(['key-c', 'key-a']);
  });

  it('mints with the current signer; JWTs of both keys verify against the JWKS during the switch', async () => {
    const { r, write, clock } = await ring([A]);
    const mint = (t: number) =>
      createMinter({
        issuer: ISSUER,
        lifetimeSeconds: LIFETIME,
        signer: () => r.signer(),
        now: () => t,
      }).mint({ sub: 'alice', exp: t + 3600 }, 'aud');
    write({ keys: [C, A] });
    await r.reload();
    const before = await mint(clock.t);
    clock.t += PUBLISH;
    const after = await mint(clock.t);
    const jwks = createLocalJWKSet(r.publicJwks());
    // The old key's JWT is still valid (1 s before its exp) and verifies next to the new one's.
    const opts = { issuer: ISSUER, currentDate: new Date((T0 + LIFETIME - 1) * 1000) };
    expect((await jwtVerify(before.jwt, jwks, opts)).protectedHeader.kid).toBe('key-a');
    expect(
      (await jwtVerify(after.jwt, jwks, { issuer: ISSUER, currentDate: new Date(clock.t * 1000) }))
        .protectedHeader.kid,
    ).toBe('key-c');
  });

  it('hands out the same JWKS object until the ring changes (a verifier keeps its imported keys)', async () => {
    const { r, write, clock } = await ring([A]);
    const first = r.publicJwks();
    r.signer();
    clock.t += 10;
    expect(r.publicJwks()).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    write({ keys: [C, A] });
    await r.reload();
    const second = r.publicJwks();
    expect(second).not.toBe(first);
    expect(r.publicJwks()).toBe(second);
  });

  it('a key that is already published for long enough signs as soon as it becomes first', async () => {
    const { r, write, clock } = await ring([A, C]);
    clock.t += PUBLISH;
    write({ keys: [C, A] });
    await r.reload();
    expect(signing(r)).toBe('key-c');
  });

  it('a key that was first and is moved back waits again only if it is new', async () => {
    const { r, write, clock } = await ring([A, C]);
    clock.t += 1;
    write({ keys: [C, A] }); // C published since start, 1 s ago: wait
    await r.reload();
    expect(signing(r)).toBe('key-a');
    write({ keys: [A, C] }); // back to A, the signer: nothing to wait for
    await r.reload();
    expect(signing(r)).toBe('key-a');
    clock.t += PUBLISH;
    expect(signing(r)).toBe('key-a');
  });

  it('a removed key stays published until lifetimeSeconds after it last signed, then disappears', async () => {
    const { r, write, clock, logs } = await ring([A]);
    write({ keys: [C, A] });
    await r.reload();
    clock.t += PUBLISH - 1;
    expect(signing(r)).toBe('key-a'); // A's last signature
    const lastSignedByA = clock.t;
    clock.t += 1;
    expect(signing(r)).toBe('key-c');

    clock.t += 100;
    write({ keys: [C] });
    await r.reload();
    expect(signing(r)).toBe('key-c');
    expect(published(r)).toEqual(['key-c', 'key-a']); // removed, still published

    clock.t = lastSignedByA + LIFETIME - 1;
    expect(published(r)).toEqual(['key-c', 'key-a']);
    clock.t = lastSignedByA + LIFETIME;
    expect(published(r)).toEqual(['key-c']);
    expect(logs().some((l) => String(l['msg']).includes('no longer published'))).toBe(true);
  });

  it('a removed key that never signed stays published until lifetimeSeconds after its removal', async () => {
    const { r, write, clock } = await ring([A, B]);
    clock.t += 50;
    write({ keys: [A] });
    await r.reload();
    expect(published(r)).toEqual(['key-a', 'key-b']);
    clock.t += LIFETIME - 1;
    expect(published(r)).toEqual(['key-a', 'key-b']);
    clock.t += 1;
    expect(published(r)).toEqual(['key-a']);
  });

  it('a removed key put back in the file is a file key again (no expiry)', async () => {
    const { r, write, clock } = await ring([A, B]);
    write({ keys: [A] });
    await r.reload();
    write({ keys: [A, B] });
    await r.reload();
    clock.t += LIFETIME * 10;
    expect(published(r)).toEqual(['key-a', 'key-b']);
  });

  it('the previous signer removed from the file: the new first key signs at once, with a warning', async () => {
    const { r, write, clock, logs } = await ring([A]);
    expect(signing(r)).toBe('key-a');
    clock.t += 5;
    write({ keys: [C] });
    await r.reload();
    expect(signing(r)).toBe('key-c');
    // The compromised key is still published for the JWTs it signed (they verify until they expire).
    expect(published(r)).toEqual(['key-c', 'key-a']);
    const warn = logs().find((l) => l['level'] === 'warn');
    expect(warn).toMatchObject({ kid: 'key-c', removedKid: 'key-a' });
    expect(String(warn?.['msg'])).toMatch(/publish-before-sign wait skipped/);
  });

  it('an invalid file on reload keeps the old ring; the error names the key index, not key material', async () => {
    const { r, file, write, clock } = await ring([A]);
    write({ keys: [C, A] });
    await r.reload();
    const before = published(r);

    const { d: _d, ...publicOnly } = B;
    write({ keys: [C, publicOnly] });
    const err = (await r.reload().catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toBe(
      `jwt.mint.signingKeysFile: ${file}: keys[1]: not a private key (no "d" member); the file must hold private keys`,
    );
    for (const secret of [B.d, B.n, C.d, C.x]) expect(err.message).not.toContain(secret);

    // Broken JSON: the parser's message (which would quote the file) is not used.
    write(JSON.stringify({ keys: [C] }).slice(0, 60));
    const err2 = (await r.reload().catch((e: unknown) => e)) as Error;
    expect(err2.message).toBe(
      `jwt.mint.signingKeysFile: ${file}: not valid JSON (expected a JWK Set: {"keys":[…]})`,
    );

    // Nothing changed: same published keys, same signer, same pending switch.
    expect(published(r)).toEqual(before);
    expect(signing(r)).toBe('key-a');
    clock.t += PUBLISH;
    expect(signing(r)).toBe('key-c');
  });

  it('a missing file on reload keeps the old ring', async () => {
    const { r, file } = await ring([A]);
    rmSync(file);
    await expect(r.reload()).rejects.toThrow(
      `jwt.mint.signingKeysFile: ${file}: cannot read the file (ENOENT)`,
    );
    expect(signing(r)).toBe('key-a');
    expect(published(r)).toEqual(['key-a']);
  });

  it('publishBeforeSignSeconds 0: a new first key signs at once', async () => {
    const { r, write } = await ring([A], 0);
    write({ keys: [C, A] });
    await r.reload();
    expect(signing(r)).toBe('key-c');
    expect(r.maxAgeSeconds).toBe(0);
  });

  it('a kid reused for another key: the file wins, the old key is not published next to it', async () => {
    const { r, write, logs } = await ring([A, B]);
    const otherB = await privateJwk('key-b');
    write({ keys: [A, otherB] });
    await r.reload();
    const keys = r.publicJwks().keys;
    expect(keys.map((k) => k.kid)).toEqual(['key-a', 'key-b']);
    expect(keys[1]).toMatchObject({ kty: 'EC', x: otherB.x });
    expect(logs().some((l) => l['level'] === 'warn' && String(l['msg']).includes('reused'))).toBe(true);
  });

  it('startup with an invalid file fails with an error naming the config key', async () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify({ keys: [] }));
    await expect(
      createKeyRing({
        file,
        publishBeforeSignSeconds: PUBLISH,
        lifetimeSeconds: LIFETIME,
        logger: createLogger({ destination: new Writable({ write: (_c, _e, cb) => cb() }) }),
      }),
    ).rejects.toThrow(`jwt.mint.signingKeysFile: ${file}: keys: must contain at least one key`);
  });
});
