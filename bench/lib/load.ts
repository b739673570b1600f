import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { LoadSample, LoadSpec } from './load-worker.ts';
import { spawnTracked, stopProcess, waitForExit } from './procs.ts';

export type { LoadSample, LoadSpec } from './load-worker.ts';

const WORKER = resolve(import.meta.dirname, 'load-worker.ts');

let specCounter = 0;

/**
 * Runs one load measurement in a separate process (`node bench/lib/load-worker.ts`), pinned to
 * `loadCpus` when taskset exists. Bounded: the worker is killed if it overruns its duration by 30 s.
 */
export async function runLoad(
  spec: LoadSpec,
  opts: { loadCpus?: string; tmpDir: string },
): Promise<LoadSample> {
  const file = join(opts.tmpDir, `load-spec-${++specCounter}.json`);
  writeFileSync(file, JSON.stringify(spec));
  const child = spawnTracked(process.execPath, ['--disable-warning=ExperimentalWarning', WORKER, file], {
    name: 'load generator',
    cpus: opts.loadCpus,
    pipeStdout: true,
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const limitMs = spec.durationSeconds * 1000 + 30_000;
  if (!(await waitForExit(child, limitMs))) {
    await stopProcess(child, 1000);
    throw new Error(`load generator did not finish within ${limitMs} ms (${spec.url})`);
  }
  const line = out.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(line) as LoadSample;
  } catch {
    throw new Error(`load generator exited with code ${child.exitCode} and no result (${spec.url})`);
  }
}
