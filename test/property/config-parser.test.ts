// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseDocument, parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { z } from 'zod';
import { parseConfigText } from '../../src/config/load-config.ts';
import { ConfigError, formatPath } from '../../src/config/parse-config.ts';
import { type Config, ConfigSchema, RouteSchema } from '../../src/config/schema.ts';
import { runs } from './params.ts';

// SPEC §3: any YAML text → parseConfigText either returns a configuration or throws ConfigError
// whose every problem starts with a path into the configuration (`routes[1].upstream: …`) or the
// source name (`prop.yaml: line 3, column 1: …`); never another exception. A parsed configuration
// written back as YAML parses to an equal configuration.

const SOURCE = 'prop.yaml';
const EXAMPLES = ['config/gateway.yaml', 'config/demo.yaml'].map((file) => ({
  file,
  text: readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8'),
}));

/** Values the examples' variables need to give a valid configuration. */
const GOOD_ENV: Record<string, string> = {
  INTROSPECTION_CLIENT_SECRET: 'introspection-secret',
  REDIS_URL: 'redis://127.0.0.1:6379/0',
  DEMO_GATEWAY_PORT: '8080',
  DEMO_ADMIN_PORT: '9091',
  DEMO_ISSUER: 'http://127.0.0.1:9000/oauth',
  DEMO_INTROSPECTION_SECRET: 'demo-secret',
  DEMO_MINT_ISSUER: 'https://gateway.example.com',
  DEMO_SIGNING_KEYS_FILE: '/etc/phantom-gateway/jwks.json',
  DEMO_INVOICES_URL: 'http://127.0.0.1:3001',
  DEMO_STATUS_URL: 'http://127.0.0.1:3002/base',
  X: 'x',
};

// ---------------------------------------------------------------------------------------------
// Arbitraries

/** Strings that stress quoting, comments, env references and escapes. */
const trickyString = fc.oneof(
  fc.constantFrom(
    '',
    ' ',
    '${X}',
    '${X:-fallback}',
    '${UNSET}',
    '${UNSET:-}',
    '${UNSET:-8080}',
    '${X}${UNSET:-d}',
    '$${X}',
    '$$',
    '$X',
    '${',
    '${}',
    '${1X}',
    '${X:-${Y}}',
    '${X:-a}b}',
    'a: b',
    '- x',
    '# not a comment',
    'x #y',
    '"',
    "'",
    '\\',
    '\n',
    'null',
    '~',
    'true',
    'yes',
    '0x1F',
    '1e3',
    '.inf',
    '-0',
    '8080',
    '*alias',
    '&anchor x',
    '!!binary AAAA',
    '<<',
    '__proto__',
    'http://127.0.0.1:1',
    'https://login.example.com/x?y#z',
    'redis://u:p@h:6379/2',
    '/api',
  ),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'grapheme', maxLength: 8 }),
  fc.string({ unit: 'binary', maxLength: 8 }),
);

/** Keys: the schema's own (so that documents get deep), look-alikes and hostile ones. */
const KNOWN_KEYS = [
  'realm',
  'listen',
  'host',
  'port',
  'trustProxyHeaders',
  'workers',
  'tls',
  'admin',
  'token',
  'tokenService',
  'issuer',
  'introspectionEndpoint',
  'clientId',
  'clientSecret',
  'clientAuth',
  'mode',
  'jwtClaim',
  'timeoutMs',
  'jwt',
  'algorithms',
  'audience',
  'mint',
  'cache',
  'redis',
  'url',
  'sentinels',
  'cluster',
  'memory',
  'maxEntries',
  'routes',
  'name',
  'match',
  'pathPrefix',
  'methods',
  'upstream',
  'stripPrefix',
  'scopes',
  'anyOf',
  'allOf',
  'auth',
  'forwardAuth',
  'ssf',
  'logging',
  'shutdownGraceSeconds',
] as const;
const key = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...KNOWN_KEYS) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '__proto__',
      'constructor',
      'toString',
      'valueOf',
      'Routes',
      'tokenservice',
      'x.y',
      'a[0]',
      '',
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 8 }) },
);

const scalar = fc.oneof(
  trickyString,
  fc.integer(),
  fc.integer({ min: -1, max: 70_000 }),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
);

