import { describe, expect, it } from 'vitest';
import { rejectPath } from '../../../src/routing/check-path.ts';

describe('rejectPath (SPEC §4 stage 2)', () => {
  it.each([
    '/api/invoices',
    '/api/invoices/7',
    '/',
    '/api/a%20b',
    '/api/%C3%A9t%C3%A9',
    '/api/x;y',
    '/api/.well',
    '/api/a..b',
    '/api/%252F',
  ])('accepts the ordinary path %s', (p) => {
    expect(rejectPath(p)).toBeUndefined();
  });

  it.each([
    ['/api/%2F', 'encoded slash'],
    ['/api/%2f', 'encoded slash, lower case'],
    ['/api/%2E%2E/admin', 'encoded dots'],
    ['/api/%2e', 'encoded dot, lower case'],
    ['/api/%5C', 'encoded backslash'],
    ['/api/%5c', 'encoded backslash, lower case'],
    ['/api\\admin', 'backslash'],
    ['/api/../admin', 'dot-dot segment'],
    ['/api/..', 'trailing dot-dot segment'],
    ['/api/./x', 'dot segment'],
    ['/api/.', 'trailing dot segment'],
    ['/api//x', 'empty segment'],
    ['//api', 'leading double slash'],
    ['/api/\u0000', 'raw NUL'],
    ['/api/\u0001x', 'raw control character'],
    ['/api/\u007f', 'raw DEL'],
    ['/api/%00', 'encoded NUL'],
    ['/api/%1f', 'encoded control character'],
    ['/api/%7F', 'encoded DEL'],
    ['/api/%zz', 'malformed percent-encoding'],
    ['/api/%4', 'truncated percent-encoding'],
    ['/api/%69nvoices', 'encoded unreserved letter'],
    ['http://evil/api', 'absolute-form target'],
    ['*', 'asterisk-form target'],
    ['', 'empty target'],
    ['/api/é', 'raw non-ASCII'],
  ])('rejects %s (%s)', (p) => {
    expect(rejectPath(p)).toBeTypeOf('string');
  });
});

describe('rejectsFragmentInRequestTarget (regression: /api/admin#x was matched by /api)', () => {
  // Found by the property suite: a `/api` route (scope read) matched `/api/admin#x`, forwarded
  // byte for byte, and an Express upstream served it as /api/admin (scope admin).
  it.each(['/api/admin#x', '/#', '/api#/../admin', '/api/reports/x#frag', '/api#'])('%s is rejected', (p) => {
    expect(rejectPath(p)).toBe('a fragment (#) is not part of a request target');
  });
  it('an encoded # (%23) is data, not a fragment: accepted', () => {
    expect(rejectPath('/api/a%23b')).toBeUndefined();
  });
});
