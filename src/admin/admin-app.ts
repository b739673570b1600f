import { createHash, timingSafeEqual } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import type { Revocation } from '../cache/revocation.ts';
import { describeError } from '../errors/error-handler.ts';
import type { Logger } from '../observability/logger.ts';
import { ctx } from '../pipeline/context.ts';

/** Constant-time comparison of a presented bearer credential with the configured admin token. */
export function adminTokenMatches(header: string | undefined, expected: string): boolean {
  const m = /^Bearer +([^ ]+)$/i.exec(header ?? '');
  if (m === null) return false;
  // Hash both so the comparison is constant-time whatever the lengths.
  const a = createHash('sha256').update(m[1]!).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** Where the published JWKS comes from (the mint key ring), read on every request. */
export interface JwksSource {
  publicJwks(): { keys: unknown[] };
  /** `Cache-Control: max-age`, short so verifiers see a new key well before it signs. */
  maxAgeSeconds: number;
}

/** node:http only: also answers on the public listener, which is not an express app. */
function sendJwks(res: ServerResponse, jwks: JwksSource): void {
  const body = JSON.stringify(jwks.publicJwks());
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', `public, max-age=${jwks.maxAgeSeconds}`);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}

/**
 * `jwt.mint.jwksPath` on the PUBLIC listener: GET/HEAD of exactly that path (as received, query
 * ignored) answers the JWKS without a token, before route matching; anything else goes on down
 * the pipeline.
 */
export function createPublicJwksEndpoint(path: string, jwks: JwksSource): RequestHandler {
  return function publicJwks(req, res, next) {
    if (req.method !== 'GET' && req.method !== 'HEAD') return next();
    const q = req.url.indexOf('?');
    if ((q === -1 ? req.url : req.url.slice(0, q)) !== path) return next();
    res.setHeader('X-Request-Id', ctx(res).requestId);
    sendJwks(res, jwks);
  };
}

function adminError(res: Response, status: number, error: string, description: string): void {
  res.status(status).set('Cache-Control', 'no-store').json({ error, error_description: description });
}

/**
 * The admin listener (SPEC §8), never mounted on the public one: liveness, readiness (config
 * loaded + token service metadata known; Redis reported but never makes us unready), the public
 * JWKS of minted tokens, the cache purge endpoint (SPEC §7) and the SSF event receiver.
 */
export function createAdminApp(opts: {
  ready: () => boolean;
  redisState: () => string;
  /** The mint key ring; absent outside mode mint (→ 404). */
  jwks?: JwksSource;
  adminToken?: string;
  revocation: Revocation;
  logger: Logger;
  /** The Shared Signals receiver (POST /ssf/events) when `ssf` is configured; absent → 404. */
  ssf?: RequestHandler;
  /**
   * GET /metrics: the Prometheus exposition text (this gateway's registry, or an aggregate of
   * every worker's); absent → 404.
   */
  metricsText?: () => Promise<string>;
  /** Content type of `metricsText` (prom-client `registry.contentType`); default Prometheus 0.0.4 text. */
  metricsContentType?: string;
  /** The active configuration's hash (phantom_gateway_config_info), shown by /readyz. */
  configHash?: string;
}): Express {
  const admin = express();
  admin.disable('x-powered-by');
  admin.disable('etag');
  admin.get('/livez', (_req, res) => {
    res.status(200).json({ status: 'ok' });
  });
  admin.get('/readyz', (_req, res) => {
    const ready = opts.ready();
    res
      .status(ready ? 200 : 503)
      .set('Cache-Control', 'no-store')
      .json({
        ready,
        config: 'loaded',
        ...(opts.configHash !== undefined ? { configHash: opts.configHash } : {}),
        tokenService: ready ? 'known' : 'unknown',
        redis: opts.redisState(),
      });
  });
  // No token: the admin listener is private (SPEC §8). GET (and HEAD) only.
  admin.get('/metrics', async (_req, res) => {
    if (opts.metricsText === undefined) {
      adminError(res, 404, 'not_found', 'Metrics are not enabled');
      return;
    }
    let text: string;
    try {
      text = await opts.metricsText();
    } catch (err) {
      opts.logger.error({ err: describeError(err) }, 'metrics collection failed');
      adminError(res, 500, 'server_error', 'The metrics could not be collected');
      return;
    }
    res
      .status(200)
      .set('Content-Type', opts.metricsContentType ?? 'text/plain; version=0.0.4; charset=utf-8')
      .set('Cache-Control', 'no-store')
      .send(text);
  });
  admin.all('/metrics', (_req, res) => {
    res.set('Allow', 'GET, HEAD');
    adminError(res, 405, 'method_not_allowed', 'Only GET and HEAD are allowed on /metrics');
  });
  admin.get('/.well-known/jwks.json', (_req, res) => {
    if (opts.jwks === undefined) {
      adminError(res, 404, 'not_found', 'No signing keys: the gateway is not in mint mode');
      return;
    }
    sendJwks(res, opts.jwks);
  });

  admin.post(
    '/cache/purge',
    express.json({ limit: '16kb', type: () => true }),
    async (req: Request, res: Response) => {
      if (opts.adminToken === undefined) {
        adminError(res, 404, 'not_found', 'The purge endpoint is disabled: admin.token is not configured');
        return;
      }
      if (!adminTokenMatches(req.headers.authorization, opts.adminToken)) {
        res.set('WWW-Authenticate', 'Bearer realm="admin"');
        adminError(res, 401, 'unauthorized', 'A valid admin bearer token is required');
        return;
      }
      const body = (req.body ?? {}) as { token?: unknown; sub?: unknown };
      const token = typeof body.token === 'string' && body.token !== '' ? body.token : undefined;
      const sub = typeof body.sub === 'string' && body.sub !== '' ? body.sub : undefined;
      if ((token === undefined) === (sub === undefined)) {
        adminError(res, 400, 'invalid_request', 'The body must be {"token": "..."} or {"sub": "..."}');
        return;
      }
      try {
        const purged =
          token !== undefined
            ? await opts.revocation.purgeToken(token)
            : await opts.revocation.purgeSubject(sub!);
        opts.logger.info({ by: token !== undefined ? 'token' : 'sub', purged }, 'cache purge');
        res.status(200).set('Cache-Control', 'no-store').json({ purged });
      } catch (err) {
        opts.logger.error({ err: describeError(err) }, 'cache purge failed');
        adminError(res, 500, 'server_error', 'The purge failed');
      }
    },
  );

  if (opts.ssf !== undefined) admin.post('/ssf/events', opts.ssf);

  admin.use((err: unknown, _req: Request, res: Response, _next: express.NextFunction) => {
    const status = (err as { status?: number }).status;
    if (status !== undefined && status >= 400 && status < 500) {
      adminError(res, status, 'invalid_request', 'The request body is not valid JSON');
      return;
    }
    opts.logger.error({ err: describeError(err) }, 'admin request failed');
    adminError(res, 500, 'server_error', 'Internal error');
  });
  admin.use((_req, res) => {
    adminError(res, 404, 'not_found', 'Unknown admin endpoint');
  });
  return admin;
}
