import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { type Config, ConfigSchema } from '../../../src/config/schema.ts';
import { createClientAuth } from '../../../src/introspection/client-auth.ts';
import { createIntrospectionClient } from '../../../src/introspection/introspection-client.ts';
import {
  createTokenServiceMetadata,
  IssuerMismatchError,
} from '../../../src/introspection/token-service-metadata.ts';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';
import { pollUntil } from '../../helpers/wait.ts';

/**
 * Token service metadata over time (issue 5 part 1): refreshed on a schedule and after
 * introspection failures, a failed or impostor refresh keeps the previous metadata, and an issuer
 * mismatch is a startup error (exit 2) whatever `requireAtStartup` says.
 */

const CLIENT_ID = 'discovery-gw';
const SECRET = 'discovery-gateway-secret-0123456789';
const IMPOSTOR = 'https://impostor.example.com';

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function stubOn(opts: { port?: number; issuer?: string } = {}): Promise<CurityStub> {
  const stub = await startCurityStub({ clientId: CLIENT_ID, clientSecret: SECRET, ...opts });
  cleanups.push(() => stub.close());
  return stub;
}

function config(tokenService: Record<string, unknown>): Config {
  return ConfigSchema.parse({
    tokenService: { clientId: CLIENT_ID, clientSecret: SECRET, timeoutMs: 1000, ...tokenService },
    routes: [{ name: 'r', match: { pathPrefix: '/' }, upstream: 'http://127.0.0.1:1', scopes: ['a'] }],
  });
}

function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines };
}

/** A fetch that counts the discovery requests it carries (and passes everything on unchanged). */
function countingFetch() {
  const counter = { discoveries: 0 };
  const f: typeof fetch = (input, init) => {
    if (String(input instanceof Request ? input.url : input).includes('/.well-known/')) counter.discoveries++;
    return fetch(input, init);
  };
  return { counter, fetch: f };
}

function metadataFor(
  cfg: Config,
  opts: { refreshIntervalMs?: number; minRefreshGapMs?: number; fetch?: typeof fetch } = {},
) {
  const { logger, lines } = capturingLogger();
  const metadata = createTokenServiceMetadata(cfg, { logger, ...opts });
  cleanups.push(() => metadata.stop());
  return { metadata, lines };
}

