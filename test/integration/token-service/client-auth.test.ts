import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, ConfigSchema } from '../../../src/config/schema.ts';
import { TokenServiceUnavailable } from '../../../src/errors/gateway-errors.ts';
import { createClientAuth } from '../../../src/introspection/client-auth.ts';
import {
  createIntrospectionClient,
  type Introspection,
  IntrospectionFailure,
} from '../../../src/introspection/introspection-client.ts';
import {
  createTokenServiceMetadata,
  type TokenServiceMetadata,
} from '../../../src/introspection/token-service-metadata.ts';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type CertFiles, makeCa, makeCert } from '../../helpers/tls-certs.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * private_key_jwt (RFC 7523) and tls_client_auth (RFC 8705) against a real oidc-provider
 * configured for each, through the real modules on real sockets, and end to end through the
 * real gateway process (mode mint). A rejected client authentication is 502, a token service
 * whose certificate is not trusted is 503: never 401.
 */
type DevTokenService = Awaited<ReturnType<typeof startDevTokenService>>;

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let dir: string;
let n = 0;
const started: TokenServiceMetadata[] = [];

function writeFile(name: string, content: string): string {
  const f = join(dir, `${++n}-${name}`);
  writeFileSync(f, content, { mode: 0o600 });
  return f;
}

function config(tokenService: Record<string, unknown>): Config {
  return ConfigSchema.parse({
    tokenService: { mode: 'mint', timeoutMs: 2000, ...tokenService },
    jwt: {},
    routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
  });
}

/** Introspection client over the real modules; `record` sees every form body sent. */
async function clientFor(cfg: Config, record?: string[]) {
  const recording: typeof fetch = (input, init) => {
    if (init?.body instanceof URLSearchParams) record?.push(init.body.toString());
    return fetch(input, init);
  };
  const clientAuth = await createClientAuth(cfg, record ? { fetch: recording } : {});
  const metadata = createTokenServiceMetadata(cfg, { logger: silentLogger(), fetch: clientAuth.fetch });
  started.push(metadata);
  const client = createIntrospectionClient(cfg, { metadata, logger: silentLogger(), clientAuth });
  return { clientAuth, metadata, client };
}

