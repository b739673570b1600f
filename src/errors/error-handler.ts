import type { NextFunction, Request, Response } from 'express';
import type { Logger } from '../observability/logger.ts';
import { ctx } from '../pipeline/context.ts';
import { GatewayError } from './gateway-errors.ts';

/** Quoted-string value for a challenge attribute (RFC 9110 §5.6.4); our texts are plain ASCII. */
function q(v: string): string {
  return `"${v.replace(/["\\]/g, '')}"`;
}

/** The RFC 6750 §3 challenge for an error, or undefined when it carries none. */
export function challengeFor(err: GatewayError, realm: string): string | undefined {
  const ch = err.challenge;
  if (ch === undefined) return undefined;
  if (ch.kind === 'bare') return `Bearer realm=${q(realm)}`;
  if (err.status === 400) return `Bearer error=${q(err.error)}`;
  if (err.status === 403)
    return `Bearer realm=${q(realm)}, error=${q(err.error)}, scope=${q((ch.scope ?? []).join(' '))}`;
  return `Bearer realm=${q(realm)}, error=${q(err.error)}, error_description=${q(err.description)}`;
}

/** Writes the one JSON error body every failure gets (SPEC §5). */
export function renderError(res: Response, err: GatewayError, realm: string, requestId: string): void {
  const body = JSON.stringify({
    error: err.error,
    error_description: err.description,
    request_id: requestId,
  });
  res.statusCode = err.status;
  if (requestId !== '') res.setHeader('X-Request-Id', requestId);
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  const challenge = challengeFor(err, realm);
  if (challenge !== undefined) res.setHeader('WWW-Authenticate', challenge);
  for (const [k, v] of Object.entries(err.headers)) res.setHeader(k, v);
  res.end(body);
}

/**
 * The sole renderer: every stage throws a GatewayError and it lands here. Anything else is a bug,
 * logged with its stack and shown to the client as a bare 500 with no detail.
 */
export function createErrorHandler(opts: { realm: () => string; logger: Logger }) {
  return function errorHandler(err: unknown, _req: Request, res: Response, _next: NextFunction): void {
    const c = ctx(res);
    const gErr =
      err instanceof GatewayError
        ? err
        : new GatewayError({
            status: 500,
            error: 'server_error',
            reason: 'upstream_unavailable',
            description: 'Internal error',
          });
    if (!(err instanceof GatewayError)) {
      opts.logger.error(
        { requestId: c?.requestId, err: describeError(err) },
        'unexpected error in request pipeline',
      );
    }
    if (c) {
      c.reason = gErr.reason;
      // The precise cause (e.g. which JWT check failed) goes to the access log, never the response.
      if (err instanceof GatewayError && err.cause !== undefined) c.cause = describeError(err.cause);
    }
    if (res.headersSent) {
      // Mid-stream failure: the status is gone; cut the connection so the client sees a truncated response.
      res.destroy();
      return;
    }
    renderError(res, gErr, opts.realm(), c?.requestId ?? '');
  };
}

/** Error details for an operator's log line: name, message, code, cause chain. Never a token. */
export function describeError(err: unknown, depth = 0): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: String(err) };
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (code !== undefined) out['code'] = code;
  // A cause chain is walked 5 deep at most (a cycle, err.cause === err, must not loop).
  if (err.cause !== undefined && depth < 5) out['cause'] = describeError(err.cause, depth + 1);
  return out;
}
