import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import {
  type FaultEnv,
  FD_SLACK,
  fdCount,
  MARGIN_MS,
  ROUTE_TIMEOUT_MS,
  send,
  settledFds,
  startFaultEnv,
} from '../faults/fault-loop.ts';
import { waitFor } from '../helpers/gateway-process.ts';

/**
 * Resource abuse (issue 8 part 1) against the real gateway process: slowloris headers (closed by
 * the 15 s headersTimeout — enforced by a 1 s sweep, not node's default 30 s one), bodies that stall
 * (504 after routes[].timeoutMs; no token → 401 before any body is read), aborted uploads (nothing
 * left behind), and many connections bounded by `listen.maxConnections` (also on reload).
 */

/** The public listener's headersTimeout (src/main.ts). */
const HEADERS_TIMEOUT_MS = 15_000;
/** Its connectionsCheckingInterval: the sweep that enforces headersTimeout / requestTimeout. */
const CHECK_INTERVAL_MS = 1_000;
const MAX_CONNECTIONS = 20;

let env: FaultEnv;

beforeAll(async () => {
  env = await startFaultEnv({ listen: { maxConnections: MAX_CONNECTIONS } });
}, 60_000);

afterAll(async () => {
  await env?.close();
});

interface Conn {
  sock: Socket;
  closed: boolean;
  data: string;
  closedAt: Promise<number>;
}

/** A raw connection that records what it reads and when the server closed it. */
async function open(): Promise<Conn> {
  const sock = connect(env.gw.port, '127.0.0.1');
  const c: Conn = { sock, closed: false, data: '', closedAt: Promise.resolve(0) };
  c.closedAt = new Promise((r) =>
    sock.once('close', () => {
      c.closed = true;
      r(performance.now());
    }),
  );
  sock.on('data', (d: Buffer) => (c.data += d.toString('latin1')));
  sock.on('error', () => {});
  await new Promise<void>((r, j) => {
    sock.once('connect', () => r());
    sock.once('close', () => j(new Error('closed before connect')));
  });
  return c;
}

