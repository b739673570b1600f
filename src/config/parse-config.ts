import { isIP } from 'node:net';
import { z } from 'zod';
import { type Config, ConfigSchema, HTTP_METHODS } from './schema.ts';

/**
 * A configuration that cannot be used. Boot-time only (never a request error): `validate` prints
 * `problems` one per line, `serve` exits 1. The message lists every problem, one per line.
 */
export class ConfigError extends Error {
  /** Every problem found, each `path: message` (or `<file>: …` for problems outside the tree). */
  readonly problems: readonly string[];
  /** Warnings found while reading the file before it was rejected (see `loadConfig`). */
  readonly warnings: readonly string[];

  constructor(problems: readonly string[], options?: { warnings?: readonly string[]; cause?: unknown }) {
    super(problems.join('\n'), options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ConfigError';
    this.problems = Object.freeze([...problems]);
    this.warnings = Object.freeze([...(options?.warnings ?? [])]);
  }
}

/** One problem at one place in the configuration tree; `path` is already formatted. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

/** A path in the configuration tree, as the YAML author would point at it. */
export type ConfigPath = readonly (string | number)[];

/**
 * Writes a path the way an operator reads it: `routes[2].upstream`, `tokenService.clientSecret`;
 * the document itself is `(root)`.
 */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += out === '' ? String(segment) : `.${String(segment)}`;
  }
  return out === '' ? '(root)' : out;
}

/** `problem.path + ': ' + problem.message`, the one line `validate` prints. */
export function formatProblem(problem: ConfigProblem): string {
  return `${problem.path}: ${problem.message}`;
}

/**
 * Validates a parsed configuration document (SPEC §3): shape, defaults, ranges and the cross-field
 * rules, all problems at once. Returns the configuration with defaults applied, deep-frozen.
 * Pure: no I/O, no environment (substitution of `${NAME}` happens before, in `loadConfig`).
 * @throws ConfigError listing every problem.
 */
export function parseConfig(raw: unknown): Config {
  const { config, problems } = checkConfig(raw);
  if (config === undefined) throw new ConfigError(problems.map(formatProblem));
  return config;
}

/**
 * The non-throwing core of `parseConfig`: every problem (schema and cross-field rules, in that
 * order, without duplicates) and, only when there are none, the frozen configuration.
 */
export function checkConfig(raw: unknown): { config: Config | undefined; problems: ConfigProblem[] } {
  if (raw === undefined || raw === null) {
    return { config: undefined, problems: [{ path: '(root)', message: 'the configuration is empty' }] };
  }
  const result = ConfigSchema.safeParse(raw, { reportInput: true, error: readableMessage });
  const problems: ConfigProblem[] = [];
  if (!result.success) for (const issue of result.error.issues) problems.push(...fromIssue(issue));
  problems.push(...crossFieldProblems(raw));

  const seen = new Set<string>();
  const unique = problems.filter((p) => {
    const line = formatProblem(p);
    if (seen.has(line)) return false;
    seen.add(line);
    return true;
  });
  if (unique.length > 0 || !result.success) return { config: undefined, problems: unique };
  return { config: deepFreeze(result.data), problems: [] };
}

// ---------------------------------------------------------------------------------------------
// zod issues → readable messages