/** Random YAML documents: nested mappings, lists and scalars. */
const { doc: yamlDocument } = fc.letrec<{ doc: unknown; node: unknown }>((tie) => ({
  doc: fc.oneof(
    { weight: 4, arbitrary: fc.dictionary(key, tie('node'), { maxKeys: 6 }) },
    { weight: 1, arbitrary: tie('node') },
  ),
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    scalar,
    fc.array(tie('node'), { maxLength: 4 }),
    fc.dictionary(key, tie('node'), { maxKeys: 4 }),
  ),
}));

const yamlText = (value: unknown) => stringifyYaml(value, { aliasDuplicateObjects: false });

// A valid-looking configuration, for the round trip and as a base for mutations.
const scope = fc.constantFrom('read', 'write', 'invoice_read', 'a:b', 'https://api.example.com/x');
const freeString = fc.oneof(trickyString, fc.string({ unit: 'grapheme', minLength: 1, maxLength: 10 }));
const route = (i: number) =>
  fc.record(
    {
      name: fc.constant(`route-${i}`),
      match: fc.record(
        {
          pathPrefix: fc.constantFrom(
            '/api',
            '/api/invoices',
            '/',
            '/status',
            '/a.b',
            '/x-y/z',
            "/:@!$&'()*+,=",
          ),
          methods: fc.subarray(['GET', 'head', 'POST', 'Delete', 'OPTIONS'], { minLength: 1 }),
        },
        { requiredKeys: ['pathPrefix'] },
      ),
      upstream: fc.constantFrom(
        'http://127.0.0.1:3000',
        'https://svc.internal/base/',
        '${DEMO_INVOICES_URL}',
      ),
      stripPrefix: fc.oneof(fc.boolean(), fc.constantFrom('true', 'false')),
      scopes: fc.oneof(
        fc.array(scope, { minLength: 1, maxLength: 3 }),
        fc.record({ anyOf: fc.array(scope, { minLength: 1, maxLength: 3 }) }),
        fc.record({ allOf: fc.array(scope, { minLength: 1, maxLength: 3 }) }),
      ),
      timeoutMs: fc.oneof(fc.integer({ min: 1, max: 3_600_000 }), fc.constant('${UNSET:-2500}')),
      acceptJwt: fc.boolean(),
    },
    { requiredKeys: ['name', 'match', 'upstream', 'scopes'] },
  );

const validishConfig = fc
  .record(
    {
      realm: fc.string({ unit: fc.constantFrom('a', 'Z', ' ', '-', '!', '#', '~', '$', '{'), maxLength: 8 }),
      listen: fc.record(
        {
          host: freeString,
          port: fc.oneof(fc.integer({ min: 0, max: 65535 }), fc.constant('${UNSET:-8081}')),
          trustProxyHeaders: fc.boolean(),
          workers: fc.oneof(fc.constant('auto'), fc.integer({ min: 1, max: 64 })),
        },
        { requiredKeys: [] },
      ),
      admin: fc.record(
        {
          host: freeString,
          port: fc.integer({ min: 0, max: 65535 }),
          token: fc.string({ minLength: 16, maxLength: 20 }),
        },
        { requiredKeys: [] },
      ),
      tokenService: fc.record(
        {
          issuer: fc.constantFrom(
            'https://login.example.com/oauth',
            'http://127.0.0.1:9000',
            '${DEMO_ISSUER}',
          ),
          clientId: freeString,
          clientSecret: fc.oneof(freeString, fc.constant('${INTROSPECTION_CLIENT_SECRET}')),
          timeoutMs: fc.integer({ min: 50, max: 60_000 }),
          requireAtStartup: fc.boolean(),
        },
        { requiredKeys: ['issuer', 'clientId', 'clientSecret'] },
      ),
      jwt: fc.record(
        {
          algorithms: fc.subarray(['ES256', 'EdDSA', 'RS256', 'PS512'], { minLength: 1 }),
          issuer: freeString,
          audience: fc.oneof(freeString, fc.array(freeString, { minLength: 1, maxLength: 2 })),
          typ: freeString,
          clockSkewSeconds: fc.integer({ min: 0, max: 60 }),
        },
        { requiredKeys: [] },
      ),
      cache: fc.record(
        {
          redis: fc.record(
            { url: fc.constantFrom('redis://127.0.0.1:6379', '${REDIS_URL}'), keyPrefix: freeString },
            { requiredKeys: ['url'] },
          ),
          memory: fc.record({ maxEntries: fc.integer({ min: 1, max: 10_000_000 }) }),
          maxTtlSeconds: fc.integer({ min: 1, max: 86_400 }),
          negativeTtlSeconds: fc.integer({ min: 0, max: 3600 }),
        },
        { requiredKeys: [] },
      ),
      routes: fc
        .integer({ min: 1, max: 3 })
        .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => route(i)))),
      shutdownGraceSeconds: fc.integer({ min: 0, max: 3600 }),
    },
    { requiredKeys: ['tokenService', 'routes'] },
  )
  .map((c) => c as unknown);

