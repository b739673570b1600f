import type { NextFunction, Request, Response } from 'express';
import { InvalidRequest, MethodNotAllowed, RouteNotFound } from '../errors/gateway-errors.ts';
import { rejectHost, rejectPath } from '../routing/check-path.ts';
import type { CompiledRoute, RouteTable } from '../routing/route-table.ts';
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
    const c = ctx(res);
    const trace = c.trace;
    if (trace === undefined) c.route = findRoute(table(), req.method, req.url, hostValues(req.rawHeaders));
    else {
      // Tracing on: a `route match` span; the server span is named after the route's prefix.
      const span = trace.child('route match');
      try {
        c.route = findRoute(table(), req.method, req.url, hostValues(req.rawHeaders));
        trace.routeMatched(c.route, req.method);
      } catch (err) {
        span.setAttribute('phantom.reason', (err as { reason?: string }).reason ?? 'error');
        throw err;
      } finally {
        span.end();
      }
    }
    next();
  };
}

/**
 * Every field `lowerName` of the request, from the raw header list (node keeps only the first Host
 * in `headers.host` and joins repeated fields elsewhere; `headersDistinct` would build an array
 * for every header of every request).
 */
export function rawValues(raw: readonly string[], lowerName: string): string[] | undefined {
  let found: string[] | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length !== lowerName.length || name.toLowerCase() !== lowerName) continue;
    found ??= [];
    found.push(raw[i + 1]!);
  }
  return found;
}

const hostValues = (raw: readonly string[]) => rawValues(raw, 'host');

function findRoute(
  table: RouteTable,
  method: string,
  url: string,
  host: readonly string[] | undefined,
): CompiledRoute {
  const { path } = splitTarget(url);
  const problem = rejectPath(path);
  if (problem !== undefined)
    throw new InvalidRequest('path_rejected', `The request path was rejected: ${problem}`);
  const hostProblem = rejectHost(host);
  if (hostProblem !== undefined)
    throw new InvalidRequest('path_rejected', `The request target was rejected: ${hostProblem}`);
  const m = table.match(method, path);
  if (m.kind === 'no-route') throw new RouteNotFound();
  if (m.kind === 'method-not-allowed') throw new MethodNotAllowed(m.allow);
  return m.route;
}