/** Per-parse error map: replaces zod's default wording; messages set in the schema win over it. */
function readableMessage(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case 'invalid_type': {
      if (issue.input === undefined) return 'is required';
      if (issue.expected === 'int') return 'must be a whole number';
      const expected = issue.expected === 'number' && isSafeIntCheck(issue.inst) ? 'int' : issue.expected;
      return `must be ${TYPE_NAMES[expected] ?? `of type ${expected}`}, not ${describe(issue.input)}`;
    }
    case 'too_small':
      return sizeMessage(issue.origin, 'small', Number(issue.minimum), issue.inclusive !== false);
    case 'too_big':
      return sizeMessage(issue.origin, 'big', Number(issue.maximum), issue.inclusive !== false);
    case 'invalid_value': {
      const values = issue.values.map((v) => JSON.stringify(v));
      const got = typeof issue.input === 'string' ? ` (got ${JSON.stringify(issue.input)})` : '';
      return values.length === 1 ? `must be ${values[0]}${got}` : `must be one of ${values.join(', ')}${got}`;
    }
    case 'invalid_format':
      return issue.format === 'regex' && issue.pattern
        ? `must match ${issue.pattern}`
        : `must be a valid ${issue.format}`;
    case 'invalid_union':
      return unionMessage(issue.errors);
    case 'unrecognized_keys':
      // Rewritten per key, with the path, in fromIssue().
      return undefined;
    default:
      return undefined;
  }
}

const TYPE_NAMES: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  array: 'a list',
  object: 'a mapping (key: value)',
};

/** `z.number().int()` reports a non-number as "expected number"; say "whole number" for it. */
function isSafeIntCheck(inst: unknown): boolean {
  type Check = { _zod?: { def?: { format?: unknown } } };
  const checks = (inst as { _zod?: { def?: { checks?: Check[] } } } | undefined)?._zod?.def?.checks ?? [];
  return checks.some((check) => check._zod?.def?.format === 'safeint');
}

/** The kind of a YAML value, for "must be X, not Y"; never the value itself (it may be a secret). */
function describe(input: unknown): string {
  if (input === null) return 'an empty value';
  if (Array.isArray(input)) return 'a list';
  switch (typeof input) {
    case 'string':
      return 'a string';
    case 'number':
      return Number.isFinite(input) ? 'a number' : String(input);
    case 'boolean':
      return `${input}`;
    case 'object':
      return 'a mapping';
    default:
      return typeof input;
  }
}

/**
 * A raw value the schema may have rejected, in a cross-field message: scalars as written, a
 * mapping or list by its kind. Never through the value's own toString (a YAML key `toString`
 * makes a mapping that cannot be converted to a string at all).
 */
function shown(value: unknown): string {
  return typeof value === 'object' && value !== null ? describe(value) : String(value);
}

function sizeMessage(origin: string, kind: 'small' | 'big', bound: number, inclusive: boolean): string {
  if (origin === 'string') {
    if (kind === 'small')
      return bound <= 1 ? 'must not be empty' : `must be at least ${bound} characters long`;
    return `must be at most ${bound} characters long`;
  }
  if (origin === 'array' || origin === 'set') {
    if (kind === 'small') return bound <= 1 ? 'must not be empty' : `must list at least ${bound} items`;
    return `must list at most ${bound} items`;
  }
  if (kind === 'small') return inclusive ? `must be at least ${bound}` : `must be greater than ${bound}`;
  return inclusive ? `must be at most ${bound}` : `must be less than ${bound}`;
}

function unionMessage(branches: readonly (readonly z.core.$ZodIssue[])[]): string {
  const expected = new Set<string>();
  for (const branch of branches) {
    const [only] = branch;
    if (branch.length !== 1 || only === undefined || only.code !== 'invalid_type' || only.path.length > 0) {
      return 'is not valid';
    }
    expected.add(TYPE_NAMES[only.expected] ?? only.expected);
  }
  return `must be ${[...expected].join(' or ')}`;
}

