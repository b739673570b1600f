import { loadConfig } from '../config/load-config.ts';
import { ConfigError } from '../config/parse-config.ts';

/** Where `validate` writes; each call receives whole lines, newline included. */
export interface ValidateOutput {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

/**
 * `phantom-gateway validate --config FILE` (SPEC §2): reads and checks the file exactly as `serve`
 * would, contacts nothing (no token service, no Redis).
 * Invalid: stderr gets `<file>: N problem(s)`, then each `path: message`, then `warning: …` lines.
 * Valid: `warning: …` lines on stderr, `<file>: configuration is valid (N routes)` on stdout.
 * @returns the exit code: 0 valid, 1 invalid.
 */
export function runValidate(file: string, out: ValidateOutput): number {
  const line = (write: (s: string) => void, text: string) => write(`${text}\n`);
  try {
    const { config, warnings } = loadConfig(file);
    for (const warning of warnings) line(out.stderr, `warning: ${warning}`);
    const n = config.routes.length;
    line(out.stdout, `${file}: configuration is valid (${n} route${n === 1 ? '' : 's'})`);
    return 0;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const n = err.problems.length;
    line(out.stderr, `${file}: ${n} problem${n === 1 ? '' : 's'}`);
    for (const problem of err.problems) line(out.stderr, problem);
    for (const warning of err.warnings) line(out.stderr, `warning: ${warning}`);
    return 1;
  }
}
