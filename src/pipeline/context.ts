import type { Response } from 'express';
import type { ReasonCode } from '../errors/reason-codes.ts';
import type { RequestTrace } from '../observability/tracing.ts';
import type { CompiledRoute } from '../routing/route-table.ts';

/** Where the JWT of a request came from (access log `cache` field). */
export type CacheLevel = 'l1' | 'l2' | 'introspection' | 'none';

/** The token after stage 4: a verified JWT and its claims. */
export interface ResolvedToken {
  jwt: string;
  claims: Record<string, unknown>;
  exp: number;
  source: Exclude<CacheLevel, 'none'>;
}

/**
 * The one typed object the stages hand on (as Oathkeeper's session): each stage reads what the
 * previous ones wrote and adds its own result. Lives on the response under a private symbol (the
 * public listener is plain node:http, the forward-auth one express: both carry it the same way).
 */
export interface GatewayContext {
  requestId: string;
  startedAt: bigint;
  route?: CompiledRoute;
  /** The opaque token (stage 3). Never logged, never rendered. */
  token?: string;
  resolved?: ResolvedToken;
  reason?: ReasonCode;
  /** Why the request was refused (error name/message/code chain; never a token or claim value). */
  cause?: Record<string, unknown>;
  cache: CacheLevel;
  tokenServiceMs?: number;
  upstreamMs?: number;
  /** Set by forward when an upstream timer fired, so the error maps to 504, not 502. */
  upstreamTimedOut?: boolean;
  /** The request's trace (observability/tracing.ts); absent when tracing is off. */
  trace?: RequestTrace;
}

const CONTEXT = Symbol('phantom-gateway.context');

/** The request's gateway context (created by the request-id stage). */
export function ctx(res: Response): GatewayContext {
  return (res as unknown as Record<symbol, GatewayContext>)[CONTEXT]!;
}

/** Attaches the context to the response (request-id stage). */
export function setCtx(res: Response, context: GatewayContext): void {
  (res as unknown as Record<symbol, GatewayContext>)[CONTEXT] = context;
}