function fromIssue(issue: z.core.$ZodIssue): ConfigProblem[] {
  const path = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const allowed = allowedKeys(issue.path);
    return issue.keys.map((key) => {
      const hint = suggest(key, allowed);
      return {
        path,
        message: `unknown key ${JSON.stringify(key)}${hint ? ` (did you mean "${hint}"?)` : ''}`,
      };
    });
  }
  const last = issue.path.at(-1);
  if (issue.code === 'invalid_union' && last === 'scopes' && issue.message === unionMessage(issue.errors)) {
    return [{ path, message: 'must be a list of scopes, or { anyOf: [...] } or { allOf: [...] }' }];
  }
  if (issue.code === 'invalid_value' && issue.path[0] === 'jwt' && issue.path[1] === 'algorithms') {
    const got = typeof issue.input === 'string' ? `${JSON.stringify(issue.input)} is not allowed: ` : '';
    return [
      {
        path,
        message:
          `${got}jwt.algorithms is an allow-list of asymmetric algorithms (${issue.values.join(', ')}); ` +
          'none and HS* (shared-secret) algorithms are never accepted',
      },
    ];
  }
  return [{ path, message: issue.message }];
}

/** The keys the schema allows at `path` (for "did you mean"); empty when it cannot tell. */
function allowedKeys(path: readonly PropertyKey[]): string[] {
  let nodes: z.ZodType[] = [ConfigSchema];
  for (const segment of [...path, undefined]) {
    const next: z.ZodType[] = [];
    for (const node of nodes.flatMap(unwrap)) {
      if (segment === undefined) {
        if (node instanceof z.ZodObject) next.push(node);
      } else if (typeof segment === 'number' && node instanceof z.ZodArray) {
        next.push(node.element as z.ZodType);
      } else if (typeof segment === 'string' && node instanceof z.ZodObject) {
        const child = (node.shape as Record<string, z.ZodType>)[segment];
        if (child) next.push(child);
      }
    }
    nodes = next;
  }
  return nodes.flatMap((node) => (node instanceof z.ZodObject ? Object.keys(node.shape) : []));
}

/** Looks through optional/default/prefault/preprocess wrappers and unions to the schemas inside. */
function unwrap(node: z.ZodType): z.ZodType[] {
  if (node instanceof z.ZodOptional || node instanceof z.ZodNullable)
    return unwrap(node.unwrap() as z.ZodType);
  if (node instanceof z.ZodDefault || node instanceof z.ZodPrefault)
    return unwrap(node.unwrap() as z.ZodType);
  if (node instanceof z.ZodPipe) return unwrap(node.out as z.ZodType);
  if (node instanceof z.ZodUnion) return (node.options as z.ZodType[]).flatMap(unwrap);
  return [node];
}

/** The allowed key an unknown key was probably meant to be: same letters ignoring case, or ≤ 2 edits. */
function suggest(key: string, allowed: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  const exact = allowed.find((a) => a.toLowerCase() === lower);
  if (exact) return exact;
  let best: { key: string; distance: number } | undefined;
  for (const candidate of allowed) {
    const distance = editDistance(lower, candidate.toLowerCase());
    if (distance <= Math.min(2, Math.floor(candidate.length / 3)) && (!best || distance < best.distance)) {
      best = { key: candidate, distance };
    }
  }
  return best?.key;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + cost);
    }
    previous = current;
  }
  return previous[b.length]!;
}

// ---------------------------------------------------------------------------------------------
// Cross-field rules (SPEC §3). They read the raw document defensively, so that they are reported
// together with the schema's problems; a value the schema rejects is left to the schema's message.

function crossFieldProblems(raw: unknown): ConfigProblem[] {
  if (!isRecord(raw)) return [];
  return [
    ...routeProblems(raw['routes']),
    ...tokenServiceProblems(raw),
    ...portProblems(raw),
    ...redisProblems(raw),
  ];
}

type Methods = ReadonlySet<string> | 'all';

interface RawRoute {
  readonly index: number;
  readonly name: string | undefined;
  readonly pathPrefix: string | undefined;
  readonly methods: Methods | undefined;
}

