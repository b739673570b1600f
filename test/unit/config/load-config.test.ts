// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfigText } from '../../../src/config/load-config.ts';
import { ConfigError } from '../../../src/config/parse-config.ts';

/** The SPEC §3 example with the `…` placeholders filled in (mode-specific keys chosen per test). */
const SPEC_EXAMPLE = `
listen:
  host: 0.0.0.0            # default 0.0.0.0
  port: 8080               # default 8080
  trustProxyHeaders: false # honour X-Forwarded-* / Forwarded from a front load balancer
  tls:                     # optional; see section 9
    certFile: /etc/phantom-gateway/tls/tls.crt
    keyFile: /etc/phantom-gateway/tls/tls.key
    clientCaFile: /etc/phantom-gateway/tls/ca.crt
admin:
  host: 127.0.0.1          # default 127.0.0.1 — never on the public listener
  port: 9090               # /livez /readyz /metrics /.well-known/jwks.json ; 0 disables
tokenService:
  issuer: https://login.example.com/oauth/v2/oauth-anonymous  # discovery (RFC 8414 / OIDC)
  introspectionEndpoint: https://login.example.com/oauth/v2/oauth-introspect
  clientId: api-gateway
  clientSecret: \${INTROSPECTION_CLIENT_SECRET}
  clientAuth: client_secret_basic    # | client_secret_post | private_key_jwt | tls_client_auth
  mode: MODE                         # | claim | mint      (section 6)
  jwtClaim: phantom_token            # mode claim only: member of the JSON response holding the JWT
  timeoutMs: 2000
  requireAtStartup: false
jwt:                                  # how JWTs are verified (accept-jwt / claim) or minted (mint)
  algorithms: [ES256, EdDSA, RS256, PS256]   # allow-list; never none or HS*
  issuer: https://login.example.com/oauth/v2/oauth-anonymous
  audience: [api.example.com]
  jwksUri: https://login.example.com/oauth/v2/oauth-anonymous/jwks
  clockSkewSeconds: 30               # max 60
  mint:                               # mode mint only
    issuer: https://gateway.example.com
    signingKeysFile: /etc/phantom-gateway/jwks.json   # private JWKS; the first key signs, all are published
    lifetimeSeconds: 300             # minted exp = min(now + lifetime, source exp)
    audience: api.example.com
cache:
  redis:                              # omit the block → in-process cache only
    url: \${REDIS_URL}                # redis:// or rediss://; sentinel/cluster in section 7
    keyPrefix: "phantom:"
    commandTimeoutMs: 50
  memory:
    maxEntries: 10000                # in-process L1, always on
  maxTtlSeconds: 900                 # upper bound on any cache entry
  negativeTtlSeconds: 5              # inactive tokens remembered this long; 0 disables
routes:
  - name: invoices-read              # unique, [a-z0-9-]+
    match:
      pathPrefix: /api/invoices      # matches /api/invoices and /api/invoices/…, not /api/invoicesX
      methods: [GET, HEAD]           # default: all
    upstream: http://invoices.internal:3000   # path is appended: /api/invoices/7 → …:3000/api/invoices/7
    stripPrefix: false
    scopes: [invoice_read]           # list = all of these; or { anyOf: [...] } or { allOf: [...] }
  - name: invoices-write
    match: { pathPrefix: /api/invoices, methods: [POST, PUT, PATCH, DELETE] }
    upstream: http://invoices.internal:3000
    scopes: [invoice_write]
  - name: status
    match: { pathPrefix: /status }
    upstream: http://status.internal:3000
    auth: none                       # public route: no token needed; any client Authorization is removed
shutdownGraceSeconds: 10
`;

const SPEC_ENV = { INTROSPECTION_CLIENT_SECRET: 'from-env', REDIS_URL: 'redis://:pw@redis.internal:6379' };

/** The SPEC example in one mode, without the other modes' keys. */
function specExample(mode: 'accept-jwt' | 'claim' | 'mint'): string {
  let text = SPEC_EXAMPLE.replace('mode: MODE', `mode: ${mode}`);
  if (mode !== 'claim') text = text.replace(/^ {2}jwtClaim:.*\n/m, '');
  if (mode !== 'mint') text = text.replace(/^ {2}mint:.*\n(?: {4}.*\n)+/m, '');
  return text;
}

