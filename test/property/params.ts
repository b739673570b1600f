import type { Parameters } from 'fast-check';

/**
 * fast-check run parameters for this folder: a fixed number of runs per property (the whole
 * project stays well under a minute) and a random seed, printed with the shrunk counterexample
 * on failure. Replay a failure with `PROPERTY_SEED=<seed> vitest run --project property`; search
 * longer with `PROPERTY_RUNS_FACTOR=20`.
 */
export function runs<T>(numRuns: number, extra: Parameters<T> = {}): Parameters<T> {
  const seed = process.env['PROPERTY_SEED'];
  const factor = Number(process.env['PROPERTY_RUNS_FACTOR'] ?? '1');
  return {
    numRuns: Math.max(1, Math.round(numRuns * (Number.isFinite(factor) && factor > 0 ? factor : 1))),
    ...(seed === undefined ? {} : { seed: Number(seed) }),
    ...extra,
  };
}
