// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/load-config.ts';
import { ConfigError, parseConfig } from '../../../src/config/parse-config.ts';

/** The `ssf` block: the Shared Signals receiver on the admin port. */
type Raw = Record<string, unknown>;

const SSF = {
  issuer: 'https://idp.example.com',
  jwksUri: 'https://idp.example.com/ssf/jwks',
  audience: 'https://gateway.example.com/ssf',
};

function withSsf(ssf: unknown): Raw {
  return {
    tokenService: { issuer: 'https://login.example.com', clientId: 'api-gateway', clientSecret: 's3cret' },
    ssf,
    routes: [{ name: 'r', match: { pathPrefix: '/api' }, upstream: 'http://svc:3000', scopes: ['s'] }],
  };
}

function problemsOf(raw: unknown): readonly string[] {
  try {
    parseConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError, but the configuration was accepted');
}

describe('ssf', () => {
  it('is optional', () => {
    const { ssf: _, ...raw } = withSsf(undefined);
    expect(parseConfig(raw).ssf).toBeUndefined();
  });

  it('applies the defaults', () => {
    expect(parseConfig(withSsf(SSF)).ssf).toEqual({
      ...SSF,
      algorithms: ['ES256', 'RS256', 'PS256', 'EdDSA'],
      maxAgeSeconds: 300,
    });
  });

  it('accepts several audiences, an algorithm list, maxAgeSeconds and an Authorization value', () => {
    const ssf = {
      ...SSF,
      audience: ['https://a', 'https://b'],
      algorithms: ['ES384'],
      maxAgeSeconds: 60,
      authorizationHeader: 'Bearer 0123456789abcdef',
    };
    expect(parseConfig(withSsf(ssf)).ssf).toEqual(ssf);
  });

  it.each([
    ['issuer', 'ssf.issuer'],
    ['jwksUri', 'ssf.jwksUri'],
    ['audience', 'ssf.audience'],
  ])('requires %s', (key, path) => {
    const ssf: Raw = { ...SSF };
    delete ssf[key];
    expect(problemsOf(withSsf(ssf)).some((p) => p.startsWith(`${path}:`))).toBe(true);
  });

  it('rejects unknown keys, a non-http JWKS URI, none/HS* algorithms and a short Authorization value', () => {
    expect(problemsOf(withSsf({ ...SSF, jwks_uri: 'x' })).join('\n')).toMatch(
      /^ssf: unknown key "jwks_uri"/m,
    );
    expect(problemsOf(withSsf({ ...SSF, jwksUri: 'file:///etc/jwks.json' })).join('\n')).toMatch(
      /^ssf\.jwksUri: /m,
    );
    expect(problemsOf(withSsf({ ...SSF, algorithms: ['none'] })).join('\n')).toMatch(
      /^ssf\.algorithms\[0\]: /m,
    );
    expect(problemsOf(withSsf({ ...SSF, algorithms: ['HS256'] })).join('\n')).toMatch(
      /^ssf\.algorithms\[0\]: /m,
    );
    expect(problemsOf(withSsf({ ...SSF, algorithms: [] })).join('\n')).toMatch(/^ssf\.algorithms: /m);
    expect(problemsOf(withSsf({ ...SSF, audience: [] })).join('\n')).toMatch(/^ssf\.audience/m);
    expect(problemsOf(withSsf({ ...SSF, maxAgeSeconds: 0 })).join('\n')).toMatch(/^ssf\.maxAgeSeconds: /m);
    expect(problemsOf(withSsf({ ...SSF, authorizationHeader: 'short' })).join('\n')).toMatch(
      /^ssf\.authorizationHeader: /m,
    );
  });

  it('warns when authorizationHeader is written literally, not when it comes from the environment', () => {
    const yaml = (value: string) => `
tokenService: { issuer: "https://login.example.com", clientId: gw, clientSecret: "\${SECRET}" }
ssf:
  issuer: https://idp.example.com
  jwksUri: https://idp.example.com/jwks
  audience: https://gateway.example.com/ssf
  authorizationHeader: "${value}"
routes: [{ name: r, match: { pathPrefix: /api }, upstream: "http://svc:3000", scopes: [s] }]
`;
    const env = { SECRET: 's', SSF_AUTH: 'Bearer 0123456789abcdef' };
    const literal = parseConfigText(yaml('Bearer 0123456789abcdef'), env);
    expect(literal.warnings).toContain(
      'ssf.authorizationHeader is written literally in the config file; use ${ENV_VAR} instead',
    );
    const fromEnv = parseConfigText(yaml('${SSF_AUTH}'), env);
    expect(fromEnv.warnings.filter((w) => w.startsWith('ssf.'))).toEqual([]);
    expect(fromEnv.config.ssf?.authorizationHeader).toBe('Bearer 0123456789abcdef');
  });
});
