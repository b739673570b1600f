import type { NextFunction, Request, Response } from 'express';
import { InvalidRequest, MethodNotAllowed, RouteNotFound } from '../errors/gateway-errors.ts';
import { rejectPath } from '../routing/check-path.ts';
import type { RouteTable } from '../routing/route-table.ts';
import { ctx } from './context.ts';

/** Splits a raw request target into path and query ('?…' kept as received, or ''). */
export function splitTarget(url: string): { path: string; query: string } {
  const q = url.indexOf('?');
  return q === -1 ? { path: url, query: '' } : { path: url.slice(0, q), query: url.slice(q) };
}

/**
 * Stage 2: reject ambiguous paths (400 path_rejected), then find exactly one route by longest
 * prefix and method (404 / 405 + Allow otherwise). Deny by default.
 */
export function createMatchRoute(table: () => RouteTable) {
  return function matchRoute(req: Request, res: Response, next: NextFunction): void {
    const { path } = splitTarget(req.url);
    const problem = rejectPath(path);
    if (problem !== undefined)
      throw new InvalidRequest('path_rejected', `The request path was rejected: ${problem}`);
    const m = table().match(req.method, path);
    if (m.kind === 'no-route') throw new RouteNotFound();
    if (m.kind === 'method-not-allowed') throw new MethodNotAllowed(m.allow);
    ctx(res).route = m.route;
    next();
  };
}
