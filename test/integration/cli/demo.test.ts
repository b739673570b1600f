import { type ChildProcess, spawn } from 'node:child_process';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, ROOT, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';

/**
 * `phantom-gateway demo` (SPEC §2): one process with a development token service, two sample
 * services and the gateway. The test follows the flow the demo prints, with node:http instead
 * of curl, against the URLs the demo printed.
 */

interface Demo {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  gateway: string;
  admin: string;
  issuer: string;
}

const started: Demo[] = [];

/** Spawns the demo and waits (bounded) until it printed its instructions. */
async function startDemo(extraEnv: NodeJS.ProcessEnv = {}): Promise<Demo> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extraEnv };
  if (extraEnv['REDIS_URL'] === undefined) delete env['REDIS_URL'];
  const child = spawn(BIN, ['demo'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  let done = false;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      done = true;
      resolve(code);
    }),
  );
  const demo: Demo = { child, output: () => out, exited, gateway: '', admin: '', issuer: '' };
  started.push(demo);
  await waitFor(() => done || out.includes('Press Ctrl-C to stop.'), 30_000, 'the demo to start');
  if (done) throw new Error(`demo exited during startup:\n${out}`);

  const gatewayLine = /^\s*gateway\s+(http:\/\/\S+)\s+\(admin (http:\/\/[^)\s]+)\)/m.exec(out);
  const issuerLine = /^\s*token service\s+(http:\/\/\S+)/m.exec(out);
  if (!gatewayLine || !issuerLine) throw new Error(`cannot find the URLs in the demo output:\n${out}`);
  demo.gateway = gatewayLine[1]!;
  demo.admin = gatewayLine[2]!;
  demo.issuer = issuerLine[1]!;
  return demo;
}

/** Sends SIGINT (Ctrl-C) and waits (bounded) for the exit code. */
async function interrupt(demo: Demo, timeoutMs = 15_000): Promise<number | null> {
  demo.child.kill('SIGINT');
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`demo did not exit within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([demo.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** client_credentials at `<issuer>/token` with HTTP Basic client authentication, as the demo prints. */
async function getToken(issuer: string, clientId: string, secret: string, scope: string): Promise<string> {
  const res = await request(`${issuer}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${clientId}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope }).toString(),
  });
  expect(res.status).toBe(200);
  const token = res.json()['access_token'];
  expect(typeof token).toBe('string');
  return token as string;
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

afterAll(async () => {
  for (const demo of started) {
    if (demo.child.exitCode === null && demo.child.signalCode === null) {
      demo.child.kill('SIGKILL');
      await Promise.race([demo.exited, new Promise((r) => setTimeout(r, 5000))]);
    }
  }
});

describe('demo', () => {
  it('runs the printed flow end to end and stops cleanly on Ctrl-C', async () => {
    const demo = await startDemo();
    expect(demo.output()).toContain('in-process (set REDIS_URL for Redis)');

    // An opaque token that may read invoices.
    const reader = await getToken(demo.issuer, 'reader-app', 'reader-secret', 'invoice_read');
    expect(reader.split('.')).not.toHaveLength(3);

    // 200: the invoices service received a JWT minted by the gateway.
    const read = await request(`${demo.gateway}/api/invoices`, { headers: bearer(reader) });
    expect(read.status).toBe(200);
    const received = read.json()['receivedJwt'] as {
      header: Record<string, unknown>;
      claims: Record<string, unknown>;
    };
    expect(received.claims['sub']).toBe('reader-app');
    expect(received.claims['scope']).toBe('invoice_read');
    expect(received.header['typ']).toBe('at+jwt');

    // 401: no token.
    const anonymous = await request(`${demo.gateway}/api/invoices`);
    expect(anonymous.status).toBe(401);

    // 403: the reader token lacks invoice_write.
    const forbidden = await request(`${demo.gateway}/api/invoices`, {
      method: 'POST',
      headers: bearer(reader),
    });
    expect(forbidden.status).toBe(403);

    // 201: a token with invoice_write may create an invoice.
    const writer = await getToken(demo.issuer, 'writer-app', 'writer-secret', 'invoice_read invoice_write');
    const created = await request(`${demo.gateway}/api/invoices`, {
      method: 'POST',
      headers: bearer(writer),
    });
    expect(created.status).toBe(201);

    // 200: a public route, no token needed, and no Authorization reaches the service.
    const status = await request(`${demo.gateway}/status`);
    expect(status.status).toBe(200);
    expect(status.json()['receivedAuthorization']).toBe(false);

    // The gateway's public signing keys.
    const jwks = await request(`${demo.admin}/.well-known/jwks.json`);
    expect(jwks.status).toBe(200);
    expect((jwks.json()['keys'] as unknown[]).length).toBe(1);

    expect(await interrupt(demo)).toBe(0);
  }, 90_000);

  describe('with REDIS_URL', () => {
    let redis: RedisServerHandle | undefined;
    let client: Redis | undefined;

    afterAll(async () => {
      client?.disconnect();
      await redis?.stop();
    });

    it('uses Redis: /readyz reports it ready and cached entries are written with a TTL', async () => {
      redis = await startRedisServer();
      const demo = await startDemo({ REDIS_URL: redis.url });
      expect(demo.output()).toContain('in-process + Redis');

      await waitFor(
        async () => (await request(`${demo.admin}/readyz`)).json()['redis'] === 'ready',
        15_000,
        'the demo to report redis ready',
      );
      const ready = await request(`${demo.admin}/readyz`);
      expect(ready.status).toBe(200);

      const reader = await getToken(demo.issuer, 'reader-app', 'reader-secret', 'invoice_read');
      expect((await request(`${demo.gateway}/api/invoices`, { headers: bearer(reader) })).status).toBe(200);

      client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 5000 });
      await client.connect();
      const c = client;
      let keys: string[] = [];
      await waitFor(
        async () => {
          keys = await c.keys('phantom:*');
          return keys.length > 0;
        },
        10_000,
        'a phantom: key in Redis',
      );
      let withTtl = 0;
      for (const key of keys) {
        const pttl = await c.pttl(key);
        expect(pttl).not.toBe(-1); // -1: no TTL; -2: expired meanwhile (a short lock)
        if (pttl > 0) withTtl++;
      }
      expect(withTtl).toBeGreaterThan(0);
      // Raw tokens are never used as keys.
      expect(keys.some((k) => k.includes(reader))).toBe(false);

      expect(await interrupt(demo)).toBe(0);
    }, 90_000);
  });
});