describe('refresh of known metadata (module level, real sockets)', () => {
  it('on schedule: a changed introspection endpoint and jwks_uri are picked up', async () => {
    const stub = await stubOn();
    const other = await stubOn();
    const { metadata, lines } = metadataFor(config({ issuer: stub.issuer }), { refreshIntervalMs: 150 });
    await metadata.start();
    expect((await metadata.get()).introspectionEndpoint).toBe(stub.introspectionEndpoint);
    stub.discovery = { introspection_endpoint: other.introspectionEndpoint, jwks_uri: other.jwksUri };
    await pollUntil(
      async () => (await metadata.get()).introspectionEndpoint === other.introspectionEndpoint,
      'the scheduled refresh',
      5000,
    );
    expect((await metadata.get()).jwksUri).toBe(other.jwksUri);
    expect(metadata.ready()).toBe(true);
    expect(lines.some((l) => l['msg'] === 'token service metadata changed on refresh')).toBe(true);
  });

  it('a refresh that fails keeps the previous metadata (and ready stays true)', async () => {
    const port = await freePort();
    const stub = await startCurityStub({ clientId: CLIENT_ID, clientSecret: SECRET, port });
    const { metadata, lines } = metadataFor(config({ issuer: stub.issuer }), { refreshIntervalMs: 100 });
    await metadata.start();
    await stub.close(); // the token service is gone: every refresh fails
    await pollUntil(
      () =>
        lines.filter(
          (l) => l['msg'] === 'token service metadata refresh failed; keeping the previous metadata',
        ).length >= 2,
      'two failed refreshes',
      5000,
    );
    expect(metadata.ready()).toBe(true);
    expect((await metadata.get()).introspectionEndpoint).toBe(stub.introspectionEndpoint);
  });

  it('a refresh naming another issuer keeps the previous metadata and logs an error', async () => {
    const stub = await stubOn();
    const other = await stubOn();
    const { metadata, lines } = metadataFor(config({ issuer: stub.issuer }), { refreshIntervalMs: 100 });
    await metadata.start();
    stub.discovery = { issuer: IMPOSTOR, introspection_endpoint: other.introspectionEndpoint };
    await pollUntil(() => lines.some((l) => l['level'] === 50), 'the mismatch error', 5000);
    const line = lines.find((l) => l['level'] === 50)!;
    expect(line).toMatchObject({ expected: stub.issuer, got: IMPOSTOR });
    expect(String(line['msg'])).toContain('keeping the previous metadata');
    expect(metadata.ready()).toBe(true);
    expect((await metadata.get()).introspectionEndpoint).toBe(stub.introspectionEndpoint);
  });

  it('an introspection failure (404, refused) triggers a refresh, at most once per gap', async () => {
    const stub = await stubOn();
    const other = await stubOn();
    const { counter, fetch: f } = countingFetch();
    const cfg = config({ issuer: stub.issuer, mode: 'accept-jwt' });
    const clientAuth = await createClientAuth(cfg, { fetch: f });
    const { metadata, lines } = metadataFor(cfg, { fetch: clientAuth.fetch, minRefreshGapMs: 60_000 });
    const client = createIntrospectionClient(cfg, {
      metadata,
      logger: pino({ level: 'silent' }),
      clientAuth,
    });
    await metadata.start();
    expect(counter.discoveries).toBe(1);

    // The token service moved its introspection endpoint; the old one answers 404.
    stub.discovery = { introspection_endpoint: other.introspectionEndpoint };
    stub.behaviour = 'status:404';
    const token = other.newToken();
    other.register(token, { sub: 'alice', scope: 'a' });
    const e = await client.introspect(token, { requestId: 'r1' }).catch((err: unknown) => err);
    expect((e as { status?: number }).status).toBe(502);
    await pollUntil(
      async () => (await metadata.get()).introspectionEndpoint === other.introspectionEndpoint,
      'the refresh after the 404',
      5000,
    );
    expect(counter.discoveries).toBe(2);
    expect(lines.find((l) => l['msg'] === 'token service metadata changed on refresh')).toMatchObject({
      reason: 'introspection endpoint answered HTTP 404',
    });
    const r = await client.introspect(token, { requestId: 'r2' });
    expect(r.active).toBe(true);
    expect(other.calls).toBe(1);

    // Now the new endpoint fails too (refused): within the gap, no further discovery.
    await other.close();
    for (let i = 0; i < 3; i++) {
      const err = await client.introspect(token, { requestId: `r${i + 3}` }).catch((x: unknown) => x);
      expect((err as { status?: number }).status).toBe(503);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(counter.discoveries).toBe(2);
  });

  it('a refused introspection triggers a refresh when the gap allows', async () => {
    const deadPort = await freePort();
    const stub = await stubOn();
    const { counter, fetch: f } = countingFetch();
    const cfg = config({ issuer: stub.issuer, mode: 'accept-jwt' });
    const clientAuth = await createClientAuth(cfg, { fetch: f });
    stub.discovery = { introspection_endpoint: `http://127.0.0.1:${deadPort}/introspect` };
    const { metadata } = metadataFor(cfg, { fetch: clientAuth.fetch, minRefreshGapMs: 0 });
    const client = createIntrospectionClient(cfg, {
      metadata,
      logger: pino({ level: 'silent' }),
      clientAuth,
    });
    await metadata.start();
    stub.discovery = {};
    const token = stub.newToken();
    stub.register(token, { sub: 'bob', scope: 'a' });
    const e = await client.introspect(token, { requestId: 'r' }).catch((err: unknown) => err);
    expect((e as { status?: number }).status).toBe(503);
    await pollUntil(
      async () => (await metadata.get()).introspectionEndpoint === stub.introspectionEndpoint,
      'the refresh after the refused connection',
      5000,
    );
    expect(counter.discoveries).toBe(2);
    expect((await client.introspect(token, { requestId: 'r' })).active).toBe(true);
  });

  it('no discovery and no refresh when the endpoints are configured', async () => {
    const stub = await stubOn();
    const { counter, fetch: f } = countingFetch();
    const cfg = config({
      issuer: stub.issuer,
      mode: 'mint',
      introspectionEndpoint: `http://127.0.0.1:${await freePort()}/introspect`,
    });
    const { metadata } = metadataFor(cfg, { fetch: f, refreshIntervalMs: 50, minRefreshGapMs: 0 });
    await metadata.start();
    metadata.refreshSoon('test');
    await new Promise((r) => setTimeout(r, 200));
    expect(counter.discoveries).toBe(0);
  });

  it('an issuer mismatch at start() rejects with IssuerMismatchError naming both values', async () => {
    const stub = await stubOn({ issuer: IMPOSTOR });
    const { metadata } = metadataFor(config({ issuer: stub.origin }));
    const err = await metadata.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IssuerMismatchError);
    const m = err as IssuerMismatchError;
    expect(m.expected).toBe(stub.origin);
    expect(m.got).toBe(IMPOSTOR);
    expect(m.message).toContain('tokenService.issuer');
    expect(m.message).toContain(stub.origin);
    expect(m.message).toContain(IMPOSTOR);
  });
});

