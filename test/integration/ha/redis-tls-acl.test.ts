import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createRedisStore,
  type RedisConfig,
  RedisConfigError,
  type RedisStore,
} from '../../../src/cache/redis-store.ts';
import { createLogger, silentLogger } from '../../../src/observability/logger.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { cacheLevels, GATEWAY_ENV, type HaFixture, startHaFixture } from '../../helpers/ha-gateway.ts';
import { request } from '../../helpers/http.ts';
import { type RedisClusterHandle, startRedisCluster } from '../../helpers/redis-cluster.ts';
import {
  answersPing,
  type RedisProcess,
  run,
  spawnRedisProcess,
  withClient,
} from '../../helpers/redis-process.ts';
import { type SentinelSet, startSentinelSet } from '../../helpers/redis-sentinel.ts';

/**
 * TLS (`rediss://`, a private CA given with `caFile`) and ACL users (user + password, `default`
 * off) against real redis-server processes: standalone, a three-master TLS cluster and a Sentinel
 * set that speaks only TLS. A wrong
 * password or an untrusted certificate leaves the store down — never an error in a request.
 */
const USER = 'gw';
const PASSWORD = 'acl-secret-42';
const PREFIX = 'phantom:';

let dir: string;
let ca: string;
let otherCa: string;
let cert: string;
let key: string;
let server: RedisProcess;
const stores: RedisStore[] = [];

/** A CA and a server certificate for 127.0.0.1, made with the openssl CLI. */
async function makeCertificates(): Promise<void> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const name of ['ca', 'other-ca']) {
    await run('openssl', [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      join(dir, `${name}.key`),
      '-out',
      join(dir, `${name}.crt`),
      '-days',
      '2',
      '-subj',
      `/CN=phantom ${name}`,
    ]);
  }
  await run('openssl', [
    'req',
    ...ec,
    '-keyout',
    join(dir, 'server.key'),
    '-out',
    join(dir, 'server.csr'),
    '-subj',
    '/CN=127.0.0.1',
  ]);
  writeFileSync(
    join(dir, 'ext.cnf'),
    [
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      'basicConstraints=CA:FALSE',
      'keyUsage=digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      '',
    ].join('\n'),
  );
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    join(dir, 'server.csr'),
    '-CA',
    join(dir, 'ca.crt'),
    '-CAkey',
    join(dir, 'ca.key'),
    '-CAcreateserial',
    '-out',
    join(dir, 'server.crt'),
    '-days',
    '2',
    '-extfile',
    join(dir, 'ext.cnf'),
  ]);
  [ca, otherCa, cert, key] = ['ca.crt', 'other-ca.crt', 'server.crt', 'server.key'].map((f) =>
    join(dir, f),
  ) as [string, string, string, string];
}

function capturingLogger() {
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      raw.push(chunk.toString('utf8'));
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', destination: stream }), raw };
}

function newStore(cfg: Partial<RedisConfig>, logger = silentLogger()): RedisStore {
  const store = createRedisStore({ keyPrefix: PREFIX, commandTimeoutMs: 250, ...cfg }, { logger });
  stores.push(store);
  return store;
}

/** Fails if `p` has not settled within `ms`. */
async function guard<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-tls-'));
  await makeCertificates();
  const port = await freePort();
  server = await spawnRedisProcess(
    [
      '--port',
      '0',
      '--tls-port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--tls-cert-file',
      cert,
      '--tls-key-file',
      key,
      '--tls-ca-cert-file',
      ca,
      '--tls-auth-clients',
      'no',
      '--user',
      USER,
      'on',
      `>${PASSWORD}`,
      '~phantom:*',
      '&*',
      '+@all',
      '--user',
      'default',
      'off',
      '--save',
      '',
      '--appendonly',
      'no',
      '--daemonize',
      'no',
    ],
    {
      port,
      ready: () => answersPing(port, { tls: { ca: readFileSync(ca) }, username: USER, password: PASSWORD }),
    },
  );
}, 60_000);

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const url = (password: string) => `rediss://${USER}:${password}@127.0.0.1:${server.port}`;

