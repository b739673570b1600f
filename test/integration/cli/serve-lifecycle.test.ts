import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { type DevTokenService, startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, runCli, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * The `serve` command's life cycle (SPEC §2, §8): exit codes for configuration errors (1) and
 * startup failures (2), readiness while the token service is unknown, and graceful shutdown on
 * SIGTERM. Every case runs the real `bin/phantom-gateway serve` process.
 */

const GW_SECRET = 'gw-lifecycle-secret-0123456789';
const ENV = { GW_SECRET };

let dir: string;
let keysFile: string;
let up: EchoUpstream;

/** Writes a config object as YAML into this file's temp dir; returns its path. */
function writeConfig(name: string, config: Record<string, unknown>): string {
  const file = join(dir, name);
  writeFileSync(file, stringify(config));
  return file;
}

/** A free loopback port (nothing listens there). */
async function unusedPort(): Promise<number> {
  return freePort();
}

/** accept-jwt config whose token service endpoints are all configured (no discovery needed). */
function acceptJwtConfig(
  issuer: string,
  extra: { listen?: Record<string, unknown>; admin?: Record<string, unknown> } = {},
): Record<string, unknown> {
  return {
    ...(extra.listen ? { listen: extra.listen } : {}),
    ...(extra.admin ? { admin: extra.admin } : {}),
    tokenService: {
      issuer,
      introspectionEndpoint: `${issuer}/introspect`,
      clientId: 'phantom-gateway',
      clientSecret: '${GW_SECRET}',
    },
    jwt: { jwksUri: `${issuer}/jwks` },
    routes: [{ name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] }],
  };
}

/** mint-mode config; without introspectionEndpoint the gateway must discover the token service. */
function mintConfig(issuer: string, tokenService: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tokenService: {
      issuer,
      clientId: 'phantom-gateway',
      clientSecret: '${GW_SECRET}',
      mode: 'mint',
      timeoutMs: 1000,
      ...tokenService,
    },
    jwt: { mint: { issuer: 'https://gateway.test', signingKeysFile: keysFile, lifetimeSeconds: 120 } },
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices' },
        upstream: up.url,
        scopes: ['invoice_read'],
      },
      { name: 'status', match: { pathPrefix: '/status' }, upstream: up.url, auth: 'none' },
    ],
  };
}

/** Resolves true when a TCP connection to the port is refused, false when it is accepted. */
function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(false);
    }, 2000);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(false);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(err.code === 'ECONNREFUSED');
    });
  });
}

