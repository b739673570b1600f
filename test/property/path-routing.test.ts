import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/parse-config.ts';
import { splitTarget } from '../../src/pipeline/match-route.ts';
import { rejectPath } from '../../src/routing/check-path.ts';
import { type RouteMatch, RouteTable, upstreamPath } from '../../src/routing/route-table.ts';
import { runs } from './params.ts';

// SPEC §4 stage 2 and §3 "Upstream paths": random route tables and hostile request targets. For
// every target the gateway accepts, the route it picks is the reference model's (longest matching
// prefix, then method), the upstream path is exactly base + path (or the rest after the prefix),
// and no reading of the forwarded path by an upstream — WHATWG URL parsing (dot segments, `\`,
// fragments) or percent-decoding — lands outside the matched route's prefix.

const METHODS = ['GET', 'POST', 'DELETE', 'PUT'] as const;

/** Segments a pathPrefix may contain: visible ASCII except `%`, `\`, `;`, `?`, `#`, and not `.`/`..`. */
const PREFIX_SEGMENTS = [
  'api',
  'v1',
  'a',
  'b',
  'A',
  'x-y',
  '~u',
  'a.b',
  '.well-known',
  '...',
  '@',
  ':',
  '!',
  '$',
  "'",
  '(',
  '*',
  '+',
  ',',
  '=',
  '&',
  '"',
  '<',
  '{',
  '|',
  '^',
  '`',
] as const;

/** Request segments: the prefix alphabet plus everything the gateway must refuse or keep literal. */
const TRICKY_SEGMENTS = [
  '.',
  '..',
  '%2e',
  '%2E',
  '%2e%2e',
  '.%2e',
  '..;',
  '.;x',
  '..;a=b',
  ';..',
  '%2F',
  '%2f',
  'a%2Fb',
  '%5C',
  '%5c',
  '\\',
  'a\\b',
  ';',
  ';x=1',
  'api;',
  'api;x',
  '',
  '\u00e9',
  '\u0430pi',
  '%C3%A9',
  '%c3%a9',
  '%C0%AE',
  '%41',
  '%61pi',
  '%7e',
  '%7E',
  '%2d',
  '%5F',
  '%00',
  '%1f',
  '%1F',
  '%7f',
  '\u0000',
  '\u0001',
  '\u007f',
  '\t',
  '\r\n',
  ' ',
  '%20',
  '%3F',
  '%3f',
  '%23',
  '%25',
  '%252e',
  '%252F',
  '%40',
  '%3A',
  '%3d',
  '#',
  '#x',
  'api#',
  '%',
  '%4',
  '%zz',
  'a..b',
  'API',
  'Api',
  '?',
] as const;

interface RouteInput {
  name: string;
  match: { pathPrefix: string; methods?: string[] };
  upstream: string;
  stripPrefix: boolean;
  scopes: string[];
}

const prefix = fc.oneof(
  { weight: 1, arbitrary: fc.constant('/') },
  {
    weight: 6,
    arbitrary: fc
      .array(fc.constantFrom(...PREFIX_SEGMENTS), { minLength: 1, maxLength: 3 })
      .map((s) => `/${s.join('/')}`),
  },
);

const upstreamBase = fc.constantFrom('', '/', '/base', '/b/c', '/b/c/');

/** One prefix's routes: one route (all methods or some), or two with disjoint method sets. */
const routesForPrefix = fc.tuple(
  fc.oneof(
    fc.constant<(readonly string[] | undefined)[]>([undefined]),
    fc.subarray([...METHODS], { minLength: 1 }).map((m) => [m]),
    fc
      .shuffledSubarray([...METHODS], { minLength: 2 })
      .chain((m) => fc.integer({ min: 1, max: m.length - 1 }).map((cut) => [m.slice(0, cut), m.slice(cut)])),
  ),
  upstreamBase,
  fc.boolean(),
);

const routeTable = fc
  .uniqueArray(prefix, { minLength: 1, maxLength: 6 })
  .chain((prefixes) =>
    fc.tuple(
      fc.constant(prefixes),
      fc.array(routesForPrefix, { minLength: prefixes.length, maxLength: prefixes.length }),
    ),
  )
  .map(([prefixes, specs]) => {
    const routes: RouteInput[] = [];
    prefixes.forEach((p, i) => {
      const [methodSets, base, stripPrefix] = specs[i]!;
      for (const methods of methodSets) {
        const n = routes.length;
        routes.push({
          name: `r${n}`,
          match: { pathPrefix: p, ...(methods ? { methods: [...methods] } : {}) },
          upstream: `http://u${n}.internal:${3000 + n}${base}`,
          stripPrefix,
          scopes: ['s'],
        });
      }
    });
    return routes;
  });

