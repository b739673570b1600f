import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RedisOptions } from 'ioredis';
import { freePort } from './free-port.ts';
import {
  answersPing,
  parseInfo,
  type RedisProcess,
  spawnRedisProcess,
  stopAll,
  waitUntil,
  withClient,
} from './redis-process.ts';

/**
 * A local Redis Sentinel deployment for one test file: one master, one replica (`--replicaof`) and
 * three sentinels (`redis-server <conf> --sentinel`, each with its own generated config file in a
 * temp dir, because sentinels rewrite it), all on free ports of 127.0.0.1, stopped by PID.
 */
export interface SentinelSet {
  /** The master group name (`mymaster`). */
  readonly name: string;
  readonly sentinels: ReadonlyArray<{ host: string; port: number }>;
  /** Ports of the two data nodes (the first one starts as master). */
  readonly dataPorts: readonly [number, number];
  /** The data node's password (`requirepass`/`masterauth`), when set. */
  readonly password: string | undefined;
  /** The sentinels' own password (`requirepass` on the sentinels), when set. */
  readonly sentinelPassword: string | undefined;
  /** The port the first sentinel reports as the master now. */
  masterPort(): Promise<number>;
  /**
   * `SENTINEL FAILOVER <name>` on the first sentinel; resolves once every sentinel reports the
   * new master and the new master reports `role:master`. Bounded (default 20 s).
   */
  failover(timeoutMs?: number): Promise<{ from: number; to: number; ms: number }>;
  /** Options for a short-lived client to a data node (its password). */
  dataAuth(): RedisOptions;
  /** Stops all five processes by PID and removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface StartSentinelOptions {
  /** `requirepass` + `masterauth` on the data nodes (`sentinel auth-pass` on the sentinels). */
  password?: string;
  /** `requirepass` on the sentinels (+ `sentinel sentinel-pass` so that they reach each other). */
  sentinelPassword?: string;
  /** Default 1000 ms. */
  downAfterMs?: number;
  /**
   * TLS only, everywhere: data nodes and sentinels listen with `--port 0 --tls-port P`, replication
   * and the sentinels' own connections use TLS; clients are not asked for certificates.
   */
  tls?: { certFile: string; keyFile: string; caFile: string };
}

const NAME = 'mymaster';

