import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import type { Config } from '../config/schema.ts';
import { createErrorHandler } from '../errors/error-handler.ts';
import { GatewayError, InvalidRequest, RouteNotFound } from '../errors/gateway-errors.ts';
import { type AccessLogOptions, createAccessLog } from '../observability/access-log.ts';
import type { Logger } from '../observability/logger.ts';
import type { Tracing } from '../observability/tracing.ts';
import { createAuthorizeScopes } from '../pipeline/authorize-scopes.ts';
import { chain, type Stage } from '../pipeline/chain.ts';
import { ctx } from '../pipeline/context.ts';
import { createExtractToken } from '../pipeline/extract-token.ts';
import { createMatchRoute } from '../pipeline/match-route.ts';
import { createRequestId } from '../pipeline/request-id.ts';
import type { RouteTable } from '../routing/route-table.ts';
import { readOriginalRequest } from './original-request.ts';
import { createTrustedProxies } from './trusted-proxies.ts';

export type ForwardAuthConfig = NonNullable<Config['forwardAuth']>;

/** 403 without a challenge: the connecting peer is not a trusted proxy (no credential can fix that). */
export class UntrustedPeer extends GatewayError {
  constructor() {
    super({
      status: 403,
      error: 'forbidden',
      reason: 'proxy_untrusted',
      description: 'This endpoint answers trusted proxies only',
    });
  }
}

export interface ForwardAuthDeps {
  config: ForwardAuthConfig;
  /** The public listener's route table (the same object: one route table). */
  table: () => RouteTable;
  /** Stage 4 of the public pipeline (the same resolver: same cache, introspection and coalescing). */
  resolveJwt: Stage;
  realm: () => string;
  logger: Logger;
  /** The public listener's access-log options (metrics, includeSubject); `listener` is set here. */
  accessLog?: AccessLogOptions;
  /** OpenTelemetry, when on: each call gets its SERVER span and children like a public request. */
  tracing?: Tracing | undefined;
}

/** What `target` found wrong with a call, thrown after the access line is armed. */
const REFUSAL = Symbol('forward-auth refusal');
type Locals = { [REFUSAL]?: GatewayError };

/**
 * The forward-auth listener (`forwardAuth`): an existing ingress (nginx auth_request, Traefik
 * forwardAuth, Envoy ext_authz HTTP) asks whether a request may pass, and gets the public
 * pipeline's answer for it — stages 1–5 (request id, path rejection and route match, token
 * extraction from the call's own `Authorization`, JWT resolution, scope check) — without the
 * forward: 200 with `Authorization: Bearer <JWT>` (and the configured claim headers) for the
 * ingress to put on the upstream request, or the SPEC §5 error from the one renderer.
 *
 * Every call must come from `trustedProxies` (else 403 proxy_untrusted): the original request is
 * whatever the caller says it is, and the answer carries a JWT that clients must never see. The
 * original request's method and URI replace the call's own (`req.method` / `req.url`) before the
 * public stages run, so those stages and the access line see exactly the request being judged.
 */
export function createForwardAuthApp(deps: ForwardAuthDeps): Express {
  const { config } = deps;
  const trusted = createTrustedProxies(config.trustedProxies);
  const claimHeaders = config.claimHeaders.map((c) => [c.header, c.claim] as const);

  /** Trust and the original request; never throws (so that refusals get their access line too). */
  function target(req: Request, res: Response, next: NextFunction): void {
    const locals = res.locals as Locals;
    if (!trusted.trusts(req.socket.remoteAddress)) {
      locals[REFUSAL] = new UntrustedPeer();
      next();
      return;
    }
    const original = readOriginalRequest(req, config);
    if (original.kind === 'not-found') locals[REFUSAL] = new RouteNotFound();
    else if (original.kind === 'invalid')
      locals[REFUSAL] = new InvalidRequest('path_rejected', `Invalid forward-auth request: ${original.why}`);
    else {
      req.method = original.method;
      req.url = original.uri;
    }
    next();
  }

  function refuse(_req: Request, res: Response, next: NextFunction): void {
    const refusal = (res.locals as Locals)[REFUSAL];
    if (refusal !== undefined) throw refusal;
    next();
  }

  /**
   * The request may pass: 200, empty body, the JWT and claim headers for the ingress to copy, and
   * `X-Envoy-Auth-Headers-To-Remove` naming the client headers the upstream must not get (Envoy
   * ext_authz HTTP only adds/overrides headers: a public route's client `Authorization`, a claim
   * header whose claim is absent). nginx and Traefik ignore it; their snippets clear those headers.
   */
  function allow(_req: Request, res: Response): void {
    const { resolved, requestId } = ctx(res);
    res.statusCode = 200;
    res.setHeader('X-Request-Id', requestId);
    res.setHeader('Cache-Control', 'no-store');
    const remove: string[] = [];
    if (resolved === undefined) {
      remove.push('authorization', ...claimHeaders.map(([header]) => header.toLowerCase()));
    } else {
      res.setHeader('Authorization', `Bearer ${resolved.jwt}`);
      for (const [header, claim] of claimHeaders) {
        const value = claimHeaderValue(resolved.claims[claim]);
        if (value !== undefined) res.setHeader(header, value);
        else remove.push(header.toLowerCase());
      }
    }
    if (remove.length > 0) res.setHeader('X-Envoy-Auth-Headers-To-Remove', remove.join(', '));
    res.setHeader('Content-Length', 0);
    res.end();
  }

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(
    chain([
      createRequestId(deps.tracing),
      target,
      createAccessLog(deps.logger, { ...deps.accessLog, listener: 'forward-auth' }),
      refuse,
      createMatchRoute(deps.table),
      createExtractToken(),
      deps.resolveJwt,
      createAuthorizeScopes(),
      allow,
    ]),
  );
  app.use(createErrorHandler({ realm: deps.realm, logger: deps.logger }));
  return app;
}

/** Longest claim header value written (a larger claim is left out rather than cut). */
export const MAX_CLAIM_HEADER_BYTES = 4096;

/**
 * A claim as a response header value: a string as is, a finite number in decimal, an array of
 * strings/numbers joined by one space (a `roles` list). Anything else — absent, boolean, object,
 * an array with other members, an empty value, a value with characters outside printable ASCII, or longer than
 * MAX_CLAIM_HEADER_BYTES — gives no header.
 */
export function claimHeaderValue(claim: unknown): string | undefined {
  const scalar = (v: unknown): string | undefined =>
    typeof v === 'string' ? v : typeof v === 'number' && Number.isFinite(v) ? String(v) : undefined;
  let value: string | undefined;
  if (Array.isArray(claim)) {
    const parts = claim.map(scalar);
    value = parts.every((p) => p !== undefined) ? parts.join(' ') : undefined;
  } else {
    value = scalar(claim);
  }
  if (value === undefined || value === '' || value.length > MAX_CLAIM_HEADER_BYTES) return undefined;
  return /^[\x20-\x7e]*$/.test(value) ? value : undefined;
}
