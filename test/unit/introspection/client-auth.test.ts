import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, ConfigSchema } from '../../../src/config/schema.ts';
import {
  ASSERTION_LIFETIME_SECONDS,
  CLIENT_ASSERTION_TYPE,
  createClientAuth,
  loadAssertionKey,
} from '../../../src/introspection/client-auth.ts';

/**
 * private_key_jwt key loading (every refusal names the config key and never echoes key
 * material), the default algorithm per key type, and the assertion's claims. The assertion
 * against a real oidc-provider is in test/integration/token-service/client-auth.test.ts.
 */
const ISSUER = 'https://idp.example';

let dir: string;
let n = 0;

function file(content: string): string {
  const f = join(dir, `key-${++n}`);
  writeFileSync(f, content, { mode: 0o600 });
  return f;
}

function config(tokenService: Record<string, unknown>): Config {
  return ConfigSchema.parse({
    tokenService: { issuer: ISSUER, clientId: 'gw', clientAuth: 'private_key_jwt', ...tokenService },
    routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
  });
}

const pem = (k: KeyObject) => k.export({ format: 'pem', type: 'pkcs8' }).toString();
const jwk = (k: KeyObject) => k.export({ format: 'jwk' }) as Record<string, unknown>;

/** The error of createClientAuth for this config (it must fail). */
async function failure(tokenService: Record<string, unknown>): Promise<Error> {
  const err = await createClientAuth(config(tokenService)).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return err as Error;
}

const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-client-auth-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('private_key_jwt key loading errors', () => {
  it('a missing file names tokenService.privateKeyFile and the errno', async () => {
    const err = await failure({ privateKeyFile: join(dir, 'nope.pem') });
    expect(err.message).toMatch(/^tokenService\.privateKeyFile: cannot read .*nope\.pem \(ENOENT\)$/);
  });

  it('a file that is no key at all', async () => {
    const err = await failure({ privateKeyFile: file('hello, not a key\n') });
    expect(err.message).toMatch(/^tokenService\.privateKeyFile: not a private key/);
  });

  it('broken JSON is refused without quoting the file', async () => {
    const d = jwk(ec.privateKey)['d'] as string;
    const err = await failure({ privateKeyFile: file(`{"kty":"EC","d":"${d}",`) });
    expect(err.message).toMatch(/^tokenService\.privateKeyFile: not valid JSON/);
    expect(err.message).not.toContain(d);
  });

  it('a corrupt PEM body is refused without quoting it', async () => {
    const body = 'MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg' + 'A'.repeat(40);
    const err = await failure({
      privateKeyFile: file(`-----BEGIN PRIVATE KEY-----\n${body}\n-----END PRIVATE KEY-----\n`),
    });
    expect(err.message).toBe('tokenService.privateKeyFile: not a readable PEM private key (PKCS#8 expected)');
  });

  it('a public key only, as PEM and as JWK', async () => {
    const spki = ec.publicKey.export({ format: 'pem', type: 'spki' }).toString();
    const a = await failure({ privateKeyFile: file(spki) });
    expect(a.message).toMatch(/^tokenService\.privateKeyFile: a public key or certificate only/);
    const b = await failure({ privateKeyFile: file(JSON.stringify(jwk(ec.publicKey))) });
    expect(b.message).toMatch(/^tokenService\.privateKeyFile: a public key only \(no "d" member\)/);
  });

  it('a symmetric key (kty oct)', async () => {
    const k = 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA';
    const err = await failure({ privateKeyFile: file(JSON.stringify({ kty: 'oct', k, alg: 'HS256' })) });
    expect(err.message).toMatch(/^tokenService\.privateKeyFile: a symmetric key \(kty "oct"\)/);
    expect(err.message).not.toContain(k);
  });

  it('an encrypted PEM key', async () => {
    const enc = ec.privateKey
      .export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'pw' })
      .toString();
    const err = await failure({ privateKeyFile: file(enc) });
    expect(err.message).toMatch(/^tokenService\.privateKeyFile: encrypted PEM keys are not supported/);
  });

  it('privateKeyAlg that does not fit the key names tokenService.privateKeyAlg', async () => {
    const f = file(pem(ec.privateKey));
    for (const alg of ['ES384', 'RS256', 'EdDSA']) {
      const err = await failure({ privateKeyFile: f, privateKeyAlg: alg });
      expect(err.message).toBe(
        `tokenService.privateKeyAlg: ${alg} does not fit the EC prime256v1 key of tokenService.privateKeyFile`,
      );
    }
  });

  it('privateKeyAlg that contradicts the JWK "alg"', async () => {
    const f = file(JSON.stringify({ ...jwk(ec.privateKey), alg: 'ES256' }));
    const err = await failure({ privateKeyFile: f, privateKeyAlg: 'ES384' });
    expect(err.message).toBe('tokenService.privateKeyAlg: ES384 differs from the key\'s "alg" ES256');
  });

  it('a JWK "alg" that does not fit its key, or is not an asymmetric algorithm', async () => {
    const a = await failure({
      privateKeyFile: file(JSON.stringify({ ...jwk(ec.privateKey), alg: 'RS256' })),
    });
    expect(a.message).toBe(
      'tokenService.privateKeyFile: the JWK\'s "alg" RS256 does not fit its EC prime256v1 key',
    );
    const b = await failure({
      privateKeyFile: file(JSON.stringify({ ...jwk(ec.privateKey), alg: 'HS256' })),
    });
    expect(b.message).toMatch(/^tokenService\.privateKeyFile: the JWK's "alg" is not an allowed/);
  });

  it('an RSA key shorter than 2048 bits, and a key type that cannot sign a JWS', async () => {
    const short = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const a = await failure({ privateKeyFile: file(pem(short.privateKey)) });
    expect(a.message).toMatch(/^tokenService\.privateKeyFile: an RSA 1024-bit key is too short/);
    const x = generateKeyPairSync('x25519');
    const b = await failure({ privateKeyFile: file(pem(x.privateKey)) });
    expect(b.message).toMatch(/^tokenService\.privateKeyFile: an x25519 key cannot sign a client assertion/);
  });

  it('a JWK Set with more than one key', async () => {
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const f = file(JSON.stringify({ keys: [jwk(ec.privateKey), jwk(other.privateKey)] }));
    const err = await failure({ privateKeyFile: f });
    expect(err.message).toBe(
      'tokenService.privateKeyFile: a JWK Set here must hold exactly one key (it holds 2)',
    );
  });

  it('no refusal message carries key material', async () => {
    const d = jwk(ec.privateKey)['d'] as string;
    const body = pem(ec.privateKey).split('\n')[1]!;
    const errs = await Promise.all([
      failure({ privateKeyFile: file(pem(ec.privateKey)), privateKeyAlg: 'RS256' }),
      failure({ privateKeyFile: file(JSON.stringify({ ...jwk(ec.privateKey), alg: 'PS256' })) }),
      failure({ privateKeyFile: file(JSON.stringify({ ...jwk(ec.privateKey), use: 'enc' })) }),
    ]);
    for (const e of errs) {
      expect(e.message).toMatch(/^tokenService\.privateKey(File|Alg): /);
      expect(e.message).not.toContain(d);
      expect(e.message).not.toContain(body.slice(0, 20));
    }
  });
});

