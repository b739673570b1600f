import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { NextFunction, Request, Response } from 'express';
import { createProxyMiddleware, type RequestHandler } from 'http-proxy-middleware';
import { renderError } from '../errors/error-handler.ts';
import { type GatewayError, UpstreamTimeout, UpstreamUnavailable } from '../errors/gateway-errors.ts';
import type { Logger } from '../observability/logger.ts';
import { type CompiledRoute, upstreamPath } from '../routing/route-table.ts';
import { ctx, type GatewayContext } from './context.ts';
import { splitTarget } from './match-route.ts';

/** Connect timeout to an upstream: the route's timeout, but never more than this. */
export const MAX_CONNECT_TIMEOUT_MS = 5_000;

/** RFC 9110 §7.6.1 hop-by-hop fields, plus the proxy-only ones. */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  // Node's server already answered `100 Continue` to the client; the body is streamed upstream.
  'expect',
];
/** Fields a client may name in `Connection` that we still need (framing, routing). */
const NEVER_DROPPED = new Set(['host', 'content-length', 'content-type']);

export interface ForwardOptions {
  trustProxyHeaders: boolean;
  /** true when the public listener is TLS (X-Forwarded-Proto). */
  tls: boolean;
  realm: () => string;
  logger: Logger;
}

/**
 * Prepares the headers the upstream receives, in place (http-proxy-middleware copies
 * `req.headers`): hop-by-hop and client copies of headers the gateway owns are deleted FIRST, then
 * the gateway's own values are set — so `Connection: authorization` cannot drop our JWT.
 */
export function rewriteRequestHeaders(
  req: IncomingMessage,
  jwt: string | undefined,
  requestId: string,
  opts: { trustProxyHeaders: boolean; tls: boolean; upgrade: boolean },
): void {
  const h = req.headers;
  const connectionTokens = typeof h.connection === 'string' ? h.connection.toLowerCase().split(',') : [];
  const upgrade = opts.upgrade ? h.upgrade : undefined;
  for (const name of HOP_BY_HOP) delete h[name];
  for (const raw of connectionTokens) {
    const name = raw.trim();
    if (name !== '' && !NEVER_DROPPED.has(name)) delete h[name];
  }
  for (const name of Object.keys(h)) {
    if (name.startsWith('x-phantom-') || name === 'txn-token') delete h[name];
  }
  const remote = req.socket.remoteAddress ?? '';
  const proto = opts.tls ? 'https' : 'http';
  const host = req.headers.host ?? '';
  if (opts.trustProxyHeaders) {
    const xff = h['x-forwarded-for'];
    h['x-forwarded-for'] = typeof xff === 'string' && xff !== '' ? `${xff}, ${remote}` : remote;
    if (typeof h['x-forwarded-proto'] !== 'string') h['x-forwarded-proto'] = proto;
    if (typeof h['x-forwarded-host'] !== 'string') h['x-forwarded-host'] = host;
  } else {
    delete h['forwarded'];
    for (const name of Object.keys(h)) if (name.startsWith('x-forwarded-')) delete h[name];
    h['x-forwarded-for'] = remote;
    h['x-forwarded-proto'] = proto;
    h['x-forwarded-host'] = host;
  }
  h['x-request-id'] = requestId;
  if (jwt === undefined) delete h.authorization;
  else h.authorization = `Bearer ${jwt}`;
  if (upgrade !== undefined) {
    h.connection = 'upgrade';
    h.upgrade = upgrade;
  }
}

/**
 * Stage 6: stream the request to the route's upstream with the JWT (http-proxy-middleware on
 * httpxy, one proxy and keep-alive agent per route). Upstream failures become 502/504 through the
 * gateway's own renderer, never http-proxy-middleware's text (which names the upstream).
 */