// Mutations of a parsed document: drop a key or item, replace a value by another type, add an
// unknown key, write an env reference instead of a value.
type Mutation = { at: number; op: 'drop' | 'replace' | 'add' | 'env'; value: unknown; name: string };
const mutation: fc.Arbitrary<Mutation> = fc.record({
  at: fc.nat(),
  op: fc.constantFrom('drop', 'replace', 'add', 'env'),
  value: fc.oneof(scalar, fc.array(scalar, { maxLength: 2 }), fc.dictionary(key, scalar, { maxKeys: 2 })),
  name: fc.oneof(key, fc.constantFrom('X', 'UNSET', 'REDIS_URL', 'DEMO_ISSUER', 'lower_case', '1BAD', 'A-B')),
});

type Container = Record<string, unknown> | unknown[];

/** Every (container, key) pair of a document, parents before children. */
function slots(doc: unknown): [Container, string | number][] {
  const out: [Container, string | number][] = [];
  const walk = (node: unknown) => {
    if (Array.isArray(node)) {
      node.forEach((child, i) => {
        out.push([node, i]);
        walk(child);
      });
    } else if (typeof node === 'object' && node !== null) {
      for (const [k, child] of Object.entries(node)) {
        out.push([node as Record<string, unknown>, k]);
        walk(child);
      }
    }
  };
  walk(doc);
  return out;
}

function mutate(doc: unknown, mutations: readonly Mutation[]): unknown {
  const copy = structuredClone(doc) as unknown;
  for (const m of mutations) {
    const all = slots(copy);
    if (all.length === 0) break;
    const [container, k] = all[m.at % all.length]!;
    const target = container as Record<string | number, unknown>;
    switch (m.op) {
      case 'drop':
        if (Array.isArray(container)) container.splice(k as number, 1);
        else delete target[k];
        break;
      case 'replace':
        target[k] = m.value;
        break;
      case 'add': {
        const child = target[k];
        const host =
          typeof child === 'object' && child !== null ? (child as Record<string, unknown>) : target;
        if (Array.isArray(host)) host.push(m.value);
        else
          Object.defineProperty(host, m.name, {
            value: m.value,
            enumerable: true,
            writable: true,
            configurable: true,
          });
        break;
      }
      case 'env': {
        const current = target[k];
        const withDefault = typeof m.value === 'string' || typeof m.value === 'number' ? `:-${m.value}` : '';
        target[k] =
          typeof current === 'string' && current.length > 0
            ? `${current.slice(0, 1)}\${${m.name}${withDefault}}${current.slice(1)}`
            : `\${${m.name}${withDefault}}`;
        break;
      }
    }
  }
  return copy;
}

/** Text-level edits that break YAML syntax in the usual ways. */
const TEXT_PIECES = [
  ':',
  ': ',
  '- ',
  '[',
  ']',
  '{',
  '}',
  ',',
  '"',
  "'",
  '#',
  '\t',
  '\n',
  '\n  ',
  '&a ',
  '*a',
  '*missing',
  '<<: *a\n',
  '!!binary ',
  '!!set ',
  '!custom ',
  '? ',
  '|',
  '>-',
  '---\n',
  '...\n',
  '%YAML 1.1\n',
  '${X}',
  '${',
  'routes:',
  'tokenService:\n  issuer: ',
  '\u0000',
  '\ufeff',
  '\r',
] as const;
type TextEdit = { at: number; kind: 'insert' | 'delete-line' | 'duplicate-line' | 'truncate'; piece: string };
const textEdit: fc.Arbitrary<TextEdit> = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom('insert', 'insert', 'delete-line', 'duplicate-line', 'truncate'),
  piece: fc.oneof(fc.constantFrom(...TEXT_PIECES), fc.string({ maxLength: 4 })),
});

