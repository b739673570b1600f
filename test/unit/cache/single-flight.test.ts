import { describe, expect, it } from 'vitest';
import { createSingleFlight } from '../../../src/cache/single-flight.ts';

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('single-flight', () => {
  it('shares one call among 100 concurrent callers of the same key', async () => {
    const sf = createSingleFlight<string>();
    const d = deferred<string>();
    let calls = 0;
    const fn = () => {
      calls++;
      return d.promise;
    };
    const all = Array.from({ length: 100 }, () => sf.run('k', fn));
    expect(sf.inflight()).toBe(1);
    d.resolve('jwt');
    expect(await Promise.all(all)).toEqual(Array(100).fill('jwt'));
    expect(calls).toBe(1);
    expect(sf.inflight()).toBe(0);
  });

  it('runs separate calls for different keys', async () => {
    const sf = createSingleFlight<string>();
    let calls = 0;
    const fn = async () => `v${++calls}`;
    const [a, b] = await Promise.all([sf.run('a', fn), sf.run('b', fn)]);
    expect(new Set([a, b])).toEqual(new Set(['v1', 'v2']));
    expect(calls).toBe(2);
  });

  it('does not cache a failure: every concurrent caller sees it, the next call runs again', async () => {
    const sf = createSingleFlight<string>();
    let calls = 0;
    const d = deferred<string>();
    const failing = () => {
      calls++;
      return d.promise;
    };
    const waiters = Array.from({ length: 10 }, () => sf.run('k', failing));
    d.reject(new Error('boom'));
    const results = await Promise.allSettled(waiters);
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    expect(calls).toBe(1);
    expect(sf.inflight()).toBe(0);

    await expect(sf.run('k', async () => 'ok')).resolves.toBe('ok');
  });

  it('does not cache a success either: a call after settling runs again', async () => {
    const sf = createSingleFlight<number>();
    let calls = 0;
    const fn = async () => ++calls;
    expect(await sf.run('k', fn)).toBe(1);
    expect(await sf.run('k', fn)).toBe(2);
  });

  it('turns a synchronous throw into a rejection and forgets the key', async () => {
    const sf = createSingleFlight<string>();
    await expect(
      sf.run('k', () => {
        throw new Error('sync');
      }),
    ).rejects.toThrow('sync');
    expect(sf.inflight()).toBe(0);
  });
});
