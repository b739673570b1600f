import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type { Tracing } from '../observability/tracing.ts';
import { type GatewayContext, setCtx } from './context.ts';

const VALID_ID = /^[\x21-\x7e]{1,128}$/;

/**
 * Stage 1: accept the client's `X-Request-Id` when it is 1–128 visible ASCII characters, else
 * mint one; it is sent to the token service and the upstream, and echoed on the response by
 * whatever writes it (forward, the error renderer, the JWKS path, forward-auth's answer): set here
 * with setHeader, it would put forward's writeHead of the upstream's fields on node's slow path
 * (a removeHeader + appendHeader per field). With
 * tracing on, the request's trace starts here (continued from the client's `traceparent`).
 */
export function createRequestId(tracing?: Tracing) {
  return function requestId(req: Request, res: Response, next: NextFunction): void {
    const incoming = req.headers['x-request-id'];
    const id = typeof incoming === 'string' && VALID_ID.test(incoming) ? incoming : randomUUID();
    req.headers['x-request-id'] = id;
    const context: GatewayContext = { requestId: id, startedAt: process.hrtime.bigint(), cache: 'none' };
    if (tracing !== undefined) context.trace = tracing.startRequest(req, id);
    setCtx(res, context);
    next();
  };
}