export async function startSentinelSet(opts: StartSentinelOptions = {}): Promise<SentinelSet> {
  const dir = mkdtempSync(join(tmpdir(), 'phantom-sentinel-'));
  const procs: RedisProcess[] = [];
  const { password, sentinelPassword, tls } = opts;
  const tlsClient = (): RedisOptions => (tls !== undefined ? { tls: { ca: readFileSync(tls.caFile) } } : {});
  const dataAuth = (): RedisOptions => ({ ...tlsClient(), ...(password !== undefined ? { password } : {}) });
  const sentinelAuth = (): RedisOptions => ({
    ...tlsClient(),
    ...(sentinelPassword !== undefined ? { password: sentinelPassword } : {}),
  });
  const tlsFiles =
    tls === undefined
      ? []
      : [
          ['tls-cert-file', tls.certFile],
          ['tls-key-file', tls.keyFile],
          ['tls-ca-cert-file', tls.caFile],
          ['tls-auth-clients', 'no'],
          ['tls-replication', 'yes'],
        ];
  const portArgs = (port: number): string[] =>
    tls === undefined
      ? ['--port', String(port)]
      : ['--port', '0', '--tls-port', String(port), ...tlsFiles.flatMap(([k, v]) => [`--${k}`, v!])];
  const portLines = (port: number): string[] =>
    tls === undefined
      ? [`port ${port}`]
      : ['port 0', `tls-port ${port}`, ...tlsFiles.map(([k, v]) => `${k} ${v}`)];
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'];
  const authArgs = password !== undefined ? ['--requirepass', password, '--masterauth', password] : [];

  try {
    const [masterPort, replicaPort] = [await freePort(), await freePort()];
    procs.push(
      await spawnRedisProcess([...portArgs(masterPort), ...common, '--dir', dir, ...authArgs], {
        port: masterPort,
        ready: () => answersPing(masterPort, dataAuth()),
      }),
    );
    procs.push(
      await spawnRedisProcess(
        [
          ...portArgs(replicaPort),
          ...common,
          '--dir',
          dir,
          ...authArgs,
          '--replicaof',
          '127.0.0.1',
          String(masterPort),
        ],
        { port: replicaPort, ready: () => answersPing(replicaPort, dataAuth()) },
      ),
    );
    // The replica has synced: the master lists it online, the replica's link is up.
    await waitUntil(async () => {
      const info = parseInfo(await withClient(replicaPort, (c) => c.info('replication'), dataAuth()));
      return info.get('master_link_status') === 'up';
    }, 'the replica to sync with the master');

    const sentinels: Array<{ host: string; port: number }> = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = join(dir, `sentinel-${port}.conf`);
      const lines = [
        ...portLines(port),
        'bind 127.0.0.1',
        'daemonize no',
        `dir ${dir}`,
        'sentinel resolve-hostnames no',
        `sentinel monitor ${NAME} 127.0.0.1 ${masterPort} 2`,
        `sentinel down-after-milliseconds ${NAME} ${opts.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${NAME} 5000`,
        `sentinel parallel-syncs ${NAME} 1`,
        ...(password !== undefined ? [`sentinel auth-pass ${NAME} ${password}`] : []),
        ...(sentinelPassword !== undefined
          ? [`requirepass ${sentinelPassword}`, `sentinel sentinel-pass ${sentinelPassword}`]
          : []),
      ];
      writeFileSync(conf, `${lines.join('\n')}\n`);
      procs.push(
        await spawnRedisProcess([conf, '--sentinel'], {
          port,
          ready: () => answersPing(port, sentinelAuth()),
        }),
      );
      sentinels.push({ host: '127.0.0.1', port });
    }

    // Every sentinel knows the master, the replica and the two other sentinels: only then can
    // a failover be agreed and the clients learn every sentinel.
    await waitUntil(
      async () => {
        for (const s of sentinels) {
          const ok = await withClient(
            s.port,
            async (c) => {
              const master = (await c.call('SENTINEL', 'MASTER', NAME)) as string[];
              const fields = new Map<string, string>();
              for (let i = 0; i + 1 < master.length; i += 2) fields.set(master[i]!, master[i + 1]!);
              return (
                fields.get('num-slaves') === '1' &&
                fields.get('num-other-sentinels') === '2' &&
                !(fields.get('flags') ?? '').includes('down')
              );
            },
            sentinelAuth(),
          );
          if (!ok) return false;
        }
        return true;
      },
      'the sentinels to discover the replica and each other',
      30_000,
      100,
    );

    const askMaster = async (port: number): Promise<number> => {
      const addr = (await withClient(
        port,
        (c) => c.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', NAME),
        sentinelAuth(),
      )) as [string, string] | null;
      if (addr === null) throw new Error('no master known');
      return Number(addr[1]);
    };

    let stopped = false;
    return {
      name: NAME,
      sentinels,
      dataPorts: [masterPort, replicaPort],
      password,
      sentinelPassword,
      masterPort: () => askMaster(sentinels[0]!.port),
      dataAuth,
      async failover(timeoutMs = 20_000) {
        const started = Date.now();
        const from = await askMaster(sentinels[0]!.port);
        // NOGOODSLAVE right after a previous failover: the sentinel has not yet seen a fresh
        // INFO of the replica. Retry, bounded.
        for (let attempt = 0; ; attempt++) {
          try {
            await withClient(sentinels[0]!.port, (c) => c.call('SENTINEL', 'FAILOVER', NAME), sentinelAuth());
            break;
          } catch (err) {
            if (attempt >= 20 || Date.now() - started > timeoutMs) throw err;
            await sleep(250);
          }
        }
        let to = from;
        await waitUntil(
          async () => {
            const ports = await Promise.all(sentinels.map((s) => askMaster(s.port)));
            if (!ports.every((p) => p === ports[0] && p !== from)) return false;
            to = ports[0]!;
            const info = parseInfo(await withClient(to, (c) => c.info('replication'), dataAuth()));
            return info.get('role') === 'master';
          },
          'every sentinel to report the new master',
          Math.max(1000, timeoutMs - (Date.now() - started)),
          25,
        );
        return { from, to, ms: Date.now() - started };
      },
      async stop() {
        if (stopped) return;
        stopped = true;
        await stopAll(procs);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll(procs);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
