import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createReplayGuard,
  createSetVerifier,
  localSetKeys,
  remoteSetKeys,
  SetError,
  type SetKeySource,
  SetKeysUnavailable,
  type SetVerifierOptions,
} from '../../../src/ssf/verify-set.ts';
import { freePort } from '../../helpers/free-port.ts';

const TRANSMITTER = 'https://idp.example.com/ssf';
const TOKEN_SERVICE = 'https://login.example.com/oauth';
const AUDIENCE = 'https://gateway.example.com/ssf';
const NOW = 1_800_000_000;
const CAEP = 'https://schemas.openid.net/secevent/caep/event-type/';
const RISC = 'https://schemas.openid.net/secevent/risc/event-type/';
const SESSION_REVOKED = `${CAEP}session-revoked`;

interface Key {
  alg: string;
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}
async function makeKey(alg: string, kid: string): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { alg, kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

let es: Key;
let rs: Key;
let ps: Key;
let ed: Key;
/** An attacker key announcing the transmitter's kid. */
let forged: Key;
let jwks: { keys: JWK[] };

beforeAll(async () => {
  [es, rs, ps, ed] = await Promise.all([
    makeKey('ES256', 'es-1'),
    makeKey('RS256', 'rs-1'),
    makeKey('PS256', 'ps-1'),
    makeKey('EdDSA', 'ed-1'),
  ]);
  forged = { ...(await makeKey('ES256', 'x')), kid: 'es-1' };
  jwks = { keys: [es.publicJwk, rs.publicJwk, ps.publicJwk, ed.publicJwk] };
});

function baseClaims(): Record<string, unknown> {
  return {
    iss: TRANSMITTER,
    aud: AUDIENCE,
    iat: NOW - 5,
    jti: `jti-${Math.random().toString(36).slice(2)}`,
    sub_id: { format: 'iss_sub', iss: TOKEN_SERVICE, sub: 'alice' },
    events: { [SESSION_REVOKED]: { event_timestamp: NOW - 6 } },
  };
}

/** Signs a SET; claims set to undefined are removed; header members override the defaults. */
async function sign(
  overrides: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  key: Key = es,
): Promise<string> {
  const claims: Record<string, unknown> = { ...baseClaims(), ...overrides };
  for (const k of Object.keys(claims)) if (claims[k] === undefined) delete claims[k];
  const h: Record<string, unknown> = { alg: key.alg, kid: key.kid, typ: 'secevent+jwt', ...header };
  for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
  return new SignJWT(claims).setProtectedHeader(h as { alg: string }).sign(key.privateKey);
}

function verifier(opts: Partial<SetVerifierOptions> = {}) {
  return createSetVerifier({
    issuer: TRANSMITTER,
    audience: AUDIENCE,
    algorithms: ['ES256', 'RS256', 'PS256', 'EdDSA'],
    maxAgeSeconds: 300,
    clockSkewSeconds: 30,
    subjectIssuers: [TOKEN_SERVICE],
    keys: localSetKeys(jwks),
    now: () => NOW,
    ...opts,
  });
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; status: number }> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SetError);
    const e = err as SetError;
    expect(e.description).toEqual(expect.any(String));
    return { code: e.code, status: e.status };
  }
  throw new Error('the SET was accepted');
}
const code = async (p: Promise<unknown>) => (await refusal(p)).code;

describe('a valid SET', () => {
  it('yields the jti, the subject and the events', async () => {
    const set = await sign({ jti: 'abc-1' });
    await expect(verifier().verify(set)).resolves.toEqual({
      jti: 'abc-1',
      iat: NOW - 5,
      sub: 'alice',
      events: [SESSION_REVOKED],
    });
  });

  it.each([
    `${CAEP}session-revoked`,
    `${CAEP}credential-change`,
    `${RISC}account-disabled`,
    `${RISC}account-purged`,
  ])('accepts the supported event type %s', async (type) => {
    const set = await sign({ events: { [type]: {} } });
    expect((await verifier().verify(set)).events).toEqual([type]);
  });

  it.each([
    ['ES256', () => es],
    ['RS256', () => rs],
    ['PS256', () => ps],
    ['EdDSA', () => ed],
  ] as const)('verifies a %s signature', async (_alg, key) => {
    expect((await verifier().verify(await sign({}, {}, key()))).sub).toBe('alice');
  });

  it('accepts typ application/secevent+jwt in any case', async () => {
    expect((await verifier().verify(await sign({}, { typ: 'application/secevent+JWT' }))).sub).toBe('alice');
  });

  it('accepts an aud array naming one of our audiences, and several configured audiences', async () => {
    expect((await verifier().verify(await sign({ aud: ['https://other', AUDIENCE] }))).sub).toBe('alice');
    const v = verifier({ audience: ['https://first', 'https://second'] });
    expect((await v.verify(await sign({ aud: 'https://second' }))).sub).toBe('alice');
  });

  it('does not require exp (RFC 8417 §2.2) but honours one that is present', async () => {
    expect((await verifier().verify(await sign({ exp: undefined }))).sub).toBe('alice');
    expect((await verifier().verify(await sign({ exp: NOW + 60 }))).sub).toBe('alice');
    expect(await code(verifier().verify(await sign({ exp: NOW - 31 })))).toBe('invalid_request');
    expect(await code(verifier().verify(await sign({ exp: 'soon' })))).toBe('invalid_request');
  });
});

