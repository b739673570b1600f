import type { NextFunction, Request, Response } from 'express';
import { InsufficientScope } from '../errors/gateway-errors.ts';
import { grantedScopes, satisfies } from '../policy/scopes.ts';
import { ctx } from './context.ts';

/** Stage 5: the route's scope rule against the JWT, on every request (never cached as a decision). */
export function createAuthorizeScopes() {
  return function authorizeScopes(_req: Request, res: Response, next: NextFunction): void {
    const c = ctx(res);
    const required = c.route!.scopes;
    if (required !== undefined && !satisfies(grantedScopes(c.resolved!.claims), required)) {
      throw new InsufficientScope(required.scopes);
    }
    next();
  };
}