/** Expects TokenServiceUnavailable with this status; returns the logged cause. */
async function expectFailure(p: Promise<Introspection>, status: 502 | 503): Promise<IntrospectionFailure> {
  const err = await p.then(
    (v) => {
      throw new Error(`expected a failure, got ${JSON.stringify(v)}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TokenServiceUnavailable);
  const e = err as TokenServiceUnavailable;
  expect(e.status).toBe(status);
  expect(e.error).toBe('token_service_unavailable');
  expect(e.cause).toBeInstanceOf(IntrospectionFailure);
  return e.cause as IntrospectionFailure;
}

function mintGatewayConfig(tokenService: Record<string, unknown>, keysFile: string, upstream: string) {
  return {
    tokenService: { mode: 'mint', timeoutMs: 2000, ...tokenService },
    jwt: { mint: { issuer: 'https://gateway.test', signingKeysFile: keysFile, lifetimeSeconds: 60 } },
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices', methods: ['GET'] },
        upstream,
        scopes: ['invoice_read'],
      },
    ],
  };
}

let up: EchoUpstream;
let mintKeysFile: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-client-auth-'));
  mintKeysFile = join(dir, 'mint-keys.json');
  await generateSigningKeysFile(mintKeysFile);
  up = await startEchoUpstream();
});

afterAll(async () => {
  for (const m of started) m.stop();
  await up?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('private_key_jwt against oidc-provider', () => {
  let dev: DevTokenService;
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const wrong = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pemOf = (k: typeof ec.privateKey) => k.export({ format: 'pem', type: 'pkcs8' }).toString();
  let ecPemFile: string;
  let rsaJwkFile: string;

  beforeAll(async () => {
    ecPemFile = writeFile('gw-ec.pem', pemOf(ec.privateKey));
    rsaJwkFile = writeFile(
      'gw-rsa.json',
      JSON.stringify({ ...rsa.privateKey.export({ format: 'jwk' }), kid: 'gw-rsa', alg: 'RS256' }),
    );
    dev = await startDevTokenService({
      port: await freePort(),
      clients: [
        {
          client_id: 'gw-pkjwt',
          token_endpoint_auth_method: 'private_key_jwt',
          grant_types: [],
          // The gateway's public keys (oidc-provider refuses private members in client metadata).
          extra: {
            jwks: {
              keys: [
                { ...ec.publicKey.export({ format: 'jwk' }), kid: 'gw-ec', use: 'sig' },
                { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'gw-rsa', use: 'sig' },
              ],
            },
          },
        },
        { client_id: 'app', client_secret: 'app-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: 'gw-pkjwt',
    });
  });
  afterAll(async () => {
    await dev?.close();
  });

  const pkjwt = (extra: Record<string, unknown>) =>
    config({ issuer: dev.issuer, clientId: 'gw-pkjwt', clientAuth: 'private_key_jwt', ...extra });
  const appToken = async () => (await dev.issueToken('app', 'app-secret', 'invoice_read')).access_token;

  it('introspects with a PEM PKCS#8 EC key (ES256, no kid): discovery, then an active token', async () => {
    const { client } = await clientFor(pkjwt({ privateKeyFile: ecPemFile }));
    const r = await client.introspect(await appToken(), { requestId: 'r1' });
    expect(r).toMatchObject({ active: true, claims: { client_id: 'app', scope: 'invoice_read' } });
  });

  it('introspects with an RSA JWK file (RS256, kid in the header)', async () => {
    const bodies: string[] = [];
    const { client } = await clientFor(pkjwt({ privateKeyFile: rsaJwkFile }), bodies);
    const r = await client.introspect(await appToken(), { requestId: 'r2' });
    expect(r.active).toBe(true);
    const form = new URLSearchParams(bodies.at(-1));
    expect(form.get('client_id')).toBe('gw-pkjwt');
    expect(form.get('client_assertion_type')).toBe(ASSERTION_TYPE);
    expect(decodeProtectedHeader(form.get('client_assertion')!)).toEqual({ alg: 'RS256', kid: 'gw-rsa' });
  });

  it('an inactive (revoked) token is a verdict, not a failure', async () => {
    const t = await appToken();
    await dev.revoke(t);
    const { client } = await clientFor(pkjwt({ privateKeyFile: ecPemFile }));
    expect(await client.introspect(t, { requestId: 'r3' })).toEqual({ active: false });
  });

  it('a key the provider does not know → 502 (own credentials rejected), never 401', async () => {
    const { client } = await clientFor(
      pkjwt({ privateKeyFile: writeFile('wrong.pem', pemOf(wrong.privateKey)) }),
    );
    const cause = await expectFailure(client.introspect(await appToken(), { requestId: 'r4' }), 502);
    expect(cause).toMatchObject({ status: 401, code: 'invalid_client' });
  });

  it('each request carries a fresh assertion; the provider refuses a replayed one', async () => {
    const bodies: string[] = [];
    const { client } = await clientFor(pkjwt({ privateKeyFile: ecPemFile }), bodies);
    const t = await appToken();
    for (const id of ['a', 'b']) expect((await client.introspect(t, { requestId: id })).active).toBe(true);
    const assertions = bodies.map((b) => new URLSearchParams(b).get('client_assertion')!);
    expect(assertions).toHaveLength(2);
    const claims = assertions.map((a) => decodeJwt(a));
    expect(claims[0]!.jti).not.toBe(claims[1]!.jti);
    for (const c of claims) {
      expect(c).toMatchObject({ iss: 'gw-pkjwt', sub: 'gw-pkjwt', aud: dev.issuer });
      expect(c.exp! - c.iat!).toBe(60);
    }
    // The same assertion a second time: oidc-provider's jti replay detection refuses it.
    const replay = await fetch(dev.introspectionEndpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: bodies[0]!,
      signal: AbortSignal.timeout(5000),
    });
    expect(replay.status).toBe(401);
    expect(((await replay.json()) as { error?: string }).error).toBe('invalid_client');
  });

  it('reload() re-reads the key file: a wrong key fails, the right one works again', async () => {
    const keyFile = writeFile('reloaded.pem', pemOf(ec.privateKey));
    const { client, clientAuth } = await clientFor(pkjwt({ privateKeyFile: keyFile }));
    const t = await appToken();
    expect((await client.introspect(t, { requestId: 'x1' })).active).toBe(true);
    writeFileSync(keyFile, pemOf(wrong.privateKey));
    await clientAuth.reload();
    await expectFailure(client.introspect(t, { requestId: 'x2' }), 502);
    writeFileSync(keyFile, 'not a key');
    await expect(clientAuth.reload()).rejects.toThrow(/^tokenService\.privateKeyFile: /);
    await expectFailure(client.introspect(t, { requestId: 'x3' }), 502); // still the (wrong) old key
    writeFileSync(keyFile, pemOf(ec.privateKey));
    await clientAuth.reload();
    expect((await client.introspect(t, { requestId: 'x4' })).active).toBe(true);
  });

  it('end to end: client → gateway (mint, private_key_jwt) → 200 at the upstream', async () => {
    let gw: GatewayProcess | undefined;
    try {
      gw = await startGateway(
        mintGatewayConfig(
          {
            issuer: dev.issuer,
            clientId: 'gw-pkjwt',
            clientAuth: 'private_key_jwt',
            privateKeyFile: ecPemFile,
          },
          mintKeysFile,
          up.url,
        ),
      );
      const before = up.requests.length;
      const res = await request(`${gw.url}/api/invoices/1`, {
        headers: { authorization: `Bearer ${await appToken()}` },
      });
      expect(res.status).toBe(200);
      expect(up.requests.length).toBe(before + 1);
      expect(decodeJwt(String(up.requests.at(-1)!.headers.authorization).slice(7))).toMatchObject({
        client_id: 'app',
        scope: 'invoice_read',
      });
      // Neither the key nor an assertion reaches the gateway's log.
      const keyBody = pemOf(ec.privateKey).split('\n')[1]!;
      expect(gw.output()).not.toContain(keyBody.slice(0, 24));
      expect(gw.output()).not.toContain('client_assertion');
    } finally {
      await gw?.stop();
    }
  });
});

describe('tls_client_auth against oidc-provider over HTTPS', () => {
  let dev: DevTokenService;
  /** Same provider, but only an RFC 8705 alias listener asks for client certificates. */
  let aliased: DevTokenService;
  let ca: CertFiles;
  let client: CertFiles;
  let foreign: CertFiles;
  let otherClient: CertFiles;

  beforeAll(async () => {
    const otherCa = await makeCa(dir, 'other-ca');
    ca = await makeCa(dir, 'ca');
    const server = await makeCert(dir, 'server', ca, { subject: '/CN=127.0.0.1', san: 'IP:127.0.0.1' });
    [client, foreign, otherClient] = await Promise.all([
      makeCert(dir, 'client', ca, { subject: '/O=phantom/CN=phantom-gateway' }),
      // Same subject, another CA: must not pass for the gateway.
      makeCert(dir, 'foreign', otherCa, { subject: '/O=phantom/CN=phantom-gateway' }),
      // Right CA, another subject.
      makeCert(dir, 'other-client', ca, { subject: '/O=phantom/CN=someone-else' }),
    ]);
    const options = {
      clients: [
        {
          client_id: 'gw-mtls',
          token_endpoint_auth_method: 'tls_client_auth',
          grant_types: [],
          extra: { tls_client_auth_subject_dn: 'CN=phantom-gateway,O=phantom' },
        },
        { client_id: 'gw-basic', client_secret: 'gw-basic-secret', grant_types: [] },
        { client_id: 'app', client_secret: 'app-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: ['gw-mtls', 'gw-basic'],
    };
    [dev, aliased] = await Promise.all([
      startDevTokenService({ ...options, tls: { cert: server.cert, key: server.key, ca: ca.cert } }),
      startDevTokenService({
        ...options,
        tls: { cert: server.cert, key: server.key, ca: ca.cert, mtlsEndpointAliases: true },
      }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([dev?.close(), aliased?.close()]);
  });

  const mtls = (svc: DevTokenService, extra: Record<string, unknown> = {}) =>
    config({
      issuer: svc.issuer,
      clientId: 'gw-mtls',
      clientAuth: 'tls_client_auth',
      tlsCertFile: client.certFile,
      tlsKeyFile: client.keyFile,
      caFile: ca.certFile,
      ...extra,
    });
  const appToken = async (svc = dev) =>
    (await svc.issueToken('app', 'app-secret', 'invoice_read')).access_token;

  it('the right client certificate: discovery and introspection over HTTPS with caFile', async () => {
    const bodies: string[] = [];
    const { client: c, metadata } = await clientFor(mtls(dev), bodies);
    const r = await c.introspect(await appToken(), { requestId: 'm1' });
    expect(r).toMatchObject({ active: true, claims: { client_id: 'app' } });
    expect((await metadata.get()).introspectionEndpoint).toBe(dev.introspectionEndpoint);
    const form = new URLSearchParams(bodies.at(-1));
    expect(form.get('client_id')).toBe('gw-mtls');
    expect(form.has('client_secret') || form.has('client_assertion')).toBe(false);
  });

  it('a certificate from another CA (same subject) → 502', async () => {
    const { client: c } = await clientFor(
      mtls(dev, { tlsCertFile: foreign.certFile, tlsKeyFile: foreign.keyFile }),
    );
    const cause = await expectFailure(c.introspect(await appToken(), { requestId: 'm2' }), 502);
    expect(cause).toMatchObject({ status: 401, code: 'invalid_client' });
  });

  it('a certificate of the right CA with another subject → 502', async () => {
    const { client: c } = await clientFor(
      mtls(dev, { tlsCertFile: otherClient.certFile, tlsKeyFile: otherClient.keyFile }),
    );
    const cause = await expectFailure(c.introspect(await appToken(), { requestId: 'm3' }), 502);
    expect(cause).toMatchObject({ status: 401, code: 'invalid_client' });
  });

  it('no client certificate in the handshake (an endpoint that does not ask for one) → 502', async () => {
    // The aliased provider's main listener does not request certificates: the gateway's is never sent.
    const { client: c } = await clientFor(
      mtls(aliased, { introspectionEndpoint: aliased.introspectionEndpoint }),
    );
    const cause = await expectFailure(c.introspect(await appToken(aliased), { requestId: 'm4' }), 502);
    expect(cause).toMatchObject({ status: 401, code: 'invalid_client' });
  });

  it('uses the discovered mtls_endpoint_aliases.introspection_endpoint (RFC 8705 §5)', async () => {
    const { client: c, metadata } = await clientFor(mtls(aliased));
    const r = await c.introspect(await appToken(aliased), { requestId: 'm5' });
    expect(r.active).toBe(true);
    expect((await metadata.get()).introspectionEndpoint).toBe(aliased.mtlsIntrospectionEndpoint);
    expect(aliased.mtlsIntrospectionEndpoint).not.toBe(aliased.introspectionEndpoint);
  });

  it('the token service certificate not trusted (no caFile) → 503', async () => {
    const cfg = mtls(dev, { introspectionEndpoint: dev.introspectionEndpoint, caFile: undefined });
    const { client: c } = await clientFor(cfg);
    const cause = await expectFailure(c.introspect(await appToken(), { requestId: 'm6' }), 503);
    expect(cause.code).toMatch(/CERT|SELF_SIGNED|UNABLE_TO_VERIFY/);
  });

  it('the token service certificate for another host → 503', async () => {
    const port = new URL(dev.issuer).port;
    const cfg = mtls(dev, {
      issuer: `https://localhost:${port}`,
      introspectionEndpoint: `https://localhost:${port}/token/introspection`,
    });
    const { client: c } = await clientFor(cfg);
    const cause = await expectFailure(c.introspect(await appToken(), { requestId: 'm7' }), 503);
    expect(cause.code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('caFile applies whatever the method: client_secret_basic over the private CA', async () => {
    const cfg = config({
      issuer: dev.issuer,
      clientId: 'gw-basic',
      clientSecret: 'gw-basic-secret',
      caFile: ca.certFile,
    });
    const { client: c } = await clientFor(cfg);
    expect((await c.introspect(await appToken(), { requestId: 'm8' })).active).toBe(true);
    // Without it the same request is "could not ask".
    const { client: bare } = await clientFor(
      config({ ...cfg.tokenService, caFile: undefined, introspectionEndpoint: dev.introspectionEndpoint }),
    );
    const cause = await expectFailure(bare.introspect(await appToken(), { requestId: 'm9' }), 503);
    expect(cause.code).toMatch(/CERT|SELF_SIGNED|UNABLE_TO_VERIFY/);
  });

  it('refuses a key that does not belong to the certificate, naming tokenService.tlsKeyFile', async () => {
    await expect(createClientAuth(mtls(dev, { tlsKeyFile: foreign.keyFile }))).rejects.toThrow(
      /^tokenService\.tlsKeyFile: the key does not belong to the first certificate/,
    );
    await expect(createClientAuth(mtls(dev, { tlsCertFile: ca.keyFile }))).rejects.toThrow(
      /^tokenService\.tlsCertFile: no PEM certificate/,
    );
  });

  it('reload() re-reads certificate and key; a failed reload keeps the old pair', async () => {
    const certFile = writeFile('reload.crt', client.cert);
    const keyFile = writeFile('reload.key', client.key);
    const { client: c, clientAuth } = await clientFor(
      mtls(dev, { tlsCertFile: certFile, tlsKeyFile: keyFile }),
    );
    const t = await appToken();
    expect((await c.introspect(t, { requestId: 'y1' })).active).toBe(true);
    writeFileSync(certFile, foreign.cert);
    writeFileSync(keyFile, foreign.key);
    await clientAuth.reload();
    await expectFailure(c.introspect(t, { requestId: 'y2' }), 502);
    writeFileSync(certFile, client.cert); // the key is still the foreign one: a mismatch
    await expect(clientAuth.reload()).rejects.toThrow(/^tokenService\.tlsKeyFile: /);
    await expectFailure(c.introspect(t, { requestId: 'y3' }), 502); // old (foreign) pair kept
    writeFileSync(keyFile, client.key);
    await clientAuth.reload();
    expect((await c.introspect(t, { requestId: 'y4' })).active).toBe(true);
  });

  it('end to end: client → gateway (mint, tls_client_auth, caFile) → 200 at the upstream', async () => {
    let gw: GatewayProcess | undefined;
    try {
      gw = await startGateway(
        mintGatewayConfig(
          {
            issuer: dev.issuer,
            clientId: 'gw-mtls',
            clientAuth: 'tls_client_auth',
            tlsCertFile: client.certFile,
            tlsKeyFile: client.keyFile,
            caFile: ca.certFile,
          },
          mintKeysFile,
          up.url,
        ),
      );
      const before = up.requests.length;
      const ok = await request(`${gw.url}/api/invoices/2`, {
        headers: { authorization: `Bearer ${await appToken()}` },
      });
      expect(ok.status).toBe(200);
      expect(up.requests.length).toBe(before + 1);
    } finally {
      await gw?.stop();
    }
  });

  it('end to end: a gateway whose certificate the provider rejects answers 502, not 401', async () => {
    let gw: GatewayProcess | undefined;
    try {
      gw = await startGateway(
        mintGatewayConfig(
          {
            issuer: dev.issuer,
            clientId: 'gw-mtls',
            clientAuth: 'tls_client_auth',
            tlsCertFile: foreign.certFile,
            tlsKeyFile: foreign.keyFile,
            caFile: ca.certFile,
          },
          mintKeysFile,
          up.url,
        ),
      );
      const before = up.requests.length;
      const res = await request(`${gw.url}/api/invoices/3`, {
        headers: { authorization: `Bearer ${await appToken()}` },
      });
      expect(res.status).toBe(502);
      expect(res.json()['error']).toBe('token_service_unavailable');
      expect(up.requests.length).toBe(before);
    } finally {
      await gw?.stop();
    }
  });
});

describe('the dev token service over HTTPS', () => {
  it('serves discovery (with tls_client_auth) to a client that trusts its CA, and only to such a client', async () => {
    const ca = await makeCa(dir, 'solo-ca');
    const server = await makeCert(dir, 'solo-server', ca, { subject: '/CN=127.0.0.1', san: 'IP:127.0.0.1' });
    const svc = await startDevTokenService({
      clients: [],
      scopes: [],
      tls: { cert: server.cert, key: server.key, ca: ca.cert },
    });
    const agent = new Agent({ connect: { ca: ca.cert } });
    try {
      expect(svc.issuer).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const res = await fetch(`${svc.issuer}/.well-known/openid-configuration`, {
        dispatcher: agent,
        signal: AbortSignal.timeout(5000),
      } as RequestInit);
      const doc = (await res.json()) as Record<string, unknown>;
      expect(doc['issuer']).toBe(svc.issuer);
      expect(doc['token_endpoint_auth_methods_supported']).toContain('tls_client_auth');
      await expect(fetch(svc.issuer, { signal: AbortSignal.timeout(5000) })).rejects.toThrow();
    } finally {
      await agent.close();
      await svc.close();
    }
  });
});