describe('format and header', () => {
  it.each([
    ['empty', ''],
    ['not a JWT', 'hello world'],
    ['two parts', 'eyJhbGciOiJFUzI1NiJ9.e30'],
    ['unsecured (alg none, empty signature)', 'eyJhbGciOiJub25lIiwidHlwIjoic2VjZXZlbnQrand0In0.e30.'],
    ['JSON', '{"events":{}}'],
    ['garbage header', 'bm90IGpzb24.e30.c2ln'],
  ])('refuses %s as invalid_request', async (_name, body) => {
    expect(await code(verifier().verify(body))).toBe('invalid_request');
  });

  it.each([
    ['JWT', 'JWT'],
    ['at+jwt', 'at+jwt'],
    ['absent', undefined],
  ])('refuses typ %s as invalid_request (RFC 8417 §2.3)', async (_name, typ) => {
    expect(await code(verifier().verify(await sign({}, { typ })))).toBe('invalid_request');
  });

  it('refuses a JWE-style header', async () => {
    expect(await code(verifier().verify(await sign({}, { enc: 'A256GCM' })))).toBe('invalid_request');
  });

  it('refuses an HS256 SET (never allowed) and an algorithm outside the allow-list as invalid_key', async () => {
    const hs = await new SignJWT(baseClaims())
      .setProtectedHeader({ alg: 'HS256', typ: 'secevent+jwt' })
      .sign(new TextEncoder().encode('s'.repeat(32)));
    expect(await code(verifier({ algorithms: ['ES256', 'HS256'] }).verify(hs))).toBe('invalid_key');
    expect(await code(verifier({ algorithms: ['ES256'] }).verify(await sign({}, {}, rs)))).toBe(
      'invalid_key',
    );
  });

  it('cannot be configured with only none/HS* algorithms', () => {
    expect(() => verifier({ algorithms: ['none', 'HS256'] })).toThrow(/no usable JWS algorithm/);
  });
});

describe('signature', () => {
  it('refuses a SET signed by another key under the transmitter kid as invalid_key', async () => {
    expect(await code(verifier().verify(await sign({}, {}, forged)))).toBe('invalid_key');
  });

  it('refuses an unknown kid as invalid_key', async () => {
    expect(await code(verifier().verify(await sign({}, { kid: 'nope' })))).toBe('invalid_key');
  });

  it('refuses a SET whose payload was altered after signing', async () => {
    const [h, , s] = (await sign()).split('.');
    const p = Buffer.from(
      JSON.stringify({ ...baseClaims(), sub_id: { format: 'opaque', id: 'bob' } }),
    ).toString('base64url');
    expect(await code(verifier().verify(`${h}.${p}.${s}`))).toBe('invalid_key');
  });

  it('never asks the key source for a SET of another issuer', async () => {
    let asked = 0;
    const keys: SetKeySource = async (header, token) => {
      asked++;
      return localSetKeys(jwks)(header, token);
    };
    expect(await code(verifier({ keys }).verify(await sign({ iss: 'https://evil' })))).toBe('invalid_issuer');
    expect(asked).toBe(0);
  });
});

