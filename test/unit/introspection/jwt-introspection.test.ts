import { inspect } from 'node:util';
import {
  CompactEncrypt,
  CompactSign,
  type CryptoKey,
  createLocalJWKSet,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JWK,
  type JWTVerifyGetKey,
} from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import {
  createJwtIntrospectionVerifier,
  IntrospectionJwtRefused,
  type JwtIntrospectionOptions,
} from '../../../src/introspection/jwt-introspection.ts';
import { JwksUnavailable } from '../../../src/jwt/remote-jwks.ts';

/** The RFC 9701 answer verifier on its own: a local key set, a fixed clock. */
const ISS = 'https://login.example.com';
const CLIENT = 'phantom-gateway';
const CT = 'application/token-introspection+jwt';
/** Fixed "now" (epoch seconds): skew 10 s, timeout 2500 ms → an answer may be up to 13 s old. */
const NOW = 1_900_000_000;
const SKEW = 10;
const MAX_AGE = SKEW + 3;
/** A claim value that must never reach an error or its cause. */
const SECRET_SUB = 'subject-that-must-not-leak';

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

let es: { privateKey: CryptoKey; publicKey: CryptoKey; publicJwk: JWK };
let rsa: { privateKey: CryptoKey; publicJwk: JWK };
let rogue: { privateKey: CryptoKey };

beforeAll(async () => {
  const e = await generateKeyPair('ES256', { extractable: true });
  es = {
    privateKey: e.privateKey,
    publicKey: e.publicKey,
    publicJwk: { ...(await exportJWK(e.publicKey)), kid: 'es', alg: 'ES256' },
  };
  const r = await generateKeyPair('RS256', { extractable: true });
  rsa = {
    privateKey: r.privateKey,
    publicJwk: { ...(await exportJWK(r.publicKey)), kid: 'rsa', alg: 'RS256' },
  };
  rogue = { privateKey: (await generateKeyPair('ES256')).privateKey };
});

function verifier(overrides: Partial<JwtIntrospectionOptions> = {}) {
  return createJwtIntrospectionVerifier({
    issuer: ISS,
    clientId: CLIENT,
    algorithms: ['ES256', 'RS256'],
    clockSkewSeconds: SKEW,
    timeoutMs: 2500,
    getKey: createLocalJWKSet({ keys: [es.publicJwk, rsa.publicJwk] }),
    now: () => new Date(NOW * 1000),
    ...overrides,
  });
}

/** RFC 9701 payload; `undefined` values remove a member. */
function payload(over: Record<string, unknown> = {}, ti: unknown = { active: true, sub: SECRET_SUB }) {
  const p: Record<string, unknown> = { iss: ISS, aud: CLIENT, iat: NOW, token_introspection: ti, ...over };
  for (const k of Object.keys(p)) if (p[k] === undefined) delete p[k];
  return p;
}

async function sign(
  p: Record<string, unknown> = payload(),
  header: Record<string, unknown> = {},
  key: CryptoKey | Uint8Array = es.privateKey,
): Promise<string> {
  const h: Record<string, unknown> = { alg: 'ES256', kid: 'es', typ: 'token-introspection+jwt', ...header };
  for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
  return new CompactSign(Buffer.from(JSON.stringify(p))).setProtectedHeader(h as { alg: string }).sign(key);
}

/** ES256 over any header (jose refuses to sign a `crit` it does not know): WebCrypto's r||s is the JWS form. */
async function rawSign(
  header: Record<string, unknown>,
  p: Record<string, unknown> = payload(),
): Promise<string> {
  const input = `${b64({ alg: 'ES256', kid: 'es', typ: 'token-introspection+jwt', ...header })}.${b64(p)}`;
  const sig = await crypto.subtle.sign(
    { name: 'ECDSA', hash: 'SHA-256' },
    es.privateKey,
    new TextEncoder().encode(input),
  );
  return `${input}.${Buffer.from(sig).toString('base64url')}`;
}

function serialize(err: unknown): string {
  return (
    inspect(err, { depth: 20, showHidden: true }) + JSON.stringify(err, Object.getOwnPropertyNames(err ?? {}))
  );
}

/** Expects a 502 bad_answer whose cause matches `cause`; no JWT or claim value in the error. */
async function expectRefused(
  body: string,
  cause: RegExp,
  opts: { contentType?: string | null; v?: ReturnType<typeof verifier> } = {},
) {
  const err = await (opts.v ?? verifier())
    .verify({ contentType: opts.contentType === undefined ? CT : opts.contentType, body })
    .then(
      (r) => new Error(`expected a refusal, got ${JSON.stringify(r)}`),
      (e: unknown) => e,
    );
  expect(err).toBeInstanceOf(TokenServiceUnavailable);
  const e = err as TokenServiceUnavailable;
  expect(e.status).toBe(502);
  expect(e.error).toBe('token_service_unavailable');
  expect(e.cause).toBeInstanceOf(IntrospectionJwtRefused);
  const c = e.cause as Error;
  const full = `${c.message} ${c.cause instanceof Error ? c.cause.message : ''}`;
  expect(full).toMatch(cause);
  const text = serialize(e);
  expect(text).not.toContain(SECRET_SUB);
  if (body.length > 20) expect(text).not.toContain(body);
  return e;
}

