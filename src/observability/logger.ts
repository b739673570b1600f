import { type Logger, pino } from 'pino';

export type { Logger };

/**
 * JSON logger (pino). Header values that carry credentials are redacted at every depth we log
 * them; code must still never pass a token, JWT or secret to a log call — redaction is the
 * second line, not the first.
 */
export function createLogger(opts: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? process.env['LOG_LEVEL'] ?? 'info',
      base: { service: 'phantom-gateway' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'authorization',
          'cookie',
          'token',
          'jwt',
          'clientSecret',
          '*.authorization',
          '*.cookie',
          '*.token',
          '*.jwt',
          '*.clientSecret',
          'headers.authorization',
          'headers.cookie',
          'req.headers.authorization',
          'req.headers.cookie',
        ],
        censor: '[redacted]',
      },
      formatters: { level: (label) => ({ level: label }) },
    },
    opts.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

/** A logger that writes nothing (unit tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
