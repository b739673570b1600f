import type { NextFunction, Request, Response } from 'express';
import type { CacheEntry } from '../cache/cache-entry.ts';
import { cacheTtlSeconds } from '../cache/cache-entry.ts';
import { createSingleFlight } from '../cache/single-flight.ts';
import type { TieredCache } from '../cache/tiered-cache.ts';
import type { Config } from '../config/schema.ts';
import { InvalidToken, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { IntrospectionClient } from '../introspection/introspection-client.ts';
import type { Minter } from '../jwt/mint-jwt.ts';
import type { JwtVerifier, VerifiedJwt } from '../jwt/verify-jwt.ts';
import type { CompiledRoute } from '../routing/route-table.ts';
import { ctx, type ResolvedToken } from './context.ts';

export interface ResolveDeps {
  config: Config;
  cache: TieredCache;
  cacheKey: (token: string, variant?: string) => string;
  introspection: IntrospectionClient;
  /** accept-jwt / claim: verifies the token service's JWT. */
  verifier?: JwtVerifier;
  /** mint: signs the gateway's own JWT. */
  minter?: Minter;
  now?: () => number;
}

/** RFC 7662 `token_type` values that denote an access token (RFC 6749 §7.1 types, RFC 8693 name). */
const ACCESS_TOKEN_TYPES = new Set([
  'bearer',
  'dpop',
  'access_token',
  'urn:ietf:params:oauth:token-type:access_token',
]);

type Outcome = { kind: 'active'; entry: CacheEntry } | { kind: 'inactive' };

/**
 * Opaque token → verified JWT: L1, then L2, else one introspection per token per process
 * (single-flight). In mint mode the JWT's audience depends on the route, so the cache key carries
 * the audience as a variant.
 */
export function createJwtResolver(deps: ResolveDeps) {
  const now = deps.now ?? (() => Date.now() / 1000);
  const flights = createSingleFlight<Outcome>();
  const { config } = deps;
  const skew = config.jwt.clockSkewSeconds;

  async function load(
    token: string,
    route: CompiledRoute,
    key: string,
    requestId: string,
    traceparent?: string,
  ): Promise<Outcome> {
    const answer = await deps.introspection.introspect(
      token,
      traceparent ? { requestId, traceparent } : { requestId },
    );
    const negTtl = config.cache.negativeTtlSeconds;
    if (!answer.active) {
      if (negTtl > 0) deps.cache.setInactive(key, negTtl);
      return { kind: 'inactive' };
    }
    let verified: VerifiedJwt;
    if (config.tokenService.mode === 'mint') {
      // Only access tokens become JWTs: a refresh token presented as a bearer token is refused.
      const type = answer.claims['token_type'];
      if (typeof type === 'string' && !ACCESS_TOKEN_TYPES.has(type.toLowerCase())) {
        if (negTtl > 0) deps.cache.setInactive(key, negTtl);
        return { kind: 'inactive' };
      }
      verified = await deps.minter!.mint(answer.claims, route.audience);
    } else {
      if (answer.jwt === undefined)
        throw new TokenServiceUnavailable('bad_answer', new Error('no JWT in the answer'));
      verified = await deps.verifier!.verify(answer.jwt);
    }
    const entry: CacheEntry = {
      jwt: verified.jwt,
      claims: verified.claims as Record<string, unknown>,
      exp: verified.exp,
    };
    const ttl = cacheTtlSeconds(entry.exp, now(), skew, config.cache.maxTtlSeconds, answer.maxAgeSeconds);
    if (ttl > 0) await deps.cache.set(key, entry, ttl);
    return { kind: 'active', entry };
  }

  /** Resolves for one request; throws InvalidToken / TokenServiceUnavailable. */
  async function resolve(
    token: string,
    route: CompiledRoute,
    requestId: string,
    traceparent?: string,
  ): Promise<ResolvedToken & { tokenServiceMs?: number }> {
    const key = deps.cacheKey(token, config.tokenService.mode === 'mint' ? route.audience : undefined);
    const hit = await deps.cache.get(key);
    if (hit !== undefined) return { ...hit.entry, source: hit.level };
    if (deps.cache.isInactive(key)) throw new InvalidToken('token_inactive');
    const started = performance.now();
    const outcome = await flights.run(key, () => load(token, route, key, requestId, traceparent));
    if (outcome.kind === 'inactive') throw new InvalidToken('token_inactive');
    return { ...outcome.entry, source: 'introspection', tokenServiceMs: performance.now() - started };
  }

  return {
    resolve,
    /** Stage 4 as middleware: writes `resolved` and the cache level into the context. */
    middleware: async function resolveJwt(req: Request, res: Response, next: NextFunction): Promise<void> {
      const c = ctx(res);
      if (c.token === undefined) return next(); // auth: none
      const tp = req.headers.traceparent;
      const r = await resolve(c.token, c.route!, c.requestId, typeof tp === 'string' ? tp : undefined);
      c.cache = r.source;
      if (r.tokenServiceMs !== undefined) c.tokenServiceMs = r.tokenServiceMs;
      c.resolved = r;
      next();
    },
  };
}
