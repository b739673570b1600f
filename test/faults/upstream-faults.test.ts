import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkFault,
  type FaultEnv,
  MARGIN_MS,
  ROUTE_TIMEOUT_MS,
  runFaultLoop,
  startFaultEnv,
  summaries,
} from './fault-loop.ts';

/**
 * Upstream faults under a steady loop (issue 8 part 2; SPEC §5): refused (its port closed) and
 * reset before answering → 502; reset after the status line → the client connection is cut (the
 * status line is gone already: never a second status); hanging or answering after more than
 * routes[].timeoutMs → 504 within that timeout; a large body streamed slowly → 200, complete.
 */

let env: FaultEnv;

beforeAll(async () => {
  env = await startFaultEnv();
}, 60_000);

afterAll(async () => {
  console.log(`upstream faults:\n  ${summaries.join('\n  ')}`);
  await env?.close();
});

const BOUND = ROUTE_TIMEOUT_MS + MARGIN_MS;
const RECOVER = ROUTE_TIMEOUT_MS + 500;
const behaviour = (name: string, b: typeof env.up.behaviour) => ({
  name,
  inject: () => {
    env.up.behaviour = b;
  },
  remove: () => {
    env.up.behaviour = 'echo';
  },
});

describe('upstream faults during a steady request loop', () => {
  it('refusing (its port closed): 502, recovers', async () => {
    const r = await runFaultLoop(
      env,
      { name: 'upstream refusing', inject: () => env.upRelay.refuse(), remove: () => env.upRelay.accept() },
      { path: '/gone/steady' },
    );
    await checkFault(env, r, {
      allowed: () => ['502'],
      mustSee: ['502'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('resetting before answering: 502, recovers', async () => {
    const r = await runFaultLoop(env, behaviour('upstream reset before the answer', 'reset'));
    await checkFault(env, r, {
      allowed: () => ['502'],
      mustSee: ['502'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('resetting mid-response: the client connection is cut after the status line, recovers', async () => {
    const r = await runFaultLoop(
      env,
      behaviour('upstream reset mid-response', { resetAfterBytes: 32 * 1024 }),
    );
    await checkFault(env, r, {
      allowed: () => ['200-cut'],
      mustSee: ['200-cut'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('hanging: 504 after routes[].timeoutMs, recovers', async () => {
    const r = await runFaultLoop(env, behaviour('upstream hanging', 'hang'));
    await checkFault(env, r, {
      allowed: () => ['504'],
      mustSee: ['504'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('answering later than routes[].timeoutMs: 504, recovers', async () => {
    const r = await runFaultLoop(
      env,
      behaviour('upstream slow past timeout', { slowMs: ROUTE_TIMEOUT_MS + 700 }),
    );
    await checkFault(env, r, {
      allowed: () => ['504'],
      mustSee: ['504'],
      boundMs: BOUND,
      recoverWithinMs: RECOVER,
    });
  });

  it('a large body streamed slowly (gaps below the timeout): 200 with the whole body', async () => {
    const bytes = 1024 * 1024;
    const chunkBytes = 64 * 1024;
    const everyMs = 40;
    const streamMs = (bytes / chunkBytes) * everyMs;
    const r = await runFaultLoop(
      env,
      behaviour('upstream slow large streamed body', { slowStream: { bytes, chunkBytes, everyMs } }),
    );
    const streamed = r.samples.filter((s) => s.phase === 'fault' && s.bodyBytes === bytes);
    expect(streamed.length).toBeGreaterThan(10);
    await checkFault(env, r, { allowed: () => [], boundMs: streamMs + BOUND, recoverWithinMs: 0 });
  });
});