describe('resource abuse', () => {
  it('slowloris headers: the connection is closed by headersTimeout (15 s), not held for up to 45 s', async () => {
    const c = await open();
    const started = performance.now();
    c.sock.write('GET /api/slowloris HTTP/1.1\r\nHost: gw.test\r\n');
    // One more header line every 500 ms, for at most 40 s: never the blank line that ends the head.
    const trickle = (async () => {
      for (let i = 0; i < 80 && !c.closed; i++) {
        await sleep(500);
        if (!c.closed) c.sock.write(`X-Slow-${i}: ${'a'.repeat(8)}\r\n`);
      }
    })();
    const closedAt = await Promise.race([c.closedAt, sleep(40_000).then(() => -1)]);
    await trickle;
    c.sock.destroy();
    expect(closedAt, 'closed by the gateway').toBeGreaterThan(0);
    // Bound check on the configured timeout (+ the sweep interval + margin), not a speed assertion.
    expect(closedAt - started).toBeLessThanOrEqual(HEADERS_TIMEOUT_MS + CHECK_INTERVAL_MS + MARGIN_MS);
    // Nothing reached the upstream.
    expect(env.up.requests.some((r) => r.url.includes('slowloris'))).toBe(false);
  }, 50_000);

  it('a body that stalls longer than routes[].timeoutMs: 504 within that timeout, upstream request aborted', async () => {
    const aborted = env.up.aborted;
    const c = await open();
    const started = performance.now();
    c.sock.write(
      `POST /api/stalled-body HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer ${env.hot[0]}\r\n` +
        'Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n0123456789',
    );
    await waitFor(() => c.data.includes('\r\n\r\n'), ROUTE_TIMEOUT_MS + MARGIN_MS, 'an answer');
    expect(performance.now() - started).toBeLessThanOrEqual(ROUTE_TIMEOUT_MS + MARGIN_MS);
    expect(c.data).toMatch(/^HTTP\/1\.1 504 /);
    expect(c.data).toContain('"error":"upstream_timeout"');
    await waitFor(() => env.up.aborted > aborted, 5000, 'the upstream request aborted');
    c.sock.destroy();
  });

  it('a slow body without a token: 401 at once, before any body is read, nothing forwarded', async () => {
    const opened = env.up.opened;
    const c = await open();
    c.sock.write(
      'POST /api/no-token HTTP/1.1\r\nHost: gw.test\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\nx',
    );
    await waitFor(() => c.data.includes('\r\n\r\n'), 5000, 'an answer');
    expect(c.data).toMatch(/^HTTP\/1\.1 401 /);
    expect(env.up.opened).toBe(opened);
    c.sock.destroy();
  });

  it('aborted uploads: every upstream request aborted too, descriptors back to the baseline', async () => {
    const aborted = env.up.aborted;
    const n = 30;
    const conns: Conn[] = [];
    // Below maxConnections at once: batches of 10.
    for (let b = 0; b < n / 10; b++) {
      const opened = env.up.opened;
      const batch = await Promise.all(Array.from({ length: 10 }, () => open()));
      for (const c of batch) {
        c.sock.write(
          `PUT /api/upload HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer ${env.hot[1]}\r\n` +
            'Content-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n',
        );
        c.sock.write(Buffer.alloc(32 * 1024, 0x61));
      }
      await waitFor(() => env.up.opened >= opened + 10, 5000, 'the uploads at the upstream');
      for (const c of batch) c.sock.destroy();
      conns.push(...batch);
    }
    await waitFor(() => env.up.aborted >= aborted + n, 5000, 'every upstream upload aborted');
    expect(env.up.aborted - aborted).toBe(n);
    let fds = 0;
    await waitFor(
      () => {
        fds = fdCount(env.gw.pid);
        return fds <= env.baselineFds + FD_SLACK;
      },
      15_000,
      'descriptors back to the baseline',
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${fds} > ${env.baselineFds} + ${FD_SLACK}`);
    });
    expect((await send(env.gw, '/api/after-uploads', env.hot[1]!)).outcome).toBe('200');
  });

  /**
   * Opens `total` idle connections and checks that exactly `limit` are held: the rest are closed by
   * the gateway at once, a new request is refused (closed unanswered) while they are held, and the
   * gateway serves again once they are gone. Deterministic: counted, no timing.
   */
  async function expectConnectionLimit(limit: number, total: number): Promise<void> {
    const fds0 = await settledFds(env.gw.pid);
    const conns = await Promise.all(Array.from({ length: total }, () => open().catch(() => undefined)));
    const live = conns.filter((c): c is Conn => c !== undefined);
    const openCount = () => live.filter((c) => !c.closed).length;
    try {
      await waitFor(() => openCount() <= limit, 10_000, `at most ${limit} connections held`);
      // Barrier: a new connection goes through the same accept queue after all of those; it is
      // refused (closed without an answer) because `limit` are still held.
      const refused = await send(env.gw, '/api/over-the-limit', env.hot[2]!, { timeoutMs: 5000 });
      expect(refused.outcome).toMatch(/^error:/);
      expect(openCount()).toBe(limit);
      // The process holds one descriptor per held connection, not one per attempt.
      expect(fdCount(env.gw.pid)).toBeLessThanOrEqual(fds0 + limit + FD_SLACK);
    } finally {
      for (const c of live) c.sock.destroy();
    }
    // The gateway's count drops as the held connections close: served again by itself.
    let last = '';
    await waitFor(
      async () => {
        last = (await send(env.gw, '/api/after-limit', env.hot[2]!)).outcome;
        return last === '200';
      },
      10_000,
      'a request served again',
    ).catch((err: Error) => {
      throw new Error(`${err.message} (last ${last})`);
    });
  }

  it('listen.maxConnections 20: of 60 idle connections exactly 20 are held; served again once they close', async () => {
    await expectConnectionLimit(MAX_CONNECTIONS, 60);
  });

  it('listen.maxConnections is applied on reload (20 → 5)', async () => {
    const file = env.gw.configFile;
    const config = parse(readFileSync(file, 'utf8')) as { listen: Record<string, unknown> };
    config.listen['maxConnections'] = 5;
    const reloads = () => env.gw.logs().filter((l) => l['msg'] === 'configuration reloaded').length;
    const before = reloads();
    writeFileSync(file, stringify(config));
    env.gw.signal('SIGHUP');
    await waitFor(() => reloads() > before, 10_000, 'configuration reloaded');
    await expectConnectionLimit(5, 15);
  });
});
