import { describe, expect, it } from 'vitest';
import { challengeFor } from '../../../src/errors/error-handler.ts';
import {
  InsufficientScope,
  InvalidRequest,
  InvalidToken,
  MethodNotAllowed,
  TokenMissing,
  TokenServiceUnavailable,
} from '../../../src/errors/gateway-errors.ts';

describe('challengeFor (RFC 6750 §3)', () => {
  it('gives a bare challenge when no credentials were sent', () => {
    expect(challengeFor(new TokenMissing(), 'api')).toBe('Bearer realm="api"');
  });
  it('names invalid_request for a malformed credential', () => {
    expect(challengeFor(new InvalidRequest('token_malformed', 'x'), 'api')).toBe(
      'Bearer error="invalid_request"',
    );
  });
  it('sends no challenge for a rejected path', () => {
    expect(challengeFor(new InvalidRequest('path_rejected', 'x'), 'api')).toBeUndefined();
  });
  it('names invalid_token with a description', () => {
    expect(challengeFor(new InvalidToken('token_inactive'), 'api')).toBe(
      'Bearer realm="api", error="invalid_token", error_description="The access token is invalid or expired"',
    );
  });
  it('lists every scope of the rule for insufficient_scope', () => {
    expect(challengeFor(new InsufficientScope(['a', 'b']), 'r')).toBe(
      'Bearer realm="r", error="insufficient_scope", scope="a b"',
    );
  });
  it('sends none for non-auth errors', () => {
    expect(challengeFor(new MethodNotAllowed(['GET']), 'api')).toBeUndefined();
    expect(challengeFor(new TokenServiceUnavailable('unreachable'), 'api')).toBeUndefined();
  });
  it('uses 503 + Retry-After when the token service could not be asked, 502 when it answered badly', () => {
    const a = new TokenServiceUnavailable('unreachable', undefined, 7);
    expect([a.status, a.headers['Retry-After']]).toEqual([503, '7']);
    const b = new TokenServiceUnavailable('bad_answer');
    expect([b.status, b.headers['Retry-After']]).toEqual([502, undefined]);
  });
});