export function createForward(routes: readonly CompiledRoute[], opts: ForwardOptions) {
  const agents = new Map<string, http.Agent>();
  const proxies = new Map<CompiledRoute, RequestHandler<Request, Response>>();
  for (const route of routes) {
    const origin = route.upstream.origin;
    let agent = agents.get(origin);
    if (agent === undefined) {
      const o = { keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: 'lifo' as const };
      agent = route.upstream.protocol === 'https:' ? new https.Agent(o) : new http.Agent(o);
      agents.set(origin, agent);
    }
    proxies.set(route, createRouteProxy(route, agent, opts));
  }

  function prepare(req: Request, c: GatewayContext): CompiledRoute {
    const route = c.route!;
    const { path, query } = splitTarget(req.url);
    req.url = upstreamPath(route, path, query);
    rewriteRequestHeaders(req, c.resolved?.jwt, c.requestId, {
      trustProxyHeaders: opts.trustProxyHeaders,
      tls: opts.tls,
      upgrade: isUpgrade(req),
    });
    return route;
  }

  return {
    forward(req: Request, res: Response, next: NextFunction): void {
      const c = ctx(res);
      const route = prepare(req, c);
      const proxy = proxies.get(route)!;
      c.reason = 'allowed';
      const upgradeSocket = (res as Response & { upgradeSocket?: Socket }).upgradeSocket;
      if (upgradeSocket !== undefined) {
        const head = (res as Response & { upgradeHead?: Buffer }).upgradeHead ?? Buffer.alloc(0);
        proxy.upgrade(req, upgradeSocket, head);
        return;
      }
      proxy(req, res, next).catch(next);
    },
    close(): void {
      for (const a of agents.values()) a.destroy();
    },
  };
}

function isUpgrade(req: IncomingMessage): boolean {
  return (
    typeof req.headers.upgrade === 'string' && /(^|,)\s*upgrade\s*(,|$)/i.test(req.headers.connection ?? '')
  );
}

function createRouteProxy(
  route: CompiledRoute,
  agent: http.Agent,
  opts: ForwardOptions,
): RequestHandler<Request, Response> {
  const connectTimeoutMs = Math.min(route.timeoutMs, MAX_CONNECT_TIMEOUT_MS);
  return createProxyMiddleware<Request, Response>({
    target: route.upstream.origin,
    changeOrigin: true,
    prependPath: false,
    xfwd: false,
    ws: true,
    agent,
    proxyTimeout: route.timeoutMs,
    upgradeTimeout: route.timeoutMs,
    logger: { info: () => {}, warn: () => {}, error: () => {} },
    on: {
      proxyReq(proxyReq, _req, res) {
        const c = ctx(res);
        proxyReq.once('timeout', () => {
          c.upstreamTimedOut = true;
        });
        const socket = proxyReq.socket;
        if (socket?.connecting) {
          const timer = setTimeout(() => {
            c.upstreamTimedOut = true;
            proxyReq.destroy(Object.assign(new Error('upstream connect timeout'), { code: 'ETIMEDOUT' }));
          }, connectTimeoutMs);
          socket.once('connect', () => clearTimeout(timer));
          proxyReq.once('close', () => clearTimeout(timer));
        }
      },
      proxyRes(_proxyRes, _req, res) {
        const c = ctx(res);
        c.upstreamMs = Number(process.hrtime.bigint() - c.startedAt) / 1e6;
      },
      error(err, _req, resOrSocket) {
        if (!('setHeader' in resOrSocket)) {
          // WebSocket upgrade failure: no HTTP response can be written any more.
          resOrSocket.destroy();
          return;
        }
        const res = resOrSocket as Response;
        const c = ctx(res);
        const gErr: GatewayError =
          c.upstreamTimedOut || (err as { code?: string }).code === 'ETIMEDOUT'
            ? new UpstreamTimeout(err)
            : new UpstreamUnavailable(err);
        c.reason = gErr.reason;
        opts.logger.warn(
          {
            requestId: c.requestId,
            route: route.name,
            code: (err as { code?: string }).code,
            reason: gErr.reason,
          },
          'upstream request failed',
        );
        if (res.headersSent || res.writableEnded) {
          res.destroy();
          return;
        }
        renderError(res, gErr, opts.realm(), c.requestId);
      },
    },
  });
}