describe('private_key_jwt key types', () => {
  it('takes the algorithm from the key type when nothing names one', async () => {
    const cases: Array<[KeyObject, string]> = [
      [ec.privateKey, 'ES256'],
      [generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey, 'ES384'],
      [generateKeyPairSync('ec', { namedCurve: 'P-521' }).privateKey, 'ES512'],
      [generateKeyPairSync('ed25519').privateKey, 'EdDSA'],
      [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, 'RS256'],
    ];
    for (const [key, alg] of cases) {
      expect((await loadAssertionKey(file(pem(key)))).alg).toBe(alg);
      expect((await loadAssertionKey(file(JSON.stringify(jwk(key))))).alg).toBe(alg);
    }
  });

  it('the JWK "alg" and kid are used; privateKeyAlg may pick another fitting algorithm', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const k = await loadAssertionKey(
      file(JSON.stringify({ ...jwk(rsa.privateKey), alg: 'PS384', kid: 'k1' })),
    );
    expect(k).toMatchObject({ alg: 'PS384', kid: 'k1' });
    const viaConfig = await loadAssertionKey(file(pem(rsa.privateKey)), 'PS512');
    expect(viaConfig.alg).toBe('PS512');
    expect(viaConfig.kid).toBeUndefined();
    const set = await loadAssertionKey(
      file(JSON.stringify({ keys: [{ ...jwk(ec.privateKey), kid: 'only' }] })),
    );
    expect(set).toMatchObject({ alg: 'ES256', kid: 'only' });
  });
});

describe('private_key_jwt assertion', () => {
  it('puts a fresh, short-lived RFC 7523 assertion in the form body of each request', async () => {
    const auth = await createClientAuth(
      config({ privateKeyFile: file(JSON.stringify({ ...jwk(ec.privateKey), kid: 'gw-1' })) }),
    );
    const jtis = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const headers = new Headers();
      const body = new URLSearchParams({ token: 't' });
      await auth.apply({ headers, body, endpoint: `${ISSUER}/introspect` });
      expect(headers.get('authorization')).toBeNull();
      expect(body.get('client_id')).toBe('gw');
      expect(body.get('client_assertion_type')).toBe(CLIENT_ASSERTION_TYPE);
      const assertion = body.get('client_assertion')!;
      expect(decodeProtectedHeader(assertion)).toEqual({ alg: 'ES256', kid: 'gw-1' });
      const { payload } = await jwtVerify(assertion, ec.publicKey, {
        issuer: 'gw',
        subject: 'gw',
        audience: ISSUER,
        algorithms: ['ES256'],
      });
      expect(payload.aud).toBe(ISSUER); // a single string, the issuer identifier (RFC 7523bis)
      expect(payload.exp! - payload.iat!).toBe(ASSERTION_LIFETIME_SECONDS);
      expect(payload.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
      jtis.add(payload.jti!);
    }
    expect(jtis.size).toBe(3);
  });

  it('reload() keeps the old key when the new file is unusable, and takes a good one', async () => {
    const f = file(pem(ec.privateKey));
    const auth = await createClientAuth(config({ privateKeyFile: f }));
    const signWith = async () => {
      const body = new URLSearchParams();
      await auth.apply({ headers: new Headers(), body, endpoint: ISSUER });
      return body.get('client_assertion')!;
    };
    writeFileSync(f, 'garbage');
    await expect(auth.reload()).rejects.toThrow(/^tokenService\.privateKeyFile: not a private key/);
    await jwtVerify(await signWith(), ec.publicKey); // still the old key
    const next = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(f, pem(next.privateKey));
    await auth.reload();
    await jwtVerify(await signWith(), next.publicKey);
    await expect(jwtVerify(await signWith(), ec.publicKey)).rejects.toThrow();
  });
});

describe('caFile', () => {
  it('a file without a PEM certificate names tokenService.caFile, whatever the method', async () => {
    const err = await createClientAuth(
      ConfigSchema.parse({
        tokenService: { issuer: ISSUER, clientId: 'gw', clientSecret: 's', caFile: file('nothing') },
        routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
      }),
    ).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/^tokenService\.caFile: no PEM certificate in the file/);
  });
});