function editText(text: string, edits: readonly TextEdit[]): string {
  let out = text;
  for (const e of edits) {
    const lines = out.split('\n');
    const line = e.at % Math.max(lines.length, 1);
    const pos = e.at % (out.length + 1);
    if (e.kind === 'insert') out = out.slice(0, pos) + e.piece + out.slice(pos);
    else if (e.kind === 'truncate') out = out.slice(0, pos);
    else if (e.kind === 'delete-line') out = lines.filter((_, i) => i !== line).join('\n');
    else out = [...lines.slice(0, line + 1), ...lines.slice(line)].join('\n');
  }
  return out;
}

/** An alias bomb (billion laughs), bounded: the parser must refuse it, not expand it. */
const aliasBomb = fc.integer({ min: 2, max: 9 }).map((levels) => {
  const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
  for (let i = 1; i <= levels; i++)
    lines.push(
      `a${i}: &a${i} [${Array(10)
        .fill(`*a${i - 1}`)
        .join(', ')}]`,
    );
  return `${lines.join('\n')}\nroutes: *a${levels}\n`;
});

const example = fc.constantFrom(...EXAMPLES.map((e) => e.text));

// Documents aimed at the cross-field rules (SPEC §3 "Rules checked by validate"): every key the
// schema knows in tokenService, listen, admin, cache.redis and routes, each with a valid-looking
// value, another key's value, or a value of the wrong kind (a mapping with a `toString` key cannot
// even be converted to a string).
const POOL = fc.constantFrom(
  'accept-jwt',
  'claim',
  'mint',
  'client_secret_basic',
  'client_secret_post',
  'private_key_jwt',
  'tls_client_auth',
  'application/json',
  'application/jwt',
  'json',
  'jwt',
  'none',
  'auto',
  'https://login.example.com/oauth',
  'http://127.0.0.1:9000',
  'http://user:pw@svc.internal/x?y',
  'redis://127.0.0.1:6379',
  'rediss://h:6380/2',
  '/api',
  '/',
  '/api/',
  '/tmp/key.pem',
  '0.0.0.0',
  '127.0.0.1',
  '::',
  '8080',
  'true',
  'ES256',
  'HS256',
  'GET',
  'route-a',
);
const HOSTILE = fc.constantFrom<unknown>(
  8080,
  0,
  -1,
  9090,
  true,
  null,
  [],
  {},
  ['read'],
  { anyOf: ['read'] },
  [{ host: 'h', port: 1 }],
  { toString: '' },
  { valueOf: 0, toString: 0 },
  JSON.parse('{"__proto__": "x"}'),
);
/** The mapping schema inside `schema` (through optional/default/prefault wrappers). */
function objectIn(schema: z.ZodType): z.ZodObject {
  return unwrap(schema).find((n) => n instanceof z.ZodObject) as z.ZodObject;
}

/** Some of the keys of a mapping, each with one of its own enum values, a generic value or a hostile one. */
function block(schema: z.ZodType, only?: readonly string[]) {
  const fields = Object.entries(objectIn(schema).shape as Record<string, z.ZodType>).filter(
    ([k]) => only === undefined || only.includes(k),
  );
  const value = (field: z.ZodType) => {
    const choices = unwrap(field).flatMap((n) => (n instanceof z.ZodEnum ? (n.options as string[]) : []));
    return choices.length > 0
      ? fc.oneof(
          { weight: 2, arbitrary: fc.constantFrom(...choices) },
          { weight: 2, arbitrary: HOSTILE },
          { weight: 1, arbitrary: POOL },
        )
      : fc.oneof(POOL, HOSTILE);
  };
  return fc
    .subarray(fields)
    .chain((picked) => fc.tuple(...picked.map(([k, field]) => value(field).map((v) => [k, v] as const))))
    .map((entries) => Object.fromEntries(entries));
}