describe('claims', () => {
  it('refuses another or a missing issuer as invalid_issuer (exact match)', async () => {
    expect(await code(verifier().verify(await sign({ iss: `${TRANSMITTER}/` })))).toBe('invalid_issuer');
    expect(await code(verifier().verify(await sign({ iss: undefined })))).toBe('invalid_issuer');
  });

  it('refuses another or a missing audience as invalid_audience', async () => {
    expect(await code(verifier().verify(await sign({ aud: 'https://other' })))).toBe('invalid_audience');
    expect(await code(verifier().verify(await sign({ aud: ['https://a', 'https://b'] })))).toBe(
      'invalid_audience',
    );
    expect(await code(verifier().verify(await sign({ aud: undefined })))).toBe('invalid_audience');
  });

  it('requires a numeric iat', async () => {
    expect(await code(verifier().verify(await sign({ iat: undefined })))).toBe('invalid_request');
    expect(await code(verifier().verify(await sign({ iat: String(NOW) })))).toBe('invalid_request');
  });

  it('refuses a SET older than maxAgeSeconds (plus the clock skew)', async () => {
    expect((await verifier().verify(await sign({ iat: NOW - 330 }))).sub).toBe('alice');
    expect(await code(verifier().verify(await sign({ iat: NOW - 331 })))).toBe('invalid_request');
    expect(await code(verifier({ maxAgeSeconds: 10 }).verify(await sign({ iat: NOW - 41 })))).toBe(
      'invalid_request',
    );
  });

  it('refuses a SET issued in the future beyond the clock skew', async () => {
    expect((await verifier().verify(await sign({ iat: NOW + 30 }))).sub).toBe('alice');
    expect(await code(verifier().verify(await sign({ iat: NOW + 31 })))).toBe('invalid_request');
  });

  it('requires a jti', async () => {
    expect(await code(verifier().verify(await sign({ jti: undefined })))).toBe('invalid_request');
    expect(await code(verifier().verify(await sign({ jti: '' })))).toBe('invalid_request');
    expect(await code(verifier().verify(await sign({ jti: 42 })))).toBe('invalid_request');
  });
});

describe('events', () => {
  it.each([
    ['missing', undefined],
    ['empty', {}],
    ['an array', [SESSION_REVOKED]],
    ['a string', SESSION_REVOKED],
  ])('refuses events %s as invalid_request', async (_name, events) => {
    expect(await code(verifier().verify(await sign({ events })))).toBe('invalid_request');
  });

  it('refuses an unknown event type, alone or next to a supported one', async () => {
    const unknown = `${CAEP}token-claims-change`;
    expect(await code(verifier().verify(await sign({ events: { [unknown]: {} } })))).toBe('invalid_request');
    expect(
      await code(verifier().verify(await sign({ events: { [SESSION_REVOKED]: {}, [unknown]: {} } }))),
    ).toBe('invalid_request');
    expect(
      await code(verifier().verify(await sign({ events: { 'urn:example:event:verification': {} } }))),
    ).toBe('invalid_request');
  });

  it('refuses an event payload that is not an object', async () => {
    expect(await code(verifier().verify(await sign({ events: { [SESSION_REVOKED]: 'yes' } })))).toBe(
      'invalid_request',
    );
  });

  it('accepts several supported events about one subject', async () => {
    const events = { [SESSION_REVOKED]: {}, [`${RISC}account-disabled`]: { reason: 'hijacking' } };
    expect((await verifier().verify(await sign({ events }))).events).toHaveLength(2);
  });
});

describe('subject', () => {
  it('takes an iss_sub sub_id naming the token service or the transmitter', async () => {
    const own = { format: 'iss_sub', iss: TRANSMITTER, sub: 'bob' };
    expect((await verifier().verify(await sign({ sub_id: own }))).sub).toBe('bob');
  });

  it('refuses an iss_sub of an issuer we do not serve as access_denied (403)', async () => {
    const sub_id = { format: 'iss_sub', iss: 'https://elsewhere', sub: 'alice' };
    expect(await refusal(verifier().verify(await sign({ sub_id })))).toEqual({
      code: 'access_denied',
      status: 403,
    });
  });

  it('takes an opaque sub_id', async () => {
    expect((await verifier().verify(await sign({ sub_id: { format: 'opaque', id: 'c-42' } }))).sub).toBe(
      'c-42',
    );
  });

  it('takes the user of a complex sub_id (CAEP session-revoked)', async () => {
    const sub_id = {
      format: 'complex',
      user: { format: 'iss_sub', iss: TOKEN_SERVICE, sub: 'carol' },
      session: { format: 'opaque', id: 'sess-1' },
    };
    expect((await verifier().verify(await sign({ sub_id }))).sub).toBe('carol');
    expect(await code(verifier().verify(await sign({ sub_id: { format: 'complex' } })))).toBe(
      'invalid_request',
    );
  });

  it("takes the event's subject member (CAEP/RISC drafts) when there is no sub_id", async () => {
    const set = await sign({
      sub_id: undefined,
      events: {
        [`${RISC}account-purged`]: { subject: { subject_type: 'iss_sub', iss: TOKEN_SERVICE, sub: 'dave' } },
      },
    });
    expect((await verifier().verify(set)).sub).toBe('dave');
  });

  it('refuses an email subject (not a token sub)', async () => {
    const sub_id = { format: 'email', email: 'alice@example.com' };
    expect(await code(verifier().verify(await sign({ sub_id })))).toBe('invalid_request');
  });

  it.each([
    ['no subject at all', undefined],
    ['a string', 'alice'],
    ['no format', { iss: TOKEN_SERVICE, sub: 'alice' }],
    ['iss_sub without sub', { format: 'iss_sub', iss: TOKEN_SERVICE }],
    ['opaque without id', { format: 'opaque' }],
    ['an unknown format', { format: 'phone_number', phone_number: '+1' }],
  ])('refuses %s as invalid_request', async (_name, sub_id) => {
    expect(await code(verifier().verify(await sign({ sub_id })))).toBe('invalid_request');
  });

  it('refuses a SET naming two different subjects', async () => {
    const set = await sign({
      events: { [SESSION_REVOKED]: { subject: { format: 'opaque', id: 'mallory' } } },
    });
    expect(await code(verifier().verify(set))).toBe('invalid_request');
  });
});