describe('accepted answers', () => {
  it('active: the members of token_introspection are the RFC 7662 claims', async () => {
    const ti = { active: true, sub: 'alice', client_id: 'app', scope: 'a b', exp: NOW + 300 };
    const r = await verifier().verify({ contentType: CT, body: await sign(payload({}, ti)) });
    expect(r).toEqual({ active: true, claims: ti });
  });

  it('inactive: token_introspection.active false', async () => {
    const r = await verifier().verify({ contentType: CT, body: await sign(payload({}, { active: false })) });
    expect(r).toEqual({ active: false });
  });

  it('takes bytes or text, content type parameters and case, typ case and application/ prefix, aud arrays', async () => {
    const jwt = await sign(payload({ aud: ['other', CLIENT] }), {
      typ: 'application/Token-Introspection+JWT',
    });
    for (const contentType of [CT, `${CT}; charset=utf-8`, 'Application/Token-Introspection+JWT ; q=1']) {
      const r = await verifier().verify({ contentType, body: Buffer.from(`${jwt}\n`) });
      expect(r.active).toBe(true);
    }
  });

  it('RS256 when allowed; a future exp is fine (exp is optional in RFC 9701)', async () => {
    const jwt = await sign(payload({ exp: NOW + 60 }), { alg: 'RS256', kid: 'rsa' }, rsa.privateKey);
    expect((await verifier().verify({ contentType: CT, body: jwt })).active).toBe(true);
  });

  it('iat boundaries: skew + ceil(timeoutMs/1000) old and skew ahead are accepted', async () => {
    for (const iat of [NOW - MAX_AGE, NOW + SKEW]) {
      expect((await verifier().verify({ contentType: CT, body: await sign(payload({ iat })) })).active).toBe(
        true,
      );
    }
  });
});

