import type { PeerBus } from '../cluster/cluster.ts';
import type { Logger } from '../observability/logger.ts';
import type { RedisStore } from './redis-store.ts';

/**
 * The replicas' shared channel (`<keyPrefix>events`, or `cache.revocation.channel`):
 * - `f <slot>`: the lock holder for `<slot>` (tag[.variant]) finished; waiters look at L2 now;
 * - `p <json>`: a purge — `{"tags": [...], "subTag": "…"}` — every replica evicts its L1.
 * Only HMACs travel on it: never a token, JWT or claim value.
 * Without Redis, purges still reach the other workers of this process's cluster (`peers`, relayed
 * by the primary; `listen.workers`); fills need no notice there (no cross-process lock).
 */
export interface CacheEvents {
  /** Resolves on the next `f` for `slot` or after `ms` (whichever first). */
  waitForFill(slot: string, ms: number): Promise<void>;
  announceFill(slot: string): Promise<void>;
  announcePurge(tags: readonly string[], subTag?: string): Promise<boolean>;
  /** Handler for purges announced by any replica (this one included). */
  onPurge(handler: (tags: string[], subTag: string | undefined) => void): void;
}

export function createCacheEvents(
  redis: RedisStore | undefined,
  channel: string,
  logger: Logger,
  peers?: PeerBus,
): CacheEvents {
  const waiters = new Map<string, Set<() => void>>();
  let purgeHandler: ((tags: string[], subTag: string | undefined) => void) | undefined;
  const viaPeers = redis === undefined ? peers : undefined;

  const onMessage = (message: string) => {
    if (message.startsWith('f ')) {
      const set = waiters.get(message.slice(2));
      if (set) for (const wake of set) wake();
    } else if (message.startsWith('p ')) {
      let body: { tags?: unknown; subTag?: unknown };
      try {
        body = JSON.parse(message.slice(2)) as typeof body;
      } catch {
        logger.warn({ channel }, 'ignoring a malformed purge message');
        return;
      }
      const tags = Array.isArray(body.tags)
        ? body.tags.filter((t): t is string => typeof t === 'string')
        : [];
      purgeHandler?.(tags, typeof body.subTag === 'string' ? body.subTag : undefined);
    }
  };
  redis?.subscribe(channel, onMessage);
  viaPeers?.subscribe(onMessage);

  return {
    waitForFill(slot, ms) {
      return new Promise<void>((resolve) => {
        let set = waiters.get(slot);
        if (set === undefined) {
          set = new Set();
          waiters.set(slot, set);
        }
        const s = set;
        const wake = () => {
          clearTimeout(timer);
          s.delete(wake);
          if (s.size === 0) waiters.delete(slot);
          resolve();
        };
        const timer = setTimeout(wake, ms);
        s.add(wake);
      });
    },
    async announceFill(slot) {
      await redis?.publish(channel, `f ${slot}`);
    },
    async announcePurge(tags, subTag) {
      const message = `p ${JSON.stringify(subTag === undefined ? { tags } : { tags, subTag })}`;
      if (viaPeers !== undefined) {
        // The other workers only: this one has evicted its L1 already (revocation.ts).
        viaPeers.publish(message);
        return true;
      }
      if (redis === undefined) return false;
      return redis.publish(channel, message);
    },
    onPurge(handler) {
      purgeHandler = handler;
    },
  };
}
