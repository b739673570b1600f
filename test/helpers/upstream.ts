import http, { type IncomingHttpHeaders, type Server } from 'node:http';
import { recordSecret } from './leak-registry.ts';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  /** The client port of the connection that carried the request (keep-alive reuse). */
  remotePort: number;
  bodyLength: number;
  body: Buffer;
}

export interface EchoUpstream {
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** What the next requests get; 'echo' answers 200 with a JSON summary of the request. */
  behaviour:
    | 'echo'
    | 'hang'
    | 'reset'
    | { slowMs: number }
    | { streamBytes: number }
    /** 200 announcing twice these bytes, these bytes written, then (50 ms later) a TCP reset. */
    | { resetAfterBytes: number }
    /** 200 with Content-Length `bytes`, written `chunkBytes` every `everyMs` ms. */
    | { slowStream: { bytes: number; chunkBytes: number; everyMs: number } };
  /** Requests whose head arrived (counted at once, before the body). */
  opened: number;
  /** Requests whose connection closed before the upstream's answer was finished (the peer went away). */
  aborted: number;
  /** Extra fields on the echo answer (e.g. the upstream's own X-Request-Id). */
  responseHeaders?: Record<string, string>;
  close(): Promise<void>;
}

/**
 * A real HTTP upstream on a free loopback port that records every request it receives (what
 * the gateway forwarded) and answers per `behaviour`.
 */
export async function startEchoUpstream(): Promise<EchoUpstream> {
  const requests: RecordedRequest[] = [];
  const up: EchoUpstream = {
    url: '',
    port: 0,
    requests,
    behaviour: 'echo',
    opened: 0,
    aborted: 0,
    close: async () => {},
  };
  const server: Server = http.createServer((req, res) => {
    up.opened++;
    res.once('close', () => {
      if (!res.writableFinished) up.aborted++;
    });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const rec = {
        remotePort: req.socket.remotePort ?? 0,
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        bodyLength: body.length,
        body,
      };
      requests.push(rec);
      // What the gateway forwarded (the JWT): never to be found in a log line.
      const auth = req.headers.authorization;
      if (typeof auth === 'string') recordSecret(auth.replace(/^Bearer\s+/i, ''));
      const b = up.behaviour;
      if (b === 'hang') return;
      if (b === 'reset') {
        req.socket.destroy();
        return;
      }
      if (typeof b === 'object' && 'resetAfterBytes' in b) {
        res.writeHead(200, {
          'Content-Type': 'application/octet-stream',
          'Content-Length': String(b.resetAfterBytes * 2),
        });
        res.write(Buffer.alloc(b.resetAfterBytes, 0x72));
        const t = setTimeout(() => req.socket.resetAndDestroy(), 50);
        res.once('close', () => clearTimeout(t));
        return;
      }
      if (typeof b === 'object' && 'slowStream' in b) {
        const { bytes, chunkBytes, everyMs } = b.slowStream;
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes) });
        let left = bytes;
        const chunk = Buffer.alloc(chunkBytes, 0x73);
        const t = setInterval(() => {
          const n = Math.min(left, chunk.length);
          left -= n;
          if (left === 0) {
            clearInterval(t);
            res.end(chunk.subarray(0, n));
          } else res.write(chunk.subarray(0, n));
        }, everyMs);
        res.once('close', () => clearInterval(t));
        return;
      }
      if (typeof b === 'object' && 'streamBytes' in b) {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
        let left = b.streamBytes;
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        const pump = () => {
          while (left > 0) {
            const n = Math.min(left, chunk.length);
            left -= n;
            if (!res.write(chunk.subarray(0, n))) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      const send = () => {
        const text = JSON.stringify({
          method: rec.method,
          url: rec.url,
          headers: rec.headers,
          bodyLength: rec.bodyLength,
        });
        res.writeHead(200, {
          'Content-Type': 'application/json',
          'X-Upstream': 'echo',
          ...up.responseHeaders,
        });
        res.end(text);
      };
      if (typeof b === 'object' && 'slowMs' in b) setTimeout(send, b.slowMs);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address() as { port: number };
  up.port = addr.port;
  up.url = `http://127.0.0.1:${addr.port}`;
  up.close = () =>
    new Promise((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  return up;
}