/** Request paths built from prefix segments (so that routes match) and tricky ones. */
const requestPath = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .tuple(
        fc.array(
          fc.oneof(
            { weight: 3, arbitrary: fc.constantFrom(...PREFIX_SEGMENTS) },
            { weight: 2, arbitrary: fc.constantFrom(...TRICKY_SEGMENTS) },
            // A tricky piece glued to an ordinary segment (`api%2F..`, `a;b`, `v1%40`).
            {
              weight: 1,
              arbitrary: fc
                .tuple(fc.constantFrom(...PREFIX_SEGMENTS), fc.constantFrom(...TRICKY_SEGMENTS))
                .map(([a, b]) => a + b),
            },
          ),
          { minLength: 0, maxLength: 5 },
        ),
        fc.constantFrom('', '', '', '/'),
      )
      .map(([segments, trail]) => `/${segments.join('/')}${segments.length > 0 ? trail : ''}`),
  },
  // Targets that are not an origin-form path at all.
  {
    weight: 1,
    arbitrary: fc.constantFrom('*', '', 'api', 'http://evil/api', 'HTTP://u0.internal/api', '//api', '\\api'),
  },
);

/**
 * A request path near a route of the table: the prefix itself, below it (ordinary or tricky
 * segments), or the prefix with something glued to it (`/apiX`, `/api%2F..`, `/api#x`, `/api;x`).
 */
const nearPath = fc.record({
  pick: fc.nat(),
  how: fc.constantFrom('below', 'below', 'glued', 'exact', 'free'),
  segments: fc.array(fc.oneof(fc.constantFrom(...PREFIX_SEGMENTS), fc.constantFrom(...TRICKY_SEGMENTS)), {
    maxLength: 3,
  }),
  glue: fc.constantFrom(...TRICKY_SEGMENTS, ...PREFIX_SEGMENTS),
  trail: fc.constantFrom('', '', '/'),
  free: requestPath,
});

function buildNearPath(
  near: typeof nearPath extends fc.Arbitrary<infer T> ? T : never,
  routes: readonly RouteInput[],
) {
  const p = routes[near.pick % routes.length]!.match.pathPrefix;
  const base = p === '/' ? '' : p;
  const { segments, trail } = near;
  if (near.how === 'free') return near.free;
  if (near.how === 'exact') return p + (p === '/' ? '' : trail);
  if (near.how === 'glued') return `${base}${near.glue}${segments.map((x) => `/${x}`).join('')}`;
  return `${base}/${segments.join('/')}${segments.length > 0 ? trail : ''}`;
}

const queryString = fc.oneof(
  { weight: 3, arbitrary: fc.constant('') },
  {
    weight: 1,
    arbitrary: fc
      .array(fc.constantFrom('a=1', '..', '/../', '%2F', '#', '?', 'x=%2e%2e', '&', '\\', 'access_token=1'), {
        maxLength: 4,
      })
      .map((parts) => `?${parts.join('')}`),
  },
);

// ---------------------------------------------------------------------------------------------
// Reference models

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** Bytes of a path with its percent-escapes decoded once, as a latin1 string (one char per byte). */
function decodeOnce(path: string): string {
  return path.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) =>
    String.fromCharCode(Number.parseInt(hex, 16)),
  );
}

/**
 * SPEC §4 stage 2 and README "Behaviour where SPEC is silent", phrased differently from
 * check-path.ts: a path is accepted when it is an absolute path of printable ASCII without `\`,
 * every escape is well-formed, RFC 3986 §6.2.2.2 normalisation (decoding escaped unreserved
 * characters) would not change it, no `#` (fragment), no escape decodes to `/`, `\` or a control character, and its
 * raw segments contain no empty segment (a trailing `/` aside) and no dot segment, `.;x` and
 * `..;x` included (servlet containers drop the `;` parameter before resolving dots).
 */
function referenceAccepts(path: string): boolean {
  if (!path.startsWith('/')) return false;
  if (!/^[\x20-\x7e]*$/.test(path) || path.includes('\\')) return false;
  // No fragment: `#` is not part of a request target (RFC 9112 §3.2).
  if (path.includes('#')) return false;
  if (/%(?![0-9A-Fa-f]{2})/.test(path)) return false;
  for (const [, hex] of path.matchAll(/%([0-9A-Fa-f]{2})/g)) {
    const ch = String.fromCharCode(Number.parseInt(hex!, 16));
    if (UNRESERVED.test(ch) || ch === '/' || ch === '\\' || /[\x00-\x1f\x7f]/.test(ch)) return false;
  }
  const segments = path.slice(1).split('/');
  return segments.every((s, i) => (s !== '' || i === segments.length - 1) && !isDotSegment(s));
}

/** `.`, `..`, and the same with a `;` parameter (`..;x`). */
function isDotSegment(segment: string): boolean {
  const name = segment.split(';')[0];
  return name === '.' || name === '..';
}

function underPrefix(path: string, p: string): boolean {
  return p === '/' || path === p || path.startsWith(`${p}/`);
}

