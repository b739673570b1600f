import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { accessLine, type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Mode claim end to end (SPEC §5, §6): standard RFC 7662 JSON introspection whose active answer
 * carries the JWT in the member named by `jwtClaim` — Curity's `phantom_token`, Keycloak's `jwt`.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'claim-gateway-secret-0123456789';
const ENV = { GW_SECRET };

let stub: CurityStub;
let up: EchoUpstream;
/** jwtClaim: phantom_token, client_secret_basic. */
let gw: GatewayProcess;
/** jwtClaim: jwt (Keycloak), client_secret_post, introspectionAccept: application/jwt. */
let postGw: GatewayProcess;

const issuedTokens: string[] = [];
/** Every JWT the stub put into an answer, in order. */
const issuedJwts: string[] = [];

const tokenService = (extra: Record<string, unknown>) => ({
  issuer: stub.issuer,
  clientId: CLIENT_ID,
  clientSecret: '${GW_SECRET}',
  mode: 'claim',
  timeoutMs: 500,
  ...extra,
});
const routes = () => [
  { name: 'invoices', match: { pathPrefix: '/api/invoices' }, upstream: up.url, scopes: ['invoice_read'] },
];

beforeAll(async () => {
  [stub, up] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
  ]);
  // The stub signs every answer with `stub.signJwt(claims)`: record what it hands out.
  const realSign = stub.signJwt;
  stub.signJwt = async (claims, header, opts) => {
    const jwt = await realSign(claims, header, opts);
    issuedJwts.push(jwt);
    return jwt;
  };
  [gw, postGw] = await Promise.all([
    startGateway(
      { tokenService: tokenService({ jwtClaim: 'phantom_token' }), routes: routes() },
      { env: ENV },
    ),
    startGateway(
      {
        tokenService: tokenService({
          jwtClaim: 'jwt',
          clientAuth: 'client_secret_post',
          introspectionAccept: 'application/jwt',
        }),
        routes: routes(),
      },
      { env: ENV },
    ),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([gw?.stop(), postGw?.stop()]);
  await Promise.all([stub?.close(), up?.close()]);
});

beforeEach(() => {
  stub.behaviour = 'jwt-claim:phantom_token';
});

/** A fresh opaque token the stub knows, answered with these members/claims. */
function knownToken(claims: Record<string, unknown> = {}): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', scope: 'invoice_read', ...claims });
  issuedTokens.push(t);
  return t;
}

async function call(t: string, g: GatewayProcess = gw): Promise<{ res: SimpleResponse; id: string }> {
  const id = `test-${randomUUID()}`;
  const res = await request(`${g.url}/api/invoices/7`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { res, id };
}

const introspectionsOf = (t: string) => stub.requests.filter((r) => r.body.get('token') === t);

function forwardedJwt(id: string): string | undefined {
  const got = up.requests.find((r) => r.headers['x-request-id'] === id);
  return got === undefined ? undefined : String(got.headers.authorization).replace(/^Bearer /, '');
}

async function reasonOf(g: GatewayProcess, id: string): Promise<unknown> {
  return (await accessLine(g, id))['reason'];
}

function expectErrorBody(res: SimpleResponse, error: string, id: string): void {
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.headers['cache-control']).toBe('no-store');
  const body = res.json();
  expect(body['error']).toBe(error);
  expect(body['request_id']).toBe(id);
  expect(res.body).not.toContain(`127.0.0.1:${stub.port}`);
}

