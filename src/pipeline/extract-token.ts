import type { IncomingMessage } from 'node:http';
import type { NextFunction, Request, Response } from 'express';
import { InvalidRequest, InvalidToken, TokenMissing } from '../errors/gateway-errors.ts';
import { ctx } from './context.ts';
import { rawValues, splitTarget } from './match-route.ts';

/** Longest credential accepted (the credential, not the header). */
export const MAX_TOKEN_BYTES = 4096;

const TCHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/;
/** RFC 6750 §2.1: `1*SP b64token`, nothing after it. */
const BEARER_REST = /^ +([A-Za-z0-9\-._~+/]+=*)$/;
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export type TokenExtraction =
  | { kind: 'token'; token: string }
  | { kind: 'missing' }
  | { kind: 'malformed'; why: string; inQuery?: true };

/**
 * Reads the bearer token from the Authorization header only (RFC 6750 §2.1). The query string
 * is checked for `access_token` because a token there is refused, never used (§2.3 is unsafe).
 */
export function readBearer(req: IncomingMessage): TokenExtraction {
  const { query } = splitTarget(req.url ?? '');
  if (query !== '' && hasAccessTokenParam(query)) {
    return { kind: 'malformed', why: 'access tokens are not accepted in the query string', inQuery: true };
  }
  const values = rawValues(req.rawHeaders, 'authorization');
  if (values === undefined || values.length === 0) return { kind: 'missing' };
  if (values.length > 1) return { kind: 'malformed', why: 'more than one Authorization header' };
  const header = values[0]!;
  const scheme = TCHARS.exec(header)?.[0];
  if (scheme === undefined || scheme.toLowerCase() !== 'bearer') return { kind: 'missing' };
  const rest = header.slice(scheme.length);
  if (rest.trim() === '') return { kind: 'malformed', why: 'the Bearer credential is empty' };
  const m = BEARER_REST.exec(rest);
  if (m === null) return { kind: 'malformed', why: 'the Bearer credential is malformed' };
  const token = m[1]!;
  if (token.length > MAX_TOKEN_BYTES) return { kind: 'malformed', why: 'the Bearer credential is too long' };
  return { kind: 'token', token };
}

function hasAccessTokenParam(query: string): boolean {
  for (const name of new URLSearchParams(query).keys()) if (name === 'access_token') return true;
  return false;
}

/**
 * Stage 3: the opaque token. Missing / other scheme → 401 bare challenge; malformed, duplicated
 * or in the query → 400; a JWT-shaped token → 401 unless the route sets `acceptJwt`.
 */
export function createExtractToken() {
  return function extractToken(req: Request, res: Response, next: NextFunction): void {
    const c = ctx(res);
    const route = c.route!;
    const found = readBearer(req);
    if (route.scopes === undefined) {
      // auth: none — the route is public; a client's Authorization never reaches the upstream.
      if (found.kind === 'malformed' && found.inQuery) {
        throw new InvalidRequest('token_malformed', found.why);
      }
      next();
      return;
    }
    if (found.kind === 'missing') throw new TokenMissing();
    if (found.kind === 'malformed')
      throw new InvalidRequest('token_malformed', `Invalid request: ${found.why}`);
    if (!route.acceptJwt && JWT_SHAPE.test(found.token)) {
      throw new InvalidToken('token_malformed', 'A JWT is not accepted as an access token here');
    }
    c.token = found.token;
    next();
  };
}