describe('remote JWKS', () => {
  let server: Server;
  let base: string;
  let mode: 'ok' | 'error' | 'hang' | 'junk' = 'ok';
  let fetches = 0;

  beforeAll(async () => {
    server = createServer((req, res) => {
      fetches++;
      if (mode === 'hang') return; // never answers (closed in afterAll)
      if (mode === 'error') return void res.writeHead(500).end('oops');
      if (mode === 'junk') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>');
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks));
      void req;
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const remote = (timeoutMs = 2000) =>
    verifier({ keys: remoteSetKeys({ jwksUri: `${base}/jwks`, timeoutMs }) });

  it('verifies with keys fetched from the transmitter JWKS and caches them', async () => {
    mode = 'ok';
    const before = fetches;
    const v = remote();
    expect((await v.verify(await sign())).sub).toBe('alice');
    expect((await v.verify(await sign({}, {}, rs))).sub).toBe('alice');
    expect(fetches - before).toBe(1);
    expect(await code(v.verify(await sign({}, {}, forged)))).toBe('invalid_key');
  });

  it.each(['error', 'junk'] as const)(
    'reports an unusable JWKS answer (%s) as keys unavailable',
    async (m) => {
      mode = m;
      await expect(remote().verify(await sign())).rejects.toBeInstanceOf(SetKeysUnavailable);
    },
  );

  it('reports a JWKS that does not answer in time as keys unavailable', async () => {
    mode = 'hang';
    const started = Date.now();
    await expect(remote(200).verify(await sign())).rejects.toBeInstanceOf(SetKeysUnavailable);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('reports an unreachable JWKS as keys unavailable', async () => {
    const port = await freePort();
    const v = verifier({
      keys: remoteSetKeys({ jwksUri: `http://127.0.0.1:${port}/jwks`, timeoutMs: 1000 }),
    });
    await expect(v.verify(await sign())).rejects.toBeInstanceOf(SetKeysUnavailable);
  });
});

describe('replay guard', () => {
  it('accepts a jti once within its window, again after it', () => {
    let now = NOW;
    const guard = createReplayGuard({ maxAgeSeconds: 300, clockSkewSeconds: 30, now: () => now });
    expect(guard.claim(TRANSMITTER, 'j1', NOW)).toBe(true);
    expect(guard.claim(TRANSMITTER, 'j1', NOW)).toBe(false);
    expect(guard.claim('https://other', 'j1', NOW)).toBe(true);
    now = NOW + 330;
    expect(guard.claim(TRANSMITTER, 'j1', NOW)).toBe(false);
    now = NOW + 331; // the SET would now be refused as too old anyway
    expect(guard.claim(TRANSMITTER, 'j1', NOW + 331)).toBe(true);
  });

  it('forgets a released jti (the purge failed: the transmitter may retry)', () => {
    const guard = createReplayGuard({ maxAgeSeconds: 300, clockSkewSeconds: 30, now: () => NOW });
    expect(guard.claim(TRANSMITTER, 'j2', NOW)).toBe(true);
    guard.release(TRANSMITTER, 'j2');
    expect(guard.claim(TRANSMITTER, 'j2', NOW)).toBe(true);
  });

  it('is bounded: the oldest jtis are forgotten first', () => {
    const guard = createReplayGuard({
      maxAgeSeconds: 300,
      clockSkewSeconds: 30,
      maxEntries: 100,
      now: () => NOW,
    });
    for (let i = 0; i < 1000; i++) expect(guard.claim(TRANSMITTER, `j-${i}`, NOW)).toBe(true);
    expect(guard.claim(TRANSMITTER, 'j-999', NOW)).toBe(false);
    expect(guard.claim(TRANSMITTER, 'j-0', NOW)).toBe(true);
  });
});