/** Longest matching prefix by a linear scan, then the first route of that prefix allowing the method. */
function referenceMatch(routes: readonly RouteInput[], method: string, path: string): RouteMatch | 'none' {
  const matching = routes.filter((r) => underPrefix(path, r.match.pathPrefix));
  if (matching.length === 0) return 'none';
  const longest = Math.max(...matching.map((r) => r.match.pathPrefix.length));
  const candidates = matching.filter((r) => r.match.pathPrefix.length === longest);
  const chosen = candidates.find((r) => r.match.methods === undefined || r.match.methods.includes(method));
  if (chosen === undefined) {
    return {
      kind: 'method-not-allowed',
      allow: [...new Set(candidates.flatMap((r) => r.match.methods ?? []))],
    };
  }
  return { kind: 'route', route: { name: chosen.name } } as RouteMatch;
}

function summary(m: RouteMatch | 'none'): unknown {
  if (m === 'none' || m.kind === 'no-route') return 'none';
  if (m.kind === 'method-not-allowed') return { allow: [...m.allow].sort() };
  return { route: m.route.name };
}

function buildTable(routes: readonly RouteInput[]): RouteTable {
  return new RouteTable(
    parseConfig({
      tokenService: { issuer: 'http://127.0.0.1:1', clientId: 'gw', clientSecret: 's' },
      routes,
    }),
  );
}

// ---------------------------------------------------------------------------------------------

describe('path canonicalisation and routing (property)', () => {
  it('rejectPath accepts exactly what the reference accepts', () => {
    fc.assert(
      fc.property(requestPath, (path) => {
        expect(rejectPath(path) === undefined).toBe(referenceAccepts(path));
      }),
      runs(5000),
    );
  });

  it('an accepted path routes like the reference and is forwarded to exactly the authorized path', () => {
    fc.assert(
      fc.property(
        routeTable,
        fc.constantFrom(...METHODS),
        nearPath,
        queryString,
        fc.context(),
        (routes, method, near, q, log) => {
          const table = buildTable(routes);
          const p = buildNearPath(near, routes);
          log.log(`request target: ${JSON.stringify(p + q)}`);
          const { path, query } = splitTarget(p + q);
          if (rejectPath(path) !== undefined) return;

          const got = table.match(method, path);
          expect(summary(got)).toEqual(summary(referenceMatch(routes, method, path)));
          if (got.kind !== 'route') return;
          const route = got.route;
          const prefix = route.pathPrefix;

          // (a) The path is the prefix or below it, and no other route has a longer matching prefix.
          expect(underPrefix(path, prefix)).toBe(true);
          for (const other of routes) {
            if (underPrefix(path, other.match.pathPrefix))
              expect(other.match.pathPrefix.length).toBeLessThanOrEqual(prefix.length);
          }

          // (b) Exactly the upstream base + the path (or what follows the prefix) + the query as received.
          const input = routes.find((r) => r.name === route.name)!;
          const base = new URL(input.upstream).pathname.replace(/\/$/, '');
          const rest = input.stripPrefix && prefix !== '/' ? path.slice(prefix.length) || '/' : path;
          expect(upstreamPath(route, path, query)).toBe(base + rest + query);

          // (c) How an upstream reads the forwarded path: a WHATWG URL parser (resolves `.`/`..` and
          // `%2e` segments, turns `\` into `/`, cuts at `#`) must see the same bytes, and decoding
          // the escapes the gateway let through must not create a `/` (another segment, so possibly
          // another prefix), a `\`, a control character or a dot segment.
          const forwarded = upstreamPath(route, path, '');
          // (The `?` keeps the URL parser from trimming trailing spaces of its input: a target is
          // never the end of an upstream's URL string when it is read with its query.)
          const parsed = new URL(`${forwarded}?`, 'http://upstream.invalid/').pathname;
          // (`#` was once forwarded and read by a WHATWG upstream as the end of the path: now rejected.)
          expect(decodeOnce(parsed)).toBe(decodeOnce(forwarded));
          const decoded = decodeOnce(forwarded);
          expect(decoded.startsWith(base)).toBe(true);
          const seen = decoded.slice(base.length);
          const viewed =
            input.stripPrefix && prefix !== '/' ? (path === prefix ? prefix : prefix + seen) : seen;
          expect(viewed.split('/').length).toBe(path.split('/').length);
          for (const segment of viewed.split('/')) {
            expect(isDotSegment(segment)).toBe(false);
            expect(segment).not.toMatch(/[\\\x00-\x1f\x7f]/);
          }
          // KNOWN GAP 2, reported to the lead: escapes of reserved characters are forwarded as they are
          // (RFC 3986 §2.2: `%3A` is not `:`), so an upstream that decodes them before routing reads
          // `/v1%3Abatch` as `/v1:batch`, which a prefix may name. Not asserted here.
        },
      ),
      runs(4000),
    );
  });
});
