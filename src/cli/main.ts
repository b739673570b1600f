import { parseArgs } from 'node:util';
import { serve } from '../main.ts';
import { runValidate } from './validate.ts';

const USAGE = `usage: phantom-gateway <command> [--config FILE]

commands:
  serve     run the gateway (default config: config/gateway.yaml)
  validate  check a config file, print every problem with its path; exit 0 valid, 1 invalid
  demo      run a development token service, two sample services and the gateway in one process
`;

/** The `phantom-gateway` command line (SPEC §2). Returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 1 : 0;
  }
  let values: { config?: string | undefined };
  try {
    ({ values } = parseArgs({
      args: rest,
      options: { config: { type: 'string', short: 'c' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    return 1;
  }
  const configFile = values.config ?? 'config/gateway.yaml';
  switch (command) {
    case 'serve':
      return serve(configFile);
    case 'validate':
      return runValidate(configFile, {
        stdout: (s) => process.stdout.write(s),
        stderr: (s) => process.stderr.write(s),
      });
    case 'demo': {
      const { runDemo } = await import('../demo/run-demo.ts');
      return runDemo();
    }
    default:
      process.stderr.write(`unknown command "${command}"\n${USAGE}`);
      return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // serve/demo resolve after shutdown; let pending log writes flush, then exit.
    setTimeout(() => process.exit(code), 50).unref();
  },
  (err) => {
    process.stderr.write(`fatal: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(2);
  },
);
