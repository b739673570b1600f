import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calculateJwkThumbprint, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidToken, TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import { createMinter } from '../../../src/jwt/mint-jwt.ts';
import { generateSigningKeysFile, loadSigningKeys, type SigningKeys } from '../../../src/jwt/signing-keys.ts';
import { createJwtVerifier } from '../../../src/jwt/verify-jwt.ts';

const ISSUER = 'https://gateway.example.com';
const NOW = 1_800_000_000;

let dir: string;
let keysFile: string;
let keys: SigningKeys;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-mint-unit-'));
  keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  keys = await loadSigningKeys(keysFile);
});

/** The first key of the file, as the key ring hands it to the minter. */
const signer = () => ({ key: keys.signingKey, kid: keys.kid, alg: keys.alg });

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function minter(now = NOW, lifetimeSeconds = 300) {
  return createMinter({ issuer: ISSUER, lifetimeSeconds, signer, now: () => now });
}

function write(name: string, content: unknown): string {
  const file = join(dir, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('generateSigningKeysFile / loadSigningKeys', () => {
  it('writes a private ES256 JWKS readable only by its owner', () => {
    expect(statSync(keysFile).mode & 0o777).toBe(0o600);
    const doc = JSON.parse(readFileSync(keysFile, 'utf8'));
    expect(doc.keys).toHaveLength(1);
    expect(doc.keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    expect(typeof doc.keys[0].d).toBe('string');
    expect(typeof doc.keys[0].kid).toBe('string');
  });

  it('publishes only public members plus kid, alg and use', () => {
    expect(keys.alg).toBe('ES256');
    expect(keys.publicJwks.keys).toHaveLength(1);
    const pub = keys.publicJwks.keys[0]!;
    expect(Object.keys(pub).sort()).toEqual(['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
    expect(pub).toMatchObject({ kid: keys.kid, alg: 'ES256', use: 'sig' });
  });

  it('signs with the first key and publishes all keys (rotation: publish before signing)', async () => {
    const a = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    const b = { ...(await exportJWK(privateKey)), kid: 'next', alg: 'RS256' };
    const both = await loadSigningKeys(write('two.json', { keys: [b, a] }));
    expect(both.kid).toBe('next');
    expect(both.alg).toBe('RS256');
    expect(both.publicJwks.keys.map((k) => k.kid)).toEqual(['next', a.kid]);
    expect(both.publicJwks.keys[0]).not.toHaveProperty('d');
    expect(both.publicJwks.keys[0]).not.toHaveProperty('p');
  });

  it('lists every key in file order with its RFC 7638 thumbprint (the key ring input)', async () => {
    const a = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const b = { ...(await exportJWK(privateKey)), kid: 'next', alg: 'ES256' };
    const both = await loadSigningKeys(write('two-es.json', { keys: [a, b] }));
    expect(both.keys.map((k) => k.kid)).toEqual([a.kid, 'next']);
    expect(both.keys[1]!.thumbprint).toBe(await calculateJwkThumbprint(b));
    expect(both.keys[1]!.publicJwk).toEqual(both.publicJwks.keys[1]);
    expect(both.keys[0]!.privateKey.type).toBe('private');
  });

  it('defaults alg to ES256 for an EC P-256 key without alg', async () => {
    const { alg: _alg, ...noAlg } = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const k = await loadSigningKeys(write('noalg.json', { keys: [noAlg] }));
    expect(k.alg).toBe('ES256');
  });

  it('rejects a file holding only a public key, naming the file and the key index', async () => {
    const file = write('public.json', { keys: keys.publicJwks.keys });
    await expect(loadSigningKeys(file)).rejects.toThrow(`${file}: keys[0]: not a private key`);
  });

  it('rejects a key without kid, naming its index', async () => {
    const { kid: _kid, ...noKid } = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const good = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const file = write('nokid.json', { keys: [good, noKid] });
    await expect(loadSigningKeys(file)).rejects.toThrow(`${file}: keys[1]: "kid" is required`);
  });

  it('rejects a file that is not JSON without quoting its content', async () => {
    const secretish = '{"keys":[{"kty":"EC","d":"SUPER-SECRET-PRIVATE-MATERIAL"';
    const file = write('broken.json', secretish);
    const err = (await loadSigningKeys(file).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toContain(file);
    expect(err.message).toContain('not valid JSON');
    expect(err.message).not.toContain('SUPER-SECRET');
  });

  it('rejects symmetric keys, missing alg on RSA, mismatched alg, empty sets and missing files', async () => {
    await expect(
      loadSigningKeys(write('oct.json', { keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'x', alg: 'HS256' }] })),
    ).rejects.toThrow(/keys\[0\]: symmetric keys/);
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    const rsa = { ...(await exportJWK(privateKey)), kid: 'r' };
    await expect(loadSigningKeys(write('rsa-noalg.json', { keys: [rsa] }))).rejects.toThrow(
      /keys\[0\]: "alg" is required/,
    );
    await expect(loadSigningKeys(write('rsa-es.json', { keys: [{ ...rsa, alg: 'ES256' }] }))).rejects.toThrow(
      /keys\[0\]: "alg" ES256 does not fit/,
    );
    await expect(loadSigningKeys(write('rsa-hs.json', { keys: [{ ...rsa, alg: 'HS256' }] }))).rejects.toThrow(
      /not an allowed signing algorithm/,
    );
    await expect(loadSigningKeys(write('empty.json', { keys: [] }))).rejects.toThrow(/at least one key/);
    await expect(loadSigningKeys(write('nokeys.json', { foo: 1 }))).rejects.toThrow(/not a JWK Set/);
    await expect(loadSigningKeys(join(dir, 'missing.json'))).rejects.toThrow(
      /cannot read the file \(ENOENT\)/,
    );
  });

  it('rejects a key whose public members do not match its private part', async () => {
    const good = JSON.parse(readFileSync(keysFile, 'utf8')).keys[0];
    const other = (await generateKeyPair('ES256', { extractable: true })).publicKey;
    const { x, y } = await exportJWK(other);
    await expect(loadSigningKeys(write('mismatch.json', { keys: [{ ...good, x, y }] }))).rejects.toThrow(
      /keys\[0\]: not a usable ES256 key pair/,
    );
  });
});

describe('createMinter', () => {
  const source = {
    active: true,
    sub: 'alice',
    client_id: 'web-app',
    scope: 'invoice_read invoice_write',
    exp: NOW + 3600,
    iat: NOW - 10,
    auth_time: NOW - 100,
    acr: 'urn:acr:mfa',
    amr: ['pwd', 'otp'],
    iss: 'https://login.example.com',
    token_type: 'Bearer',
    custom: 'not copied',
  };

  it('asks for the signer on every mint (the key ring may have switched keys)', async () => {
    const other = await loadSigningKeys(
      write('other.json', {
        keys: [
          {
            ...(await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey)),
            kid: 'other',
            alg: 'ES256',
          },
        ],
      }),
    );
    let current = signer();
    const m = createMinter({ issuer: ISSUER, lifetimeSeconds: 300, signer: () => current, now: () => NOW });
    expect(decodeProtectedHeader((await m.mint(source, 'aud')).jwt).kid).toBe(keys.kid);
    current = { key: other.signingKey, kid: 'other', alg: 'ES256' };
    expect(decodeProtectedHeader((await m.mint(source, 'aud')).jwt).kid).toBe('other');
  });

  it('mints an RFC 9068 JWT: header alg/kid/typ and the required claims', async () => {
    const v = await minter().mint(source, 'https://invoices.internal');
    expect(decodeProtectedHeader(v.jwt)).toEqual({ alg: 'ES256', kid: keys.kid, typ: 'at+jwt' });
    const claims = decodeJwt(v.jwt);
    expect(claims).toMatchObject({
      iss: ISSUER,
      sub: 'alice',
      aud: 'https://invoices.internal',
      client_id: 'web-app',
      scope: 'invoice_read invoice_write',
      iat: NOW,
      exp: NOW + 300,
      auth_time: NOW - 100,
      acr: 'urn:acr:mfa',
      amr: ['pwd', 'otp'],
    });
    expect(claims.jti).toMatch(/^[0-9a-f-]{36}$/);
    expect(claims).not.toHaveProperty('custom');
    expect(claims).not.toHaveProperty('token_type');
    expect(v.exp).toBe(NOW + 300);
    expect(v.claims).toEqual(claims);
  });

  it('uses a fresh jti for every minted token', async () => {
    const m = minter();
    const a = decodeJwt((await m.mint(source, 'aud')).jwt).jti;
    const b = decodeJwt((await m.mint(source, 'aud')).jwt).jti;
    expect(a).not.toBe(b);
  });

  it('falls back to client_id for sub when sub is missing or empty', async () => {
    const { sub: _sub, ...noSub } = source;
    expect(decodeJwt((await minter().mint(noSub, 'aud')).jwt).sub).toBe('web-app');
    expect(decodeJwt((await minter().mint({ ...source, sub: '' }, 'aud')).jwt).sub).toBe('web-app');
  });

  it('caps exp at the source token exp', async () => {
    const v = await minter().mint({ ...source, exp: NOW + 42 }, 'aud');
    expect(v.exp).toBe(NOW + 42);
    expect(decodeJwt(v.jwt).exp).toBe(NOW + 42);
  });

  it('refuses to mint for a source token that has already expired', async () => {
    const err = await minter()
      .mint({ ...source, exp: NOW }, 'aud')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidToken);
    expect((err as InvalidToken).reason).toBe('token_inactive');
  });

  it('refuses (502) to mint without any subject', async () => {
    const err = await minter()
      .mint({ active: true, exp: NOW + 60 }, 'aud')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenServiceUnavailable);
    expect((err as TokenServiceUnavailable).status).toBe(502);
  });

  it('keeps a cnf confirmation (sender-constrained tokens stay bound)', async () => {
    const cnf = { 'x5t#S256': 'bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2' };
    expect(decodeJwt((await minter().mint({ ...source, cnf }, 'aud')).jwt).cnf).toEqual(cnf);
  });

  it('mints a JWT that verifies against the published public JWKS', async () => {
    const m = createMinter({ issuer: ISSUER, lifetimeSeconds: 120, signer });
    const minted = await m.mint(
      { ...source, exp: Math.floor(Date.now() / 1000) + 3600 },
      'https://invoices.internal',
    );
    const verifier = createJwtVerifier({
      algorithms: [keys.alg],
      issuer: ISSUER,
      audience: 'https://invoices.internal',
      typ: 'at+jwt',
      clockSkewSeconds: 0,
      keys: { kind: 'local', jwks: keys.publicJwks },
    });
    const v = await verifier.verify(minted.jwt);
    expect(v.claims.sub).toBe('alice');
    expect(v.exp).toBe(minted.exp);
  });
});
