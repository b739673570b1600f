import { Agent, createServer, type IncomingHttpHeaders, request } from 'node:http';
import { parseArgs } from 'node:util';
import { listen } from './upstream.ts';

/**
 * `node-proxy`: the least a Node reverse proxy can do (the Node limit): node:http in, node:http
 * out through a keep-alive agent sized like the gateway's, hop-by-hop headers dropped, one
 * fixed header added, bodies streamed both ways. No auth, no routing.
 * `node bench/lib/node-proxy.ts --port <n> --upstream http://127.0.0.1:<m>`
 */

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
]);

function forwardHeaders(h: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const name in h) if (!HOP_BY_HOP.has(name)) out[name] = h[name];
  out['x-bench-proxy'] = 'node';
  return out;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' } } });
  const target = new URL(values.upstream ?? 'http://127.0.0.1:80');
  const agent = new Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: 'lifo' });
  const server = createServer((req, res) => {
    const up = request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: forwardHeaders(req.headers),
        agent,
      },
      (upRes) => {
        const headers = forwardHeaders(upRes.headers);
        delete headers['x-bench-proxy'];
        res.writeHead(upRes.statusCode ?? 502, headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
      res.end('{"error":"bad_gateway"}');
    });
    req.pipe(up);
  });
  await listen(server, Number(values.port ?? 0));
  process.once('SIGTERM', () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    agent.destroy();
  });
}