/** Resolves with the exit code, or rejects after `timeoutMs` (then kills the process). */
async function exitWithin(gw: GatewayProcess, timeoutMs: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      try {
        process.kill(gw.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(new Error(`gateway ${gw.pid} did not exit within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([gw.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-lifecycle-'));
  keysFile = join(dir, 'signing-keys.json');
  await generateSigningKeysFile(keysFile);
  up = await startEchoUpstream();
});

afterAll(async () => {
  await up?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('serve: configuration errors exit 1', () => {
  it('exits 1 for an invalid config and prints the problem with its path on stderr', async () => {
    const config = acceptJwtConfig(`http://127.0.0.1:${await unusedPort()}`);
    (config['routes'] as Array<Record<string, unknown>>)[0]!['upstream'] = 'not-a-url';
    const file = writeConfig('invalid.yaml', config);
    const res = await runCli(['serve', '--config', file], ENV);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('routes[0].upstream: must be an absolute http(s) URL');
    expect(res.stdout).not.toContain('phantom-gateway listening');
  });

  it('exits 1 naming jwt.mint.signingKeysFile when the signing keys file does not exist', async () => {
    const config = mintConfig(`http://127.0.0.1:${await unusedPort()}`);
    (config['jwt'] as { mint: Record<string, unknown> }).mint['signingKeysFile'] = join(dir, 'nope.json');
    const file = writeConfig('mint-missing-keys.yaml', config);
    const res = await runCli(['serve', '--config', file], ENV);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('jwt.mint.signingKeysFile');
    expect(res.stdout).not.toContain('phantom-gateway listening');
  });

  it('exits 1 naming PHANTOM_CACHE_KEY when cache.redis is configured without it', async () => {
    const config = acceptJwtConfig(`http://127.0.0.1:${await unusedPort()}`);
    config['cache'] = { redis: { url: `redis://127.0.0.1:${await unusedPort()}` } };
    const file = writeConfig('redis-without-key.yaml', config);
    const res = await runCli(['serve', '--config', file], { ...ENV, PHANTOM_CACHE_KEY: undefined });
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('PHANTOM_CACHE_KEY');
    expect(res.stdout).not.toContain('phantom-gateway listening');
  });
});

describe('serve: startup failures exit 2', () => {
  it('exits 2 when the listen port is already taken', async () => {
    const holder: Server = createServer();
    await new Promise<void>((resolve, reject) => {
      holder.once('error', reject);
      holder.listen(0, '127.0.0.1', () => resolve());
    });
    try {
      const addr = holder.address();
      const port = addr !== null && typeof addr === 'object' ? addr.port : 0;
      const config = acceptJwtConfig(`http://127.0.0.1:${await unusedPort()}`, {
        listen: { host: '127.0.0.1', port },
        admin: { host: '127.0.0.1', port: await unusedPort() },
      });
      const file = writeConfig('port-taken.yaml', config);
      const res = await runCli(['serve', '--config', file], ENV);
      expect(res.code).toBe(2);
      expect(res.stderr).toContain('EADDRINUSE');
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
  });

  it('exits 2 when requireAtStartup is true and token service discovery fails', async () => {
    const config = mintConfig(`http://127.0.0.1:${await unusedPort()}`, { requireAtStartup: true });
    config['listen'] = { host: '127.0.0.1', port: await unusedPort() };
    config['admin'] = { host: '127.0.0.1', port: await unusedPort() };
    const file = writeConfig('require-at-startup.yaml', config);
    const res = await runCli(['serve', '--config', file], ENV);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('requireAtStartup');
    expect(res.stdout).not.toContain('phantom-gateway listening');
  });
});

describe('serve: token service unknown at startup (requireAtStartup: false)', () => {
  let gw: GatewayProcess | undefined;
  let ts: DevTokenService | undefined;

  afterAll(async () => {
    await gw?.stop();
    await ts?.close();
  });

  it('starts not ready, answers 503 (never 401), then becomes ready once the token service appears', async () => {
    const tsPort = await unusedPort();
    const issuer = `http://127.0.0.1:${tsPort}`;
    gw = await startGateway(mintConfig(issuer), { env: ENV });

    // Not ready, but alive.
    const readyz = await request(`${gw.adminUrl}/readyz`);
    expect(readyz.status).toBe(503);
    expect((await request(`${gw.adminUrl}/livez`)).status).toBe(200);

    // A protected request is a token service outage, not an authentication failure.
    const res = await request(`${gw.url}/api/invoices`, {
      headers: { authorization: 'Bearer some-opaque-token-value' },
    });
    expect(res.status).toBe(503);
    expect(res.json()['error']).toBe('token_service_unavailable');
    expect(res.headers['retry-after']).toBeDefined();
    expect(res.headers['www-authenticate']).toBeUndefined();
    // A public route does not depend on the token service.
    expect((await request(`${gw.url}/status`)).status).toBe(200);

    // Now the token service comes up on the very port the issuer names.
    ts = await startDevTokenService({
      host: '127.0.0.1',
      port: tsPort,
      clients: [
        { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'reader', client_secret: 'reader-secret', scope: 'invoice_read' },
      ],
      scopes: ['invoice_read'],
      introspectionClientId: 'phantom-gateway',
    });
    expect(ts.issuer).toBe(issuer);

    // Only /readyz is polled: the gateway must retry discovery in the background on its own.
    const g = gw;
    await waitFor(
      async () => (await request(`${g.adminUrl}/readyz`)).status === 200,
      45_000,
      'the gateway to become ready',
    );
    const ready = (await request(`${gw.adminUrl}/readyz`)).json();
    expect(ready['ready']).toBe(true);

    const token = (await ts.issueToken('reader', 'reader-secret', 'invoice_read')).access_token;
    const ok = await request(`${gw.url}/api/invoices`, { headers: { authorization: `Bearer ${token}` } });
    expect(ok.status).toBe(200);
    const forwarded = String(up.requests.at(-1)?.headers.authorization);
    expect(forwarded).toMatch(/^Bearer ey/);
    expect(forwarded).not.toContain(token);
  }, 90_000);
});

describe('serve: graceful shutdown on SIGTERM', () => {
  it('finishes an in-flight request, refuses new connections, and exits 0', async () => {
    const ts = await startReaderTokenService();
    const gw = await startGateway(mintConfig(ts.issuer, { requireAtStartup: true }), { env: ENV });
    try {
      const token = (await ts.issueToken('reader', 'reader-secret', 'invoice_read')).access_token;
      // Warm up: discovery done, token introspected and cached.
      expect(
        (await request(`${gw.url}/api/invoices`, { headers: { authorization: `Bearer ${token}` } })).status,
      ).toBe(200);

      up.behaviour = { slowMs: 1500 };
      const before = up.requests.length;
      const inFlight = request(`${gw.url}/api/invoices/slow`, {
        headers: { authorization: `Bearer ${token}` },
        timeoutMs: 20_000,
      });
      inFlight.catch(() => {}); // asserted below; avoid an unhandled rejection meanwhile
      await waitFor(() => up.requests.length > before, 10_000, 'the upstream to receive the request');

      let exited = false;
      void gw.exited.then(() => (exited = true));
      process.kill(gw.pid, 'SIGTERM');

      // New connections are refused while the in-flight request is still being served.
      await waitFor(() => connectionRefused(gw.port), 10_000, 'the listener to close');
      expect(exited).toBe(false);

      const res = await inFlight;
      expect(res.status).toBe(200);
      expect(res.json()['url']).toBe('/api/invoices/slow');

      expect(await exitWithin(gw, 20_000)).toBe(0);
    } finally {
      up.behaviour = 'echo';
      await gw.stop();
      await ts.close();
    }
  }, 60_000);

  it('exits 0 after shutdownGraceSeconds even when an upstream never answers', async () => {
    const ts = await startReaderTokenService();
    const config = mintConfig(ts.issuer, { requireAtStartup: true });
    config['shutdownGraceSeconds'] = 1;
    const gw = await startGateway(config, { env: ENV });
    try {
      const token = (await ts.issueToken('reader', 'reader-secret', 'invoice_read')).access_token;
      up.behaviour = 'hang';
      const before = up.requests.length;
      const hanging = request(`${gw.url}/api/invoices/hang`, {
        headers: { authorization: `Bearer ${token}` },
        timeoutMs: 30_000,
      });
      const outcome = hanging.then(
        (r) => `status ${r.status}`,
        () => 'connection closed',
      );
      await waitFor(() => up.requests.length > before, 10_000, 'the upstream to receive the request');

      process.kill(gw.pid, 'SIGTERM');
      expect(await exitWithin(gw, 15_000)).toBe(0);
      // The hanging request was cut off by the shutdown, not answered with success.
      expect(await outcome).not.toBe('status 200');
    } finally {
      up.behaviour = 'echo';
      await gw.stop();
      await ts.close();
    }
  }, 60_000);
});

/** A dev token service with the gateway's client and a reader client. */
function startReaderTokenService(): Promise<DevTokenService> {
  return startDevTokenService({
    host: '127.0.0.1',
    port: 0,
    clients: [
      { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
      { client_id: 'reader', client_secret: 'reader-secret', scope: 'invoice_read' },
    ],
    scopes: ['invoice_read'],
    introspectionClientId: 'phantom-gateway',
  });
}
