import { Agent, createServer } from 'node:http';
import { parseArgs } from 'node:util';
import express from 'express';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { listen } from './upstream.ts';

/**
 * `express-proxy`: express 5 + http-proxy-middleware with no auth (the stack limit: the same
 * libraries the gateway is built on, without the phantom-token work). The upstream agent is the
 * same keep-alive agent the gateway uses, so the difference is the pipeline, not the pooling.
 * `node bench/lib/express-proxy.ts --port <n> --upstream http://127.0.0.1:<m>`
 */

if (import.meta.main) {
  const { values } = parseArgs({ options: { port: { type: 'string' }, upstream: { type: 'string' } } });
  const agent = new Agent({ keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: 'lifo' });
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(createProxyMiddleware({ target: values.upstream, agent, xfwd: true }));
  const real = createServer(app);
  await listen(real, Number(values.port ?? 0));
  process.once('SIGTERM', () => {
    real.close(() => process.exit(0));
    real.closeAllConnections();
    agent.destroy();
  });
}
