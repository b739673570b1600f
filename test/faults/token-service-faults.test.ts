import { afterAll, beforeAll, describe, it } from 'vitest';
import type { StubBehaviour } from '../helpers/curity-stub.ts';
import {
  checkFault,
  type FaultEnv,
  MARGIN_MS,
  runFaultLoop,
  type Sample,
  startFaultEnv,
  summaries,
  TS_TIMEOUT_MS,
} from './fault-loop.ts';

/**
 * Token service faults under a steady loop (issue 8 part 2), through the real gateway process:
 * "could not ask" (closed port, hanging, slower than tokenService.timeoutMs, 503, 429) is 503 +
 * Retry-After for tokens the gateway has not cached; an unusable answer (500, malformed JSON, an
 * HTML page) is 502; a slow answer within the timeout is just slow. Cached (hot) tokens are 200
 * throughout: a token service outage never touches requests the cache can answer.
 */

let env: FaultEnv;

beforeAll(async () => {
  env = await startFaultEnv();
}, 60_000);

afterAll(async () => {
  console.log(`token service faults:\n  ${summaries.join('\n  ')}`);
  await env?.close();
});

/** Hot tokens: always 200. Fresh ones: 200 or `fresh`. */
const only = (fresh: readonly string[]) => (s: Sample) => (s.hot ? [] : fresh);

const behaviourFault = (name: string, b: StubBehaviour) => ({
  name,
  inject: () => {
    env.stub.behaviour = b;
  },
  remove: () => {
    env.stub.behaviour = 'ok';
  },
});

// A timeout is reached within TS_TIMEOUT_MS (one deadline for the whole exchange, retry included).
const BOUND = TS_TIMEOUT_MS + MARGIN_MS;
// Requests sent just before the fault ended may still be waiting on it; after the timeout they are not.
const RECOVER = TS_TIMEOUT_MS + 500;

describe('token service faults during a steady request loop', () => {
  it('refusing (its port closed): 503 + Retry-After for misses, cached tokens 200, recovers', async () => {
    const r = await runFaultLoop(env, {
      name: 'token service refusing',
      inject: () => env.relay.refuse(),
      remove: () => env.relay.accept(),
    });
    await checkFault(env, r, {
      allowed: only(['503']),
      mustSee: ['503'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('hanging: 503 + Retry-After after tokenService.timeoutMs, cached tokens 200, recovers', async () => {
    const r = await runFaultLoop(env, behaviourFault('token service hanging', 'hang'));
    await checkFault(env, r, {
      allowed: only(['503']),
      mustSee: ['503'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('slower than tokenService.timeoutMs: 503 + Retry-After, recovers', async () => {
    const r = await runFaultLoop(
      env,
      behaviourFault('token service slow past timeout', `slow:${TS_TIMEOUT_MS + 700}`),
    );
    await checkFault(env, r, {
      allowed: only(['503']),
      mustSee: ['503'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('slow within tokenService.timeoutMs: every request 200', async () => {
    const r = await runFaultLoop(
      env,
      behaviourFault('token service slow within timeout', `slow:${TS_TIMEOUT_MS / 4}`),
    );
    await checkFault(env, r, { allowed: only([]), boundMs: BOUND, recoverWithinMs: 0 });
  });

  for (const [status, expected] of [
    [500, '502'],
    [503, '503'],
    [429, '503'],
  ] as const) {
    it(`answering ${status}: ${expected} for misses, cached tokens 200, recovers`, async () => {
      const r = await runFaultLoop(env, behaviourFault(`token service ${status}`, `status:${status}`));
      await checkFault(env, r, {
        allowed: only([expected]),
        mustSee: [expected],
        boundMs: BOUND,
        recoverWithinMs: RECOVER,
      });
    });
  }

  it('malformed JSON: 502 for misses, cached tokens 200, recovers', async () => {
    const r = await runFaultLoop(env, behaviourFault('token service malformed JSON', 'bad-json'));
    await checkFault(env, r, {
      allowed: only(['502']),
      mustSee: ['502'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('an HTML error page: 502 for misses, cached tokens 200, recovers', async () => {
    const r = await runFaultLoop(env, behaviourFault('token service HTML page', 'html'));
    await checkFault(env, r, {
      allowed: only(['502']),
      mustSee: ['502'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });
});
