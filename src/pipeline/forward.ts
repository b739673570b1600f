import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { NextFunction, Request, Response } from 'express';
import {
  createProxyMiddleware,
  debugProxyErrorsPlugin,
  type Plugin,
  proxyEventsPlugin,
  type RequestHandler,
} from 'http-proxy-middleware';
import { renderError } from '../errors/error-handler.ts';
import { type GatewayError, UpstreamTimeout, UpstreamUnavailable } from '../errors/gateway-errors.ts';
import type { Logger } from '../observability/logger.ts';
import type { UpstreamErrorReason, UpstreamMetrics } from '../observability/metrics.ts';
import { type CompiledRoute, upstreamPath } from '../routing/route-table.ts';
import { ctx, type GatewayContext } from './context.ts';
import { splitTarget } from './match-route.ts';

// The plugins are written for node:http's types; express's Request/Response extend them.
const DEFAULT_PLUGINS_BUT_LOGGER = [debugProxyErrorsPlugin, proxyEventsPlugin] as unknown as Plugin<
  Request,
  Response
>[];

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
  /** Upstream latency and errors per route (phantom_gateway_upstream_*). */
  metrics?: { upstream(route: string): UpstreamMetrics };
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
    // RFC 9440 client certificate fields are a TLS-terminating proxy's to set: from a client, forged.
    delete h['client-cert'];
    delete h['client-cert-chain'];
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

/** Response fields a proxy never passes on (RFC 9110 §7.6.1); Node frames the body itself. */
const RESPONSE_HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** One route's way upstream, built once at boot. */
interface RouteTarget {
  client: typeof http | typeof https;
  agent: http.Agent;
  hostname: string;
  port: string;
  /** `Host` sent upstream: the upstream's own authority (the client's goes in X-Forwarded-Host). */
  host: string;
  timeoutMs: number;
  connectTimeoutMs: number;
  /**
   * http-proxy-middleware, for WebSocket upgrades only: made on a route's first upgrade (10 000
   * routes would otherwise hold 10 000 proxy servers that plain requests never use).
   */
  upgradeProxy: () => RequestHandler<Request, Response>;
  metrics: UpstreamMetrics | undefined;
}

/**
 * Stage 6: stream the request to the route's upstream with the JWT, over one keep-alive agent per
 * upstream origin. Plain requests go through node:http directly (see forwardHttp); WebSocket
 * upgrades through http-proxy-middleware. Upstream failures become 502/504 through the gateway's
 * own renderer, never a text naming the upstream.
 */
