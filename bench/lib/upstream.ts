import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';

/**
 * The bench's sample upstream: as lean as node:http allows, so the figures measure what sits in
 * front of it. Unlike the tests' echo upstream it records nothing.
 *   GET  …/bytes/<n> → n bytes (≤ 16 MiB) of application/octet-stream (download streaming)
 *   POST|PUT …       → reads the body to the end, answers {"received": <bytes>}
 *   anything else    → a small JSON body
 * Run as a process: `node bench/lib/upstream.ts --port <n>` (prints nothing; bench/run.ts polls it).
 */

const SMALL = Buffer.from('{"ok":true,"service":"bench-upstream"}');
const MAX_BYTES = 16 * 1024 * 1024;
const BLOB = Buffer.alloc(MAX_BYTES, 0x61);

export function createUpstream(): Server {
  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    if (req.method === 'POST' || req.method === 'PUT') {
      let received = 0;
      req.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      req.on('end', () => {
        const body = Buffer.from(`{"received":${received}}`);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
        res.end(body);
      });
      return;
    }
    const bytesAt = url.indexOf('/bytes/');
    if (bytesAt !== -1) {
      const n = Math.min(MAX_BYTES, Number.parseInt(url.slice(bytesAt + '/bytes/'.length), 10) || 0);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
      res.end(BLOB.subarray(0, n));
      return;
    }
    // Drain whatever body a GET carries so the connection stays reusable.
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': SMALL.length });
    res.end(SMALL);
  });
  // Longer than any proxy's idle agent socket, so a reused upstream socket is never closed under it.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  return server;
}

export function listen(server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { port: { type: 'string' } } });
  const server = createUpstream();
  await listen(server, Number(values.port ?? 0));
  process.once('SIGTERM', () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
