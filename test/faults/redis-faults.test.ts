import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/gateway-process.ts';
import {
  checkFault,
  type FaultEnv,
  MARGIN_MS,
  REDIS_TIMEOUT_MS,
  runFaultLoop,
  startFaultEnv,
  summaries,
  TS_TIMEOUT_MS,
} from './fault-loop.ts';

/**
 * Redis faults under a steady loop (issue 8 part 2; SPEC §5 "never a 5xx caused by Redis alone"):
 * the real redis-server killed (then started again), frozen with SIGSTOP (then SIGCONT) and
 * restarted. L1 holds only 4 entries, so most hot tokens are read from Redis (L2) while it is
 * healthy and re-introspected while it is not; fresh tokens need the Redis lookup, lock and write.
 * Every request is 2xx, none waits past the Redis command timeout + the introspection timeout
 * (+ margin), and afterwards the gateway reports Redis ready again by itself.
 */

let env: FaultEnv;

beforeAll(async () => {
  env = await startFaultEnv({ redis: true, l1Entries: 4 });
}, 60_000);

afterAll(async () => {
  console.log(`redis faults:\n  ${summaries.join('\n  ')}`);
  await env?.close();
});

// A miss: Redis lookup, lock (each ≤ commandTimeoutMs), then one introspection (≤ timeoutMs).
const BOUND = 4 * REDIS_TIMEOUT_MS + TS_TIMEOUT_MS + MARGIN_MS;

async function redisState(): Promise<string | undefined> {
  const res = await fetch(`${env.gw.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
  return ((await res.json()) as { redis?: string }).redis;
}

describe('Redis faults during a steady request loop', () => {
  const faults = [
    {
      name: 'redis killed',
      inject: () => env.redis!.kill(),
      remove: () => env.redis!.restart(),
    },
    {
      name: 'redis paused (SIGSTOP)',
      inject: () => env.redis!.pause(),
      remove: () => env.redis!.resume(),
    },
    {
      name: 'redis restarted',
      inject: () => env.redis!.restart(),
      remove: () => {},
    },
  ];
  for (const fault of faults) {
    it(`${fault.name}: only 2xx, bounded, no leak, Redis used again afterwards`, async () => {
      expect(await redisState()).toBe('ready');
      const r = await runFaultLoop(env, fault);
      await checkFault(env, r, { allowed: () => [], boundMs: BOUND, recoverWithinMs: 0 });
      await waitFor(async () => (await redisState()) === 'ready', 15_000, 'redis ready again');
    });
  }
});