export function createForward(routes: readonly CompiledRoute[], opts: ForwardOptions) {
  const agents = new Map<string, http.Agent>();
  const targets = new Map<CompiledRoute, RouteTarget>();
  for (const route of routes) {
    const u = route.upstream;
    const secure = u.protocol === 'https:';
    let agent = agents.get(u.origin);
    if (agent === undefined) {
      const o = { keepAlive: true, maxSockets: 512, maxFreeSockets: 64, scheduling: 'lifo' as const };
      agent = secure ? new https.Agent(o) : new http.Agent(o);
      agents.set(u.origin, agent);
    }
    targets.set(route, {
      client: secure ? https : http,
      agent,
      hostname: u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname,
      port: u.port,
      host: u.host,
      timeoutMs: route.timeoutMs,
      connectTimeoutMs: Math.min(route.timeoutMs, MAX_CONNECT_TIMEOUT_MS),
      upgradeProxy: lazy(() => createRouteProxy(route, agent!, opts)),
      metrics: opts.metrics?.upstream(route.name),
    });
  }

  const fail = (res: Response, c: GatewayContext, route: CompiledRoute, err: Error): void =>
    failUpstream(res, c, route, err, opts, targets.get(route)?.metrics);

  /**
   * The request to the upstream, by hand on node:http: http-proxy-middleware + httpxy cost ≈ 15 µs
   * of CPU per request more than this (the bench's CPU profile: a URL built per response for its
   * logger, per-request option copies, awaits and listeners). Same behaviour: body streamed both
   * ways, hop-by-hop fields dropped both ways, connect timeout ≤ 5 s and an inactivity timeout of
   * the route's timeoutMs (504), refused/reset → 502, a failure after the status line → the
   * client connection is cut, a client gone → the upstream request is aborted.
   */
  function forwardHttp(req: Request, res: Response, c: GatewayContext, route: CompiledRoute): void {
    const t = targets.get(route)!;
    req.headers.host = t.host;
    const sentAt = process.hrtime.bigint();
    const upReq = t.client.request({
      hostname: t.hostname,
      port: t.port,
      method: req.method,
      path: req.url,
      headers: req.headers,
      agent: t.agent,
    });
    let settled = false;
    const onError = (err: Error) => {
      if (settled) return;
      settled = true;
      fail(res, c, route, err);
    };
    upReq.on('error', onError);
    upReq.setTimeout(t.timeoutMs, () => {
      c.upstreamTimedOut = true;
      upReq.destroy(Object.assign(new Error('upstream timeout'), { code: 'ETIMEDOUT' }));
    });
    upReq.on('socket', (socket: Socket) => {
      if (!socket.connecting) return;
      const timer = setTimeout(() => {
        c.upstreamTimedOut = true;
        upReq.destroy(Object.assign(new Error('upstream connect timeout'), { code: 'ETIMEDOUT' }));
      }, t.connectTimeoutMs);
      socket.once('connect', () => clearTimeout(timer));
      upReq.once('close', () => clearTimeout(timer));
    });
    upReq.on('response', (upRes: IncomingMessage) => {
      // The upstream's own time: from sending the request to its response headers.
      c.upstreamMs = Number(process.hrtime.bigint() - sentAt) / 1e6;
      t.metrics?.observe(c.upstreamMs / 1000);
      if (c.trace !== undefined) c.trace.forwardResponse(upRes.statusCode ?? 502);
      const raw = upRes.rawHeaders;
      const named = upRes.headers.connection;
      const extra =
        typeof named === 'string'
          ? named
              .toLowerCase()
              .split(',')
              .map((x) => x.trim())
          : [];
      // The gateway's request id, not an upstream's own (the one in the access line and the
      // upstream's request). writeHead with one array and nothing set before: node's fast path.
      const out: string[] = ['X-Request-Id', c.requestId];
      for (let i = 0; i < raw.length; i += 2) {
        const lower = raw[i]!.toLowerCase();
        if (RESPONSE_HOP_BY_HOP.has(lower) || lower === 'x-request-id') continue;
        if (extra.length > 0 && extra.includes(lower)) continue;
        out.push(raw[i]!, raw[i + 1]!);
      }
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, out);
      // A failure after the status line (upstream reset mid-body): the client connection is cut.
      upRes.on('error', onError);
      upRes.pipe(res);
    });
    // The client went away before the answer was complete: stop the upstream exchange too.
    res.once('close', () => {
      if (!res.writableFinished) {
        settled = true;
        upReq.destroy();
      }
    });
    req.pipe(upReq);
  }

  return {
    forward(req: Request, res: Response, _next: NextFunction): void {
      const c = ctx(res);
      const route = c.route!;
      const { path, query } = splitTarget(req.url);
      req.url = upstreamPath(route, path, query);
      const upgradeSocket = (res as Response & { upgradeSocket?: Socket }).upgradeSocket;
      rewriteRequestHeaders(req, c.resolved?.jwt, c.requestId, {
        trustProxyHeaders: opts.trustProxyHeaders,
        tls: opts.tls,
        upgrade: upgradeSocket !== undefined && isUpgrade(req),
      });
      c.reason = 'allowed';
      // Tracing on: the `forward` span; its traceparent replaces the client's (off: untouched).
      if (c.trace !== undefined) c.trace.startForward(route.upstream, req.method, req.headers);
      if (upgradeSocket !== undefined) {
        const head = (res as Response & { upgradeHead?: Buffer }).upgradeHead ?? Buffer.alloc(0);
        targets.get(route)!.upgradeProxy().upgrade(req, upgradeSocket, head);
        return;
      }
      forwardHttp(req, res, c, route);
    },
    close(): void {
      for (const a of agents.values()) a.destroy();
    },
  };
}

function lazy<T>(make: () => T): () => T {
  let value: T | undefined;
  return () => (value ??= make());
}

function isUpgrade(req: IncomingMessage): boolean {
  return (
    typeof req.headers.upgrade === 'string' && /(^|,)\s*upgrade\s*(,|$)/i.test(req.headers.connection ?? '')
  );
}

/**
 * An upstream failure → 504 (a timer fired) or 502, counted and logged; when the status line has
 * already gone out, the client connection is cut instead.
 */
function failUpstream(
  res: Response,
  c: GatewayContext,
  route: CompiledRoute,
  err: Error,
  opts: ForwardOptions,
  metrics: UpstreamMetrics | undefined,
): void {
  const gErr: GatewayError =
    c.upstreamTimedOut || (err as { code?: string }).code === 'ETIMEDOUT'
      ? new UpstreamTimeout(err)
      : new UpstreamUnavailable(err);
  c.reason = gErr.reason;
  c.trace?.forwardFailed(gErr.reason);
  metrics?.error(gErr.reason as UpstreamErrorReason);
  opts.logger.warn(
    { requestId: c.requestId, route: route.name, code: (err as { code?: string }).code, reason: gErr.reason },
    'upstream request failed',
  );
  if (res.headersSent || res.writableEnded) {
    res.destroy();
    return;
  }
  renderError(res, gErr, opts.realm(), c.requestId);
}

function createRouteProxy(
  route: CompiledRoute,
  agent: http.Agent,
  opts: ForwardOptions,
): RequestHandler<Request, Response> {
  const connectTimeoutMs = Math.min(route.timeoutMs, MAX_CONNECT_TIMEOUT_MS);
  const metrics = opts.metrics?.upstream(route.name);
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
    // The default plugins minus the logger plugin, which builds a URL for every response only to
    // log it (our access log covers it; 1 % of the L1-hit profile). The error-response plugin is
    // not loaded anyway: `on.error` renders upstream failures.
    ejectPlugins: true,
    plugins: DEFAULT_PLUGINS_BUT_LOGGER,
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
        failUpstream(res, ctx(res), route, err, opts, metrics);
      },
    },
  });
}
