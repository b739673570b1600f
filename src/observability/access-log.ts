import type { NextFunction, Request, Response } from 'express';
import { ctx } from '../pipeline/context.ts';
import { splitTarget } from '../pipeline/match-route.ts';
import { accessLoggerOf, type Logger } from './logger.ts';
import type { RequestMetrics } from './metrics.ts';

export interface AccessLogOptions {
  /** Request count, duration, decision and cache level, recorded with the access line. */
  metrics?: RequestMetrics;
  /** `logging.includeSubject`: add the JWT's `sub` claim (a string) to the line. */
  includeSubject?: boolean;
  /** Which listener answered, when not the public one: `forward-auth` (the line's `listener` field). */
  listener?: 'forward-auth';
}

/**
 * One JSON access line per request, written when the response is done or the client went away:
 * request id, route, method, path (query values left out), status, reason code, cache level and
 * durations (and `sub` with `logging.includeSubject`; `traceId` with tracing on). Never a header
 * value, token or JWT. The request metrics are recorded here too, and the request's server span
 * (tracing on) ends here: the one place that runs exactly once per request.
 */
export function createAccessLog(logger: Logger, opts: AccessLogOptions = {}) {
  const access = accessLoggerOf(logger);
  const { metrics } = opts;
  const includeSubject = opts.includeSubject === true;
  return function accessLog(req: Request, res: Response, next: NextFunction): void {
    const path = splitTarget(req.url).path;
    const method = req.method;
    res.once('close', () => {
      const c = ctx(res);
      if (c === undefined) return;
      const status = res.statusCode;
      const reason = c.reason ?? (status < 400 ? 'allowed' : undefined);
      const durationMs = Number(process.hrtime.bigint() - c.startedAt) / 1e6;
      const route = c.route?.name;
      metrics?.request(route, method, status, reason, c.cache, durationMs / 1000);
      const sub = includeSubject ? c.resolved?.claims['sub'] : undefined;
      const trace = c.trace;
      // Tracing on: the server span ends with the response (status, reason, cache level).
      if (trace !== undefined) trace.end(status, reason, c.cache);
      // Fields left undefined are not written (one object shape for every line).
      access.info(
        {
          requestId: c.requestId,
          traceId: trace === undefined ? undefined : trace.traceId,
          listener: opts.listener,
          route,
          method,
          path,
          status,
          reason,
          cause: c.cause,
          cache: c.cache,
          sub: typeof sub === 'string' ? sub : undefined,
          durationMs: round(durationMs),
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
