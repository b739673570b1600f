import { inspect } from 'node:util';
import {
  CompactEncrypt,
  type CryptoKey,
  createLocalJWKSet,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JWK,
  type JWTPayload,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
} from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  type GatewayError,
  InvalidToken,
  TokenServiceUnavailable,
} from '../../../src/errors/gateway-errors.ts';
import {
  createJwtVerifier,
  type JwtVerifierOptions,
  MAX_JWT_LENGTH,
  MAX_PROTECTED_HEADER_LENGTH,
} from '../../../src/jwt/verify-jwt.ts';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';

const ISS = 'https://login.example.com/oauth';
const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

let es: { privateKey: CryptoKey; publicJwk: JWK };
let rsa: { privateKey: CryptoKey; publicKey: CryptoKey; publicJwk: JWK };
let es384: { privateKey: CryptoKey; publicJwk: JWK };
let attacker: { privateKey: CryptoKey; publicJwk: JWK };

beforeAll(async () => {
  const e = await generateKeyPair('ES256', { extractable: true });
  es = {
    privateKey: e.privateKey,
    publicJwk: { ...(await exportJWK(e.publicKey)), kid: 'es', alg: 'ES256' },
  };
  const r = await generateKeyPair('RS256', { extractable: true });
  rsa = {
    privateKey: r.privateKey,
    publicKey: r.publicKey,
    publicJwk: { ...(await exportJWK(r.publicKey)), kid: 'rsa', alg: 'RS256' },
  };
  const e3 = await generateKeyPair('ES384', { extractable: true });
  es384 = {
    privateKey: e3.privateKey,
    publicJwk: { ...(await exportJWK(e3.publicKey)), kid: 'es384', alg: 'ES384' },
  };
  const a = await generateKeyPair('ES256', { extractable: true });
  attacker = {
    privateKey: a.privateKey,
    publicJwk: { ...(await exportJWK(a.publicKey)), kid: 'es', alg: 'ES256' },
  };
});

function verifier(overrides: Partial<JwtVerifierOptions> = {}) {
  return createJwtVerifier({
    algorithms: ['ES256', 'RS256'],
    issuer: ISS,
    clockSkewSeconds: 30,
    keys: { kind: 'local', jwks: { keys: [es.publicJwk, rsa.publicJwk, es384.publicJwk] } },
    ...overrides,
  });
}

/** Signs with the ES256 key by default; `undefined` values remove a default claim / header member. */
async function sign(
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  key: CryptoKey = es.privateKey,
): Promise<string> {
  const payload: Record<string, unknown> = {
    iss: ISS,
    sub: 'alice',
    iat: now(),
    exp: now() + 300,
    ...claims,
  };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  const h: Record<string, unknown> = { alg: 'ES256', kid: 'es', typ: 'at+jwt', ...header };
  for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
  return new SignJWT(payload as JWTPayload).setProtectedHeader(h as { alg: string }).sign(key);
}

/** Serializes an error with every nested cause and property, to search it for secrets. */
function serialize(err: unknown): string {
  return (
    inspect(err, { depth: 20, showHidden: true }) + JSON.stringify(err, Object.getOwnPropertyNames(err ?? {}))
  );
}

async function expectRejected(jwt: string, v = verifier()): Promise<InvalidToken> {
  const err = await v.verify(jwt).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(InvalidToken);
  const e = err as InvalidToken;
  expect(e.status).toBe(401);
  expect(e.reason).toBe('jwt_invalid');
  expect(e.message).toBe('The access token is invalid or expired');
  if (jwt.length >= 16) expect(serialize(e)).not.toContain(jwt);
  return e;
}

describe('accepted tokens', () => {
  it('accepts a valid ES256 token and returns its claims and exp', async () => {
    const exp = now() + 120;
    const jwt = await sign({ exp, scope: 'a b' });
    const v = await verifier().verify(jwt);
    expect(v.jwt).toBe(jwt);
    expect(v.exp).toBe(exp);
    expect(v.claims).toMatchObject({ iss: ISS, sub: 'alice', scope: 'a b' });
  });

  it('accepts a valid RS256 token when RS256 is allowed', async () => {
    const jwt = await sign({}, { alg: 'RS256', kid: 'rsa' }, rsa.privateKey);
    await expect(verifier().verify(jwt)).resolves.toMatchObject({ jwt });
  });
});

