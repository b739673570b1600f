import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runCli, waitFor } from '../../helpers/gateway-process.ts';

/**
 * `phantom-gateway validate --config FILE` (SPEC §2): the real executable, run to completion.
 * It prints every problem with its path, exits 0 (valid) or 1 (invalid), and contacts nothing.
 */

let dir: string;
let counter: Server;
let counterPort: number;
let connections = 0;
const sockets = new Set<Socket>();

/** Writes a config (object → YAML, or YAML text) into this file's temp dir; returns its path. */
function writeConfig(name: string, config: Record<string, unknown> | string): string {
  const file = join(dir, name);
  writeFileSync(file, typeof config === 'string' ? config : stringify(config));
  return file;
}

/** A minimal valid config (accept-jwt, secret from the environment). */
function validConfig(issuer = 'http://127.0.0.1:1'): Record<string, unknown> {
  return {
    tokenService: { issuer, clientId: 'gw', clientSecret: '${VALIDATE_TEST_SECRET}' },
    routes: [
      { name: 'a', match: { pathPrefix: '/a' }, upstream: 'http://127.0.0.1:2', scopes: ['read'] },
      { name: 'b', match: { pathPrefix: '/b' }, upstream: 'http://127.0.0.1:3', auth: 'none' },
    ],
  };
}

const ENV = { VALIDATE_TEST_SECRET: 'from-the-environment' };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-validate-'));
  // Counts every TCP connection it receives: validate must never open one.
  counter = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => {
    counter.once('error', reject);
    counter.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = counter.address();
  counterPort = addr !== null && typeof addr === 'object' ? addr.port : 0;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  if (counter) await new Promise<void>((resolve) => counter.close(() => resolve()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('validate', () => {
  it('exits 0 and prints "configuration is valid" for a valid file', async () => {
    const file = writeConfig('valid.yaml', validConfig());
    const res = await runCli(['validate', '--config', file], ENV);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('configuration is valid');
    expect(res.stderr).not.toContain('warning:');
  });

  it('exits 1 and prints every problem with its path in one run', async () => {
    const config = validConfig();
    const routes = config['routes'] as Array<Record<string, unknown>>;
    routes[1]!['upstream'] = 'not-a-url';
    (config['tokenService'] as Record<string, unknown>)['bogusKey'] = 1;
    const file = writeConfig('invalid.yaml', config);
    const res = await runCli(['validate', '--config', file], ENV);
    expect(res.code).toBe(1);
    const out = res.stdout + res.stderr;
    expect(out).toContain('routes[1].upstream: must be an absolute http(s) URL');
    expect(out).toMatch(/tokenService[^\n]*: unknown key "bogusKey"/);
    expect(out).not.toContain('configuration is valid');
  });

  it('warns, naming tokenService.clientSecret, when the secret is written literally', async () => {
    const config = validConfig();
    (config['tokenService'] as Record<string, unknown>)['clientSecret'] = 'a-literal-secret';
    const file = writeConfig('literal-secret.yaml', config);
    const res = await runCli(['validate', '--config', file], ENV);
    expect(res.code).toBe(0);
    const warnings = (res.stdout + res.stderr).split('\n').filter((l) => l.startsWith('warning:'));
    expect(warnings.some((l) => l.includes('tokenService.clientSecret'))).toBe(true);
    // The warning names the key, never the secret itself.
    expect(res.stdout + res.stderr).not.toContain('a-literal-secret');
  });

  it('exits 1 for a file that does not exist', async () => {
    const missing = join(dir, 'does-not-exist.yaml');
    const res = await runCli(['validate', '--config', missing], ENV);
    expect(res.code).toBe(1);
    expect(res.stdout + res.stderr).toContain(missing);
  });

  it('accepts the shipped config/gateway.yaml when its variables are set', async () => {
    const res = await runCli(['validate', '--config', 'config/gateway.yaml'], {
      INTROSPECTION_CLIENT_SECRET: 'secret-from-env',
      REDIS_URL: 'redis://127.0.0.1:6379/0',
    });
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('configuration is valid');
    expect(res.stderr).not.toContain('warning:');
  });

  it('rejects the shipped config/gateway.yaml naming each missing variable when they are not set', async () => {
    const res = await runCli(['validate', '--config', 'config/gateway.yaml'], {
      INTROSPECTION_CLIENT_SECRET: undefined,
      REDIS_URL: undefined,
    });
    expect(res.code).toBe(1);
    const out = res.stdout + res.stderr;
    expect(out).toMatch(/tokenService\.clientSecret: [^\n]*INTROSPECTION_CLIENT_SECRET/);
    expect(out).toMatch(/cache\.redis\.url: [^\n]*REDIS_URL/);
  });

  it('contacts nothing: no token service, JWKS or Redis connection is opened', async () => {
    const at = `http://127.0.0.1:${counterPort}`;
    const config = validConfig(at);
    (config['tokenService'] as Record<string, unknown>)['introspectionEndpoint'] = `${at}/introspect`;
    (config['tokenService'] as Record<string, unknown>)['requireAtStartup'] = true;
    config['jwt'] = { jwksUri: `${at}/jwks` };
    config['cache'] = { redis: { url: `redis://127.0.0.1:${counterPort}` } };
    const file = writeConfig('contacts-nothing.yaml', config);
    const before = connections;
    const res = await runCli(['validate', '--config', file], {
      ...ENV,
      PHANTOM_CACHE_KEY: 'c'.repeat(48),
    });
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('configuration is valid');
    expect(connections - before).toBe(0);
  });

  it('(control) the counting server does count a connection', async () => {
    const before = connections;
    await new Promise<void>((resolve, reject) => {
      const s = connect(counterPort, '127.0.0.1', () => {
        s.destroy();
        resolve();
      });
      s.on('error', reject);
    });
    await waitFor(() => connections > before, 5000, 'the counter to see the connection');
  });

  it('a config with problems also contacts nothing', async () => {
    const at = `http://127.0.0.1:${counterPort}`;
    const config = validConfig(at);
    config['unknownTopLevel'] = true;
    const file = writeConfig('contacts-nothing-invalid.yaml', config);
    const before = connections;
    const res = await runCli(['validate', '--config', file], ENV);
    expect(res.code).toBe(1);
    expect(res.stdout + res.stderr).toContain('unknown key "unknownTopLevel"');
    expect(connections - before).toBe(0);
  });
});

describe('command line', () => {
  it('--help exits 0 and prints the usage', async () => {
    const res = await runCli(['--help']);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('usage: phantom-gateway');
    expect(res.stdout).toContain('validate');
  });

  it('an unknown command exits 1', async () => {
    const res = await runCli(['no-such-command']);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('no-such-command');
  });
});
