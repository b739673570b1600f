import { defineConfig } from 'vitest/config';

/** Load tests keep both cores busy for a minute or more: they run alone, after everything else. */
const LOAD_TESTS = ['test/integration/cluster/token-flood.test.ts'];

export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 10_000,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          exclude: LOAD_TESTS,
          testTimeout: 30_000,
          hookTimeout: 60_000,
          // Each file starts its own redis-server, token service and gateway process on free ports.
          fileParallelism: true,
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'load',
          include: LOAD_TESTS,
          testTimeout: 240_000,
          hookTimeout: 60_000,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
