import { afterAll, expect } from 'vitest';
import { flushLeakRecords } from '../helpers/leak-registry.ts';

// Every test file: after its tests, hand its issued secrets and process outputs to the leak check.
afterAll(() => {
  flushLeakRecords(expect.getState().testPath ?? 'unknown');
});