function routeProblems(routes: unknown): ConfigProblem[] {
  if (!Array.isArray(routes)) return [];
  const problems: ConfigProblem[] = [];
  const seen: RawRoute[] = [];
  const byName = new Map<string, number>();

  routes.forEach((route: unknown, index) => {
    if (!isRecord(route)) return;
    const at = (...rest: string[]) => formatPath(['routes', index, ...rest]);
    const name = typeof route['name'] === 'string' ? route['name'] : undefined;

    if (name !== undefined) {
      const first = byName.get(name);
      if (first === undefined) byName.set(name, index);
      else
        problems.push({
          path: at('name'),
          message: `duplicate route name "${name}" (also routes[${first}])`,
        });
    }

    // Forgetting scopes never silently makes a route public.
    const hasScopes = route['scopes'] !== undefined;
    const isPublic = route['auth'] !== undefined;
    if (!hasScopes && !isPublic) {
      problems.push({
        path: at('scopes'),
        message: 'is required; write auth: none instead to make the route public on purpose',
      });
    } else if (hasScopes && isPublic) {
      problems.push({
        path: at('auth'),
        message: 'auth: none cannot be combined with scopes (a public route has no scope check); remove one',
      });
    }

    const upstream = route['upstream'];
    if (typeof upstream === 'string') problems.push(...upstreamProblems(upstream, at('upstream')));

    const match = isRecord(route['match']) ? route['match'] : undefined;
    const prefix = typeof match?.['pathPrefix'] === 'string' ? match['pathPrefix'] : undefined;
    if (prefix !== undefined) problems.push(...pathPrefixProblems(prefix, at('match', 'pathPrefix')));

    const current: RawRoute = { index, name, pathPrefix: prefix, methods: readMethods(match?.['methods']) };
    for (const other of seen) {
      const overlap = overlappingMethods(other, current);
      if (overlap === undefined) continue;
      problems.push({
        path: at('match'),
        message:
          `overlaps ${describeRoute(other)}: both match pathPrefix ${JSON.stringify(prefix)} ` +
          `and ${overlap === 'all' ? 'all methods' : `method${overlap.length > 1 ? 's' : ''} ${overlap.join(', ')}`}`,
      });
    }
    seen.push(current);
  });
  return problems;
}

function describeRoute(route: RawRoute): string {
  return route.name === undefined ? `routes[${route.index}]` : `routes[${route.index}] ("${route.name}")`;
}

/** The route's method set as the schema will read it; `undefined` when the schema rejects it. */
function readMethods(methods: unknown): Methods | undefined {
  if (methods === undefined) return 'all';
  if (!Array.isArray(methods) || methods.length === 0) return undefined;
  const set = new Set<string>();
  for (const m of methods) {
    const upper = typeof m === 'string' ? m.toUpperCase() : undefined;
    if (upper === undefined || !(HTTP_METHODS as readonly string[]).includes(upper)) return undefined;
    set.add(upper);
  }
  return set;
}

/** The methods two routes of the same prefix both claim (`undefined`: no conflict). */
function overlappingMethods(a: RawRoute, b: RawRoute): string[] | 'all' | undefined {
  if (a.pathPrefix === undefined || a.pathPrefix !== b.pathPrefix) return undefined;
  if (a.methods === undefined || b.methods === undefined) return undefined;
  if (a.methods === 'all' && b.methods === 'all') return 'all';
  const has = (methods: Methods, m: string) => methods === 'all' || methods.has(m);
  const common = HTTP_METHODS.filter((m) => has(a.methods!, m) && has(b.methods!, m));
  return common.length > 0 ? common : undefined;
}

/**
 * A prefix is compared with the request path byte for byte, and requests with `//`, dot segments,
 * backslashes or encoded characters are rejected before matching (SPEC §4 stage 2), so a prefix
 * containing any of those could never match, or would match more than it says.
 */
