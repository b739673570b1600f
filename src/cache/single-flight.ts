/** Coalesces concurrent calls per key: one call runs, every concurrent caller gets its result. */
export interface SingleFlight<T> {
  /**
   * Runs `fn` unless a call for `key` is already in flight, in which case that call's promise is
   * returned. The key is forgotten as soon as the call settles, so neither a result nor a failure
   * is cached: the next call after settling runs `fn` again.
   */
  run(key: string, fn: () => Promise<T>): Promise<T>;
  /** Keys with a call in flight. */
  inflight(): number;
}

export function createSingleFlight<T>(): SingleFlight<T> {
  const calls = new Map<string, Promise<T>>();
  return {
    run(key, fn) {
      const existing = calls.get(key);
      if (existing !== undefined) return existing;
      let p: Promise<T>;
      try {
        p = fn();
      } catch (err) {
        p = Promise.reject(err);
      }
      const shared = Promise.resolve(p).finally(() => {
        if (calls.get(key) === shared) calls.delete(key);
      });
      calls.set(key, shared);
      return shared;
    },
    inflight() {
      return calls.size;
    },
  };
}