describe('standalone Redis over TLS with an ACL user', () => {
  it('connects with rediss://user:password@ when caFile names the private CA', async () => {
    const store = newStore({ url: url(PASSWORD), caFile: ca });
    await waitFor(() => store.state() === 'ready', 10_000, 'store ready over TLS');
    await store.set('tls-1', 'v', 60);
    expect(await store.get('tls-1')).toBe('v');
    expect(await store.run((c) => c.mget(`${PREFIX}tls-1`, `${PREFIX}tls-2`))).toEqual(['v', null]);
    // What the ACL allows is what the gateway needs: its prefix, pub/sub, scripts.
    expect(await store.run((c) => c.eval("return redis.call('get', KEYS[1])", 1, `${PREFIX}tls-1`))).toBe(
      'v',
    );
    expect(await store.publish(`${PREFIX}events`, 'x')).toBe(true);
    // Outside the prefix the ACL refuses: a failed command is a miss, not an exception.
    expect(await store.run((c) => c.get('other:key'))).toBeUndefined();
    // The data really went over TLS to the ACL user's keyspace.
    const direct = await withClient(server.port, (c) => c.get(`${PREFIX}tls-1`), {
      tls: { ca: readFileSync(ca) },
      username: USER,
      password: PASSWORD,
    });
    expect(direct).toBe('v');
  });

  it('stays down with a wrong password: calls resolve at once, nothing throws, the password is never logged', async () => {
    const logs = capturingLogger();
    const store = newStore({ url: url('wrong-password-77'), caFile: ca }, logs.logger);
    await waitFor(() => store.state() === 'down', 10_000, 'store down');
    for (let i = 0; i < 10; i++) {
      expect(await guard(store.get('x'), 500, 'get')).toBeUndefined();
      await guard(store.set('x', 'v', 60), 500, 'set');
      expect(
        await guard(
          store.run((c) => c.get('x')),
          500,
          'run',
        ),
      ).toBeUndefined();
      expect(await guard(store.publish('c', 'm'), 500, 'publish')).toBe(false);
      await sleep(150);
    }
    expect(store.state()).toBe('down');
    expect(store.errors()).toBeGreaterThanOrEqual(30);
    const text = logs.raw.join('');
    expect(text).toContain('WRONGPASS');
    expect(text).not.toContain('wrong-password-77');
    // One warn line for the one state change, not one per reconnect attempt.
    expect(text.split('\n').filter((l) => l.includes('"redis state changed"'))).toHaveLength(1);
  });

  it('stays down when the server certificate is not signed by the trusted CA', async () => {
    const logs = capturingLogger();
    const store = newStore({ url: url(PASSWORD), caFile: otherCa }, logs.logger);
    await waitFor(() => store.state() === 'down', 10_000, 'store down');
    await sleep(500);
    expect(store.state()).toBe('down');
    expect(await guard(store.get('x'), 500, 'get')).toBeUndefined();
    expect(logs.raw.join('')).toMatch(/certificate/i);
  });

  it('fails at startup with a clear error when caFile cannot be read', () => {
    expect(() => newStore({ url: url(PASSWORD), caFile: join(dir, 'missing.pem') })).toThrow(
      RedisConfigError,
    );
    expect(() => newStore({ url: url(PASSWORD), caFile: join(dir, 'missing.pem') })).toThrow(
      'cache.redis.caFile: cannot read the file (ENOENT)',
    );
  });
});

