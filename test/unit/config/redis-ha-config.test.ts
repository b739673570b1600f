// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/load-config.ts';
import { ConfigError, parseConfig } from '../../../src/config/parse-config.ts';

/** `cache.redis` in Sentinel and Cluster form, and the rules that keep one deployment per config. */
type Raw = Record<string, unknown>;

function withRedis(redis: Raw): Raw {
  return {
    tokenService: { issuer: 'https://login.example.com', clientId: 'api-gateway', clientSecret: 's3cret' },
    cache: { redis },
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

const SENTINELS = [
  { host: 'sentinel-0', port: 26379 },
  { host: 'sentinel-1', port: 26379 },
];
const NODES = [
  { host: 'redis-0', port: 6379 },
  { host: 'redis-1', port: 6379 },
];

describe('cache.redis deployments', () => {
  it('accepts a Sentinel set with master name, ACL users, TLS with a private CA and a database', () => {
    const config = parseConfig(
      withRedis({
        sentinels: SENTINELS,
        name: 'mymaster',
        username: 'gateway',
        password: 'pw',
        sentinelUsername: 'sentinel-user',
        sentinelPassword: 'spw',
        tls: true,
        caFile: '/etc/phantom-gateway/redis-ca.pem',
        db: 2,
      }),
    );
    expect(config.cache.redis).toEqual({
      sentinels: SENTINELS,
      name: 'mymaster',
      username: 'gateway',
      password: 'pw',
      sentinelUsername: 'sentinel-user',
      sentinelPassword: 'spw',
      tls: true,
      caFile: '/etc/phantom-gateway/redis-ca.pem',
      db: 2,
      keyPrefix: 'phantom:',
      commandTimeoutMs: 50,
    });
  });

  it('accepts a Cluster given by seed nodes, with ACL user and TLS', () => {
    const config = parseConfig(withRedis({ cluster: NODES, username: 'gw', password: 'pw', tls: true }));
    expect(config.cache.redis).toMatchObject({ cluster: NODES, username: 'gw', password: 'pw', tls: true });
  });

  it('still accepts a standalone url, with a db and a private CA for rediss://', () => {
    const config = parseConfig(withRedis({ url: 'rediss://gw:pw@redis:6380', db: 3, caFile: '/ca.pem' }));
    expect(config.cache.redis).toMatchObject({ url: 'rediss://gw:pw@redis:6380', db: 3, caFile: '/ca.pem' });
  });

  it('turns ports and tls from ${ENV} strings into numbers and booleans', () => {
    const { config } = parseConfigText(
      [
        'tokenService: { issuer: "https://login.example.com", clientId: gw, clientSecret: "${S}" }',
        'routes: [{ name: r, match: { pathPrefix: /api }, upstream: "http://svc:3000", scopes: [s] }]',
        'cache:',
        '  redis:',
        '    cluster: [{ host: redis-0, port: "${PORT}" }]',
        '    tls: "${TLS}"',
        '',
      ].join('\n'),
      { S: 's', PORT: '7000', TLS: 'true' },
    );
    expect(config.cache.redis).toMatchObject({ cluster: [{ host: 'redis-0', port: 7000 }], tls: true });
  });
});

describe('cache.redis rules', () => {
  it('requires exactly one of url, sentinels or cluster', () => {
    expect(problemsOf(withRedis({ keyPrefix: 'p:' }))).toEqual([
      'cache.redis: needs exactly one of url (standalone), sentinels (with name) or cluster (seed nodes); omit cache.redis for an in-process cache only',
    ]);
    expect(problemsOf(withRedis({ url: 'redis://r', cluster: NODES }))).toEqual([
      'cache.redis.cluster: cannot be combined with cache.redis.url: write exactly one of url, sentinels or cluster',
    ]);
    expect(problemsOf(withRedis({ sentinels: SENTINELS, name: 'm', cluster: NODES }))).toEqual([
      'cache.redis.cluster: cannot be combined with cache.redis.sentinels: write exactly one of url, sentinels or cluster',
    ]);
  });

  it('requires name with sentinels, and name only with sentinels', () => {
    expect(problemsOf(withRedis({ sentinels: SENTINELS }))).toEqual([
      'cache.redis.name: is required with cache.redis.sentinels (the master group name of `sentinel monitor`)',
    ]);
    expect(problemsOf(withRedis({ cluster: NODES, name: 'mymaster' }))).toEqual([
      'cache.redis.name: only applies with cache.redis.sentinels',
    ]);
    expect(problemsOf(withRedis({ url: 'redis://r', name: 'mymaster' }))).toEqual([
      'cache.redis.name: only applies with cache.redis.sentinels',
    ]);
  });

  it('accepts sentinel credentials only with sentinels', () => {
    expect(problemsOf(withRedis({ cluster: NODES, sentinelUsername: 'u', sentinelPassword: 'p' }))).toEqual([
      'cache.redis.sentinelUsername: only applies with cache.redis.sentinels',
      'cache.redis.sentinelPassword: only applies with cache.redis.sentinels',
    ]);
  });

  it('rejects db with a cluster, and a db given twice with a url', () => {
    expect(problemsOf(withRedis({ cluster: NODES, db: 1 }))).toEqual([
      'cache.redis.db: is not supported with cache.redis.cluster (a Redis Cluster has only database 0)',
    ]);
    expect(problemsOf(withRedis({ url: 'redis://r:6379/2', db: 1 }))).toEqual([
      'cache.redis.db: conflicts with the database in the path of cache.redis.url (/N); write only one of them',
    ]);
  });

  it('keeps user, password and TLS of a standalone Redis in its URL', () => {
    expect(problemsOf(withRedis({ url: 'redis://r', username: 'u', password: 'p', tls: true }))).toEqual([
      'cache.redis.username: only applies with cache.redis.sentinels or cache.redis.cluster; with cache.redis.url write it into the URL (rediss://user:${REDIS_PASSWORD}@host:6379)',
      'cache.redis.password: only applies with cache.redis.sentinels or cache.redis.cluster; with cache.redis.url write it into the URL (rediss://user:${REDIS_PASSWORD}@host:6379)',
      'cache.redis.tls: only applies with cache.redis.sentinels or cache.redis.cluster; with cache.redis.url use rediss://',
    ]);
  });

  it('rejects a caFile without TLS (it would be ignored)', () => {
    for (const redis of [
      { url: 'redis://r', caFile: '/ca.pem' },
      { cluster: NODES, caFile: '/ca.pem' },
      { cluster: NODES, tls: false, caFile: '/ca.pem' },
    ]) {
      expect(problemsOf(withRedis(redis))).toEqual([
        'cache.redis.caFile: needs TLS: a rediss:// url, or tls: true with sentinels or cluster',
      ]);
    }
  });

  it('checks the shape of the node lists', () => {
    expect(problemsOf(withRedis({ cluster: [] }))).toEqual(['cache.redis.cluster: must not be empty']);
    expect(
      problemsOf(withRedis({ sentinels: [{ host: 's', port: 70000 }, { host: 's' }], name: 'm' })),
    ).toEqual([
      'cache.redis.sentinels[0].port: must be at most 65535',
      'cache.redis.sentinels[1].port: is required',
    ]);
    expect(problemsOf(withRedis({ cluster: [{ host: 'n', port: 1, tls: true }] }))).toEqual([
      'cache.redis.cluster[0]: unknown key "tls"',
    ]);
  });

  it('reports every problem of one block at once', () => {
    expect(problemsOf(withRedis({ cluster: NODES, name: 'm', db: 0, caFile: '/ca.pem' }))).toHaveLength(3);
  });
});

describe('cache.redis secrets', () => {
  const yaml = (redis: string) =>
    [
      'tokenService: { issuer: "https://login.example.com", clientId: gw, clientSecret: "${S}" }',
      'routes: [{ name: r, match: { pathPrefix: /api }, upstream: "http://svc:3000", scopes: [s] }]',
      'cache:',
      '  redis:',
      '    sentinels: [{ host: s0, port: 26379 }]',
      '    name: mymaster',
      redis,
      '',
    ].join('\n');

  it('warns about a password and a sentinel password written literally', () => {
    const { warnings } = parseConfigText(yaml('    password: hunter2\n    sentinelPassword: hunter3'), {
      S: 's',
    });
    expect(warnings).toEqual([
      'cache.redis.password is written literally in the config file; use ${ENV_VAR} instead',
      'cache.redis.sentinelPassword is written literally in the config file; use ${ENV_VAR} instead',
    ]);
  });

  it('does not warn when they come from the environment', () => {
    const { warnings, config } = parseConfigText(
      yaml('    password: "${REDIS_PASSWORD}"\n    sentinelPassword: "${SENTINEL_PASSWORD}"'),
      { S: 's', REDIS_PASSWORD: 'pw', SENTINEL_PASSWORD: 'spw' },
    );
    expect(warnings).toEqual([]);
    expect(config.cache.redis).toMatchObject({ password: 'pw', sentinelPassword: 'spw' });
  });
});
