import type { Logger } from '../observability/logger.ts';
import type { CacheEvents } from './cache-events.ts';
import type { CacheKeyer } from './cache-key.ts';
import type { CacheMetrics } from './cache-metrics.ts';
import type { TieredCache } from './tiered-cache.ts';

/** Purges (SPEC §7 invalidation): by token or by subject, in Redis and in every replica's L1. */
export interface Revocation {
  /** Evicts one token everywhere; returns the number of entries removed here and in Redis. */
  purgeToken(token: string): Promise<number>;
  /** Evicts every cached token of a subject everywhere (subject index in Redis + L1 scan). */
  purgeSubject(sub: string): Promise<number>;
}

/** The HMAC of a subject used as its index key (a `sub` is never stored in plain text). */
export function subjectTag(keyer: CacheKeyer, sub: string): string {
  return keyer(sub, 'sub');
}

export function createRevocation(opts: {
  cache: TieredCache;
  events: CacheEvents;
  keyer: CacheKeyer;
  metrics: CacheMetrics;
  logger: Logger;
}): Revocation {
  const { cache, events, keyer, metrics, logger } = opts;
  // Purges announced by any replica (ours included) evict this process's L1.
  events.onPurge((tags, subTag) => {
    const n = cache.evictLocal(tags, subTag);
    if (n > 0) logger.debug({ evicted: n }, 'purge applied to the in-process cache');
  });

  async function purge(tags: string[], subTag: string | undefined): Promise<number> {
    metrics.purges++;
    const local = cache.evictLocal(tags, subTag);
    const remote = await cache.deleteRemote(tags);
    await events.announcePurge(tags, subTag);
    metrics.purgedEntries += local + remote;
    return local + remote;
  }

  return {
    purgeToken(token) {
      return purge([keyer(token)], undefined);
    },
    async purgeSubject(sub) {
      const subTag = subjectTag(keyer, sub);
      const tags = await cache.takeSubjectTags(subTag);
      return purge(tags, subTag);
    },
  };
}
