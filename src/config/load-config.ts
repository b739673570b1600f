// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseDocument, type YAMLError } from 'yaml';
import {
  ConfigError,
  type ConfigPath,
  type ConfigProblem,
  checkConfig,
  formatPath,
  formatProblem,
} from './parse-config.ts';
import type { Config } from './schema.ts';

/** A valid configuration and what an operator should still hear about it. */
export interface LoadedConfig {
  readonly config: Config;
  /** One line each, naming the key (`tokenService.clientSecret is written literally …`). */
  readonly warnings: string[];
}

/**
 * Reads, substitutes and validates the configuration file (SPEC §3).
 * Reads the file and the given environment; contacts nothing.
 * @throws ConfigError listing every problem (an unreadable file is `<file>: cannot read (ENOENT)`).
 */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError([`${file}: cannot read (${code})`], { cause: err });
  }
  return parseConfigText(text, env, file);
}

/**
 * `loadConfig` without the file: YAML text → environment substitution → `parseConfig`, plus warnings.
 *
 * Environment references, in every string value (never in keys):
 * - `${NAME}` is replaced by the variable `NAME` (`[A-Za-z_][A-Za-z0-9_]*`); unset → a problem at
 *   that value's path. A variable set to the empty string is used as is.
 * - `${NAME:-default}` uses `default` when `NAME` is unset or empty (as in a POSIX shell). The
 *   default ends at the first `}` and cannot contain another `${…}`.
 * - Escaping: `$${` stands for a literal `${` (`$${HOME}` → `${HOME}`). Any other `$` — a lone `$`,
 *   `$$` not followed by `{`, `$NAME` without braces — is kept as written.
 * - An unclosed `${` or a malformed reference is a problem, never kept silently as text.
 * - Substitution is one pass: a value that comes from the environment is not scanned again.
 * - A value that is exactly `${PORT}` becomes a number or boolean where the schema expects one.
 *
 * @param sourceName how problems outside the tree (YAML syntax) name the source, e.g. the file path.
 * @throws ConfigError listing every problem, with the warnings found so far.
 */
export function parseConfigText(
  text: string,
  env: NodeJS.ProcessEnv = process.env,
  sourceName = 'config',
): LoadedConfig {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, strict: true });
  const yamlWarnings = doc.warnings.map((w) => yamlMessage(w, text, sourceName, new Set()));
  if (doc.errors.length > 0) {
    // After the first syntax error the parser's further complaints are mostly echoes of it.
    const hinted = new Set<number>();
    const shown = doc.errors.slice(0, MAX_YAML_ERRORS).map((e) => yamlMessage(e, text, sourceName, hinted));
    const more = doc.errors.length - shown.length;
    if (more > 0) shown.push(`${sourceName}: ${more} more YAML error${more === 1 ? '' : 's'} after these`);
    throw new ConfigError(shown, { warnings: yamlWarnings });
  }
  let tree: unknown;
  try {
    tree = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError([`${sourceName}: ${(err as Error).message}`], {
      warnings: yamlWarnings,
      cause: err,
    });
  }

  const substitution = substituteEnv(tree, env);
  const warnings = [...yamlWarnings, ...configWarnings(substitution)];
  const { config, problems } = checkConfig(substitution.value);

  // A value whose variable is missing is reported once, as the missing variable.
  const broken = substitution.problems.map((p) => p.path);
  const covered = (path: string) =>
    broken.some((b) => path === b || path.startsWith(`${b}.`) || path.startsWith(`${b}[`));
  const all = [...substitution.problems, ...problems.filter((p) => !covered(p.path))];
  if (all.length > 0 || config === undefined) throw new ConfigError(all.map(formatProblem), { warnings });
  return { config, warnings };
}

// ---------------------------------------------------------------------------------------------
// YAML

const MAX_YAML_ERRORS = 5;

