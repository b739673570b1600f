import { createHash } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { decodeProtectedHeader } from 'jose';
import { type CacheEntry, cacheTtlSeconds } from '../cache/cache-entry.ts';
import type { CacheKeyer } from '../cache/cache-key.ts';
import type { Coalescer } from '../cache/coalescer.ts';
import { subjectTag } from '../cache/revocation.ts';
import { createSingleFlight } from '../cache/single-flight.ts';
import { type CacheRef, type Lookup, slotOf, type TieredCache } from '../cache/tiered-cache.ts';
import type { Config } from '../config/schema.ts';
import { InvalidToken, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { Introspection, IntrospectionClient } from '../introspection/introspection-client.ts';
import type { Minter } from '../jwt/mint-jwt.ts';
import type { JwtVerifier, VerifiedJwt } from '../jwt/verify-jwt.ts';
import type { RequestTrace, TraceSpan } from '../observability/tracing.ts';
import type { CompiledRoute } from '../routing/route-table.ts';
import { ctx, type ResolvedToken } from './context.ts';

export interface ResolveDeps {
  config: Config;
  cache: TieredCache;
  coalescer: Coalescer;
  keyer: CacheKeyer;
  introspection: IntrospectionClient;
  /** accept-jwt / claim: verifies the token service's JWT. */
  verifier?: JwtVerifier;
  /** mint: signs the gateway's own JWT. */
  minter?: Minter;
  /** Epoch seconds. */
  now?: () => number;
}

/** RFC 7662 `token_type` values that denote an access token (RFC 6749 §7.1 types, RFC 8693 name). */
const ACCESS_TOKEN_TYPES = new Set([
  'bearer',
  'dpop',
  'access_token',
  'urn:ietf:params:oauth:token-type:access_token',
]);

type Outcome = { kind: 'active'; entry: CacheEntry; source: 'introspection' | 'l2' } | { kind: 'inactive' };

/**
 * A verified JWT as a cache entry, tagged with the HMAC of its `sub` (purge by subject) and the
 * `kid` of its signing key (dropped on read once that key is no longer published).
 */
export function cacheEntryOf(verified: VerifiedJwt, keyer: CacheKeyer): CacheEntry {
  const claims = verified.claims as Record<string, unknown>;
  const entry: CacheEntry = { jwt: verified.jwt, claims, exp: verified.exp };
  if (typeof claims['sub'] === 'string' && claims['sub'] !== '')
    entry.subTag = subjectTag(keyer, claims['sub']);
  const kid = verified.kid ?? kidOf(verified.jwt);
  if (kid !== undefined) entry.kid = kid;
  return entry;
}

/** The `kid` of a JWT we produced or verified (a minted JWT's VerifiedJwt may not carry it). */
function kidOf(jwt: string): string | undefined {
  try {
    const kid = decodeProtectedHeader(jwt).kid;
    return typeof kid === 'string' ? kid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The cache variant of a route: in mint mode the JWT's audience depends on the route, so each
 * audience gets its own entry (a short hash of it: no claim value in a Redis key).
 */
export function cacheVariant(config: Config, audience: string): string {
  if (config.tokenService.mode !== 'mint') return '';
  return createHash('sha256').update(audience).digest('base64url').slice(0, 16);
}

/**
 * Opaque token → verified JWT (SPEC §4 stage 4, §7): L1, L2, else one introspection per token —
 * per process (single-flight) and across replicas (Redis lock, coalescer.ts).
 */
export function createJwtResolver(deps: ResolveDeps) {
  const now = deps.now ?? (() => Date.now() / 1000);
  const flights = createSingleFlight<Outcome>();
  const { config, cache } = deps;
  const skew = config.jwt.clockSkewSeconds;
  const negTtl = config.cache.negativeTtlSeconds;

  async function inactive(ref: CacheRef): Promise<Outcome> {
    await cache.storeInactive(ref, negTtl);
    return { kind: 'inactive' };
  }

  /**
   * One introspection. Tracing off: the client's `traceparent` (if any) goes to the token service
   * as received. On: an `introspection` CLIENT span, whose `traceparent` the request carries.
   */
  async function introspect(
    token: string,
    requestId: string,
    traceparent: string | undefined,
    trace: RequestTrace | undefined,
  ): Promise<Introspection> {
    if (trace === undefined)
      return deps.introspection.introspect(token, traceparent ? { requestId, traceparent } : { requestId });
    const span = trace.child('introspection', 'client');
    try {
      return await deps.introspection.introspect(token, {
        requestId,
        traceparent: trace.traceparentOf(span),
        span,
      });
    } catch (err) {
      trace.fail(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  async function load(
    ref: CacheRef,
    route: CompiledRoute,
    requestId: string,
    traceparent?: string,
    trace?: RequestTrace,
  ): Promise<Outcome> {
    const answer = await introspect(ref.token, requestId, traceparent, trace);
    if (!answer.active) return inactive(ref);
    let verified: VerifiedJwt;
    if (config.tokenService.mode === 'mint') {
      // Only access tokens become JWTs: a refresh token presented as a bearer token is refused.
      const type = answer.claims['token_type'];
      if (typeof type === 'string' && !ACCESS_TOKEN_TYPES.has(type.toLowerCase())) return inactive(ref);
      verified = await deps.minter!.mint(answer.claims, route.audience);
    } else {
      if (answer.jwt === undefined)
        throw new TokenServiceUnavailable('bad_answer', new Error('no JWT in the answer'));
      verified = await deps.verifier!.verify(answer.jwt);
    }
    const entry = cacheEntryOf(verified, deps.keyer);
    const ttl = cacheTtlSeconds(entry.exp, now(), skew, config.cache.maxTtlSeconds, answer.maxAgeSeconds);
    if (ttl > 0) await cache.store(ref, entry, ttl);
    return { kind: 'active', entry, source: 'introspection' };
  }

  async function fromL2(ref: CacheRef): Promise<Outcome | undefined> {
    const r = await cache.lookup(ref, { l2Only: true });
    if (r.kind === 'hit') return { kind: 'active', entry: r.entry, source: 'l2' };
    if (r.kind === 'inactive') return { kind: 'inactive' };
    return undefined;
  }

  const refOf = (token: string, route: CompiledRoute): CacheRef => ({
    tag: deps.keyer(token),
    variant: cacheVariant(config, route.audience),
    token,
  });

  /** Resolves for one request; throws InvalidToken / TokenServiceUnavailable. */
  async function resolve(
    token: string,
    route: CompiledRoute,
    requestId: string,
    traceparent?: string,
  ): Promise<ResolvedToken & { tokenServiceMs?: number }> {
    return resolveMiss(refOf(token, route), route, requestId, traceparent);
  }

  /**
   * L1 and L2 (the middleware has already found L1 empty; checking it again costs a map lookup),
   * then one introspection per token (process single-flight, cross-replica lock). Traced: the
   * middleware's `cache lookup` span ends here, after L2.
   */
  async function resolveMiss(
    ref: CacheRef,
    route: CompiledRoute,
    requestId: string,
    traceparent?: string,
    trace?: RequestTrace,
    lookup?: TraceSpan,
  ): Promise<ResolvedToken & { tokenServiceMs?: number }> {
    let found: Lookup;
    if (lookup === undefined) found = await cache.lookup(ref);
    else {
      try {
        found = await cache.lookup(ref);
      } catch (err) {
        trace!.fail(lookup, err);
        lookup.end();
        throw err;
      }
      trace!.endLookup(lookup, found.kind === 'miss' ? 'miss' : found.level, found.kind === 'inactive');
    }
    if (found.kind === 'hit') return { ...found.entry, source: found.level };
    if (found.kind === 'inactive') throw new InvalidToken('token_inactive');
    const started = performance.now();
    const outcome = await flights.run(slotOf(ref), () =>
      deps.coalescer.run(
        ref,
        () => load(ref, route, requestId, traceparent, trace),
        () => fromL2(ref),
      ),
    );
    if (outcome.kind === 'inactive') throw new InvalidToken('token_inactive');
    return { ...outcome.entry, source: outcome.source, tokenServiceMs: performance.now() - started };
  }

  return {
    resolve,
    /**
     * Stage 4 as middleware: writes `resolved` and the cache level into the context. An L1 hit
     * (the common case) is resolved synchronously: no promise, no await on the hot path.
     */
    middleware: function resolveJwt(
      req: Request,
      res: Response,
      next: NextFunction,
    ): Promise<void> | undefined {
      const c = ctx(res);
      if (c.token === undefined) {
        next(); // auth: none
        return undefined;
      }
      const route = c.route!;
      const ref = refOf(c.token, route);
      // Tracing on: a `cache lookup` span over L1 (and L2 on an L1 miss: ended in resolveMiss).
      const trace = c.trace;
      const lookup = trace === undefined ? undefined : trace.child('cache lookup');
      const l1 = cache.lookupL1(ref);
      if (l1.kind === 'hit') {
        c.cache = 'l1';
        c.resolved = { ...l1.entry, source: 'l1' };
        if (lookup !== undefined) trace!.endLookup(lookup, 'l1', false);
        next();
        return undefined;
      }
      if (l1.kind === 'inactive') {
        if (lookup !== undefined) trace!.endLookup(lookup, 'l1', true);
        throw new InvalidToken('token_inactive');
      }
      // Untraced, the client's traceparent goes to the token service as received.
      const tp = trace === undefined ? req.headers.traceparent : undefined;
      return resolveMiss(
        ref,
        route,
        c.requestId,
        typeof tp === 'string' ? tp : undefined,
        trace,
        lookup,
      ).then((r) => {
        c.cache = r.source;
        if (r.tokenServiceMs !== undefined) c.tokenServiceMs = r.tokenServiceMs;
        c.resolved = r;
        next();
      });
    },
  };
}
