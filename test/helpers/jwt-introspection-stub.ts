import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CompactSign, type CryptoKey, exportJWK, exportSPKI, generateKeyPair, type JWK } from 'jose';

/**
 * A stub RFC 9701 token service for the answers no real server gives: hostile or broken signed
 * introspection responses. `POST /introspect` (HTTP Basic client authentication) answers with
 * whatever `answer` makes; by default a correct `application/token-introspection+jwt` answer,
 * active for registered tokens, inactive otherwise. `GET /jwks` serves the published key.
 */
export interface StubAnswer {
  /** Default 200. */
  status?: number;
  contentType: string;
  body: string;
}

export interface JwtIntrospectionStub {
  issuer: string;
  introspectionEndpoint: string;
  jwksUri: string;
  clientId: string;
  /** `kid` of the published signing key (ES256). */
  kid: string;
  /** The published public key, as a JWK and as PEM (SPKI: the secret of an HS256 key-confusion forgery). */
  publicJwk: JWK;
  publicPem: string;
  /** false: the JWKS endpoint answers 503. */
  jwksUp: boolean;
  /** Makes the answer to one introspection; undefined → the default (correct) answer. */
  answer: ((token: string) => Promise<StubAnswer>) | undefined;
  /** Introspection requests received, with their headers (Accept, Authorization). */
  requests: IncomingHttpHeaders[];
  jwksCalls: number;
  /** Requests to `/attacker-jwks` (serves the rogue key; a `jku` target that must never be fetched). */
  attackerJwksCalls: number;
  /** An opaque token the stub reports active with these RFC 7662 members. */
  register(claims: Record<string, unknown>): string;
  /** The RFC 9701 payload for an RFC 7662 answer: iss, aud (client id), iat now, token_introspection. */
  payload(tokenIntrospection: Record<string, unknown>): Record<string, unknown>;
  /**
   * A compact JWS of `payload` (used as is: no claim added). Header default `{ alg: 'ES256', kid,
   * typ: 'token-introspection+jwt' }`, merged with `header` (`undefined` removes a member). `rogue`:
   * signed with a key that is not published (its public JWK: `roguePublicJwk`).
   */
  sign(
    payload: Record<string, unknown>,
    header?: Record<string, unknown>,
    opts?: { rogue?: boolean },
  ): Promise<string>;
  roguePublicJwk: JWK;
  /** The default answer for `token` (signed, correct). */
  defaultAnswer(token: string): Promise<StubAnswer>;
  close(): Promise<void>;
}

export const INTROSPECTION_JWT_TYPE = 'application/token-introspection+jwt; charset=utf-8';

async function esKey(kid: string): Promise<{ privateKey: CryptoKey; publicJwk: JWK; publicPem: string }> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return {
    privateKey,
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' },
    publicPem: await exportSPKI(publicKey),
  };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export async function startJwtIntrospectionStub(opts: {
  clientId: string;
  clientSecret: string;
  host?: string;
}): Promise<JwtIntrospectionStub> {
  const host = opts.host ?? '127.0.0.1';
  const kid = randomBytes(8).toString('hex');
  const [published, rogue] = await Promise.all([esKey(kid), esKey(kid)]);
  const registered = new Map<string, Record<string, unknown>>();
  const expectedAuth = `Basic ${Buffer.from(
    `${encodeURIComponent(opts.clientId)}:${encodeURIComponent(opts.clientSecret)}`,
  ).toString('base64')}`;

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.statusCode = 500;
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const origin = `http://${host}:${(server.address() as AddressInfo).port}`;

  const stub: JwtIntrospectionStub = {
    issuer: origin,
    introspectionEndpoint: `${origin}/introspect`,
    jwksUri: `${origin}/jwks`,
    clientId: opts.clientId,
    kid,
    publicJwk: published.publicJwk,
    publicPem: published.publicPem,
    roguePublicJwk: rogue.publicJwk,
    jwksUp: true,
    answer: undefined,
    requests: [],
    jwksCalls: 0,
    attackerJwksCalls: 0,
    register(claims) {
      const token = randomBytes(24).toString('base64url');
      registered.set(token, claims);
      return token;
    },
    payload(tokenIntrospection) {
      return {
        iss: origin,
        aud: opts.clientId,
        iat: Math.floor(Date.now() / 1000),
        token_introspection: tokenIntrospection,
      };
    },
    async sign(payload, header = {}, signOpts = {}) {
      const h: Record<string, unknown> = { alg: 'ES256', kid, typ: 'token-introspection+jwt', ...header };
      for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
      const key = signOpts.rogue ? rogue.privateKey : published.privateKey;
      return new CompactSign(Buffer.from(JSON.stringify(payload)))
        .setProtectedHeader(h as { alg: string })
        .sign(key);
    },
    async defaultAnswer(token) {
      const claims = registered.get(token);
      const ti = claims === undefined ? { active: false } : { active: true, ...claims };
      return { contentType: INTROSPECTION_JWT_TYPE, body: await stub.sign(stub.payload(ti)) };
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = req.url?.split('?')[0];
    if (req.method === 'GET' && path === '/jwks') {
      stub.jwksCalls++;
      if (!stub.jwksUp) {
        res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"unavailable"}');
        return;
      }
      res
        .writeHead(200, { 'content-type': 'application/jwk-set+json' })
        .end(JSON.stringify({ keys: [published.publicJwk] }));
      return;
    }
    if (path === '/attacker-jwks') {
      stub.attackerJwksCalls++;
      res
        .writeHead(200, { 'content-type': 'application/jwk-set+json' })
        .end(JSON.stringify({ keys: [{ ...rogue.publicJwk, kid: 'attacker' }] }));
      return;
    }
    if (req.method !== 'POST' || path !== '/introspect') {
      res.writeHead(404).end();
      return;
    }
    stub.requests.push(req.headers);
    const form = new URLSearchParams(await readBody(req));
    if (req.headers.authorization !== expectedAuth) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"invalid_client"}');
      return;
    }
    const token = form.get('token') ?? '';
    const a = await (stub.answer ?? stub.defaultAnswer)(token);
    res
      .writeHead(a.status ?? 200, { 'content-type': a.contentType, 'cache-control': 'no-store' })
      .end(a.body);
  }

  return stub;
}