/** `hinted`: lines that already carry the quoting hint (one hint per line is enough). */
function yamlMessage(error: YAMLError, text: string, sourceName: string, hinted: Set<number>): string {
  const firstLine = error.message.split('\n', 1)[0] ?? error.message;
  let message = firstLine.replace(/ at line \d+, column \d+:?$/, '');
  const pos = error.linePos?.[0];
  const line = pos ? (text.split(/\r?\n/)[pos.line - 1] ?? '') : '';
  if (error.code === 'DUPLICATE_KEY') {
    const key = /^\s*(?:-\s+)?("[^"]*"|'[^']*'|[^:#\s][^:#]*?)\s*:/.exec(
      line.slice(pos ? pos.col - 1 : 0),
    )?.[1];
    message =
      key === undefined
        ? 'duplicate key'
        : `duplicate key ${JSON.stringify(key.replace(/^["']|["']$/g, ''))}`;
  }
  if (pos && error.name === 'YAMLParseError' && !hinted.has(pos.line) && /[{[,][^"']*\$\{/.test(line)) {
    hinted.add(pos.line);
    message += ' (inside { } or [ ], write a ${…} reference in quotes: "${NAME}")';
  }
  return pos ? `${sourceName}: line ${pos.line}, column ${pos.col}: ${message}` : `${sourceName}: ${message}`;
}

// ---------------------------------------------------------------------------------------------
// ${NAME} substitution

/** What substitution did to one string value that contained a reference. */
interface SubstitutedString {
  /** How many `${NAME…}` references it contained (escaped `$${` not counted). */
  readonly references: number;
  /** At least one reference was filled from the environment. */
  readonly fromEnv: boolean;
  /** Variables whose `:-default`, written in the file, was used. */
  readonly defaultsUsed: readonly string[];
  /** The value as the file alone determines it: environment parts replaced by `\0`. */
  readonly literal: string;
}

interface Substitution {
  readonly value: unknown;
  readonly problems: ConfigProblem[];
  /** By formatted path, the strings that contained `${` (absent: written literally). */
  readonly strings: ReadonlyMap<string, SubstitutedString>;
}

const ENV_PART = '\0';
const REFERENCE = /^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$/s;

function substituteEnv(tree: unknown, env: NodeJS.ProcessEnv): Substitution {
  const problems: ConfigProblem[] = [];
  const strings = new Map<string, SubstitutedString>();

  // An alias inside its own anchor (`a: &x [*x]`) makes a cyclic tree: reported, not followed.
  const ancestors = new Set<object>();
  const walk = (value: unknown, path: ConfigPath): unknown => {
    if (typeof value === 'object' && value !== null && ancestors.has(value)) {
      problems.push({
        path: formatPath(path),
        message: 'is an alias of a mapping or list that contains it (a cycle)',
      });
      return null;
    }
    if (typeof value === 'string') {
      if (!value.includes('${')) return value;
      const result = substituteString(value, env);
      const at = formatPath(path);
      for (const message of result.problems) problems.push({ path: at, message });
      strings.set(at, result);
      return result.value;
    }
    if (Array.isArray(value)) {
      ancestors.add(value);
      const out = value.map((item, i) => walk(item, [...path, i]));
      ancestors.delete(value);
      return out;
    }
    if (typeof value === 'object' && value !== null) {
      ancestors.add(value);
      const out: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(value)) {
        // defineProperty: a YAML key "__proto__" stays an own (unknown, rejected) key.
        Object.defineProperty(out, key, {
          value: walk(item, [...path, key]),
          enumerable: true,
          writable: true,
        });
      }
      ancestors.delete(value);
      return out;
    }
    return value;
  };
  return { value: walk(tree, []), problems, strings };
}

function substituteString(
  input: string,
  env: NodeJS.ProcessEnv,
): SubstitutedString & { value: string; problems: string[] } {
  const problems: string[] = [];
  const defaultsUsed: string[] = [];
  let value = '';
  let literal = '';
  let fromEnv = false;
  let references = 0;
  let i = 0;
  while (i < input.length) {
    if (input.startsWith('$${', i)) {
      value += '${';
      literal += '${';
      i += 3;
      continue;
    }
    if (!input.startsWith('${', i)) {
      value += input[i];
      literal += input[i];
      i += 1;
      continue;
    }
    const close = input.indexOf('}', i + 2);
    if (close === -1) {
      problems.push('"${" is not closed by "}" (write $${ for a literal ${)');
      break;
    }
    const inner = input.slice(i + 2, close);
    i = close + 1;
    references += 1;
    const match = REFERENCE.exec(inner);
    if (!match || match[2]?.includes('${')) {
      problems.push(
        match
          ? `nested \${…} in the default of \${${match[1]}:-…} is not supported`
          : 'malformed ${…}: write ${NAME} or ${NAME:-default} (NAME: letters, digits, _), or $${ for a literal ${',
      );
      continue;
    }
    const [, name, fallback] = match as unknown as [string, string, string | undefined];
    const set = env[name];
    if (set !== undefined && (fallback === undefined || set !== '')) {
      value += set;
      literal += ENV_PART;
      fromEnv = true;
    } else if (fallback !== undefined) {
      value += fallback;
      literal += fallback;
      defaultsUsed.push(name);
    } else {
      problems.push(`environment variable ${name} is not set`);
    }
  }
  return { value, problems, references, fromEnv, defaultsUsed, literal };
}

// ---------------------------------------------------------------------------------------------
// Warnings: allowed, but an operator should know (SPEC §3).

const SECRET_KEYS: ConfigPath[] = [
  ['tokenService', 'clientSecret'],
  ['admin', 'token'],
  ['cache', 'redis', 'password'],
  ['cache', 'redis', 'sentinelPassword'],
  ['ssf', 'authorizationHeader'],
];
const TOKEN_SERVICE_URLS: ConfigPath[] = [
  ['tokenService', 'issuer'],
  ['tokenService', 'introspectionEndpoint'],
  ['jwt', 'jwksUri'],
  ['ssf', 'jwksUri'],
];

function configWarnings({ value, strings }: Substitution): string[] {
  const warnings: string[] = [];

  for (const path of SECRET_KEYS) {
    if (typeof get(value, path) !== 'string') continue;
    const key = formatPath(path);
    const written = strings.get(key);
    if (written?.fromEnv) continue;
    const [usedDefault] = written?.defaultsUsed ?? [];
    // A reference to an unset variable is already a problem, not a literal secret.
    if (written !== undefined && written.references > 0 && usedDefault === undefined) continue;
    warnings.push(
      usedDefault === undefined
        ? `${key} is written literally in the config file; use \${ENV_VAR} instead`
        : `${key} is written literally in the config file (the default of \${${usedDefault}:-…}); set ${usedDefault} instead`,
    );
  }

  const redisUrl = get(value, ['cache', 'redis', 'url']);
  if (typeof redisUrl === 'string') {
    const literal = strings.get('cache.redis.url')?.literal ?? redisUrl;
    const userinfo = /^rediss?:\/\/([^@/?#]*)@/i.exec(literal)?.[1];
    const colon = userinfo?.indexOf(':') ?? -1;
    const password = userinfo !== undefined && colon >= 0 ? userinfo.slice(colon + 1) : '';
    if (password !== '' && !password.includes(ENV_PART)) {
      warnings.push(
        'cache.redis.url contains a password written literally in the config file; use ${ENV_VAR} instead',
      );
    }
  }

  for (const path of TOKEN_SERVICE_URLS) {
    const url = get(value, path);
    if (typeof url !== 'string') continue;
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      continue; // parseConfig reports it
    }
    if (parsed.protocol === 'http:' && !isLoopback(parsed.hostname)) {
      warnings.push(`${formatPath(path)} uses plain http to a non-loopback host`);
    }
  }
  return warnings;
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped) and `localhost`; the URL parser has already normalised the host. */
function isLoopback(hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || /^::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}$/.test(host);
}

function get(tree: unknown, path: ConfigPath): unknown {
  let node = tree;
  for (const segment of path) {
    if (typeof node !== 'object' || node === null || !Object.hasOwn(node, segment)) return undefined;
    node = (node as Record<string | number, unknown>)[segment];
  }
  return node;
}