function pathPrefixProblems(prefix: string, path: string): ConfigProblem[] {
  if (!/^\/[\x21-\x7E]*$/.test(prefix)) return []; // the schema's own message covers it
  const problems: string[] = [];
  if (prefix !== '/' && prefix.endsWith('/')) {
    problems.push(
      'must not end with "/" (a prefix matches itself and everything below it: write /api, not /api/)',
    );
  }
  if (prefix.includes('//')) problems.push('must not contain "//"');
  if (prefix.split('/').some((s) => s === '.' || s === '..'))
    problems.push('must not contain "." or ".." segments');
  for (const [char, why] of [
    ['%', 'percent-encoding'],
    ['\\', 'a backslash'],
    [';', 'path parameters'],
    ['?', 'a query'],
    ['#', 'a fragment'],
  ] as const) {
    if (prefix.includes(char)) problems.push(`must not contain "${char}" (${why})`);
  }
  return problems.map((message) => ({ path, message }));
}

/** The request path is appended to the upstream URL; anything else in it would be silently odd. */
function upstreamProblems(upstream: string, path: string): ConfigProblem[] {
  let url: URL;
  try {
    url = new URL(upstream);
  } catch {
    return []; // the schema's own message covers it
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return [];
  const problems: string[] = [];
  // The URL parser drops an empty "?" or "#", so look at the text as well. The value is never echoed:
  // it may hold credentials.
  const authority = /^[a-z][a-z0-9+.-]*:[/\\]*([^/\\?#]*)/i.exec(upstream)?.[1] ?? '';
  if (url.username !== '' || url.password !== '' || authority.includes('@')) {
    problems.push('must not contain credentials (user:pass@); the gateway sends the JWT, nothing else');
  }
  if (upstream.includes('?'))
    problems.push('must not have a query (?…): the request path and query are appended');
  if (upstream.includes('#')) problems.push('must not have a fragment (#…)');
  return problems.map((message) => ({ path, message }));
}

function tokenServiceProblems(raw: Record<string, unknown>): ConfigProblem[] {
  const ts = raw['tokenService'];
  if (!isRecord(ts)) return [];
  const problems: ConfigProblem[] = [];
  const jwt = isRecord(raw['jwt']) ? raw['jwt'] : undefined;

  const mode = ts['mode'] === undefined ? 'accept-jwt' : ts['mode'];
  if (mode === 'accept-jwt' || mode === 'claim' || mode === 'mint') {
    if (mode === 'claim' && ts['jwtClaim'] === undefined) {
      problems.push({
        path: 'tokenService.jwtClaim',
        message: 'is required when tokenService.mode is claim (the introspection member holding the JWT)',
      });
    }
    if (mode !== 'claim' && ts['jwtClaim'] !== undefined) {
      problems.push({
        path: 'tokenService.jwtClaim',
        message: `only applies to mode claim (mode is ${mode})`,
      });
    }
    if (mode === 'mint' && jwt?.['mint'] === undefined) {
      problems.push({ path: 'jwt.mint', message: 'is required when tokenService.mode is mint' });
    }
    if (mode !== 'mint' && jwt?.['mint'] !== undefined) {
      problems.push({
        path: 'jwt.mint',
        message: `only applies to tokenService.mode mint (mode is ${mode})`,
      });
    }
  }

  const clientAuth = ts['clientAuth'] === undefined ? 'client_secret_basic' : ts['clientAuth'];
  const suffix = ts['clientAuth'] === undefined ? ' (the default)' : '';
  const isSecret = clientAuth === 'client_secret_basic' || clientAuth === 'client_secret_post';
  if (isSecret && ts['clientSecret'] === undefined) {
    problems.push({
      path: 'tokenService.clientSecret',
      message: `is required for clientAuth ${clientAuth}${suffix}`,
    });
  }
  if (!isSecret && ts['clientSecret'] !== undefined) {
    problems.push({
      path: 'tokenService.clientSecret',
      message: `is not used with clientAuth ${shown(clientAuth)} (remove it: a secret nobody checks is a secret to leak)`,
    });
  }
  if (clientAuth === 'private_key_jwt' && ts['privateKeyFile'] === undefined) {
    problems.push({
      path: 'tokenService.privateKeyFile',
      message: 'is required for clientAuth private_key_jwt',
    });
  }
  for (const key of ['privateKeyFile', 'privateKeyAlg']) {
    if (clientAuth !== 'private_key_jwt' && ts[key] !== undefined) {
      problems.push({
        path: `tokenService.${key}`,
        message: `only applies to clientAuth private_key_jwt (clientAuth is ${shown(clientAuth)}${suffix})`,
      });
    }
  }
  const hasCert = ts['tlsCertFile'] !== undefined;
  const hasKey = ts['tlsKeyFile'] !== undefined;
  if (clientAuth === 'tls_client_auth') {
    if (!hasCert)
      problems.push({
        path: 'tokenService.tlsCertFile',
        message: 'is required for clientAuth tls_client_auth',
      });
    if (!hasKey)
      problems.push({
        path: 'tokenService.tlsKeyFile',
        message: 'is required for clientAuth tls_client_auth',
      });
  } else if (hasCert !== hasKey) {
    problems.push({
      path: hasCert ? 'tokenService.tlsKeyFile' : 'tokenService.tlsCertFile',
      message: `is required with tokenService.${hasCert ? 'tlsCertFile' : 'tlsKeyFile'} (a client certificate needs its key)`,
    });
  }
  if (clientAuth === 'tls_client_auth') {
    for (const key of ['issuer', 'introspectionEndpoint']) {
      const v = ts[key];
      if (
        typeof v === 'string' &&
        v.startsWith('http:') &&
        (key === 'introspectionEndpoint' || ts['introspectionEndpoint'] === undefined)
      ) {
        problems.push({
          path: `tokenService.${key}`,
          message:
            'must be an https URL with clientAuth tls_client_auth (the client certificate is sent in the TLS handshake)',
        });
      }
    }
  }
  // The default (application/json) written out is no choice at all: a parsed configuration written
  // back with its defaults must parse again (as introspectionFormat: json in any mode).
  if (ts['introspectionAccept'] === 'application/jwt' && mode !== 'claim') {
    problems.push({
      path: 'tokenService.introspectionAccept',
      message: `only applies to mode claim (mode is ${shown(mode)})`,
    });
  }
  if (ts['introspectionFormat'] === 'jwt' && mode !== 'mint') {
    problems.push({
      path: 'tokenService.introspectionFormat',
      message: `jwt (RFC 9701) only applies to mode mint (mode is ${shown(mode)}); accept-jwt and claim receive the JWT itself`,
    });
  }
  return problems;
}

/**
 * `cache.redis` describes one deployment: exactly one of `url` (standalone), `sentinels` (+ `name`)
 * or `cluster`, and only the keys that apply to it.
 */
function redisProblems(raw: Record<string, unknown>): ConfigProblem[] {
  const cache = raw['cache'];
  if (!isRecord(cache) || !isRecord(cache['redis'])) return [];
  const redis = cache['redis'];
  const at = (key: string) => `cache.redis.${key}`;
  const has = (key: string) => redis[key] !== undefined;
  const problems: ConfigProblem[] = [];

  const kinds = (['url', 'sentinels', 'cluster'] as const).filter(has);
  const [kind, ...extra] = kinds;
  if (kind === undefined) {
    problems.push({
      path: 'cache.redis',
      message:
        'needs exactly one of url (standalone), sentinels (with name) or cluster (seed nodes); ' +
        'omit cache.redis for an in-process cache only',
    });
  }
  for (const other of extra) {
    problems.push({
      path: at(other),
      message: `cannot be combined with ${at(kind!)}: write exactly one of url, sentinels or cluster`,
    });
  }

  const sentinel = has('sentinels');
  if (sentinel && !has('name')) {
    problems.push({
      path: at('name'),
      message: 'is required with cache.redis.sentinels (the master group name of `sentinel monitor`)',
    });
  }
  for (const key of ['name', 'sentinelUsername', 'sentinelPassword']) {
    if (has(key) && !sentinel) {
      problems.push({ path: at(key), message: 'only applies with cache.redis.sentinels' });
    }
  }

  if (kind === 'url') {
    for (const key of ['username', 'password']) {
      if (has(key)) {
        problems.push({
          path: at(key),
          message:
            'only applies with cache.redis.sentinels or cache.redis.cluster; with cache.redis.url ' +
            'write it into the URL (rediss://user:${REDIS_PASSWORD}@host:6379)',
        });
      }
    }
    if (has('tls')) {
      problems.push({
        path: at('tls'),
        message:
          'only applies with cache.redis.sentinels or cache.redis.cluster; with cache.redis.url use rediss://',
      });
    }
  }

  if (has('db')) {
    if (has('cluster')) {
      problems.push({
        path: at('db'),
        message: 'is not supported with cache.redis.cluster (a Redis Cluster has only database 0)',
      });
    } else if (typeof redis['url'] === 'string' && urlDatabase(redis['url']) !== undefined) {
      problems.push({
        path: at('db'),
        message: 'conflicts with the database in the path of cache.redis.url (/N); write only one of them',
      });
    }
  }

  if (has('caFile')) {
    const tls =
      (typeof redis['url'] === 'string' && /^rediss:/i.test(redis['url'])) ||
      redis['tls'] === true ||
      redis['tls'] === 'true';
    if (!tls) {
      problems.push({
        path: at('caFile'),
        message: 'needs TLS: a rediss:// url, or tls: true with sentinels or cluster',
      });
    }
  }
  return problems;
}

/** The database a redis URL selects with its path (`/2`), if any; the URL itself is never echoed. */
function urlDatabase(url: string): string | undefined {
  try {
    const path = new URL(url).pathname.replace(/^\//, '');
    return path === '' ? undefined : path;
  } catch {
    return undefined;
  }
}

/** `listen` and `admin` on the same port can only both bind when they are two distinct addresses. */
function portProblems(raw: Record<string, unknown>): ConfigProblem[] {
  const listen = raw['listen'] === undefined ? {} : raw['listen'];
  const admin = raw['admin'] === undefined ? {} : raw['admin'];
  if (!isRecord(listen) || !isRecord(admin)) return [];
  const listenPort = readPort(listen['port'], 8080);
  const adminPort = readPort(admin['port'], 9090);
  if (listenPort === undefined || listenPort === 0 || listenPort !== adminPort) return [];
  const listenHost = listen['host'] === undefined ? '0.0.0.0' : listen['host'];
  const adminHost = admin['host'] === undefined ? '127.0.0.1' : admin['host'];
  if (typeof listenHost !== 'string' || typeof adminHost !== 'string') return [];
  if (!hostsMayCollide(listenHost, adminHost)) return [];
  return [
    {
      path: 'admin.port',
      message: `must differ from listen.port (both ${listenPort}, on hosts ${listenHost} and ${adminHost}); 0 disables the admin port`,
    },
  ];
}

function readPort(value: unknown, fallback: number): number | undefined {
  if (value === undefined) return fallback;
  if (typeof value === 'number') return value;
  if (typeof value === 'string' && /^-?\d+$/.test(value.trim())) return Number(value.trim());
  return undefined;
}

/** Without DNS (this stays pure), only two different, specific IP addresses are known not to collide. */
function hostsMayCollide(a: string, b: string): boolean {
  const strip = (h: string) =>
    h
      .trim()
      .toLowerCase()
      .replace(/^\[(.*)\]$/, '$1');
  const [x, y] = [strip(a), strip(b)];
  if (x === y) return true;
  const wildcard = (h: string) => h === '' || h === '0.0.0.0' || h === '::' || /^0*:(0*:)*0*$/.test(h);
  if (wildcard(x) || wildcard(y)) return true;
  return isIP(x) === 0 || isIP(y) === 0;
}

// ---------------------------------------------------------------------------------------------

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
