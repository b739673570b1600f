import { createHash } from 'node:crypto';
import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { basename, dirname } from 'node:path';
import { type Gateway, type SharedParts, sameSetting } from './app.ts';
import { loadConfig } from './config/load-config.ts';
import { ConfigError } from './config/parse-config.ts';
import type { Config } from './config/schema.ts';
import { describeError } from './errors/error-handler.ts';
import { IssuerMismatchError } from './introspection/token-service-metadata.ts';
import type { Logger } from './observability/logger.ts';
import { configHash } from './observability/metrics.ts';

/**
 * Config hot reload (issue 7): on SIGHUP or a change of the config file, the file is loaded and
 * validated, and a new gateway built from it takes over the listeners atomically — requests
 * already in flight finish on the gateway that accepted them. Parts whose configuration did not
 * change are handed over (app.ts SharedParts: caches, Redis, discovery, key ring). An invalid file,
 * a change only a restart can apply, or a token service that names another issuer leaves the
 * running configuration in place and is logged with every problem and counted as a failed reload.
 */

/** Keys read once when the listeners are created: a change needs a restart. */
export function restartRequired(running: Config, next: Config): string[] {
  const keys: string[] = [];
  const differs = (a: unknown, b: unknown) => !sameSetting(a, b);
  for (const k of ['host', 'port', 'tls', 'workers'] as const)
    if (differs(running.listen[k], next.listen[k])) keys.push(`listen.${k}`);
  for (const k of ['host', 'port'] as const)
    if (differs(running.admin[k], next.admin[k])) keys.push(`admin.${k}`);
  const fa = (c: Config) =>
    c.forwardAuth === undefined ? undefined : [c.forwardAuth.host, c.forwardAuth.port];
  if (differs(fa(running), fa(next))) keys.push('forwardAuth (listener added, removed or moved)');
  if (differs(running.cache.redis, next.cache.redis)) keys.push('cache.redis');
  return keys;
}

export type ReloadTrigger = 'SIGHUP' | 'file';
export type ReloadOutcome = 'reloaded' | 'unchanged' | 'rejected';

export interface ConfigReloader {
  /** Loads the file and swaps the gateway if it changed; serialised (one reload at a time). */
  reload(trigger: ReloadTrigger): Promise<ReloadOutcome>;
  /** Watches the file (and its directory, for editors' and Kubernetes' atomic replaces). */
  watch(): void;
  stop(): void;
}

export function createConfigReloader(opts: {
  file: string;
  logger: Logger;
  current(): Gateway;
  /** Builds a gateway for `config` that takes over `shared` (createGateway). */
  build(config: Config, shared: SharedParts): Promise<Gateway>;
  /** Makes `next` the active gateway (the listeners' handlers) and retires the previous one. */
  activate(next: Gateway): void;
  /** Debounce of file events (editors and Kubernetes write in several steps). */
  debounceMs?: number;
}): ConfigReloader {
  const { file, logger } = opts;
  let chain: Promise<unknown> = Promise.resolve();
  let watcher: FSWatcher | undefined;
  let timer: NodeJS.Timeout | undefined;
  /** Bytes of the file as last read (a file event with the same bytes is not a change). */
  let lastDigest = digestOf(file);

  function rejected(trigger: ReloadTrigger, msg: string, fields: Record<string, unknown>): ReloadOutcome {
    logger.error(
      { configFile: file, trigger, ...fields },
      `config reload rejected: ${msg}; the running configuration stays`,
    );
    return 'rejected';
  }

  async function reloadOnce(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    lastDigest = digestOf(file);
    let config: Config;
    try {
      const loaded = loadConfig(file);
      config = loaded.config;
      for (const w of loaded.warnings) logger.warn({ configFile: file }, w);
    } catch (err) {
      if (err instanceof ConfigError)
        return rejected(trigger, 'the file is invalid', { problems: err.problems });
      return rejected(trigger, 'the file could not be read', { err: describeError(err) });
    }
    const running = opts.current();
    const hash = configHash(config);
    if (hash === running.configHash) {
      logger.info({ configFile: file, trigger, configHash: hash }, 'configuration unchanged');
      return 'unchanged';
    }
    const restart = restartRequired(running.config, config);
    if (restart.length > 0)
      return rejected(trigger, 'these keys change only with a restart', { keys: restart });
    const shared = running.reusableFor(config);
    let next: Gateway;
    try {
      next = await opts.build(config, shared);
    } catch (err) {
      return rejected(trigger, 'the new configuration could not be put together', {
        err: describeError(err),
      });
    }
    if (next.metadata !== running.metadata) {
      // A new token service (or a new way to reach it): discovered before it takes over, bounded
      // by its timeoutMs. Another issuer, or an unreachable one with requireAtStartup, is refused.
      try {
        await next.metadata.start();
      } catch (err) {
        if (err instanceof IssuerMismatchError || config.tokenService.requireAtStartup) {
          await next.close(shared);
          return rejected(trigger, 'the token service could not be confirmed', { err: describeError(err) });
        }
        logger.warn(
          { err: describeError(err) },
          'token service not reachable yet after reload: retrying in the background',
        );
      }
    }
    opts.activate(next);
    logger.info(
      { configFile: file, trigger, from: running.configHash, to: hash, routes: config.routes.length },
      'configuration reloaded',
    );
    return 'reloaded';
  }

  return {
    reload(trigger) {
      const run = chain.then(async () => {
        const outcome = await reloadOnce(trigger);
        // SIGHUP also re-reads the key files (mint signing keys, client credentials) of the
        // gateway now active; one SIGHUP, or one changed file, counts as one reload.
        const keysOk = trigger === 'SIGHUP' ? await opts.current().reloadKeys() : true;
        if (trigger === 'SIGHUP' || outcome !== 'unchanged')
          opts.current().countReload(outcome !== 'rejected' && keysOk ? 'success' : 'failure');
        return outcome;
      });
      chain = run.catch(() => {});
      return run;
    },
    watch() {
      // The directory, not the file: an atomic replace (editor rename, Kubernetes' `..data`
      // symlink swap) gives the file a new inode that a watch on the old one never reports.
      const dir = dirname(file);
      const name = basename(file);
      try {
        watcher = watch(dir, { persistent: false }, (_event, changed) => {
          if (changed !== null && changed !== name && !changed.startsWith('..')) return;
          clearTimeout(timer);
          timer = setTimeout(() => {
            if (digestOf(file) === lastDigest) return;
            void this.reload('file');
          }, opts.debounceMs ?? 300);
          timer.unref();
        });
        watcher.on('error', (err) =>
          logger.warn({ err: describeError(err), dir }, 'config file watch failed'),
        );
      } catch (err) {
        logger.warn({ err: describeError(err), dir }, 'cannot watch the config file: reload with SIGHUP');
      }
    },
    stop() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}

function digestOf(file: string): string {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex');
  } catch {
    return '';
  }
}