const MINIMAL = `
tokenService:
  issuer: https://login.example.com
  clientId: api-gateway
  clientSecret: \${SECRET}
routes:
  - name: status
    match: { pathPrefix: /status }
    upstream: http://status:3000
    auth: none
`;

function problemsOf(text: string, env: NodeJS.ProcessEnv = {}): readonly string[] {
  try {
    parseConfigText(text, env, 'gateway.yaml');
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError, but the configuration was accepted');
}

describe('the SPEC §3 example', () => {
  it.each(['accept-jwt', 'claim', 'mint'] as const)(
    'parses in mode %s with the secrets in the environment',
    (mode) => {
      const { config, warnings } = parseConfigText(specExample(mode), SPEC_ENV, 'gateway.yaml');
      expect(warnings).toEqual([]);
      expect(config.tokenService.mode).toBe(mode);
      expect(config.tokenService.clientSecret).toBe('from-env');
      expect(config.cache.redis?.url).toBe('redis://:pw@redis.internal:6379');
      expect(config.listen.tls).toEqual({
        certFile: '/etc/phantom-gateway/tls/tls.crt',
        keyFile: '/etc/phantom-gateway/tls/tls.key',
        clientCaFile: '/etc/phantom-gateway/tls/ca.crt',
      });
      expect(config.routes.map((r) => r.name)).toEqual(['invoices-read', 'invoices-write', 'status']);
      expect(config.routes[1]!.match.methods).toEqual(['POST', 'PUT', 'PATCH', 'DELETE']);
      expect(config.routes[2]!.auth).toBe('none');
      expect(config.tokenService.jwtClaim).toBe(mode === 'claim' ? 'phantom_token' : undefined);
      expect(config.jwt.mint?.lifetimeSeconds).toBe(mode === 'mint' ? 300 : undefined);
    },
  );

  it('is rejected as written, since it lists jwtClaim and jwt.mint together with mode accept-jwt', () => {
    expect(problemsOf(SPEC_EXAMPLE.replace('mode: MODE', 'mode: accept-jwt'), SPEC_ENV)).toEqual([
      'tokenService.jwtClaim: only applies to mode claim (mode is accept-jwt)',
      'jwt.mint: only applies to tokenService.mode mint (mode is accept-jwt)',
    ]);
  });
});

describe('environment substitution', () => {
  it('replaces ${NAME} with the variable', () => {
    const { config } = parseConfigText(MINIMAL, { SECRET: 'abc' });
    expect(config.tokenService.clientSecret).toBe('abc');
  });

  it('uses the default of ${NAME:-default} when the variable is unset or empty', () => {
    const text = MINIMAL.replace('clientId: api-gateway', 'clientId: ${CLIENT_ID:-api-gateway}');
    expect(parseConfigText(text, { SECRET: 's' }).config.tokenService.clientId).toBe('api-gateway');
    expect(parseConfigText(text, { SECRET: 's', CLIENT_ID: '' }).config.tokenService.clientId).toBe(
      'api-gateway',
    );
    expect(parseConfigText(text, { SECRET: 's', CLIENT_ID: 'gw-2' }).config.tokenService.clientId).toBe(
      'gw-2',
    );
  });

  it('reports a missing variable without default at the path of the value, once', () => {
    expect(problemsOf(MINIMAL.replace('${SECRET}', '${INTROSPECTION_CLIENT_SECRET}'))).toEqual([
      'tokenService.clientSecret: environment variable INTROSPECTION_CLIENT_SECRET is not set',
    ]);
  });

  it('reports a missing variable together with the other problems', () => {
    const text = `${MINIMAL}bogus: 1\nlisten:\n  port: \${PORT}\n`;
    expect(problemsOf(text, { SECRET: 's' })).toEqual([
      'listen.port: environment variable PORT is not set',
      '(root): unknown key "bogus"',
    ]);
  });

  it('replaces several variables in one string', () => {
    const text = MINIMAL.replace('http://status:3000', 'http://${STATUS_HOST}:${STATUS_PORT}/${BASE:-v1}');
    const { config } = parseConfigText(text, {
      SECRET: 's',
      STATUS_HOST: 'status.internal',
      STATUS_PORT: '3001',
    });
    expect(config.routes[0]!.upstream).toBe('http://status.internal:3001/v1');
  });

  it('turns a port from the environment into a number and a boolean into a boolean', () => {
    const text = `${MINIMAL}listen:\n  port: \${PORT}\n  trustProxyHeaders: \${TRUST:-false}\n`;
    const { config } = parseConfigText(text, { SECRET: 's', PORT: '8443', TRUST: 'true' });
    expect(config.listen.port).toBe(8443);
    expect(config.listen.trustProxyHeaders).toBe(true);
  });

  it('rejects a port from the environment that is not a number', () => {
    expect(problemsOf(`${MINIMAL}listen:\n  port: \${PORT}\n`, { SECRET: 's', PORT: 'http' })).toEqual([
      'listen.port: must be a whole number, not a string',
    ]);
  });

  it('keeps $${ as a literal ${ and a lone $ as written', () => {
    const text = MINIMAL.replace('${SECRET}', () => '"a$b $$c $${SECRET} ${SECRET}"');
    expect(parseConfigText(text, { SECRET: 'x' }).config.tokenService.clientSecret).toBe(
      'a$b $$c ${SECRET} x',
    );
  });

  it('does not scan a value that came from the environment again', () => {
    expect(parseConfigText(MINIMAL, { SECRET: '${OTHER}' }).config.tokenService.clientSecret).toBe(
      '${OTHER}',
    );
  });

  it('rejects an unclosed or malformed reference instead of keeping it as text', () => {
    expect(problemsOf(MINIMAL.replace('${SECRET}', '"${SECRET"'))).toEqual([
      'tokenService.clientSecret: "${" is not closed by "}" (write $${ for a literal ${)',
    ]);
    expect(problemsOf(MINIMAL.replace('${SECRET}', '${1SECRET}'))).toEqual([
      'tokenService.clientSecret: malformed ${…}: write ${NAME} or ${NAME:-default} (NAME: letters, digits, _), or $${ for a literal ${',
    ]);
  });

  it('does not substitute in keys', () => {
    expect(problemsOf(`${MINIMAL}\${KEY}: 1\n`, { SECRET: 's', KEY: 'realm' })).toEqual([
      '(root): unknown key "${KEY}"',
    ]);
  });
});

describe('YAML', () => {
  it('reports a syntax error with its line and column', () => {
    const problems = problemsOf('listen:\n  port: 8080\nroutes: [\n  - name: x\n');
    expect(problems.length).toBeGreaterThanOrEqual(1);
    expect(problems[0]).toMatch(/^gateway\.yaml: line \d+, column \d+: /);
  });

  it('rejects a duplicate key, naming it and its line', () => {
    expect(problemsOf(`${MINIMAL}realm: a\nrealm: b\n`, { SECRET: 's' })).toEqual([
      'gateway.yaml: line 12, column 1: duplicate key "realm"',
    ]);
  });

  it('hints at quoting a ${…} reference inside a flow mapping', () => {
    const [first] = problemsOf(`${MINIMAL}listen: { port: \${PORT} }\n`, { SECRET: 's', PORT: '1' });
    expect(first).toContain('write a ${…} reference in quotes');
  });

  it('rejects an empty file', () => {
    expect(problemsOf('# nothing\n')).toEqual(['(root): the configuration is empty']);
  });
});

describe('warnings', () => {
  it('warns about a client secret written literally in the file', () => {
    const { warnings } = parseConfigText(MINIMAL.replace('${SECRET}', 'hunter2'), {});
    expect(warnings).toEqual([
      'tokenService.clientSecret is written literally in the config file; use ${ENV_VAR} instead',
    ]);
  });

  it('does not warn about a client secret from ${ENV}', () => {
    expect(parseConfigText(MINIMAL, { SECRET: 'hunter2' }).warnings).toEqual([]);
  });

  it('does not call a client secret from an unset variable literal (it is a problem instead)', () => {
    let error: unknown;
    try {
      parseConfigText(MINIMAL, {});
    } catch (err) {
      error = err;
    }
    expect((error as ConfigError).problems).toEqual([
      'tokenService.clientSecret: environment variable SECRET is not set',
    ]);
    expect((error as ConfigError).warnings).toEqual([]);
  });

  it('warns when a client secret comes from a default written in the file', () => {
    const { warnings } = parseConfigText(MINIMAL.replace('${SECRET}', '${SECRET:-hunter2}'), {});
    expect(warnings).toEqual([
      'tokenService.clientSecret is written literally in the config file (the default of ${SECRET:-…}); set SECRET instead',
    ]);
  });

  it.each(['redis://:pw@redis:6379', 'rediss://user:pw@redis:6379/0'])(
    'warns about a literal password in %s',
    (url) => {
      const { warnings } = parseConfigText(`${MINIMAL}cache:\n  redis:\n    url: ${url}\n`, { SECRET: 's' });
      expect(warnings).toEqual([
        'cache.redis.url contains a password written literally in the config file; use ${ENV_VAR} instead',
      ]);
    },
  );

  it.each([
    ['${REDIS_URL}', { REDIS_URL: 'redis://:pw@redis:6379' }],
    ['redis://:${REDIS_PASSWORD}@redis:6379', { REDIS_PASSWORD: 'pw' }],
    ['redis://redis:6379', {}],
    ['redis://user@redis:6379', {}],
  ])('does not warn about the Redis URL %s', (url, env) => {
    const { warnings } = parseConfigText(`${MINIMAL}cache:\n  redis:\n    url: ${url}\n`, {
      SECRET: 's',
      ...env,
    });
    expect(warnings).toEqual([]);
  });

  it('warns about plain http to a non-loopback token service, naming each key', () => {
    const text = MINIMAL.replace('https://login.example.com', 'http://login.example.com').replace(
      'clientId:',
      'introspectionEndpoint: http://10.0.0.7/introspect\n  clientId:',
    );
    const { warnings } = parseConfigText(`${text}jwt:\n  jwksUri: http://keys.internal/jwks\n`, {
      SECRET: 's',
    });
    expect(warnings).toEqual([
      'tokenService.issuer uses plain http to a non-loopback host',
      'tokenService.introspectionEndpoint uses plain http to a non-loopback host',
      'jwt.jwksUri uses plain http to a non-loopback host',
    ]);
  });

  it.each(['http://127.0.0.1:8443', 'http://127.8.9.10', 'http://localhost:3000/oidc', 'http://[::1]:80'])(
    'does not warn about plain http to the loopback address %s',
    (issuer) => {
      const text = MINIMAL.replace('https://login.example.com', issuer);
      expect(parseConfigText(text, { SECRET: 's' }).warnings).toEqual([]);
    },
  );

  it('keeps the warnings on a rejected configuration', () => {
    let error: unknown;
    try {
      parseConfigText(`${MINIMAL.replace('${SECRET}', 'hunter2')}bogus: 1\n`, {});
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).warnings).toEqual([
      'tokenService.clientSecret is written literally in the config file; use ${ENV_VAR} instead',
    ]);
  });
});

describe('loadConfig', () => {
  const dir = mkdtempSync(join(tmpdir(), 'phantom-load-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads, substitutes and validates a file', () => {
    const file = join(dir, 'gateway.yaml');
    writeFileSync(file, MINIMAL);
    const { config, warnings } = loadConfig(file, { SECRET: 'abc' });
    expect(config.tokenService.clientSecret).toBe('abc');
    expect(warnings).toEqual([]);
  });

  it('names the file in a YAML syntax error', () => {
    const file = join(dir, 'broken.yaml');
    writeFileSync(file, 'routes: [\n');
    expect(() => loadConfig(file, {})).toThrow(
      new RegExp(`^${file.replaceAll(/[.\\/]/g, '\\$&')}: line \\d+`),
    );
  });

  it('reports a missing file as cannot read (ENOENT)', () => {
    const file = join(dir, 'missing.yaml');
    expect(() => loadConfig(file, {})).toThrow(ConfigError);
    expect(() => loadConfig(file, {})).toThrow(`${file}: cannot read (ENOENT)`);
  });

  it('reports a directory as cannot read (EISDIR)', () => {
    expect(() => loadConfig(dir, {})).toThrow(`${dir}: cannot read (EISDIR)`);
  });
});