describe('through the real gateway process', () => {
  let up: EchoUpstream;
  const gateways: GatewayProcess[] = [];

  afterEach(async () => {
    await Promise.all(gateways.splice(0).map((g) => g.stop()));
  });
  afterAll(async () => {
    await up?.close();
  });

  async function gateway(tokenService: Record<string, unknown>, wait = true): Promise<GatewayProcess> {
    up ??= await startEchoUpstream();
    const g = await startGateway(
      {
        tokenService: { clientId: CLIENT_ID, clientSecret: '${SECRET}', timeoutMs: 1000, ...tokenService },
        routes: [{ name: 'r', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['a'] }],
      },
      { env: { SECRET }, waitForListening: wait },
    );
    gateways.push(g);
    return g;
  }

  it.each([true, false])(
    'an issuer mismatch at startup exits 2 naming tokenService.issuer and both values (requireAtStartup %s)',
    async (requireAtStartup) => {
      const stub = await stubOn({ issuer: IMPOSTOR });
      const g = await gateway({ issuer: stub.origin, requireAtStartup }, false);
      const code = await Promise.race([
        g.exited,
        new Promise((_, reject) => setTimeout(() => reject(new Error('gateway did not exit')), 15_000)),
      ]);
      expect(code).toBe(2);
      const stderr = g.output();
      expect(stderr).toContain('startup failed: tokenService.issuer:');
      expect(stderr).toContain(`"${IMPOSTOR}"`);
      expect(stderr).toContain(`"${stub.origin}"`);
      expect(stderr).not.toContain('phantom-gateway listening');
    },
  );

  it('an unreachable token service at startup (requireAtStartup false) still starts, not ready', async () => {
    const port = await freePort();
    const g = await gateway({ issuer: `http://127.0.0.1:${port}` });
    const ready = await request(`${g.adminUrl}/readyz`);
    expect(ready.status).toBe(503);
    // A mismatch found later by the background retry: an error on every attempt, never ready.
    await stubOn({ port, issuer: IMPOSTOR });
    await waitFor(
      () =>
        g
          .logs()
          .filter((l) => l['msg'] === 'token service metadata issuer does not match tokenService.issuer')
          .length >= 2,
      15_000,
      'two mismatch errors from the background retry',
    );
    expect((await request(`${g.adminUrl}/readyz`)).status).toBe(503);
    const line = g
      .logs()
      .find((l) => l['msg'] === 'token service metadata issuer does not match tokenService.issuer')!;
    expect(line).toMatchObject({ level: 'error', expected: `http://127.0.0.1:${port}`, got: IMPOSTOR });
  });

  it('after a 404 from the introspection endpoint, the gateway rediscovers and uses the new endpoints', async () => {
    const stub = await stubOn();
    // The same token service redeployed elsewhere: same issuer, new endpoints and signing keys.
    const other = await stubOn({ issuer: stub.issuer });
    const g = await gateway({ issuer: stub.issuer, mode: 'accept-jwt' });
    const token = other.newToken();
    other.register(token, { sub: 'alice', scope: 'a' });
    stub.discovery = { introspection_endpoint: other.introspectionEndpoint, jwks_uri: other.jwksUri };
    stub.behaviour = 'status:404';
    const call = () =>
      request(`${g.url}/api/x`, {
        headers: { authorization: `Bearer ${token}`, 'x-request-id': randomUUID() },
      });
    expect((await call()).status).toBe(502);
    await waitFor(
      () => g.logs().some((l) => l['msg'] === 'token service metadata changed on refresh'),
      5000,
      'the refresh',
    );
    const stubCalls = stub.calls;
    const res = await call();
    expect(res.status).toBe(200);
    expect(other.calls).toBe(1);
    expect(other.jwksCalls).toBeGreaterThan(0);
    expect(stub.calls).toBe(stubCalls);
    expect(up.requests.at(-1)!.headers.authorization).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
    expect(g.output()).not.toContain(token);
  });
});
