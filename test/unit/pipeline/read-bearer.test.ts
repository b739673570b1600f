import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { MAX_TOKEN_BYTES, readBearer } from '../../../src/pipeline/extract-token.ts';

/** A request as node's parser leaves it: the raw field list, names in the client's spelling. */
function req(url: string, ...authorization: string[]): IncomingMessage {
  return {
    url,
    rawHeaders: [
      'Host',
      'api.example',
      ...authorization.flatMap((a, i) => [i % 2 === 0 ? 'Authorization' : 'AUTHORIZATION', a]),
      'X-Authorization',
      'Bearer not-this-one',
    ],
  } as unknown as IncomingMessage;
}

describe('readBearer (RFC 6750 §2.1, header only)', () => {
  it('reads a bearer token', () => {
    expect(readBearer(req('/x', 'Bearer abc.DEF-_~+/='))).toEqual({ kind: 'token', token: 'abc.DEF-_~+/=' });
  });
  it('treats the scheme case-insensitively', () => {
    expect(readBearer(req('/x', 'bEaReR tok'))).toEqual({ kind: 'token', token: 'tok' });
  });
  it('accepts several spaces after the scheme', () => {
    expect(readBearer(req('/x', 'Bearer    tok'))).toEqual({ kind: 'token', token: 'tok' });
  });
  it('reports a missing header as missing', () => {
    expect(readBearer(req('/x')).kind).toBe('missing');
  });
  it.each(['Basic dXNlcjpwYXNz', 'Bearertoken', 'DPoP tok', 'Token tok'])(
    'reports another scheme (%s) as missing',
    (h) => {
      expect(readBearer(req('/x', h)).kind).toBe('missing');
    },
  );
  it.each([
    ['Bearer', 'empty credential'],
    ['Bearer ', 'empty credential with space'],
    ['Bearer\ttok', 'tab instead of space'],
    ['Bearer tok extra', 'something after the credential'],
    ['Bearer tok,tok2', 'a list'],
    ['Bearer to"k', 'a character outside b64token'],
    ['Bearer =abc', 'padding first'],
    ['Bearer ab=c', 'padding in the middle'],
    [`Bearer ${'a'.repeat(MAX_TOKEN_BYTES + 1)}`, 'a credential over 4096 bytes'],
  ])('reports %j as malformed (%s)', (h) => {
    expect(readBearer(req('/x', h)).kind).toBe('malformed');
  });
  it('accepts a credential of exactly 4096 bytes', () => {
    expect(readBearer(req('/x', `Bearer ${'a'.repeat(MAX_TOKEN_BYTES)}`)).kind).toBe('token');
  });
  it('refuses two Authorization headers', () => {
    expect(readBearer(req('/x', 'Bearer a', 'Bearer b')).kind).toBe('malformed');
  });
  it('refuses an access_token query parameter with or without the header', () => {
    expect(readBearer(req('/x?access_token=abc')).kind).toBe('malformed');
    expect(readBearer(req('/x?a=1&access_token=abc', 'Bearer abc')).kind).toBe('malformed');
    expect(readBearer(req('/x?access%5Ftoken=abc')).kind).toBe('malformed');
  });
  it('ignores other query parameters', () => {
    expect(readBearer(req('/x?token=1&access_token_hint=2', 'Bearer t')).kind).toBe('token');
  });
});