describe('refused answers: 502, never a verdict', () => {
  const cases: Array<[string, () => Promise<{ body: string; contentType?: string | null }>, RegExp]> = [
    [
      'JSON content type',
      async () => ({ body: '{"active":true}', contentType: 'application/json' }),
      /content type "application\/json"/,
    ],
    ['no content type', async () => ({ body: await sign(), contentType: null }), /content type "absent"/],
    [
      'application/jwt content type',
      async () => ({ body: await sign(), contentType: 'application/jwt' }),
      /content type/,
    ],
    ['not a JWT', async () => ({ body: '<html>login</html>' }), /not a signed JWT/],
    [
      'alg none (empty signature)',
      async () => ({ body: `${b64({ alg: 'none', typ: 'token-introspection+jwt' })}.${b64(payload())}.` }),
      /not a signed JWT/,
    ],
    [
      'alg none with a signature part',
      async () => ({
        body: `${b64({ alg: 'none', typ: 'token-introspection+jwt' })}.${b64(payload())}.c2ln`,
      }),
      /algorithm "none" is not allowed/,
    ],
    [
      'HS256 with the public key as secret',
      async () => ({
        body: await sign(
          payload(),
          { alg: 'HS256' },
          new TextEncoder().encode(await exportSPKI(es.publicKey)),
        ),
      }),
      /algorithm "HS256" is not allowed/,
    ],
    [
      'ES384 outside the allow-list',
      async () => ({
        body: `${b64({ alg: 'ES384', kid: 'es', typ: 'token-introspection+jwt' })}.${b64(payload())}.c2ln`,
      }),
      /"ES384" is not allowed/,
    ],
    [
      'wrong signature key, known kid',
      async () => ({ body: await sign(payload(), {}, rogue.privateKey) }),
      /ERR_JWS_SIGNATURE_VERIFICATION_FAILED/,
    ],
    [
      'unknown kid',
      async () => ({ body: await sign(payload(), { kid: 'nope' }) }),
      /ERR_JWKS_NO_MATCHING_KEY/,
    ],
    [
      'embedded jwk of another key (never used)',
      async () => ({ body: await sign(payload(), { kid: 'nope', jwk: es.publicJwk }, rogue.privateKey) }),
      /ERR_JWKS_NO_MATCHING_KEY/,
    ],
    [
      'typ at+jwt',
      async () => ({ body: await sign(payload(), { typ: 'at+jwt' }) }),
      /"typ" header "at\+jwt"/,
    ],
    [
      'typ absent',
      async () => ({ body: await sign(payload(), { typ: undefined }) }),
      /"typ" header undefined/,
    ],
    ['typ JWT', async () => ({ body: await sign(payload(), { typ: 'JWT' }) }), /"typ" header "JWT"/],
    ['nested (cty JWT)', async () => ({ body: await sign(payload(), { cty: 'JWT' }) }), /nested JWTs/],
    [
      'enc member in a JWS header',
      async () => ({ body: await sign(payload(), { enc: 'A256GCM' }) }),
      /JWE header members/,
    ],
    [
      'unknown crit extension',
      async () => ({ body: await rawSign({ crit: ['x-ext'], 'x-ext': 1 }) }),
      /ERR_JOSE_NOT_SUPPORTED: Extension Header Parameter "x-ext"/,
    ],
    [
      'wrong iss',
      async () => ({ body: await sign(payload({ iss: 'https://evil.example' })) }),
      /"iss" claim/,
    ],
    ['iss missing', async () => ({ body: await sign(payload({ iss: undefined })) }), /"iss" claim/],
    [
      'aud without the client id',
      async () => ({ body: await sign(payload({ aud: ['other'] })) }),
      /"aud" claim/,
    ],
    ['aud missing', async () => ({ body: await sign(payload({ aud: undefined })) }), /"aud" claim/],
    ['iat missing', async () => ({ body: await sign(payload({ iat: undefined })) }), /"iat" claim/],
    ['iat not a number', async () => ({ body: await sign(payload({ iat: String(NOW) })) }), /"iat" claim/],
    [
      'iat one second too old',
      async () => ({ body: await sign(payload({ iat: NOW - MAX_AGE - 1 })) }),
      /too far in the past/,
    ],
    [
      'iat in the future beyond the skew',
      async () => ({ body: await sign(payload({ iat: NOW + SKEW + 1 })) }),
      /should be in the past/,
    ],
    ['expired', async () => ({ body: await sign(payload({ exp: NOW - SKEW - 1 })) }), /"exp" claim/],
    [
      'nbf in the future',
      async () => ({ body: await sign(payload({ nbf: NOW + SKEW + 5 })) }),
      /"nbf" claim/,
    ],
    [
      'token_introspection missing (RFC 7662 members at top level)',
      async () => ({
        body: await sign(payload({ token_introspection: undefined, active: true, sub: SECRET_SUB })),
      }),
      /no "token_introspection" object/,
    ],
    [
      'token_introspection an array',
      async () => ({ body: await sign(payload({}, [{ active: true }])) }),
      /no "token_introspection" object/,
    ],
    [
      'token_introspection a string',
      async () => ({ body: await sign(payload({}, 'active')) }),
      /no "token_introspection" object/,
    ],
    [
      'active not boolean',
      async () => ({ body: await sign(payload({}, { active: 'true', sub: SECRET_SUB })) }),
      /no boolean "active"/,
    ],
    [
      'active missing',
      async () => ({ body: await sign(payload({}, { sub: SECRET_SUB })) }),
      /no boolean "active"/,
    ],
    [
      'JWE (five parts)',
      async () => ({
        body: await new CompactEncrypt(Buffer.from(await sign()))
          .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', cty: 'JWT' })
          .encrypt(new Uint8Array(32)),
      }),
      /encrypted JWT \(JWE\)/,
    ],
  ];

  it.each(cases)('%s', async (_name, make, cause) => {
    const { body, contentType } = await make();
    await expectRefused(body, cause, contentType === undefined ? {} : { contentType });
  });

  it('HS* and none in the allow-list are dropped; nothing left is a startup error', async () => {
    const forged = await sign(payload(), { alg: 'HS256' }, new TextEncoder().encode('shared'));
    await expectRefused(forged, /"HS256" is not allowed/, {
      v: verifier({ algorithms: ['ES256', 'HS256', 'none'] }),
    });
    expect(() => verifier({ algorithms: ['HS256', 'none'] })).toThrow(/jwt\.algorithms/);
  });
});

describe('key set failures', () => {
  it('a JWKS that cannot be fetched is 503 (could not ask), with Retry-After', async () => {
    const getKey: JWTVerifyGetKey = async () => {
      throw new JwksUnavailable('JWKS endpoint answered HTTP 503');
    };
    const err = await verifier({ getKey })
      .verify({ contentType: CT, body: await sign() })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenServiceUnavailable);
    expect((err as TokenServiceUnavailable).status).toBe(503);
    expect((err as TokenServiceUnavailable).headers['Retry-After']).toMatch(/^\d+$/);
  });

  it('no key lookup for an answer refused by its header', async () => {
    let lookups = 0;
    const getKey: JWTVerifyGetKey = async () => {
      lookups++;
      throw new JwksUnavailable('should not be asked');
    };
    await expectRefused(await sign(payload(), { typ: 'at+jwt' }), /"typ"/, { v: verifier({ getKey }) });
    await expectRefused(await sign(payload(), { alg: 'HS256' }, new Uint8Array(32)), /HS256/, {
      v: verifier({ getKey }),
    });
    expect(lookups).toBe(0);
  });

  it('a TokenServiceUnavailable from the key source (metadata unknown) passes through', async () => {
    const unknown = new TokenServiceUnavailable('unreachable', new Error('metadata unknown'));
    const getKey: JWTVerifyGetKey = async () => {
      throw unknown;
    };
    await expect(verifier({ getKey }).verify({ contentType: CT, body: await sign() })).rejects.toBe(unknown);
  });
});