const shape = ConfigSchema.shape;
const crossField = fc
  .record(
    {
      tokenService: block(shape.tokenService),
      listen: block(shape.listen),
      admin: block(shape.admin),
      jwt: fc.record(
        { mint: fc.oneof(POOL, HOSTILE, block(objectIn(shape.jwt).shape['mint'] as z.ZodType)) },
        { requiredKeys: [] },
      ),
      cache: fc.record({ redis: block(objectIn(shape.cache).shape['redis'] as z.ZodType) }),
      routes: fc.array(
        fc.oneof(
          {
            weight: 6,
            arbitrary: fc
              .tuple(
                block(RouteSchema),
                fc.oneof({ weight: 4, arbitrary: block(RouteSchema.shape.match) }, HOSTILE),
              )
              .map(([r, m]) => ({ match: m, ...r }) as unknown),
          },
          HOSTILE,
        ),
        { maxLength: 3 },
      ),
    },
    { requiredKeys: ['tokenService', 'routes'] },
  )
  .map((doc) => doc as unknown);

/** Aliases inside their own anchor: the document is a cyclic graph, not a tree. */
const CYCLES = [
  'logging: &l {x: *l}\n',
  'ssf: &s [*s]\n',
  'zz: &z\n  a: [1, *z]\n',
  'cache: &c\n  memory: *c\n',
] as const;
const cyclic = fc
  .tuple(example, fc.constantFrom(...CYCLES), fc.boolean())
  .map(([text, cycle, first]) => (first ? cycle + text : `${text}\n${cycle}`));

const environment = fc
  .record(
    Object.fromEntries(
      Object.entries(GOOD_ENV).map(([name, good]) => [
        name,
        fc.oneof({ weight: 6, arbitrary: fc.constant(good) }, { weight: 1, arbitrary: trickyString }),
      ]),
    ) as Record<string, fc.Arbitrary<string>>,
    { requiredKeys: [] },
  )
  .map((env) => env as NodeJS.ProcessEnv);

/** Any YAML text: random documents, mutated examples, mutated valid-looking configs, broken text. */
const anyConfigText = fc.oneof(
  { weight: 2, arbitrary: yamlDocument.map(yamlText) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(example, fc.array(mutation, { minLength: 1, maxLength: 4 }))
      .map(([text, ms]) => yamlText(mutate(parseYaml(text), ms))),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(example, fc.array(textEdit, { minLength: 1, maxLength: 3 }))
      .map(([t, e]) => editText(t, e)),
  },
  { weight: 2, arbitrary: validishConfig.map(yamlText) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(validishConfig, fc.array(mutation, { minLength: 1, maxLength: 3 }))
      .map(([c, ms]) => yamlText(mutate(c, ms))),
  },
  {
    weight: 1,
    arbitrary: fc
      .array(fc.oneof(fc.constantFrom(...TEXT_PIECES), fc.constantFrom(...KNOWN_KEYS)), { maxLength: 25 })
      .map((p) => p.join('')),
  },
  { weight: 1, arbitrary: aliasBomb },
  { weight: 1, arbitrary: cyclic },
  { weight: 3, arbitrary: crossField.map(yamlText) },
);

// ---------------------------------------------------------------------------------------------
// Checks

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

/** True when `path` (`routes[2].match.pathPrefix`, `(root)`) names a place the schema defines. */
function isConfigPath(path: string): boolean {
  if (path === '(root)') return true;
  const segments = path.match(/\[\d+\]|[A-Za-z_][A-Za-z0-9_]*/g) ?? [];
  let rebuilt = '';
  for (const s of segments) rebuilt += s.startsWith('[') || rebuilt === '' ? s : `.${s}`;
  if (segments.length === 0 || rebuilt !== path || segments[0]!.startsWith('[')) return false;
  let nodes: z.ZodType[] = [ConfigSchema];
  for (const s of segments) {
    const next: z.ZodType[] = [];
    for (const node of nodes.flatMap(unwrap)) {
      if (s.startsWith('[') && node instanceof z.ZodArray) next.push(node.element as z.ZodType);
      else if (!s.startsWith('[') && node instanceof z.ZodObject) {
        const child = (node.shape as Record<string, z.ZodType>)[s];
        if (child) next.push(child);
      }
    }
    if (next.length === 0) return false;
    nodes = next;
  }
  return true;
}

