import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfigText } from '../../../src/config/load-config.ts';
import { ConfigError } from '../../../src/config/parse-config.ts';

// Regressions found by test/property/config-parser.test.ts, each with its shrunk counterexample.

const MINIMAL = [
  'tokenService:',
  '  issuer: https://login.example.com/oauth',
  '  clientId: gw',
  '  clientSecret: " "',
  'routes:',
  '  - name: route-0',
  '    match:',
  '      pathPrefix: /api',
  '    upstream: http://127.0.0.1:3000',
  '    scopes: [read]',
  '',
].join('\n');

/** The problems of a document that must be refused with a ConfigError (never another exception). */
function problemsOf(text: string): readonly string[] {
  try {
    parseConfigText(text, {}, 'x.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('a parsed configuration written back with its defaults parses again', () => {
  it('introspectionAccept: application/json (the default) is accepted outside mode claim', () => {
    const { config } = parseConfigText(MINIMAL, {}, 'x.yaml');
    expect(config.tokenService.introspectionAccept).toBe('application/json');
    expect(parseConfigText(stringify(config), {}, 'x.yaml').config).toEqual(config);
  });

  it('introspectionAccept: application/jwt is still refused outside mode claim', () => {
    const jwt = MINIMAL.replace('  clientId: gw', '  clientId: gw\n  introspectionAccept: application/jwt');
    expect(problemsOf(jwt)).toEqual([
      'tokenService.introspectionAccept: only applies to mode claim (mode is accept-jwt)',
    ]);
  });
});

describe('cross-field messages never convert a mapping with its own toString', () => {
  it('clientAuth: { toString: "" } is a ConfigError, not a TypeError', () => {
    const text = MINIMAL.replace('  clientId: gw', '  clientId: gw\n  clientAuth:\n    toString: ""');
    expect(problemsOf(text)).toContain(
      'tokenService.clientSecret: is not used with clientAuth a mapping (remove it: a secret nobody checks is a secret to leak)',
    );
  });

  it('mode: { toString: "" } with introspectionAccept: application/jwt is a ConfigError, not a TypeError', () => {
    const text = MINIMAL.replace(
      '  clientId: gw',
      '  clientId: gw\n  mode:\n    toString: ""\n  introspectionAccept: application/jwt',
    );
    expect(problemsOf(text)).toContain(
      'tokenService.introspectionAccept: only applies to mode claim (mode is a mapping)',
    );
  });
});

describe('an alias inside its own anchor (a cyclic document) is a problem, not a stack overflow', () => {
  it.each([
    ['a list that contains itself', 'ssf: &s [*s]\n', 'ssf[0]'],
    ['a mapping that contains itself', 'logging: &l {x: *l}\n', 'logging.x'],
  ])('%s', (_, cycle, path) => {
    expect(problemsOf(MINIMAL + cycle)).toContain(
      `${path}: is an alias of a mapping or list that contains it (a cycle)`,
    );
  });

  it('an alias of a sibling (no cycle) is still fine', () => {
    const text = MINIMAL.replace('    scopes: [read]', '    scopes: &s [read]') + 'x: *s\n';
    expect(problemsOf(text)).toEqual(['(root): unknown key "x"']);
  });
});
