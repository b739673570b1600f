import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/**
 * The whole-run leak check (issues 7 and 8): every test file records the secrets it handed out —
 * opaque tokens, JWTs, client secrets and keys — and the output of every gateway process it ran;
 * after the whole suite, test/leak-check/leaks.test.ts searches every output for every secret.
 * Records go to tmp/leak-check/ (one JSON file per test file; cleared when a run starts).
 */

export const LEAK_DIR = resolve(import.meta.dirname, '../../tmp/leak-check');

const secrets = new Set<string>();
const outputs: string[] = [];
/** Only tests record (the bench and the soak use the same helpers for millions of tokens). */
const RECORDING = process.env['VITEST'] !== undefined;

/** A value that must never appear in any log line or output (shorter values are too common to search). */
export function recordSecret(value: string | undefined | null): void {
  if (RECORDING && typeof value === 'string' && value.length >= 16) secrets.add(value);
}

/** Output of a gateway (or CLI) process, to be searched at the end of the run. */
export function recordOutput(text: string): void {
  if (RECORDING && text.length > 0) outputs.push(text);
}

/** Writes this test file's records (called once per file, after its tests). */
export function flushLeakRecords(file: string): void {
  if (secrets.size === 0 && outputs.length === 0) return;
  mkdirSync(LEAK_DIR, { recursive: true });
  const name = `${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.json`;
  writeFileSync(join(LEAK_DIR, name), JSON.stringify({ file, secrets: [...secrets], outputs }));
  secrets.clear();
  outputs.length = 0;
}