/** Every place in the YAML document itself, formatted as problems name them (`listen.foo`, `routes[0]`). */
function documentPaths(text: string): Set<string> {
  const out = new Set<string>(['(root)']);
  let tree: unknown;
  try {
    tree = parseDocument(text, { uniqueKeys: true, strict: true }).toJS({ maxAliasCount: 100 });
  } catch {
    return out;
  }
  const onPath = new Set<unknown>();
  const walk = (node: unknown, path: (string | number)[]) => {
    if (path.length > 0) out.add(formatPath(path));
    if (onPath.has(node)) return; // an alias of an ancestor (a cyclic document)
    onPath.add(node);
    if (Array.isArray(node)) {
      node.forEach((child, i) => {
        walk(child, [...path, i]);
      });
    } else if (typeof node === 'object' && node !== null)
      for (const [k, child] of Object.entries(node)) walk(child, [...path, k]);
    onPath.delete(node);
  };
  walk(tree, []);
  return out;
}

/**
 * Runs the parser; returns the configuration, or checks the ConfigError and returns undefined.
 * Every problem must start with the source name, a place the schema defines, or a place in the
 * document (an unknown key's broken `${…}` is reported where it is written).
 */
function parseOrProblems(text: string, env: NodeJS.ProcessEnv): Config | undefined {
  try {
    return parseConfigText(text, env, SOURCE).config;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    expect(err.problems.length).toBeGreaterThan(0);
    let inDocument: Set<string> | undefined;
    for (const problem of err.problems) {
      if (problem.startsWith(`${SOURCE}: `)) continue;
      const colon = problem.indexOf(': ');
      expect(colon, problem).toBeGreaterThan(0);
      if (isConfigPath(problem.slice(0, colon))) continue;
      inDocument ??= documentPaths(text);
      const at = [...inDocument].find((p) => problem.startsWith(`${p}: `));
      expect(at, problem).toBeDefined();
      expect(problem.slice(at!.length + 2).trim(), problem).not.toBe('');
    }
    return undefined;
  }
}

/** The file form of a parsed configuration: `${` written as `$${` so that it stays literal. */
function toYaml(config: Config): string {
  const escapeRefs = (v: unknown): unknown => {
    if (typeof v === 'string') return v.replaceAll('${', () => '$${'); // (a function: `$$` is special in a replacement string)
    if (Array.isArray(v)) return v.map(escapeRefs);
    if (typeof v === 'object' && v !== null)
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, escapeRefs(x)]));
    return v;
  };
  return yamlText(escapeRefs(config));
}

describe('config parser (property)', () => {
  it('the examples parse with their variables set (sanity check of the generators’ base)', () => {
    for (const { file, text } of EXAMPLES) expect(parseOrProblems(text, GOOD_ENV), file).toBeDefined();
  });

  it('any YAML text gives a configuration or a ConfigError with a path or the source name on every problem', () => {
    fc.assert(
      fc.property(anyConfigText, environment, (text, env) => {
        parseOrProblems(text, env);
      }),
      runs(1500),
    );
  });

  it('documents aimed at the cross-field rules give a configuration or a ConfigError, never another exception', () => {
    fc.assert(
      fc.property(crossField.map(yamlText), (text) => {
        parseOrProblems(text, {});
      }),
      runs(2500),
    );
  });

  it('a parsed configuration written back as YAML parses to an equal configuration', () => {
    const parsable = fc.oneof(
      validishConfig.map(yamlText),
      fc
        .tuple(example, fc.array(mutation, { maxLength: 2 }))
        .map(([text, ms]) => yamlText(mutate(parseYaml(text), ms))),
    );
    let parsed = 0;
    fc.assert(
      fc.property(parsable, environment, (text, env) => {
        const config = parseOrProblems(text, env);
        if (config === undefined) return;
        parsed += 1;
        const again = parseConfigText(toYaml(config), {}, SOURCE).config;
        expect(again).toEqual(config);
      }),
      runs(1000),
    );
    // The generators must reach the round trip often enough to mean something.
    expect(parsed).toBeGreaterThan(100);
  });
});
