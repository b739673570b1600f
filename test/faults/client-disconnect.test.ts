import http from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/gateway-process.ts';
import {
  checkFault,
  type FaultEnv,
  MARGIN_MS,
  ROUTE_TIMEOUT_MS,
  runFaultLoop,
  startFaultEnv,
  summaries,
} from './fault-loop.ts';

/**
 * Clients disconnecting under a steady loop (issue 8 part 2): uploads cut mid-body and downloads
 * abandoned mid-response, on route `/slow` (its own upstream) while the loop runs on `/api`. For
 * each cut the upstream must see its own request aborted (its socket closed before its answer was
 * finished: the gateway does not keep talking to it for nobody), the loop stays all 200, and the
 * gateway's descriptors come back to the baseline.
 */

let env: FaultEnv;
const CUTS = 10;

beforeAll(async () => {
  env = await startFaultEnv();
}, 60_000);

afterAll(async () => {
  console.log(`client disconnects:\n  ${summaries.join('\n  ')}`);
  await env?.close();
});

/** Sends the head of a 1 MiB upload and 64 KiB of it; cuts the connection once the upstream has the request. */
async function cutUpload(token: string): Promise<void> {
  const opened = env.up2.opened;
  const sock = connect(env.gw.port, '127.0.0.1');
  sock.on('error', () => {});
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.write(
    `POST /slow/upload HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer ${token}\r\n` +
      'Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n',
  );
  sock.write(Buffer.alloc(64 * 1024, 0x75));
  try {
    await waitFor(() => env.up2.opened > opened, 5000, 'the upload at the upstream');
  } finally {
    sock.destroy();
  }
}

/** Starts a slow 8 MiB download and abandons it at its first bytes. */
function abortDownload(token: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${env.gw.url}/slow/download`, {
      headers: { authorization: `Bearer ${token}` },
      agent: false,
    });
    req.setTimeout(5000, () => req.destroy(new Error('download did not start')));
    req.on('error', (err) => (err.message === 'download did not start' ? reject(err) : resolve()));
    req.on('response', (res) => {
      expect(res.statusCode).toBe(200);
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.end();
  });
}

describe('clients disconnecting during a steady request loop', () => {
  it('uploads cut mid-request: each upstream request aborted too, the loop unharmed, no leak', async () => {
    const aborted = env.up2.aborted;
    env.up2.behaviour = 'echo';
    const r = await runFaultLoop(env, {
      name: `${CUTS} uploads cut mid-request`,
      inject: async () => {
        for (let i = 0; i < CUTS; i++) {
          await cutUpload(env.hot[i % env.hot.length]!);
          await waitFor(() => env.up2.aborted >= aborted + i + 1, 5000, `upstream request ${i + 1} aborted`);
        }
      },
      remove: () => {},
    });
    expect(env.up2.aborted - aborted).toBe(CUTS);
    await checkFault(env, r, {
      allowed: () => [],
      boundMs: ROUTE_TIMEOUT_MS + MARGIN_MS,
      recoverWithinMs: 0,
    });
  });

  it('downloads aborted mid-response: each upstream request aborted too, the loop unharmed, no leak', async () => {
    const aborted = env.up2.aborted;
    env.up2.behaviour = { slowStream: { bytes: 8 * 1024 * 1024, chunkBytes: 64 * 1024, everyMs: 20 } };
    const r = await runFaultLoop(env, {
      name: `${CUTS} downloads aborted mid-response`,
      inject: async () => {
        for (let i = 0; i < CUTS; i++) {
          await abortDownload(env.hot[i % env.hot.length]!);
          await waitFor(() => env.up2.aborted >= aborted + i + 1, 5000, `upstream response ${i + 1} aborted`);
        }
      },
      remove: () => {},
    });
    expect(env.up2.aborted - aborted).toBe(CUTS);
    await checkFault(env, r, {
      allowed: () => [],
      boundMs: ROUTE_TIMEOUT_MS + MARGIN_MS,
      recoverWithinMs: 0,
    });
  });
});
