import type { NextFunction, Request, Response } from 'express';
import { ctx } from '../pipeline/context.ts';
import { splitTarget } from '../pipeline/match-route.ts';
import { accessLoggerOf, type Logger } from './logger.ts';

/**
 * One JSON access line per request, written when the response is done or the client went away:
 * request id, route, method, path (query values left out), status, reason code, cache level and
 * durations. Never a header value, token or JWT.
 */
export function createAccessLog(logger: Logger) {
  const access = accessLoggerOf(logger);
  return function accessLog(req: Request, res: Response, next: NextFunction): void {
    const path = splitTarget(req.url).path;
    const method = req.method;
    res.once('close', () => {
      const c = ctx(res);
      if (c === undefined) return;
      access.info(
        {
          requestId: c.requestId,
          route: c.route?.name,
          method,
          path,
          status: res.statusCode,
          reason: c.reason ?? (res.statusCode < 400 ? 'allowed' : undefined),
          cause: c.cause,
          cache: c.cache,
          durationMs: round(Number(process.hrtime.bigint() - c.startedAt) / 1e6),
          tokenServiceMs: c.tokenServiceMs === undefined ? undefined : round(c.tokenServiceMs),
          upstreamMs: c.upstreamMs === undefined ? undefined : round(c.upstreamMs),
          completed: res.writableFinished,
        },
        'request',
      );
    });
    next();
  };
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
