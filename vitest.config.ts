import { defineConfig } from 'vitest/config';

/** Load tests keep both cores busy for a minute or more: they run alone, after everything else. */
const LOAD_TESTS = ['test/integration/cluster/token-flood.test.ts'];

export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    // The whole-run leak check: every test file records the secrets it issued and the gateway
    // output it saw (test/helpers/leak-registry.ts); the leak-check project reads them last.
    globalSetup: ['./test/leak-check/global-setup.ts'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          setupFiles: ['./test/leak-check/setup.ts'],
          testTimeout: 10_000,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          // fast-check properties (fixed numRuns each; the seed of a failure is printed to replay it).
          name: 'property',
          include: ['test/property/**/*.test.ts'],
          setupFiles: ['./test/leak-check/setup.ts'],
          testTimeout: 30_000,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          setupFiles: ['./test/leak-check/setup.ts'],
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
          name: 'security',
          include: ['test/security/**/*.test.ts'],
          setupFiles: ['./test/leak-check/setup.ts'],
          testTimeout: 30_000,
          hookTimeout: 60_000,
          // Each file starts its own token service stub, recording upstream and gateway process.
          fileParallelism: true,
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          // Faults injected under a steady request loop (real gateway, redis-server, stubs).
          name: 'faults',
          include: ['test/faults/**/*.test.ts'],
          setupFiles: ['./test/leak-check/setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          fileParallelism: true,
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'load',
          include: LOAD_TESTS,
          setupFiles: ['./test/leak-check/setup.ts'],
          testTimeout: 240_000,
          hookTimeout: 60_000,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
      {
        test: {
          name: 'leak-check',
          include: ['test/leak-check/**/*.test.ts'],
          testTimeout: 120_000,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
