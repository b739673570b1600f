import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../../src/config/parse-config.ts';

/** The smallest valid configuration plus `extra`. */
function minimal(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tokenService: { issuer: 'https://login.example.com', clientId: 'api-gateway', clientSecret: 's3cret' },
    routes: [{ name: 'r', match: { pathPrefix: '/r' }, upstream: 'http://r:3000', scopes: ['s'] }],
    ...extra,
  };
}

describe('logging (config)', () => {
  it('leaves the subject out of access lines by default', () => {
    expect(parseConfig(minimal()).logging).toEqual({ includeSubject: false });
  });

  it('accepts includeSubject as a boolean or an ${ENV} "true"/"false"', () => {
    expect(parseConfig(minimal({ logging: { includeSubject: true } })).logging.includeSubject).toBe(true);
    expect(parseConfig(minimal({ logging: { includeSubject: 'true' } })).logging.includeSubject).toBe(true);
    expect(parseConfig(minimal({ logging: { includeSubject: 'false' } })).logging.includeSubject).toBe(false);
  });

  it('rejects unknown keys and non-boolean values', () => {
    for (const logging of [{ includeSub: true }, { includeSubject: 'yes' }, { includeSubject: 1 }]) {
      expect(() => parseConfig(minimal({ logging })), JSON.stringify(logging)).toThrow(ConfigError);
    }
  });
});