describe('algorithm rules (RFC 8725 §3.1)', () => {
  it('rejects alg none, with or without a signature part', async () => {
    const unsigned = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ iss: ISS, exp: now() + 300 })}.`;
    await expectRejected(unsigned);
    await expectRejected(`${unsigned}c2ln`);
    // Even when a careless caller puts none into the allow-list.
    await expectRejected(unsigned, verifier({ algorithms: ['ES256', 'none'] }));
  });

  it('rejects HS256 signed with the RSA public key as the HMAC secret (key confusion)', async () => {
    const pem = await exportSPKI(rsa.publicKey);
    for (const secret of [new TextEncoder().encode(pem), new TextEncoder().encode(pem.trim())]) {
      const forged = await new SignJWT({ iss: ISS, sub: 'mallory', exp: now() + 300 })
        .setProtectedHeader({ alg: 'HS256', kid: 'rsa', typ: 'at+jwt' })
        .sign(secret);
      await expectRejected(forged);
      // HS* is dropped from the allow-list whatever the configuration says.
      await expectRejected(forged, verifier({ algorithms: ['RS256', 'HS256'] }));
    }
  });

  it('rejects HS256 keyed with the raw bytes of the EC public key', async () => {
    const raw = Buffer.concat([
      Buffer.from([4]),
      Buffer.from(es.publicJwk.x!, 'base64url'),
      Buffer.from(es.publicJwk.y!, 'base64url'),
    ]);
    const forged = await new SignJWT({ iss: ISS, exp: now() + 300 })
      .setProtectedHeader({ alg: 'HS256', kid: 'es' })
      .sign(raw);
    await expectRejected(forged, verifier({ algorithms: ['ES256', 'HS256'] }));
  });

  it('rejects an algorithm that is not in the allow-list even when the key exists', async () => {
    const jwt = await sign({}, { alg: 'ES384', kid: 'es384' }, es384.privateKey);
    await expectRejected(jwt);
    await expect(verifier({ algorithms: ['ES384'] }).verify(jwt)).resolves.toBeDefined();
  });

  it('refuses to be built with only none / HS* algorithms', () => {
    expect(() => verifier({ algorithms: ['none', 'HS256'] })).toThrow(/no usable JWS algorithm/);
  });
});

describe('claims', () => {
  it('rejects a token from another issuer, and one without iss', async () => {
    await expectRejected(await sign({ iss: 'https://evil.example.com' }));
    await expectRejected(await sign({ iss: `${ISS}/` }));
    await expectRejected(await sign({ iss: undefined }));
  });

  it('rejects a wrong or missing aud when an audience is configured, accepts a matching one', async () => {
    const v = verifier({ audience: ['api-a', 'api-b'] });
    await expectRejected(await sign({ aud: 'api-c' }), v);
    await expectRejected(await sign({}), v);
    await expect(v.verify(await sign({ aud: 'api-b' }))).resolves.toBeDefined();
    await expect(v.verify(await sign({ aud: ['x', 'api-a'] }))).resolves.toBeDefined();
  });

  it('rejects a token without exp', async () => {
    await expectRejected(await sign({ exp: undefined }));
  });

  it('rejects a token expired beyond the clock skew and accepts one expired within it', async () => {
    await expectRejected(await sign({ exp: now() - 31 }));
    await expect(verifier().verify(await sign({ exp: now() - 10 }))).resolves.toBeDefined();
    await expectRejected(await sign({ exp: now() - 5 }), verifier({ clockSkewSeconds: 0 }));
  });

  it('rejects nbf in the future beyond the skew and accepts it within the skew', async () => {
    await expectRejected(await sign({ nbf: now() + 60 }));
    await expect(verifier().verify(await sign({ nbf: now() + 10 }))).resolves.toBeDefined();
  });
});

describe('typ header (RFC 8725 §3.11)', () => {
  it.each([
    'token-introspection+jwt',
    'application/token-introspection+jwt',
    'txntoken+jwt',
    'secevent+jwt',
    'dpop+jwt',
    'logout+jwt',
    'JOSE',
    'at+jwt2',
    'application/',
    '',
  ])('rejects typ %j when no typ is configured', async (typ) => {
    await expectRejected(await sign({}, { typ }));
  });

  it.each(['JWT', 'jwt', 'at+jwt', 'AT+JWT', 'application/at+jwt', 'application/JWT', undefined])(
    'accepts typ %j when no typ is configured',
    async (typ) => {
      await expect(verifier().verify(await sign({}, { typ }))).resolves.toBeDefined();
    },
  );

  it('enforces a configured typ (case-insensitive, application/ prefix allowed)', async () => {
    const v = verifier({ typ: 'at+jwt' });
    await expect(v.verify(await sign({}, { typ: 'application/AT+JWT' }))).resolves.toBeDefined();
    await expectRejected(await sign({}, { typ: 'JWT' }), v);
    await expectRejected(await sign({}, { typ: undefined }), v);
    const custom = verifier({ typ: 'application/custom+jwt' });
    await expect(custom.verify(await sign({}, { typ: 'custom+jwt' }))).resolves.toBeDefined();
    await expectRejected(await sign({}, { typ: 'at+jwt' }), custom);
  });
});

describe('keys', () => {
  it('rejects a token whose kid is not in the key set', async () => {
    await expectRejected(await sign({}, { kid: 'unknown' }));
  });

  it('rejects a token signed by another key under a known kid', async () => {
    await expectRejected(await sign({}, { kid: 'es' }, attacker.privateKey));
  });

  it('ignores an embedded jwk header: a token signed by the attacker key it carries is rejected', async () => {
    const { kid: _kid, ...jwk } = attacker.publicJwk;
    await expectRejected(await sign({}, { jwk, kid: undefined }, attacker.privateKey));
    await expectRejected(await sign({}, { jwk }, attacker.privateKey));
  });

  it('rejects JWE compact serialization (5 parts) without trying to decrypt it', async () => {
    const { publicKey } = await generateKeyPair('ECDH-ES', { extractable: true });
    const jwe = await new CompactEncrypt(
      new TextEncoder().encode(JSON.stringify({ iss: ISS, exp: now() + 60 })),
    )
      .setProtectedHeader({ alg: 'ECDH-ES', enc: 'A256GCM', typ: 'at+jwt' })
      .encrypt(publicKey);
    expect(jwe.split('.')).toHaveLength(5);
    await expectRejected(jwe);
  });

  it('rejects a nested JWT (cty: JWT)', async () => {
    await expectRejected(await sign({}, { cty: 'JWT' }));
  });

  it('rejects junk that is not a compact JWS', async () => {
    for (const junk of [
      '',
      'abc',
      'a.b',
      'a.b.c.d',
      `${b64({ alg: 'ES256' })}.${b64({})}.`,
      'not json.x.y',
    ]) {
      await expectRejected(junk);
    }
  });
});

/** Signs header.payload with ES256 by hand: jose refuses to sign some of the headers we test. */
async function rawSign(
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
  key: CryptoKey = es.privateKey,
): Promise<string> {
  const input = `${b64(header)}.${b64(claims)}`;
  const sig = await crypto.subtle.sign(
    { name: 'ECDSA', hash: 'SHA-256' },
    key,
    new TextEncoder().encode(input),
  );
  return `${input}.${Buffer.from(sig).toString('base64url')}`;
}

const validClaims = () => ({ iss: ISS, sub: 'alice', iat: now(), exp: now() + 300 });
const causeOf = (e: InvalidToken) => (e.cause as Error).message;

describe('size limits (before any parsing)', () => {
  it('rejects a JWT longer than 32 KiB and accepts one just under it', async () => {
    expect(MAX_JWT_LENGTH).toBe(32 * 1024);
    const big = await sign({ pad: 'x'.repeat(25 * 1024) });
    expect(big.length).toBeGreaterThan(MAX_JWT_LENGTH);
    const e = await expectRejected(big);
    expect(causeOf(e)).toMatch(/longer than 32768/);
    const fits = await sign({ pad: 'x'.repeat(23 * 1024) });
    expect(fits.length).toBeLessThan(MAX_JWT_LENGTH);
    await expect(verifier().verify(fits)).resolves.toBeDefined();
  });

  it('rejects an encoded protected header longer than 4 KiB, before decoding it', async () => {
    expect(MAX_PROTECTED_HEADER_LENGTH).toBe(4 * 1024);
    const e = await expectRejected(await sign({}, { 'x-pad': 'y'.repeat(3500) }));
    expect(causeOf(e)).toMatch(/protected header longer than 4096/);
    // Not even valid base64url JSON: refused on its size alone.
    const junk = `${'A'.repeat(5000)}.${b64(validClaims())}.c2ln`;
    expect(causeOf(await expectRejected(junk))).toMatch(/protected header longer/);
    await expect(verifier().verify(await sign({}, { 'x-pad': 'y'.repeat(2000) }))).resolves.toBeDefined();
  });

  it('does not fetch a remote JWKS for an oversized token', async () => {
    let asked = 0;
    const v = verifier({
      keys: {
        kind: 'remote',
        timeoutMs: 500,
        jwksUri: async () => {
          asked++;
          return 'http://127.0.0.1:9/jwks';
        },
      },
    });
    await expectRejected(await sign({ pad: 'x'.repeat(40 * 1024) }), v);
    expect(asked).toBe(0);
  });
});

describe('crit header (RFC 7515 §4.1.11)', () => {
  it.each([
    ['an unknown extension', { crit: ['urn:example:ext'], 'urn:example:ext': 1 }],
    ['a registered claim name', { crit: ['exp'], exp: 1 }],
    ['a registered header', { crit: ['alg'] }],
    ['an empty list', { crit: [] }],
    ['not a list', { crit: 'urn:example:ext', 'urn:example:ext': 1 }],
    ['b64 (RFC 7797), even as true', { crit: ['b64'], b64: true }],
    ['b64 false (unencoded payload)', { crit: ['b64'], b64: false }],
  ])('rejects crit with %s', async (_, extra) => {
    const jwt = await rawSign({ alg: 'ES256', kid: 'es', typ: 'at+jwt', ...extra }, validClaims());
    const e = await expectRejected(jwt);
    expect(causeOf(e)).toMatch(/"crit" header is not accepted/);
  });

  it('jose itself also refuses an unrecognised critical extension (defence in depth)', async () => {
    const jwt = await rawSign(
      { alg: 'ES256', kid: 'es', crit: ['urn:example:ext'], 'urn:example:ext': 1 },
      validClaims(),
    );
    await expect(jwtVerify(jwt, createLocalJWKSet({ keys: [es.publicJwk] }))).rejects.toBeInstanceOf(
      joseErrors.JOSENotSupported,
    );
    // The same token without crit is accepted by both: the refusal is about crit alone.
    const plain = await rawSign({ alg: 'ES256', kid: 'es', 'urn:example:ext': 1 }, validClaims());
    await expect(verifier().verify(plain)).resolves.toBeDefined();
  });
});

describe('time claims', () => {
  it('rejects iat in the future beyond the skew, accepts it within the skew', async () => {
    const e = await expectRejected(await sign({ iat: now() + 60 }));
    expect(causeOf(e)).toMatch(/"iat" claim is in the future/);
    await expect(verifier().verify(await sign({ iat: now() + 20 }))).resolves.toBeDefined();
    await expectRejected(await sign({ iat: now() + 5 }), verifier({ clockSkewSeconds: 0 }));
  });

  it.each(['iat', 'nbf', 'exp'])('rejects a non-numeric %s', async (claim) => {
    for (const value of [String(now()), null, [now()], { n: now() }, true]) {
      const e = await expectRejected(
        await rawSign({ alg: 'ES256', kid: 'es' }, { ...validClaims(), [claim]: value }),
      );
      expect(causeOf(e)).toMatch(new RegExp(`"${claim}"`));
    }
  });

  it('gives a cause for the log that names the check but no claim value', async () => {
    const e = await expectRejected(await sign({ iss: 'https://secret-issuer.example', sub: 'secret-sub' }));
    expect(causeOf(e)).toMatch(/"iss"/);
    expect(serialize(e)).not.toContain('secret-issuer');
    expect(serialize(e)).not.toContain('secret-sub');
  });
});

describe('local keys', () => {
  it('re-reads a key set given as a function, rebuilding it only when the object changes', async () => {
    let current: { keys: JWK[] } = { keys: [es.publicJwk] };
    let reads = 0;
    const v = verifier({
      keys: {
        kind: 'local',
        jwks: () => {
          reads++;
          return current;
        },
      },
    });
    const esJwt = await sign();
    const rsJwt = await sign({}, { alg: 'RS256', kid: 'rsa' }, rsa.privateKey);
    await expect(v.verify(esJwt)).resolves.toBeDefined();
    await expectRejected(rsJwt, v);
    const before = reads;
    await v.verify(esJwt);
    expect(reads).toBeGreaterThan(before); // read on every verification
    // Same object, mutated in place: not rebuilt (the set is keyed by object identity).
    current.keys.push(rsa.publicJwk);
    await expectRejected(rsJwt, v);
    expect(v.isPublished('rsa')).toBe(false);
    // A new object (a key ring reload): seen at once; the removed key no longer verifies.
    current = { keys: [rsa.publicJwk] };
    await expect(v.verify(rsJwt)).resolves.toBeDefined();
    await expectRejected(esJwt, v);
    expect(v.isPublished('rsa')).toBe(true);
    expect(v.isPublished('es')).toBe(false);
  });

  it('isPublished with a static set; verify returns the kid', async () => {
    const v = verifier();
    expect(v.isPublished('es')).toBe(true);
    expect(v.isPublished('rsa')).toBe(true);
    expect(v.isPublished('gone')).toBe(false);
    expect(v.isPublished(undefined)).toBeUndefined();
    expect((await v.verify(await sign())).kid).toBe('es');
    expect(
      (
        await verifier({
          keys: { kind: 'local', jwks: { keys: [{ ...es.publicJwk, kid: undefined }] } },
        }).verify(await sign({}, { kid: undefined }))
      ).kid,
    ).toBeUndefined();
  });
});

describe('remote key set', () => {
  let stub: CurityStub;
  let jku: CurityStub;

  beforeAll(async () => {
    [stub, jku] = await Promise.all([
      startCurityStub({ clientId: 'gw', clientSecret: 's' }),
      startCurityStub({ clientId: 'gw', clientSecret: 's' }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([stub?.close(), jku?.close()]);
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function remote(uri: () => Promise<string>, timeoutMs = 1000) {
    return createJwtVerifier({
      algorithms: ['ES256'],
      issuer: stub.issuer,
      clockSkewSeconds: 30,
      keys: { kind: 'remote', jwksUri: uri, timeoutMs },
    });
  }

  it('fetches the JWKS once, caches it, and verifies tokens', async () => {
    const v = remote(async () => stub.jwksUri);
    const before = stub.jwksCalls;
    await v.verify(await stub.signJwt({ sub: 'a' }));
    await v.verify(await stub.signJwt({ sub: 'b' }));
    expect(stub.jwksCalls - before).toBe(1);
  });

  it('never follows jku / x5u / jwk headers: an attacker key advertised there is not used', async () => {
    const v = remote(async () => stub.jwksUri);
    const before = jku.jwksCalls;
    const forged = await jku.signJwt(
      { iss: stub.issuer },
      {
        kid: jku.publicJwks().keys[0]!.kid,
        jku: jku.jwksUri,
        x5u: `${jku.origin}/cert.pem`,
        jwk: jku.publicJwks().keys[0],
      },
    );
    await expectRejected(forged, v);
    expect(jku.jwksCalls).toBe(before);
  });

  it('picks up a rotated key at once, then refetches for an unknown kid at most once per 30 s', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const v = remote(async () => stub.jwksUri);
    await v.verify(await stub.signJwt());
    const afterFirst = stub.jwksCalls;
    // A rotation right after the first fetch: the initial fetch does not open the 30 s window.
    await stub.rotateKeys({ keepOld: true });
    await expect(v.verify(await stub.signJwt())).resolves.toBeDefined();
    expect(stub.jwksCalls).toBe(afterFirst + 1);
    // That refetch did: within 30 s a second rotation and random kids fetch nothing.
    await stub.rotateKeys({ keepOld: true });
    const rotated = await stub.signJwt();
    await expectRejected(rotated, v);
    await expectRejected(await stub.signJwt({}, { kid: 'random-kid' }), v);
    expect(stub.jwksCalls).toBe(afterFirst + 1);
    // After the window: one refetch picks up the new key.
    vi.setSystemTime(Date.now() + 31_000);
    await expect(v.verify(await stub.signJwt())).resolves.toBeDefined();
    expect(stub.jwksCalls).toBe(afterFirst + 2);
  });

  it('isPublished: undefined before the first fetch, then whether the fetched set has the kid', async () => {
    const v = remote(async () => stub.jwksUri);
    const kid = stub.publicJwks().keys[0]!.kid!;
    expect(v.isPublished(kid)).toBeUndefined();
    const verified = await v.verify(await stub.signJwt());
    expect(verified.kid).toBe(kid);
    expect(v.isPublished(kid)).toBe(true);
    expect(v.isPublished('not-there')).toBe(false);
    expect(v.isPublished(undefined)).toBeUndefined();
  });

  it('maps an unreachable JWKS (connection refused) to 503, not 401', async () => {
    const port = await freePort();
    const v = remote(async () => `http://127.0.0.1:${port}/jwks`);
    const err = await v.verify(await stub.signJwt()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenServiceUnavailable);
    expect((err as GatewayError).status).toBe(503);
    expect((err as GatewayError).headers['Retry-After']).toBe('5');
  });

  it('maps a JWKS answering 500, 404, or not JSON to 503', async () => {
    const v = remote(async () => stub.jwksUri);
    for (const b of ['status:500', 'status:404'] as const) {
      stub.jwksBehaviour = b;
      const fresh = remote(async () => stub.jwksUri);
      const err = await fresh.verify(await stub.signJwt()).catch((e: unknown) => e);
      expect(err, b).toBeInstanceOf(TokenServiceUnavailable);
      expect((err as GatewayError).status).toBe(503);
    }
    stub.jwksBehaviour = 'ok';
    await expect(v.verify(await stub.signJwt())).resolves.toBeDefined();
    const notJson = remote(async () => `${stub.origin}/.well-known/does-not-exist`);
    await expect(notJson.verify(await stub.signJwt())).rejects.toBeInstanceOf(TokenServiceUnavailable);
  });

  it('maps a JWKS that does not answer within timeoutMs to 503', async () => {
    stub.jwksBehaviour = 'hang';
    try {
      const v = remote(async () => stub.jwksUri, 300);
      const started = performance.now();
      const err = await v.verify(await stub.signJwt()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenServiceUnavailable);
      expect((err as GatewayError).status).toBe(503);
      expect(performance.now() - started).toBeLessThan(3000);
    } finally {
      stub.jwksBehaviour = 'ok';
    }
  });

  it('passes through TokenServiceUnavailable from the JWKS URI provider (metadata unknown)', async () => {
    const v = remote(async () => {
      throw new TokenServiceUnavailable('unreachable', new Error('discovery failed'));
    });
    const err = await v.verify(await stub.signJwt()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenServiceUnavailable);
    expect((err as GatewayError).status).toBe(503);
  });

  it('maps a JWKS URI provider failure (no jwks_uri in metadata) to 502', async () => {
    const v = remote(async () => {
      throw new Error('the token service metadata has no jwks_uri');
    });
    const err = await v.verify(await stub.signJwt()).catch((e: unknown) => e);
    expect((err as GatewayError).status).toBe(502);
  });

  it('does not fetch the JWKS for structurally invalid tokens', async () => {
    const port = await freePort();
    const v = remote(async () => `http://127.0.0.1:${port}/jwks`);
    await expectRejected(await stub.signJwt({}, { typ: 'dpop+jwt' }), v);
    await expectRejected(await stub.signJwt({}, { alg: 'ES256', typ: 'txntoken+jwt' }), v);
  });
});