describe('mode claim with jwtClaim: phantom_token (Curity)', () => {
  it('forwards the JWT of the phantom_token member of an active answer', async () => {
    const t = knownToken();
    const before = issuedJwts.length;
    const { res, id } = await call(t);
    expect(res.status).toBe(200);
    expect(issuedJwts.length).toBe(before + 1);
    expect(forwardedJwt(id)).toBe(issuedJwts.at(-1));
    expect(await reasonOf(gw, id)).toBe('allowed');
  });

  it('asks for RFC 7662 JSON with client_secret_basic, POST token + token_type_hint and the request id', async () => {
    const t = knownToken();
    const { res, id } = await call(t);
    expect(res.status).toBe(200);
    const seen = introspectionsOf(t);
    expect(seen.length).toBe(1);
    const { headers, body } = seen[0]!;
    expect(headers.accept).toBe('application/json');
    expect(headers.authorization).toBe(
      `Basic ${Buffer.from(`${CLIENT_ID}:${GW_SECRET}`).toString('base64')}`,
    );
    expect([...body.keys()].sort()).toEqual(['token', 'token_type_hint']);
    expect(body.get('token_type_hint')).toBe('access_token');
    expect(headers['x-request-id']).toBe(id);
  });

  it('answers 401 invalid_token (token_inactive) for active: false', async () => {
    const t = stub.newToken(); // never registered: {"active": false}
    issuedTokens.push(t);
    const { res, id } = await call(t);
    expect(res.status).toBe(401);
    expectErrorBody(res, 'invalid_token', id);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    expect(await reasonOf(gw, id)).toBe('token_inactive');
    expect(forwardedJwt(id)).toBeUndefined();
  });

  it('answers 401 invalid_token (jwt_invalid) when the JWT in the member fails verification', async () => {
    const t = knownToken({ iss: 'https://evil.example' });
    const { res, id } = await call(t);
    expect(res.status).toBe(401);
    expect(await reasonOf(gw, id)).toBe('jwt_invalid');
    expect(forwardedJwt(id)).toBeUndefined();
  });

  async function expectBadAnswer(t: string): Promise<void> {
    const { res, id } = await call(t);
    expect(res.status).toBe(502);
    expectErrorBody(res, 'token_service_unavailable', id);
    expect(res.headers['www-authenticate']).toBeUndefined();
    expect(await reasonOf(gw, id)).toBe('token_service_unavailable');
    expect(forwardedJwt(id)).toBeUndefined();
    expect(introspectionsOf(t).length).toBe(1);
  }

  it('answers 502 token_service_unavailable for active: true without the phantom_token member', async () => {
    stub.behaviour = 'jwt-claim:jwt'; // the JWT is there, under another name
    await expectBadAnswer(knownToken());
  });

  it.each([
    ['is missing', { active: undefined }],
    ['is not a boolean', { active: 'true' }],
  ])('answers 502 token_service_unavailable when "active" %s', async (_name, members) => {
    await expectBadAnswer(knownToken(members));
  });
});

describe('mode claim with jwtClaim: jwt (Keycloak) and client_secret_post', () => {
  beforeEach(() => {
    stub.behaviour = 'jwt-claim:jwt';
  });

  it('forwards the JWT of the jwt member of an active answer', async () => {
    const t = knownToken();
    const { res, id } = await call(t, postGw);
    expect(res.status).toBe(200);
    expect(forwardedJwt(id)).toBe(issuedJwts.at(-1));
  });

  it('sends client_id and client_secret in the form and no Authorization header', async () => {
    const t = knownToken();
    expect((await call(t, postGw)).res.status).toBe(200);
    const seen = introspectionsOf(t);
    expect(seen.length).toBe(1);
    const { headers, body } = seen[0]!;
    expect(headers.authorization).toBeUndefined();
    expect(body.get('client_id')).toBe(CLIENT_ID);
    expect(body.get('client_secret')).toBe(GW_SECRET);
    expect(body.get('token_type_hint')).toBe('access_token');
  });

  it('asks with Accept: application/jwt (Keycloak returns the jwt member only then) and reads JSON', async () => {
    const t = knownToken();
    expect((await call(t, postGw)).res.status).toBe(200);
    expect(introspectionsOf(t)[0]!.headers.accept).toBe('application/jwt');
  });
});

describe('secrets', () => {
  it('never prints an opaque token, a JWT or the client secret', async () => {
    expect(issuedTokens.length).toBeGreaterThan(5);
    expect(issuedJwts.length).toBeGreaterThan(3);
    for (const g of [gw, postGw]) {
      const out = g.output();
      expect(out).toContain('phantom-gateway listening');
      for (const t of issuedTokens) expect(out.includes(t), 'an opaque token in the output').toBe(false);
      for (const j of issuedJwts) expect(out.includes(j), 'a JWT in the output').toBe(false);
      expect(out).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
      expect(out).not.toContain(GW_SECRET);
    }
  });
});
