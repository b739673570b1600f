// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { describe, expect, it } from 'vitest';
import { ConfigError, formatPath, parseConfig } from '../../../src/config/parse-config.ts';

type Raw = Record<string, unknown>;

/** The smallest valid configuration: one protected route. */
function minimal(extra: Raw = {}): Raw {
  return {
    tokenService: { issuer: 'https://login.example.com', clientId: 'api-gateway', clientSecret: 's3cret' },
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices' },
        upstream: 'http://invoices:3000',
        scopes: ['r'],
      },
    ],
    ...extra,
  };
}

function withRoutes(...routes: Raw[]): Raw {
  return minimal({ routes });
}

const route = (name: string, match: Raw, extra: Raw = { scopes: ['s'] }): Raw => ({
  name,
  match,
  upstream: 'http://svc:3000',
  ...extra,
});

/** The problems of a configuration that must be rejected. */
function problemsOf(raw: unknown): readonly string[] {
  try {
    parseConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError, but the configuration was accepted');
}

describe('parseConfig defaults', () => {
  it('fills in every default of SPEC §3 when only the required keys are written', () => {
    const config = parseConfig(minimal({ cache: { redis: { url: 'redis://redis:6379' } } }));
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 8080, trustProxyHeaders: false, workers: 1 });
    expect(config.admin).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(config.tokenService).toMatchObject({
      clientAuth: 'client_secret_basic',
      mode: 'accept-jwt',
      timeoutMs: 2000,
      requireAtStartup: false,
    });
    expect(config.jwt.algorithms).toEqual(['ES256', 'EdDSA', 'RS256', 'PS256']);
    expect(config.jwt.clockSkewSeconds).toBe(30);
    expect(config.cache.redis).toEqual({
      url: 'redis://redis:6379',
      keyPrefix: 'phantom:',
      commandTimeoutMs: 50,
    });
    expect(config.cache.memory.maxEntries).toBe(10_000);
    expect(config.cache.maxTtlSeconds).toBe(900);
    expect(config.cache.negativeTtlSeconds).toBe(5);
    expect(config.realm).toBe('api');
    expect(config.shutdownGraceSeconds).toBe(10);
    expect(config.routes[0]!.stripPrefix).toBe(false);
    expect(config.routes[0]!.match.methods).toBeUndefined();
  });

  it('runs on the in-process cache alone when cache.redis is omitted', () => {
    expect(parseConfig(minimal()).cache.redis).toBeUndefined();
  });

  it('returns the configuration deep-frozen', () => {
    const config = parseConfig(minimal());
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.listen)).toBe(true);
    expect(Object.isFrozen(config.routes)).toBe(true);
    expect(Object.isFrozen(config.routes[0]!.match)).toBe(true);
    expect(Object.isFrozen(config.jwt.algorithms)).toBe(true);
    expect(() => {
      (config.listen as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  it('does not modify the document it was given', () => {
    const raw = minimal();
    const before = structuredClone(raw);
    parseConfig(raw);
    expect(raw).toEqual(before);
    expect(Object.isFrozen(raw)).toBe(false);
  });
});

describe('parseConfig messages', () => {
  it('rejects an unknown key at the top level as a (root) problem', () => {
    expect(problemsOf(minimal({ bogus: 1 }))).toEqual(['(root): unknown key "bogus"']);
  });

  it('rejects unknown keys in nested objects with their exact path', () => {
    const raw = minimal({
      listen: { tls: { certFile: '/c.pem', keyFile: '/k.pem', caFile: '/ca.pem' } },
      cache: { redis: { url: 'redis://r', bogus: 'x' } },
    });
    (raw['routes'] as Raw[]).push(route('two', { pathPrefix: '/two', method: ['GET'] }));
    expect(problemsOf(raw)).toEqual([
      'listen.tls: unknown key "caFile"',
      'cache.redis: unknown key "bogus"',
      'routes[1].match: unknown key "method" (did you mean "methods"?)',
    ]);
  });

  it('suggests the intended key for a key written in the wrong case', () => {
    expect(problemsOf(minimal({ Listen: {} }))).toEqual([
      '(root): unknown key "Listen" (did you mean "listen"?)',
    ]);
  });

  it('says a missing required key "is required"', () => {
    expect(problemsOf({ routes: minimal()['routes'] })).toEqual(['tokenService: is required']);
  });

  it('names the expected type of a value of the wrong type', () => {
    const raw = minimal();
    (raw['tokenService'] as Raw)['clientId'] = 42;
    expect(problemsOf(raw)).toEqual(['tokenService.clientId: must be a string, not a number']);
  });

  it('calls an empty YAML value an empty value', () => {
    expect(problemsOf(minimal({ listen: null }))).toEqual([
      'listen: must be a mapping (key: value), not an empty value',
    ]);
  });

  it('rejects an empty document', () => {
    expect(problemsOf(null)).toEqual(['(root): the configuration is empty']);
  });

  it('rejects clockSkewSeconds above 60', () => {
    expect(problemsOf(minimal({ jwt: { clockSkewSeconds: 61 } }))).toEqual([
      'jwt.clockSkewSeconds: must be at most 60',
    ]);
  });

  it('rejects a port above 65535', () => {
    expect(problemsOf(minimal({ listen: { port: 70000 } }))).toEqual(['listen.port: must be at most 65535']);
  });

  it('rejects a port that is not a whole number', () => {
    expect(problemsOf(minimal({ listen: { port: 80.5 } }))).toEqual(['listen.port: must be a whole number']);
    expect(problemsOf(minimal({ listen: { port: 'eighty' } }))).toEqual([
      'listen.port: must be a whole number, not a string',
    ]);
  });

  it('accepts numbers and booleans written as strings (what ${ENV} substitution produces)', () => {
    const config = parseConfig(minimal({ listen: { port: '8443', trustProxyHeaders: 'true' } }));
    expect(config.listen.port).toBe(8443);
    expect(config.listen.trustProxyHeaders).toBe(true);
  });

  it('rejects a configuration without routes', () => {
    expect(problemsOf(minimal({ routes: [] }))).toEqual(['routes: must define at least one route']);
  });

  it('lists the allowed values of an enum', () => {
    const raw = minimal();
    (raw['tokenService'] as Raw)['mode'] = 'jwt';
    expect(problemsOf(raw)).toEqual([
      'tokenService.mode: must be one of "accept-jwt", "claim", "mint" (got "jwt")',
    ]);
  });

  it('explains that jwt.algorithms is an allow-list of asymmetric algorithms when none or HS256 is listed', () => {
    const problems = problemsOf(minimal({ jwt: { algorithms: ['ES256', 'none', 'HS256'] } }));
    expect(problems).toHaveLength(2);
    expect(problems[0]).toMatch(
      /^jwt\.algorithms\[1\]: "none" is not allowed: jwt\.algorithms is an allow-list of asymmetric algorithms/,
    );
    expect(problems[1]).toMatch(/^jwt\.algorithms\[2\]: "HS256" is not allowed: .*none and HS\*/);
  });

  it('describes what scopes may be', () => {
    expect(problemsOf(withRoutes(route('a', { pathPrefix: '/a' }, { scopes: 'read' })))).toEqual([
      'routes[0].scopes: must be a list of scopes, or { anyOf: [...] } or { allOf: [...] }',
    ]);
  });

  it('keeps the messages written in the schema', () => {
    expect(problemsOf(withRoutes(route('Invoices', { pathPrefix: '/a' })))).toEqual([
      'routes[0].name: must match [a-z0-9-]+',
    ]);
  });

  it('never echoes a secret value in a message', () => {
    const raw = minimal();
    (raw['tokenService'] as Raw)['clientSecret'] = ['hunter2'];
    const problems = problemsOf(raw);
    expect(problems).toEqual(['tokenService.clientSecret: must be a string, not a list']);
  });

  it('reports every problem of a configuration together in one ConfigError', () => {
    const raw = {
      bogus: true,
      listen: { port: 70000 },
      tokenService: { issuer: 'ftp://login', clientId: 'gw', mode: 'claim' },
      jwt: { clockSkewSeconds: 61 },
      routes: [
        route('a', { pathPrefix: '/a/' }),
        route('a', { pathPrefix: '/b' }, {}),
        { name: 'c', match: { pathPrefix: '/c' }, upstream: 'not a url', scopes: ['x'] },
      ],
    };
    let error: unknown;
    try {
      parseConfig(raw);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const { problems, message } = error as ConfigError;
    expect(problems).toEqual(
      expect.arrayContaining([
        '(root): unknown key "bogus"',
        'listen.port: must be at most 65535',
        'tokenService.issuer: must be an absolute http(s) URL',
        'jwt.clockSkewSeconds: must be at most 60',
        'routes[2].upstream: must be an absolute http(s) URL',
        'routes[0].match.pathPrefix: must not end with "/" (a prefix matches itself and everything below it: write /api, not /api/)',
        'routes[1].name: duplicate route name "a" (also routes[0])',
        'routes[1].scopes: is required; write auth: none instead to make the route public on purpose',
        'tokenService.jwtClaim: is required when tokenService.mode is claim (the introspection member holding the JWT)',
        'tokenService.clientSecret: is required for clientAuth client_secret_basic (the default)',
      ]),
    );
    expect(problems).toHaveLength(10);
    expect(message).toBe(problems.join('\n'));
  });
});

describe('parseConfig cross-field rules', () => {
  describe('route names', () => {
    it('rejects two routes with the same name, naming the first one', () => {
      const problems = problemsOf(
        withRoutes(
          route('a', { pathPrefix: '/a' }),
          route('b', { pathPrefix: '/b' }),
          route('a', { pathPrefix: '/c' }),
        ),
      );
      expect(problems).toEqual(['routes[2].name: duplicate route name "a" (also routes[0])']);
    });

    it('accepts distinct names', () => {
      expect(() =>
        parseConfig(withRoutes(route('a', { pathPrefix: '/a' }), route('b', { pathPrefix: '/b' }))),
      ).not.toThrow();
    });
  });

  describe('overlapping routes', () => {
    it('rejects two routes of the same prefix whose methods overlap, naming both and the methods', () => {
      const problems = problemsOf(
        withRoutes(
          route('read', { pathPrefix: '/api', methods: ['GET', 'HEAD'] }),
          route('write', { pathPrefix: '/api', methods: ['POST', 'head', 'GET'] }),
        ),
      );
      expect(problems).toEqual([
        'routes[1].match: overlaps routes[0] ("read"): both match pathPrefix "/api" and methods GET, HEAD',
      ]);
    });

    it('treats a route without methods as one with all methods', () => {
      const problems = problemsOf(
        withRoutes(
          route('all', { pathPrefix: '/api' }),
          route('post', { pathPrefix: '/api', methods: ['POST'] }),
        ),
      );
      expect(problems).toEqual([
        'routes[1].match: overlaps routes[0] ("all"): both match pathPrefix "/api" and method POST',
      ]);
    });

    it('rejects two routes of the same prefix that both allow all methods', () => {
      expect(
        problemsOf(withRoutes(route('x', { pathPrefix: '/api' }), route('y', { pathPrefix: '/api' }))),
      ).toEqual(['routes[1].match: overlaps routes[0] ("x"): both match pathPrefix "/api" and all methods']);
    });

    it('accepts the same prefix with disjoint methods (SPEC §3 invoices-read / invoices-write)', () => {
      const config = parseConfig(
        withRoutes(
          route('invoices-read', { pathPrefix: '/api/invoices', methods: ['GET', 'HEAD'] }),
          route('invoices-write', {
            pathPrefix: '/api/invoices',
            methods: ['POST', 'PUT', 'PATCH', 'DELETE'],
          }),
        ),
      );
      expect(config.routes).toHaveLength(2);
    });

    it('accepts nested prefixes, where the longest one wins at request time', () => {
      expect(() =>
        parseConfig(withRoutes(route('a', { pathPrefix: '/api' }), route('b', { pathPrefix: '/api/x' }))),
      ).not.toThrow();
    });
  });

  describe('scopes or auth: none', () => {
    it('rejects a route with neither scopes nor auth: none (forgetting scopes never makes a route public)', () => {
      expect(problemsOf(withRoutes(route('a', { pathPrefix: '/a' }, {})))).toEqual([
        'routes[0].scopes: is required; write auth: none instead to make the route public on purpose',
      ]);
    });

    it('rejects a route with both scopes and auth: none', () => {
      expect(
        problemsOf(withRoutes(route('a', { pathPrefix: '/a' }, { scopes: ['x'], auth: 'none' }))),
      ).toEqual([
        'routes[0].auth: auth: none cannot be combined with scopes (a public route has no scope check); remove one',
      ]);
    });

    it('accepts a public route with auth: none and a protected route with { anyOf }', () => {
      const config = parseConfig(
        withRoutes(
          route('status', { pathPrefix: '/status' }, { auth: 'none' }),
          route('x', { pathPrefix: '/x' }, { scopes: { anyOf: ['a', 'b'] } }),
        ),
      );
      expect(config.routes[0]!.auth).toBe('none');
      expect(config.routes[1]!.scopes).toEqual({ anyOf: ['a', 'b'] });
    });
  });

  describe('token service mode', () => {
    const ts = (extra: Raw) => ({ issuer: 'https://login', clientId: 'gw', clientSecret: 's', ...extra });

    it('rejects mode claim without jwtClaim', () => {
      expect(problemsOf(minimal({ tokenService: ts({ mode: 'claim' }) }))).toEqual([
        'tokenService.jwtClaim: is required when tokenService.mode is claim (the introspection member holding the JWT)',
      ]);
    });

    it('accepts mode claim with jwtClaim', () => {
      expect(
        parseConfig(minimal({ tokenService: ts({ mode: 'claim', jwtClaim: 'phantom_token' }) })).tokenService
          .jwtClaim,
      ).toBe('phantom_token');
    });

    it('rejects jwtClaim with another mode', () => {
      expect(problemsOf(minimal({ tokenService: ts({ jwtClaim: 'jwt' }) }))).toEqual([
        'tokenService.jwtClaim: only applies to mode claim (mode is accept-jwt)',
      ]);
    });

    const mint = { issuer: 'https://gateway.example.com', signingKeysFile: '/etc/keys.json' };

    it('rejects mode mint without jwt.mint', () => {
      expect(problemsOf(minimal({ tokenService: ts({ mode: 'mint' }) }))).toEqual([
        'jwt.mint: is required when tokenService.mode is mint',
      ]);
    });

    it('accepts mode mint with jwt.mint, defaulting lifetimeSeconds to 300', () => {
      const config = parseConfig(minimal({ tokenService: ts({ mode: 'mint' }), jwt: { mint } }));
      expect(config.jwt.mint).toEqual({ ...mint, lifetimeSeconds: 300, publishBeforeSignSeconds: 600 });
    });

    it('rejects jwt.mint with another mode', () => {
      expect(
        problemsOf(minimal({ tokenService: ts({ mode: 'claim', jwtClaim: 'jwt' }), jwt: { mint } })),
      ).toEqual(['jwt.mint: only applies to tokenService.mode mint (mode is claim)']);
    });
  });

  describe('client authentication', () => {
    const ts = (extra: Raw) => ({ issuer: 'https://login', clientId: 'gw', clientSecret: 's', ...extra });

    it('private_key_jwt needs privateKeyFile and takes no clientSecret', () => {
      const base = { issuer: 'https://login', clientId: 'gw', clientAuth: 'private_key_jwt' };
      expect(problemsOf(minimal({ tokenService: { ...base, clientSecret: 'x' } }))).toEqual([
        'tokenService.clientSecret: is not used with clientAuth private_key_jwt (remove it: a secret nobody checks is a secret to leak)',
        'tokenService.privateKeyFile: is required for clientAuth private_key_jwt',
      ]);
      const ok = parseConfig(
        minimal({ tokenService: { ...base, privateKeyFile: '/k.pem', privateKeyAlg: 'PS256' } }),
      );
      expect(ok.tokenService.privateKeyFile).toBe('/k.pem');
      expect(ok.tokenService.privateKeyAlg).toBe('PS256');
    });

    it('privateKeyFile / privateKeyAlg only apply to private_key_jwt', () => {
      const tokenService = ts({ privateKeyFile: '/k.pem', privateKeyAlg: 'ES256' });
      expect(problemsOf(minimal({ tokenService }))).toEqual([
        'tokenService.privateKeyFile: only applies to clientAuth private_key_jwt (clientAuth is client_secret_basic (the default))',
        'tokenService.privateKeyAlg: only applies to clientAuth private_key_jwt (clientAuth is client_secret_basic (the default))',
      ]);
    });

    it('tls_client_auth needs a certificate, its key and an https token service', () => {
      const base = { issuer: 'http://127.0.0.1:1', clientId: 'gw', clientAuth: 'tls_client_auth' };
      expect(problemsOf(minimal({ tokenService: base }))).toEqual([
        'tokenService.tlsCertFile: is required for clientAuth tls_client_auth',
        'tokenService.tlsKeyFile: is required for clientAuth tls_client_auth',
        'tokenService.issuer: must be an https URL with clientAuth tls_client_auth (the client certificate is sent in the TLS handshake)',
      ]);
      const ok = parseConfig(
        minimal({
          tokenService: {
            ...base,
            issuer: 'https://login',
            tlsCertFile: '/c.pem',
            tlsKeyFile: '/k.pem',
            caFile: '/ca.pem',
          },
        }),
      );
      expect(ok.tokenService.tlsCertFile).toBe('/c.pem');
      expect(ok.tokenService.caFile).toBe('/ca.pem');
    });

    it('a client certificate without its key (or the reverse) is a problem with any clientAuth', () => {
      expect(problemsOf(minimal({ tokenService: ts({ tlsCertFile: '/c.pem' }) }))).toEqual([
        'tokenService.tlsKeyFile: is required with tokenService.tlsCertFile (a client certificate needs its key)',
      ]);
    });

    it('introspectionAccept (Keycloak: application/jwt) only applies to mode claim', () => {
      const claim = ts({ mode: 'claim', jwtClaim: 'jwt', introspectionAccept: 'application/jwt' });
      expect(parseConfig(minimal({ tokenService: claim })).tokenService.introspectionAccept).toBe(
        'application/jwt',
      );
      expect(problemsOf(minimal({ tokenService: ts({ introspectionAccept: 'application/jwt' }) }))).toEqual([
        'tokenService.introspectionAccept: only applies to mode claim (mode is accept-jwt)',
      ]);
    });

    it('introspectionFormat jwt (RFC 9701) only applies to mode mint; json is the default', () => {
      expect(parseConfig(minimal()).tokenService.introspectionFormat).toBe('json');
      expect(problemsOf(minimal({ tokenService: ts({ introspectionFormat: 'jwt' }) }))).toEqual([
        'tokenService.introspectionFormat: jwt (RFC 9701) only applies to mode mint (mode is accept-jwt); accept-jwt and claim receive the JWT itself',
      ]);
    });

    it.each(['client_secret_basic', 'client_secret_post'])(
      'rejects clientAuth %s without a clientSecret',
      (clientAuth) => {
        const tokenService = { issuer: 'https://login', clientId: 'gw', clientAuth };
        expect(problemsOf(minimal({ tokenService }))).toEqual([
          `tokenService.clientSecret: is required for clientAuth ${clientAuth}`,
        ]);
      },
    );

    it('accepts client_secret_post with a clientSecret', () => {
      const tokenService = {
        issuer: 'https://login',
        clientId: 'gw',
        clientAuth: 'client_secret_post',
        clientSecret: 'x',
      };
      expect(parseConfig(minimal({ tokenService })).tokenService.clientAuth).toBe('client_secret_post');
    });
  });

  describe('pathPrefix', () => {
    const prefixProblems = (pathPrefix: string) => problemsOf(withRoutes(route('a', { pathPrefix })));

    it('rejects a trailing slash', () => {
      expect(prefixProblems('/api/')).toEqual([
        'routes[0].match.pathPrefix: must not end with "/" (a prefix matches itself and everything below it: write /api, not /api/)',
      ]);
    });

    it('accepts "/" alone', () => {
      expect(parseConfig(withRoutes(route('root', { pathPrefix: '/' }))).routes[0]!.match.pathPrefix).toBe(
        '/',
      );
    });

    it.each([
      ['/api//x', 'must not contain "//"'],
      ['/api/./x', 'must not contain "." or ".." segments'],
      ['/api/..', 'must not contain "." or ".." segments'],
      ['/api%2Fx', 'must not contain "%" (percent-encoding)'],
      ['/api\\x', 'must not contain "\\" (a backslash)'],
      ['/api;v=1', 'must not contain ";" (path parameters)'],
      ['/api?x', 'must not contain "?" (a query)'],
      ['/api#x', 'must not contain "#" (a fragment)'],
    ])('rejects %s', (pathPrefix, message) => {
      expect(prefixProblems(pathPrefix)).toEqual([`routes[0].match.pathPrefix: ${message}`]);
    });

    it('accepts dots inside a segment', () => {
      expect(() => parseConfig(withRoutes(route('a', { pathPrefix: '/v1.2/.well-known' })))).not.toThrow();
    });
  });

  describe('upstream', () => {
    const upstreamProblems = (upstream: string) =>
      problemsOf(withRoutes({ name: 'a', match: { pathPrefix: '/a' }, upstream, scopes: ['s'] }));

    it('rejects a URL that is not absolute http(s)', () => {
      expect(upstreamProblems('invoices:3000')).toEqual([
        'routes[0].upstream: must be an absolute http(s) URL',
      ]);
    });

    it('rejects a query', () => {
      expect(upstreamProblems('http://svc/base?x=1')).toEqual([
        'routes[0].upstream: must not have a query (?…): the request path and query are appended',
      ]);
    });

    it('rejects a fragment', () => {
      expect(upstreamProblems('http://svc/base#top')).toEqual([
        'routes[0].upstream: must not have a fragment (#…)',
      ]);
    });

    it('rejects credentials without echoing them', () => {
      const problems = upstreamProblems('https://user:hunter2@svc/');
      expect(problems).toEqual([
        'routes[0].upstream: must not contain credentials (user:pass@); the gateway sends the JWT, nothing else',
      ]);
      expect(problems.join('\n')).not.toContain('hunter2');
    });

    it.each(['http://svc:3000', 'https://svc/base'])('accepts the upstream %s, unchanged', (upstream) => {
      const config = parseConfig(withRoutes({ ...route('a', { pathPrefix: '/a' }), upstream }));
      expect(config.routes[0]!.upstream).toBe(upstream);
    });
  });

  describe('listen and admin ports', () => {
    it('rejects the same port on the default hosts (0.0.0.0 includes 127.0.0.1)', () => {
      expect(problemsOf(minimal({ listen: { port: 9000 }, admin: { port: 9000 } }))).toEqual([
        'admin.port: must differ from listen.port (both 9000, on hosts 0.0.0.0 and 127.0.0.1); 0 disables the admin port',
      ]);
    });

    it('rejects the same port when listen.port takes the admin default', () => {
      expect(problemsOf(minimal({ listen: { port: 9090 } }))).toHaveLength(1);
    });

    it('accepts the same port on two different specific addresses', () => {
      const raw = minimal({
        listen: { host: '10.0.0.5', port: 9000 },
        admin: { host: '127.0.0.1', port: 9000 },
      });
      expect(() => parseConfig(raw)).not.toThrow();
    });

    it('accepts port 0 on both (ephemeral / admin disabled)', () => {
      expect(() => parseConfig(minimal({ listen: { port: 0 }, admin: { port: 0 } }))).not.toThrow();
    });
  });
});

describe('formatPath', () => {
  it('writes paths the way the YAML author points at them', () => {
    expect(formatPath([])).toBe('(root)');
    expect(formatPath(['routes', 2, 'upstream'])).toBe('routes[2].upstream');
    expect(formatPath(['tokenService', 'clientSecret'])).toBe('tokenService.clientSecret');
    expect(formatPath(['jwt', 'algorithms', 0])).toBe('jwt.algorithms[0]');
  });
});
