import type { NextFunction, Request, Response } from 'express';
import { ctx } from '../pipeline/context.ts';
import { splitTarget } from '../pipeline/match-route.ts';
import { type Logger, lineWriter } from './logger.ts';
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
  const write = lineWriter(logger, 'request');
  const { metrics } = opts;
  const includeSubject = opts.includeSubject === true;
  const listener = opts.listener === undefined ? '' : `,"listener":${str(opts.listener)}`;
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
      const trace = c.trace;
      // Tracing on: the server span ends with the response (status, reason, cache level).
      if (trace !== undefined) trace.end(status, reason, c.cache);
      if (write === undefined) return;
      // Fields left undefined are not written (one field order for every line).
      const sub = includeSubject ? c.resolved?.claims['sub'] : undefined;
      write(
        `"requestId":${str(c.requestId)}` +
          (trace === undefined ? '' : `,"traceId":${str(trace.traceId)}`) +
          listener +
          (route === undefined ? '' : `,"route":${str(route)}`) +
          `,"method":${str(method)},"path":${str(path)},"status":${status}` +
          (reason === undefined ? '' : `,"reason":${str(reason)}`) +
          (c.cause === undefined ? '' : `,"cause":${causeJson(c.cause)}`) +
          `,"cache":${str(c.cache)}` +
          (typeof sub === 'string' ? `,"sub":${str(sub)}` : '') +
          `,"durationMs":${num(durationMs)}` +
          (c.tokenServiceMs === undefined ? '' : `,"tokenServiceMs":${num(c.tokenServiceMs)}`) +
          (c.upstreamMs === undefined ? '' : `,"upstreamMs":${num(c.upstreamMs)}`) +
          `,"completed":${res.writableFinished}`,
      );
    });
    next();
  };
}

/** A string field's JSON (quotes, escapes, lone surrogates as \u escapes). */
const str = (v: string): string => JSON.stringify(v);

/** The refusal's cause (describeError's plain object); a value JSON cannot hold never costs the line. */
function causeJson(cause: Record<string, unknown>): string {
  try {
    return JSON.stringify(cause);
  } catch {
    return '{"message":"(cause not serializable)"}';
  }
}

/** A duration in ms, rounded to 0.01 ms, as JSON (never NaN / Infinity, which JSON has not). */
function num(ms: number): string {
  return Number.isFinite(ms) ? String(round(ms)) : 'null';
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