describe('real gateway processes with TLS and ACL', () => {
  let fx: HaFixture;
  const gateways: GatewayProcess[] = [];

  beforeAll(async () => {
    fx = await startHaFixture();
  }, 60_000);

  afterAll(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    await fx?.close();
  });

  it('share entries through Redis over TLS', async () => {
    const redis = { url: `rediss://${USER}:\${REDIS_PASSWORD}@127.0.0.1:${server.port}`, caFile: ca };
    const env = { ...GATEWAY_ENV, REDIS_PASSWORD: PASSWORD };
    const [a, b] = await Promise.all([
      startGateway(fx.config(redis), { env }),
      startGateway(fx.config(redis), { env }),
    ]);
    gateways.push(a, b);
    for (const g of [a, b]) {
      await waitFor(
        async () => (await request(`${g.adminUrl}/readyz`)).json()['redis'] === 'ready',
        15_000,
        'gateway redis ready',
      );
    }
    const t = await fx.token();
    expect(
      (await request(`${a.url}/api/invoices/1`, { headers: { authorization: `Bearer ${t}` } })).status,
    ).toBe(200);
    const res = await request(`${b.url}/api/invoices/1`, { headers: { authorization: `Bearer ${t}` } });
    expect(res.status).toBe(200);
    const id = String(res.headers['x-request-id']);
    await waitFor(() => cacheLevels(b).has(id), 5000, 'access line');
    expect(cacheLevels(b).get(id)).toBe('l2');
  });

  it('serves requests and stays ready with a wrong Redis password', async () => {
    const redis = { url: `rediss://${USER}:\${REDIS_PASSWORD}@127.0.0.1:${server.port}`, caFile: ca };
    const g = await startGateway(fx.config(redis), {
      env: { ...GATEWAY_ENV, REDIS_PASSWORD: 'not-the-password' },
    });
    gateways.push(g);
    await waitFor(
      async () => (await request(`${g.adminUrl}/readyz`)).json()['redis'] === 'down',
      15_000,
      'gateway redis down',
    );
    for (let i = 0; i < 5; i++) {
      const t = await fx.token();
      const started = Date.now();
      const res = await request(`${g.url}/api/invoices/1`, { headers: { authorization: `Bearer ${t}` } });
      expect(res.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(3000);
    }
    const ready = await request(`${g.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.json()).toMatchObject({ ready: true, redis: 'down' });
    expect(g.output()).not.toContain('not-the-password');
  });
});

describe('Redis Cluster over TLS with an ACL user', () => {
  let cluster: RedisClusterHandle;

  beforeAll(async () => {
    cluster = await startRedisCluster({
      tls: { certFile: cert, keyFile: key, caFile: ca },
      user: { name: USER, password: PASSWORD },
    });
  }, 60_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  const clusterConfig = (password: string): Partial<RedisConfig> => ({
    cluster: cluster.nodes.map((n) => ({ ...n })),
    tls: true,
    caFile: ca,
    username: USER,
    password,
  });

  it('connects with tls: true, caFile, username and password', async () => {
    const store = newStore(clusterConfig(PASSWORD));
    await waitFor(() => store.state() === 'ready', 10_000, 'cluster store ready over TLS');
    const keys = Array.from({ length: 12 }, (_, i) => `{t${i}}:jwt`);
    for (const k of keys) await store.set(k, `v-${k}`, 60);
    for (const k of keys) expect(await store.get(k)).toBe(`v-${k}`);
    const owners = new Set(await Promise.all(keys.map((k) => cluster.portOf(PREFIX + k))));
    expect(owners.size).toBeGreaterThan(1);
  });

  it('stays down with a wrong password, without throwing', async () => {
    const logs = capturingLogger();
    const store = newStore(clusterConfig('wrong-cluster-password'), logs.logger);
    await waitFor(() => store.state() === 'down', 10_000, 'cluster store down');
    await sleep(1000);
    expect(store.state()).toBe('down');
    expect(await guard(store.get('{t1}:jwt'), 500, 'get')).toBeUndefined();
    expect(logs.raw.join('')).not.toContain('wrong-cluster-password');
  });
});

describe('Redis Sentinel over TLS', () => {
  let set: SentinelSet;

  beforeAll(async () => {
    set = await startSentinelSet({
      password: PASSWORD,
      tls: { certFile: cert, keyFile: key, caFile: ca },
    });
  }, 60_000);

  afterAll(async () => {
    await set?.stop();
  });

  it('reaches the master (and the sentinels) over TLS with tls: true and caFile, also after a failover', async () => {
    const store = newStore({
      sentinels: set.sentinels.map((s) => ({ ...s })),
      name: set.name,
      password: PASSWORD,
      tls: true,
      caFile: ca,
    });
    await waitFor(() => store.state() === 'ready', 10_000, 'sentinel store ready over TLS');
    await store.set('before', '1', 60);
    expect(await store.get('before')).toBe('1');
    const { to } = await set.failover();
    await waitFor(
      async () => {
        await store.set('after', '2', 60);
        return (await withClient(to, (c) => c.get(`${PREFIX}after`), set.dataAuth())) === '2';
      },
      10_000,
      'a write on the new master',
    );
    expect(store.state()).toBe('ready');
  });
});
