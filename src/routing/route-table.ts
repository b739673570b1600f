import type { Config, HttpMethod, RouteConfig } from '../config/schema.ts';
import { normaliseScopeRule, type RequiredScopes } from '../policy/scopes.ts';

/** A route ready for request time: parsed once at boot, never re-parsed per request. */
export interface CompiledRoute {
  name: string;
  pathPrefix: string;
  /** undefined = every method. */
  methods: ReadonlySet<string> | undefined;
  upstream: URL;
  /** The upstream URL's own path without a trailing slash ('' for the root). */
  upstreamBasePath: string;
  stripPrefix: boolean;
  /** undefined for `auth: none` routes. */
  scopes: RequiredScopes | undefined;
  timeoutMs: number;
  acceptJwt: boolean;
  /** Audience of JWTs minted for this route (mint mode): route's `audience`, else jwt.mint.audience, else upstream origin. */
  audience: string;
  config: RouteConfig;
}

export type RouteMatch =
  | { kind: 'route'; route: CompiledRoute }
  | { kind: 'no-route' }
  | { kind: 'method-not-allowed'; allow: readonly string[] };

/** Default upstream response timeout when a route sets none. */
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;

/**
 * Longest-prefix route lookup over a Map keyed by prefix: a request path is checked against its
 * own ancestors only (`/a/b/c`, `/a/b`, `/a`, `/`), so lookup cost grows with path depth, not
 * with the number of routes.
 */
export class RouteTable {
  readonly #byPrefix = new Map<string, CompiledRoute[]>();

  constructor(config: Config) {
    for (const r of config.routes) {
      const route = compileRoute(r, config);
      const list = this.#byPrefix.get(route.pathPrefix);
      if (list) list.push(route);
      else this.#byPrefix.set(route.pathPrefix, [route]);
    }
  }

  /** Routes in configuration order. */
  get routes(): CompiledRoute[] {
    return [...this.#byPrefix.values()].flat();
  }

  match(method: string, path: string): RouteMatch {
    let candidate = path;
    for (;;) {
      const routes = this.#byPrefix.get(candidate);
      if (routes !== undefined) return pickMethod(routes, method);
      if (candidate === '/') return { kind: 'no-route' };
      const cut = candidate.lastIndexOf('/');
      // '/api/x' → '/api'; '/api' → '/'; a trailing '/' ('/api/') → '/api'.
      candidate = cut <= 0 ? '/' : candidate.slice(0, cut);
    }
  }
}

function pickMethod(routes: CompiledRoute[], method: string): RouteMatch {
  for (const r of routes)
    if (r.methods === undefined || r.methods.has(method)) return { kind: 'route', route: r };
  const allow = new Set<string>();
  for (const r of routes) for (const m of r.methods ?? []) allow.add(m);
  return { kind: 'method-not-allowed', allow: [...allow] };
}

function compileRoute(r: RouteConfig, config: Config): CompiledRoute {
  const upstream = new URL(r.upstream);
  const base = upstream.pathname.endsWith('/') ? upstream.pathname.slice(0, -1) : upstream.pathname;
  return {
    name: r.name,
    pathPrefix: r.match.pathPrefix,
    methods: r.match.methods ? new Set<HttpMethod>(r.match.methods) : undefined,
    upstream,
    upstreamBasePath: base,
    stripPrefix: r.stripPrefix,
    scopes: r.scopes ? normaliseScopeRule(r.scopes) : undefined,
    timeoutMs: r.timeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS,
    acceptJwt: r.acceptJwt,
    audience: config.jwt.mint?.audience ?? upstream.origin,
    config: r,
  };
}

/**
 * The path sent upstream (SPEC §3 "Upstream paths"): the upstream's own path + the request path,
 * with the route prefix removed first when `stripPrefix` (exactly the prefix → `/`).
 */
export function upstreamPath(route: CompiledRoute, path: string, query: string): string {
  let rest = path;
  if (route.stripPrefix && route.pathPrefix !== '/') {
    rest = path.slice(route.pathPrefix.length);
    if (rest === '') rest = '/';
  }
  return route.upstreamBasePath + rest + query;
}
