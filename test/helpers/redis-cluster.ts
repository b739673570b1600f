import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RedisOptions } from 'ioredis';
import { freePort } from './free-port.ts';
import {
  answersPing,
  parseInfo,
  portIsFree,
  type RedisProcess,
  run,
  spawnRedisProcess,
  stopAll,
  waitUntil,
  withClient,
} from './redis-process.ts';

/**
 * A local three-master Redis Cluster for one test file: `redis-server --cluster-enabled yes` on
 * three free ports (whose cluster bus ports, port + 10000, are free too), joined with
 * `redis-cli --cluster create … --cluster-replicas 0`, stopped by PID.
 *
 * `cluster-require-full-coverage no`: when a master dies, the other masters keep serving their
 * slots (the setting a cache wants: only the dead node's keys miss).
 */
export interface RedisClusterHandle {
  /** The three master ports. */
  readonly ports: readonly number[];
  /** `{host, port}` seed nodes for the gateway config. */
  readonly nodes: ReadonlyArray<{ host: string; port: number }>;
  /** The port of the master serving `key`'s slot (asked from a live node). */
  portOf(key: string): Promise<number>;
  /** SIGKILL the master on `port` (a crashed node) and wait for its exit. */
  kill(port: number): Promise<void>;
  /** Whether the process of `port` still runs. */
  alive(port: number): boolean;
  /** Options for a short-lived inspection client (TLS CA and ACL user, when configured). */
  clientOptions(): RedisOptions;
  /** Stops every node by PID and removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

/** A free port below 55536 whose cluster bus port (+10000) is free as well. Bounded attempts. */
async function clusterPort(taken: Set<number>): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = await freePort();
    if (port > 55_535 || taken.has(port) || taken.has(port + 10_000)) continue;
    if (await portIsFree(port + 10_000)) return port;
  }
  throw new Error('no free port pair (port, port + 10000) found');
}

export interface StartRedisClusterOptions {
  /** Default 2000 ms. */
  nodeTimeoutMs?: number;
  /**
   * TLS only (`--port 0 --tls-port P --tls-cluster yes`, bus over TLS too); clients are not asked
   * for certificates (`--tls-auth-clients no`). The cert must name 127.0.0.1.
   */
  tls?: { certFile: string; keyFile: string; caFile: string };
  /** An ACL user with every command on `~phantom:*` and every channel; `default` is switched off. */
  user?: { name: string; password: string };
}

export async function startRedisCluster(opts: StartRedisClusterOptions = {}): Promise<RedisClusterHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'phantom-cluster-'));
  const procs = new Map<number, RedisProcess>();
  const { tls, user } = opts;
  const clientOptions = (): RedisOptions => ({
    ...(tls !== undefined ? { tls: { ca: readFileSync(tls.caFile) } } : {}),
    ...(user !== undefined ? { username: user.name, password: user.password } : {}),
  });
  const portArgs = (port: number): string[] =>
    tls === undefined
      ? ['--port', String(port)]
      : [
          '--port',
          '0',
          '--tls-port',
          String(port),
          '--tls-cluster',
          'yes',
          '--tls-cert-file',
          tls.certFile,
          '--tls-key-file',
          tls.keyFile,
          '--tls-ca-cert-file',
          tls.caFile,
          '--tls-auth-clients',
          'no',
        ];
  const userArgs =
    user === undefined
      ? []
      : [
          '--user',
          user.name,
          'on',
          `>${user.password}`,
          '~phantom:*',
          '&*',
          '+@all',
          '--user',
          'default',
          'off',
        ];
  try {
    const taken = new Set<number>();
    for (let i = 0; i < 3; i++) {
      // A port pair can be taken between the check and the bind: retry that node a few times.
      let started: RedisProcess | undefined;
      let lastError: unknown;
      for (let attempt = 0; attempt < 3 && started === undefined; attempt++) {
        const port = await clusterPort(taken);
        taken.add(port).add(port + 10_000);
        try {
          started = await spawnRedisProcess(
            [
              ...portArgs(port),
              '--bind',
              '127.0.0.1',
              '--save',
              '',
              '--appendonly',
              'no',
              '--daemonize',
              'no',
              '--dir',
              dir,
              '--cluster-enabled',
              'yes',
              '--cluster-config-file',
              join(dir, `nodes-${port}.conf`),
              '--cluster-node-timeout',
              String(opts.nodeTimeoutMs ?? 2000),
              '--cluster-require-full-coverage',
              'no',
              ...userArgs,
            ],
            { port, ready: () => answersPing(port, clientOptions()) },
          );
        } catch (err) {
          lastError = err;
        }
      }
      if (started === undefined) throw lastError;
      procs.set(started.port, started);
    }
    const ports = [...procs.keys()];
    await run('redis-cli', [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
      ...(tls !== undefined ? ['--tls', '--cacert', tls.caFile] : []),
      ...(user !== undefined ? ['--user', user.name, '--pass', user.password] : []),
    ]);
    await waitUntil(
      async () => {
        for (const port of ports) {
          const info = parseInfo(
            await withClient(port, (c) => c.call('CLUSTER', 'INFO') as Promise<string>, clientOptions()),
          );
          if (info.get('cluster_state') !== 'ok' || info.get('cluster_known_nodes') !== '3') return false;
          if (info.get('cluster_slots_ok') !== '16384') return false;
        }
        return true;
      },
      'cluster_state:ok on every node',
      30_000,
      100,
    );

    let stopped = false;
    return {
      ports,
      nodes: ports.map((port) => ({ host: '127.0.0.1', port })),
      async portOf(key) {
        const live = ports.find((p) => procs.get(p)?.exited() === false);
        if (live === undefined) throw new Error('no live cluster node');
        return withClient(
          live,
          async (c) => {
            const slot = Number(await c.call('CLUSTER', 'KEYSLOT', key));
            const ranges = (await c.call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number]]>;
            const range = ranges.find(([from, to]) => slot >= from && slot <= to);
            if (range === undefined) throw new Error(`slot ${slot} is not served`);
            return Number(range[2][1]);
          },
          clientOptions(),
        );
      },
      async kill(port) {
        const p = procs.get(port);
        if (p === undefined) throw new Error(`no cluster node on port ${port}`);
        await p.kill();
      },
      alive: (port) => procs.get(port)?.exited() === false,
      clientOptions,
      async stop() {
        if (stopped) return;
        stopped = true;
        await stopAll([...procs.values()]);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll([...procs.values()]);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
