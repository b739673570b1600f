import {
  createHmac,
  createPublicKey,
  type JsonWebKey,
  type KeyObject,
  randomBytes,
  randomUUID,
} from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  CompactEncrypt,
  CompactSign,
  type CryptoKey,
  exportJWK,
  generateKeyPair,
  type JWK,
  type JWTHeaderParameters,
  SignJWT,
} from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CurityStub,
  type StubKey,
  type StubKeyAlg,
  startCurityStub,
} from '../../helpers/curity-stub.ts';
import { accessLine, type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import {
  type AttackerCertificate,
  attackerCertificate,
  b64u,
  flipSignatureByte,
  partsOf,
  psychicSignature,
  signRaw,
  withPayload,
} from '../../helpers/jwt-attacks.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * The JWT attack suite (issue 5; RFC 8725 §2/§3): the real gateway process in front of a
 * Curity-style token service stub whose answer for an opaque token is a real malicious JWT built
 * here. Every attack must end as 401 invalid_token, reason jwt_invalid, the precise cause in the
 * gateway's log (never in the response), nothing forwarded, no token or JWT in any log line.
 * Positive rows prove the same gateway accepts good RS256 / PS256 / ES256 / ES384 / EdDSA tokens
 * when their algorithm is allowed, and refuses them when it is not.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'attack-suite-gateway-secret-0123456789';
const AUD = 'https://api.example.test';
const ENV = { GW_SECRET };
/** The algorithms the positive rows cover; the main gateways allow all of them. */
const ALGS = ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'] as const;
type Alg = (typeof ALGS)[number];
const GENERIC = 'The access token is invalid or expired';
const CHALLENGE = `Bearer realm="api", error="invalid_token", error_description="${GENERIC}"`;
/** Seconds beyond / within the default jwt.clockSkewSeconds (30). */
const BEYOND_SKEW = 120;
const WITHIN_SKEW = 10;

/** A key that signs: one the stub publishes, the attacker's, another issuer's. */
interface SigningKey {
  alg: string;
  kid?: string;
  privateKey: CryptoKey | KeyObject;
}

/** An attacker's web server: serves its JWKS (jku) and certificate (x5u); must never be asked. */
interface EvilServer {
  origin: string;
  hits: number;
  close(): Promise<void>;
}

/** Everything a row needs to build its JWT. */
interface Kit {
  issuer: string;
  /** Keys the stub publishes, by algorithm (ES512 too: published, never allowed). */
  keys: Record<Alg | 'ES512', StubKey>;
  attacker: SigningKey & { kid: string; publicJwk: JWK };
  cert: AttackerCertificate;
  evil: EvilServer;
  /** Another (legitimate) token service: its own key and issuer. */
  other: CurityStub;
}

interface AttackRow {
  name: string;
  /** What the logged cause of the refusal must say. */
  cause: RegExp;
  build(k: Kit): Promise<string> | string;
}

const now = () => Math.floor(Date.now() / 1000);

function clean<T extends Record<string, unknown>>(o: T): T {
  for (const key of Object.keys(o)) if (o[key] === undefined) delete o[key];
  return o;
}

/** A good access token's claims (`undefined` removes one). */
function claims(k: Kit, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const t = now();
  return clean({
    iss: k.issuer,
    sub: 'mallory',
    aud: AUD,
    scope: 'invoice_read',
    iat: t,
    exp: t + 300,
    jti: randomUUID(),
    ...extra,
  });
}

/** A JWT signed with jose (default: the stub's published ES256 key, typ at+jwt). */
function signed(
  k: Kit,
  extra: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  key: SigningKey = k.keys.ES256,
): Promise<string> {
  const h = clean({ alg: key.alg, kid: key.kid, typ: 'at+jwt', ...header });
  return new SignJWT(claims(k, extra))
    .setProtectedHeader(h as JWTHeaderParameters)
    .sign(key.privateKey as CryptoKey);
}

/** HS256 over the usual claims with `secret` as the HMAC key (the RS256/HS256 confusion). */
function hmacJwt(k: Kit, secret: Buffer | string, kid?: string): string {
  const input = `${b64u(clean({ alg: 'HS256', typ: 'at+jwt', kid }))}.${b64u(claims(k))}`;
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

const pemOf = (jwk: JWK) =>
  createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' });

const enc = (s: string) => new TextEncoder().encode(s);

const SIGNATURE = /signature/i;
const NO_KEY = /key/i;
const ALG = /alg/i;
/** An unsecured JWT is refused by its alg, or already as "not a JWS" when its signature is empty. */
const UNSECURED = /alg|unsecured|compact/i;
const CRIT = /crit|extension/i;
const SIZE = /size|large|long|bytes|KiB|limit|exceed/i;
const NOT_COMPACT = /compact|serializ|JWS|JWE|format|parts/i;

/** RFC 8725 §2 / §3 attacks and the seeds' "JWT Security Best Practices", one row each. */
const ATTACKS: AttackRow[] = [
  // --- unsecured JWTs (RFC 8725 §2.1, §3.1) ---
  {
    name: 'alg none, empty signature',
    cause: UNSECURED,
    build: (k) => `${b64u({ alg: 'none', typ: 'at+jwt' })}.${b64u(claims(k))}.`,
  },
  {
    name: 'alg none with a (genuine) signature part',
    cause: ALG,
    build: async (k) => {
      const [, , sig] = partsOf(await signed(k));
      return `${b64u({ alg: 'none', typ: 'at+jwt', kid: k.keys.ES256.kid })}.${b64u(claims(k))}.${sig}`;
    },
  },
  {
    name: 'alg None (case variant)',
    cause: UNSECURED,
    build: (k) => `${b64u({ alg: 'None', typ: 'at+jwt' })}.${b64u(claims(k))}.`,
  },
  {
    name: 'alg NONE with a signature part',
    cause: ALG,
    build: (k) => `${b64u({ alg: 'NONE', typ: 'at+jwt' })}.${b64u(claims(k))}.${b64u(enc('x'))}`,
  },
  {
    name: 'no alg header at all (signed ES256)',
    cause: ALG,
    build: (k) =>
      signRaw({ typ: 'at+jwt', kid: k.keys.ES256.kid }, claims(k), k.keys.ES256.privateKey, 'ES256'),
  },
  // --- algorithm confusion (RFC 8725 §2.1, §3.1, §3.2) ---
  {
    name: 'HS256 with the RS256 public key (PEM) as the HMAC secret',
    cause: ALG,
    build: (k) => hmacJwt(k, Buffer.from(pemOf(k.keys.RS256.publicJwk)), k.keys.RS256.kid),
  },
  {
    name: 'HS256 with the RS256 public key (its JWK JSON) as the HMAC secret',
    cause: ALG,
    build: (k) => hmacJwt(k, Buffer.from(JSON.stringify(k.keys.RS256.publicJwk)), k.keys.RS256.kid),
  },
  {
    name: 'HS256 with the ES256 public key (PEM) as the HMAC secret',
    cause: ALG,
    build: (k) => hmacJwt(k, Buffer.from(pemOf(k.keys.ES256.publicJwk)), k.keys.ES256.kid),
  },
  {
    name: 'ES512, published by the token service but not in jwt.algorithms',
    cause: ALG,
    build: (k) => signed(k, {}, {}, k.keys.ES512),
  },
  {
    name: 'PS256 signed with the key published for RS256 (one key, one alg)',
    cause: NO_KEY,
    // WebCrypto binds a key to one scheme: sign PSS with the RS256 key's material directly.
    build: (k) =>
      signRaw(
        { alg: 'PS256', typ: 'at+jwt', kid: k.keys.RS256.kid },
        claims(k),
        k.keys.RS256.privateKey,
        'PS256',
      ),
  },
  {
    name: "RS256 header carrying the ES256 key's kid (key type confusion)",
    cause: NO_KEY,
    build: (k) => signed(k, {}, { kid: k.keys.ES256.kid }, k.keys.RS256),
  },
  // --- key selection (RFC 8725 §3.10; jku / x5u / jwk / x5c never followed) ---
  {
    name: 'unknown kid (attacker key)',
    cause: NO_KEY,
    build: (k) => signed(k, {}, { kid: `unknown-${randomBytes(6).toString('hex')}` }, k.attacker),
  },
  {
    name: "the real key's kid, signed by the attacker key",
    cause: SIGNATURE,
    build: (k) => signed(k, {}, { kid: k.keys.ES256.kid }, k.attacker),
  },
  {
    name: 'kid with path traversal (../../../../../../dev/null)',
    cause: NO_KEY,
    build: (k) => signed(k, {}, { kid: '../../../../../../dev/null' }, k.attacker),
  },
  {
    name: 'kid with SQL injection, HS256 over the injected secret',
    cause: ALG,
    build: (k) => hmacJwt(k, 'secret', "x' UNION SELECT 'secret' -- "),
  },
  {
    name: 'kid with CR/LF and a forged JSON log line',
    cause: NO_KEY,
    build: (k) =>
      signed(k, {}, { kid: 'k\r\n{"level":60,"msg":"forged-by-kid","reason":"allowed"}\n' }, k.attacker),
  },
  {
    name: 'jku pointing at an attacker JWKS',
    cause: NO_KEY,
    build: (k) => signed(k, {}, { kid: k.attacker.kid, jku: `${k.evil.origin}/jwks` }, k.attacker),
  },
  {
    name: "x5u pointing at the attacker's certificate",
    cause: /key|signature/i,
    build: (k) =>
      signed(k, {}, { kid: undefined, x5u: `${k.evil.origin}/cert.pem` }, { ...k.cert, alg: 'ES256' }),
  },
  {
    name: 'jwk header embedding the attacker key (no kid)',
    cause: /key|signature/i,
    build: (k) => {
      const { kid: _kid, ...jwk } = k.attacker.publicJwk;
      return signed(k, {}, { kid: undefined, jwk }, { ...k.attacker, kid: undefined });
    },
  },
  {
    name: 'jwk header embedding the attacker key with its kid',
    cause: NO_KEY,
    build: (k) => signed(k, {}, { jwk: k.attacker.publicJwk }, k.attacker),
  },
  {
    name: "jwk header embedding the attacker key under the real key's kid",
    cause: SIGNATURE,
    build: (k) => {
      const { kid: _kid, ...jwk } = k.attacker.publicJwk;
      return signed(k, {}, { kid: k.keys.ES256.kid, jwk }, k.attacker);
    },
  },
  {
    name: 'x5c header with a self-signed attacker certificate',
    cause: /key|signature/i,
    build: (k) => signed(k, {}, { kid: undefined, x5c: [k.cert.x5c] }, { ...k.cert, alg: 'ES256' }),
  },
  {
    name: 'a legitimate key of another issuer (our iss, its kid)',
    cause: NO_KEY,
    build: (k) => k.other.signJwt(claims(k)),
  },
  {
    name: "another issuer's genuine token (its iss, its key)",
    cause: /key|\biss\b/i,
    build: (k) => k.other.signJwt({ ...claims(k), iss: k.other.issuer }),
  },
  // --- time claims (RFC 7519 §4.1.4/5/6, exp required) ---
  {
    name: 'expired beyond the clock skew',
    cause: /\bexp\b/,
    build: (k) => signed(k, { iat: now() - 600, exp: now() - BEYOND_SKEW }),
  },
  {
    name: 'nbf in the future beyond the skew',
    cause: /\bnbf\b/,
    build: (k) => signed(k, { nbf: now() + BEYOND_SKEW }),
  },
  {
    name: 'iat in the future beyond the skew',
    cause: /\biat\b/,
    build: (k) => signed(k, { iat: now() + BEYOND_SKEW }),
  },
  { name: 'exp missing', cause: /\bexp\b/, build: (k) => signed(k, { exp: undefined }) },
  { name: 'exp not a number', cause: /\bexp\b/, build: (k) => signed(k, { exp: String(now() + 300) }) },
  { name: 'nbf not a number', cause: /\bnbf\b/, build: (k) => signed(k, { nbf: 'yesterday' }) },
  { name: 'iat not a number', cause: /\biat\b/, build: (k) => signed(k, { iat: String(now()) }) },
  // --- issuer and audience (RFC 8725 §3.8, §3.9) ---
  { name: 'wrong iss', cause: /\biss\b/, build: (k) => signed(k, { iss: 'https://evil.example' }) },
  { name: 'iss with a trailing slash', cause: /\biss\b/, build: (k) => signed(k, { iss: `${k.issuer}/` }) },
  { name: 'iss missing', cause: /\biss\b/, build: (k) => signed(k, { iss: undefined }) },
  { name: 'wrong aud', cause: /\baud\b/, build: (k) => signed(k, { aud: 'https://another-api.example' }) },
  {
    name: 'aud missing (jwt.audience configured)',
    cause: /\baud\b/,
    build: (k) => signed(k, { aud: undefined }),
  },
  // --- size limits ---
  {
    name: 'oversized payload (40 KiB claim)',
    cause: SIZE,
    build: (k) => signed(k, { x_pad: 'a'.repeat(40 * 1024) }),
  },
  {
    name: 'oversized protected header (5 KiB encoded)',
    cause: SIZE,
    build: (k) => signed(k, {}, { x_pad: 'a'.repeat(3900) }),
  },
  // --- integrity ---
  {
    name: 'tampered payload (claims changed after signing, signature kept)',
    cause: SIGNATURE,
    build: async (k) =>
      withPayload(await signed(k), claims(k, { sub: 'admin', scope: 'invoice_read admin' })),
  },
  {
    name: 'tampered signature (one bit flipped)',
    cause: SIGNATURE,
    build: async (k) => flipSignatureByte(await signed(k)),
  },
  {
    name: 'empty signature',
    cause: /signature|compact|serializ/i,
    build: async (k) =>
      `${partsOf(await signed(k))
        .slice(0, 2)
        .join('.')}.`,
  },
  {
    name: 'truncated signature',
    cause: SIGNATURE,
    build: async (k) => {
      const [h, p, s] = partsOf(await signed(k));
      return `${h}.${p}.${s.slice(0, 40)}`;
    },
  },
  {
    name: "another genuine token's signature spliced on",
    cause: SIGNATURE,
    build: async (k) => {
      const [h, p] = partsOf(await signed(k, { sub: 'admin' }));
      const [, , s] = partsOf(await signed(k));
      return `${h}.${p}.${s}`;
    },
  },
  {
    name: 'ECDSA psychic signature r = s = 0 (CVE-2022-21449)',
    cause: SIGNATURE,
    build: (k) => psychicSignature({ alg: 'ES256', typ: 'at+jwt', kid: k.keys.ES256.kid }, claims(k)),
  },
  // --- crit (RFC 7515 §4.1.11) ---
  {
    name: 'crit ["exp"] (a registered name, not an extension)',
    cause: CRIT,
    build: (k) =>
      signRaw(
        { alg: 'ES256', typ: 'at+jwt', kid: k.keys.ES256.kid, crit: ['exp'], exp: now() + 300 },
        claims(k),
        k.keys.ES256.privateKey,
        'ES256',
      ),
  },
  {
    name: 'crit with an unknown extension',
    cause: CRIT,
    build: (k) =>
      signRaw(
        {
          alg: 'ES256',
          typ: 'at+jwt',
          kid: k.keys.ES256.kid,
          crit: ['urn:example:must-understand'],
          'urn:example:must-understand': true,
        },
        claims(k),
        k.keys.ES256.privateKey,
        'ES256',
      ),
  },
  {
    name: 'crit as an empty array',
    cause: CRIT,
    build: (k) =>
      signRaw(
        { alg: 'ES256', typ: 'at+jwt', kid: k.keys.ES256.kid, crit: [] },
        claims(k),
        k.keys.ES256.privateKey,
        'ES256',
      ),
  },
  // --- explicit typing (RFC 8725 §3.11) ---
  ...['token-introspection+jwt', 'txntoken+jwt', 'secevent+jwt', 'dpop+jwt', 'application/secevent+jwt'].map(
    (typ): AttackRow => ({ name: `typ ${typ}`, cause: /\btyp\b/, build: (k) => signed(k, {}, { typ }) }),
  ),
  // --- structure: encrypted, nested, not compact, not a claims object ---
  {
    name: 'JWE (5-part compact, dir / A256GCM)',
    cause: NOT_COMPACT,
    build: (k) =>
      new CompactEncrypt(enc(JSON.stringify(claims(k))))
        .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', typ: 'at+jwt' })
        .encrypt(randomBytes(32)),
  },
  {
    name: 'nested JWT (cty: JWT) around a genuine token',
    cause: /nested|cty/i,
    build: async (k) =>
      new CompactSign(enc(await signed(k)))
        .setProtectedHeader({ alg: 'ES256', kid: k.keys.ES256.kid, typ: 'at+jwt', cty: 'JWT' })
        .sign(k.keys.ES256.privateKey),
  },
  {
    name: 'line break inside a genuine token',
    cause: NOT_COMPACT,
    build: async (k) => {
      const [h, p, s] = partsOf(await signed(k));
      return `${h}.\r\n${p}.${s}`;
    },
  },
  {
    name: 'space inside a genuine token',
    cause: NOT_COMPACT,
    build: async (k) => {
      const [h, p, s] = partsOf(await signed(k));
      return `${h}.${p.slice(0, 20)} ${p.slice(20)}.${s}`;
    },
  },
  {
    name: 'payload a JSON array, not a claims object',
    cause: /object|claims set/i,
    build: (k) =>
      new CompactSign(enc(JSON.stringify([claims(k)])))
        .setProtectedHeader({ alg: 'ES256', kid: k.keys.ES256.kid, typ: 'at+jwt' })
        .sign(k.keys.ES256.privateKey),
  },
  {
    name: 'protected header not JSON',
    cause: /header|format/i,
    build: (k) => signRaw(b64u(enc('{alg:ES256,')), claims(k), k.keys.ES256.privateKey, 'ES256'),
  },
];

interface PositiveRow {
  name: string;
  build(k: Kit): Promise<string>;
}

/** Good tokens the same gateways must accept (so a refusal above is not a blanket refusal). */
const ACCEPTED: PositiveRow[] = [
  ...ALGS.map(
    (alg): PositiveRow => ({
      name: `${alg} from a published key`,
      build: (k) => signed(k, {}, {}, k.keys[alg]),
    }),
  ),
  { name: 'typ JWT', build: (k) => signed(k, {}, { typ: 'JWT' }) },
  { name: 'typ application/at+jwt', build: (k) => signed(k, {}, { typ: 'application/at+jwt' }) },
  { name: 'no typ', build: (k) => signed(k, {}, { typ: undefined }) },
  { name: 'nbf within the skew', build: (k) => signed(k, { nbf: now() + WITHIN_SKEW }) },
  { name: 'iat within the skew', build: (k) => signed(k, { iat: now() + WITHIN_SKEW }) },
  {
    name: 'exp passed but within the skew',
    build: (k) => signed(k, { iat: now() - 60, exp: now() - WITHIN_SKEW }),
  },
  { name: 'aud a list holding ours', build: (k) => signed(k, { aud: ['https://other.example', AUD] }) },
  { name: 'a 6 KiB claim', build: (k) => signed(k, { x_pad: 'a'.repeat(6 * 1024) }) },
];

let up: EchoUpstream;
let evil: EvilServer;
let other: CurityStub;
let attacker: Kit['attacker'];
let cert: AttackerCertificate;

/** The attacker's server: counts every request; serves its JWKS and certificate. */
async function startEvilServer(): Promise<EvilServer> {
  const state: EvilServer = { origin: '', hits: 0, close: async () => {} };
  const server: Server = createServer((req, res) => {
    state.hits++;
    if (req.url === '/cert.pem') {
      res.writeHead(200, { 'content-type': 'application/pem-certificate-chain' });
      res.end(cert.pem);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
    res.end(JSON.stringify({ keys: [attacker.publicJwk] }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  state.close = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  return state;
}

beforeAll(async () => {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = `attacker-${randomBytes(6).toString('hex')}`;
  attacker = {
    alg: 'ES256',
    kid,
    privateKey,
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256' },
  };
  cert = attackerCertificate();
  [up, evil, other] = await Promise.all([
    startEchoUpstream(),
    startEvilServer(),
    startCurityStub({ clientId: 'other-client', clientSecret: 'other-secret-0123456789' }),
  ]);
}, 30_000);

afterAll(async () => {
  await Promise.all([up?.close(), evil?.close(), other?.close()]);
});

/**
 * One describe block per token service mode over the same rows: a stub publishing keys of every
 * algorithm, the gateway allowing ALGS (and, in accept-jwt, two gateways with narrower allow-lists).
 */
function attackSuite(mode: 'accept-jwt' | 'claim'): void {
  describe(`mode ${mode}`, () => {
    let stub: CurityStub;
    let kit: Kit;
    let gw: GatewayProcess;
    /** jwt.algorithms [ES256] / every ALG but ES256 (accept-jwt only). */
    let onlyEs256: GatewayProcess | undefined;
    let allButEs256: GatewayProcess | undefined;
    const tokens: string[] = [];
    const jwts: string[] = [];

    const gatewayConfig = (algorithms: readonly string[]) => ({
      tokenService: {
        issuer: stub.issuer,
        clientId: CLIENT_ID,
        clientSecret: '${GW_SECRET}',
        mode,
        ...(mode === 'claim' ? { jwtClaim: 'phantom_token' } : {}),
        timeoutMs: 1000,
      },
      jwt: { audience: AUD, algorithms },
      routes: [
        {
          name: 'invoices',
          match: { pathPrefix: '/api/invoices' },
          upstream: up.url,
          scopes: ['invoice_read'],
        },
      ],
    });

    beforeAll(async () => {
      stub = await startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET });
      if (mode === 'claim') stub.behaviour = 'jwt-claim:phantom_token';
      // Every key is published before any gateway fetches the JWKS.
      const keys = {} as Kit['keys'];
      for (const alg of [...ALGS, 'ES512'] as const) keys[alg] = await stub.addKey(alg as StubKeyAlg);
      kit = { issuer: stub.issuer, keys, attacker, cert, evil, other };
      const starts = [startGateway(gatewayConfig(ALGS), { env: ENV })];
      if (mode === 'accept-jwt') {
        starts.push(
          startGateway(gatewayConfig(['ES256']), { env: ENV }),
          startGateway(gatewayConfig(ALGS.filter((a) => a !== 'ES256')), { env: ENV }),
        );
      }
      [gw, onlyEs256, allButEs256] = await Promise.all(starts);
    }, 60_000);

    afterAll(async () => {
      await Promise.all([gw?.stop(), onlyEs256?.stop(), allButEs256?.stop()]);
      await stub?.close();
    });

    /** A fresh opaque token for which the stub answers exactly `jwt`, sent through `g`. */
    async function present(jwt: string, g: GatewayProcess) {
      const t = stub.newToken();
      stub.registerJwt(t, jwt);
      tokens.push(t);
      jwts.push(jwt);
      const id = `attack-${randomUUID()}`;
      const res = await request(`${g.url}/api/invoices/7`, {
        headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
      });
      // The stub was asked exactly once for this token: the gateway judged the crafted answer.
      expect(stub.requests.filter((r) => r.body.get('token') === t).length).toBe(1);
      return { t, id, res, forwarded: up.requests.filter((r) => r.headers['x-request-id'] === id) };
    }

    /** Access-line and logger fields that are not a cause. */
    const PLAIN_FIELDS = new Set([
      'level',
      'time',
      'pid',
      'hostname',
      'msg',
      'requestId',
      'route',
      'method',
      'path',
      'status',
      'reason',
      'cache',
      'durationMs',
      'tokenServiceMs',
      'upstreamMs',
      'completed',
      'service',
    ]);

    /** Whatever the gateway logged for this request beyond the plain access fields (the cause). */
    function loggedCause(g: GatewayProcess, id: string): string {
      return g
        .logs()
        .filter((l) => l['requestId'] === id)
        .map((l) => Object.entries(l).filter(([key]) => !PLAIN_FIELDS.has(key)))
        .filter((rest) => rest.length > 0)
        .map((rest) => JSON.stringify(Object.fromEntries(rest)))
        .join('\n');
    }

    /** Neither the opaque token nor the JWT (nor a part of it) is in any line the gateway printed. */
    function expectNotLogged(g: GatewayProcess, t: string, jwt: string): void {
      const out = g.output();
      expect(out.includes(t), 'the opaque token in the log').toBe(false);
      expect(out.includes(jwt), 'the JWT in the log').toBe(false);
      for (const part of jwt.split('.')) {
        if (part.length >= 16) expect(out.includes(part), 'a part of the JWT in the log').toBe(false);
      }
    }

    async function expectRefused(jwt: string, cause: RegExp, g: GatewayProcess = gw): Promise<void> {
      const { t, id, res, forwarded } = await present(jwt, g);
      expect(res.status, `status (body ${res.body})`).toBe(401);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers['www-authenticate']).toBe(CHALLENGE);
      // Exactly the generic body: the cause stays in the log.
      expect(res.json()).toEqual({ error: 'invalid_token', error_description: GENERIC, request_id: id });
      expect(forwarded.length, 'requests forwarded upstream').toBe(0);
      const line = await accessLine(g, id);
      expect(line['status']).toBe(401);
      expect(line['reason']).toBe('jwt_invalid');
      // The generic description may be logged too ("… expired"): only the rest counts as the cause.
      const logged = loggedCause(g, id).replaceAll(GENERIC, '');
      expect(logged, 'the precise cause of the refusal in the log').toMatch(cause);
      expectNotLogged(g, t, jwt);
    }

    async function expectAccepted(jwt: string, g: GatewayProcess = gw): Promise<void> {
      const { t, id, res, forwarded } = await present(jwt, g);
      expect(res.status, `status (body ${res.body})`).toBe(200);
      expect(forwarded.length).toBe(1);
      expect(forwarded[0]!.headers.authorization).toBe(`Bearer ${jwt}`);
      expect((await accessLine(g, id))['reason']).toBe('allowed');
      expectNotLogged(g, t, jwt);
    }

    describe('attacks: 401 invalid_token, reason jwt_invalid, cause logged, nothing forwarded', () => {
      let jwksCallsBefore = 0;
      let started = 0;
      beforeAll(() => {
        jwksCallsBefore = stub.jwksCalls;
        started = Date.now();
      });

      it.each(ATTACKS)('$name', async (row) => {
        await expectRefused(await row.build(kit), row.cause);
      });

      it('fetched the JWKS once, plus at most one refetch per 30 s for all the unknown kids', () => {
        // Only `gw` served the rows above; the narrow gateways have not verified anything yet.
        const windows = Math.floor((Date.now() - started) / 30_000) + 1;
        const fetches = stub.jwksCalls - jwksCallsBefore;
        expect(fetches).toBeGreaterThanOrEqual(1);
        expect(fetches).toBeLessThanOrEqual(1 + windows);
      });

      it('never fetched a jku / x5u URL (the attacker server got zero requests)', () => {
        expect(evil.hits).toBe(0);
      });

      it('let no header value forge a log line', () => {
        // The kid may be logged (escaped); it must never start a line of its own.
        expect(gw.logs().some((l) => l['msg'] === 'forged-by-kid')).toBe(false);
        expect(
          gw
            .output()
            .split('\n')
            .some((l) => l.startsWith('{"level":60')),
        ).toBe(false);
      });
    });

    describe('good tokens are accepted (200, forwarded as issued)', () => {
      it.each(ACCEPTED)('$name', async (row) => {
        await expectAccepted(await row.build(kit));
      });
    });

    if (mode === 'accept-jwt') {
      describe('the algorithm allow-list (jwt.algorithms)', () => {
        const narrow = () => ({ onlyEs256: onlyEs256!, allButEs256: allButEs256! });

        it.each(ALGS)('%s: accepted where allowed, refused (jwt_invalid) where not', async (alg) => {
          const { onlyEs256: es, allButEs256: rest } = narrow();
          const allowedBy = alg === 'ES256' ? es : rest;
          const refusedBy = alg === 'ES256' ? rest : es;
          await expectAccepted(await signed(kit, {}, {}, kit.keys[alg]), allowedBy);
          await expectRefused(await signed(kit, {}, {}, kit.keys[alg]), ALG, refusedBy);
        });
      });
    }

    it('printed no opaque token and no JWT in any log line', () => {
      expect(tokens.length).toBeGreaterThan(ATTACKS.length);
      for (const g of [gw, onlyEs256, allButEs256]) {
        if (g === undefined) continue;
        const out = g.output();
        expect(out).toContain('phantom-gateway listening');
        for (const t of tokens) expect(out.includes(t), 'an opaque token in the output').toBe(false);
        for (const j of jwts) expect(out.includes(j), 'a JWT in the output').toBe(false);
        expect(out).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
        expect(out).not.toContain(GW_SECRET);
      }
    });
  });
}

attackSuite('accept-jwt');
attackSuite('claim');
