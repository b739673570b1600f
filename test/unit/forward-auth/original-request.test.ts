import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { claimHeaderValue } from '../../../src/forward-auth/forward-auth-app.ts';
import {
  type OriginalRequestOptions,
  readOriginalRequest,
} from '../../../src/forward-auth/original-request.ts';

/** A forward-auth call as node hands it over: the raw field list, a repeated field once per value. */
function call(method: string, url: string, headers: Record<string, string | string[]> = {}): IncomingMessage {
  // As node's parser leaves it: the raw field list, names in the caller's spelling.
  const rawHeaders = Object.entries(headers).flatMap(([k, v]) =>
    (Array.isArray(v) ? v : [v]).flatMap((x) => [k, x]),
  );
  return { method, url, rawHeaders } as unknown as IncomingMessage;
}

const HEADERS: OriginalRequestOptions = { path: '/auth', prefixMode: false };
const PREFIX: OriginalRequestOptions = { path: '/auth', prefixMode: true };

describe('readOriginalRequest: header mode', () => {
  it('reads Traefik forwardAuth headers (X-Forwarded-Method / -Uri; Host and Proto are not needed)', () => {
    const r = readOriginalRequest(
      call('GET', '/auth', {
        'X-Forwarded-Method': 'DELETE',
        'X-Forwarded-Uri': '/api/invoices/7?x=1',
        'X-Forwarded-Host': 'api.example.com',
        'X-Forwarded-Proto': 'https',
      }),
      HEADERS,
    );
    expect(r).toEqual({ kind: 'request', method: 'DELETE', uri: '/api/invoices/7?x=1', via: 'forwarded' });
  });

  it('reads nginx auth_request headers (X-Original-Method / -URI), whatever the call’s own method', () => {
    for (const own of ['GET', 'POST', 'HEAD', 'PATCH']) {
      expect(
        readOriginalRequest(
          call(own, '/auth', { 'X-Original-Method': 'PUT', 'X-Original-URI': '/api/x' }),
          HEADERS,
        ),
      ).toEqual({ kind: 'request', method: 'PUT', uri: '/api/x', via: 'original' });
    }
  });

  it('ignores the query string of the call itself', () => {
    const r = readOriginalRequest(
      call('GET', '/auth?from=nginx', { 'X-Original-Method': 'GET', 'X-Original-URI': '/api/x' }),
      HEADERS,
    );
    expect(r).toMatchObject({ kind: 'request', uri: '/api/x' });
  });

  it('accepts both families when they agree', () => {
    const r = readOriginalRequest(
      call('GET', '/auth', {
        'X-Forwarded-Method': 'GET',
        'X-Forwarded-Uri': '/api/x',
        'X-Original-Method': 'GET',
        'X-Original-URI': '/api/x',
      }),
      HEADERS,
    );
    expect(r).toEqual({ kind: 'request', method: 'GET', uri: '/api/x', via: 'forwarded' });
  });

  it.each([
    [
      'a client-added X-Forwarded-Uri through nginx',
      { 'X-Forwarded-Uri': '/status', 'X-Original-Method': 'GET', 'X-Original-URI': '/api/admin' },
      'X-Forwarded-Uri and X-Original-URI name different URIs',
    ],
    [
      'a client-added X-Original-Method through Traefik',
      { 'X-Forwarded-Method': 'POST', 'X-Forwarded-Uri': '/api/x', 'X-Original-Method': 'GET' },
      'X-Forwarded-Method and X-Original-Method name different methods',
    ],
  ])('refuses two families that disagree (%s)', (_what, headers, why) => {
    expect(readOriginalRequest(call('GET', '/auth', headers), HEADERS)).toEqual({ kind: 'invalid', why });
  });

  it.each([
    [{ 'X-Forwarded-Method': 'GET' }, 'does not name the original URI (X-Forwarded-Uri or X-Original-URI)'],
    [
      { 'X-Original-URI': '/api/x' },
      'does not name the original method (X-Forwarded-Method or X-Original-Method)',
    ],
    [{}, 'does not name the original URI'],
    [
      { 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': ['/a', '/b'] },
      'more than one X-Forwarded-Uri header',
    ],
    [
      { 'X-Original-Method': ['GET', 'GET'], 'X-Original-URI': '/a' },
      'more than one X-Original-Method header',
    ],
    [{ 'X-Original-Method': 'GET', 'X-Original-URI': ['/a', '/a'] }, 'more than one X-Original-URI header'],
    [{ 'X-Forwarded-Method': 'get', 'X-Forwarded-Uri': '/a' }, 'the original method is not an HTTP method'],
    [
      { 'X-Forwarded-Method': 'GET /a', 'X-Forwarded-Uri': '/a' },
      'the original method is not an HTTP method',
    ],
    [
      { 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': 'http://evil/a' },
      'the original URI must start with /',
    ],
    [{ 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': '' }, 'the original URI must start with /'],
  ])('refuses an unusable call %j', (headers, why) => {
    const r = readOriginalRequest(call('GET', '/auth', headers), HEADERS);
    expect(r.kind).toBe('invalid');
    expect((r as { why: string }).why).toContain(why);
  });

  it('answers 404 for every other path, and for /auth/… without prefix mode', () => {
    for (const url of ['/', '/authz', '/auth/', '/auth/api/x', '/other?x=/auth', '/AUTH']) {
      expect(
        readOriginalRequest(
          call('GET', url, { 'X-Original-Method': 'GET', 'X-Original-URI': '/a' }),
          HEADERS,
        ),
      ).toEqual({
        kind: 'not-found',
      });
    }
  });
});

describe('readOriginalRequest: prefix mode (Envoy ext_authz HTTP, path_prefix)', () => {
  it('takes the call’s own method and the rest of its path and query', () => {
    expect(readOriginalRequest(call('PATCH', '/auth/api/invoices/7?x=1&y=2'), PREFIX)).toEqual({
      kind: 'request',
      method: 'PATCH',
      uri: '/api/invoices/7?x=1&y=2',
      via: 'path',
    });
    expect(readOriginalRequest(call('GET', '/auth/'), PREFIX)).toMatchObject({ uri: '/' });
  });

  it('never reads the original-request headers for a prefixed call (the path is authoritative)', () => {
    const r = readOriginalRequest(
      call('GET', '/auth/api/admin', { 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': '/status' }),
      PREFIX,
    );
    expect(r).toEqual({ kind: 'request', method: 'GET', uri: '/api/admin', via: 'path' });
  });

  it('keeps header mode on the exact path and 404 for look-alike prefixes', () => {
    expect(
      readOriginalRequest(
        call('GET', '/auth', { 'X-Original-Method': 'GET', 'X-Original-URI': '/a' }),
        PREFIX,
      ),
    ).toMatchObject({ kind: 'request', via: 'original' });
    expect(readOriginalRequest(call('GET', '/authx/api'), PREFIX)).toEqual({ kind: 'not-found' });
    expect(readOriginalRequest(call('GET', '/api/auth/x'), PREFIX)).toEqual({ kind: 'not-found' });
  });

  it('works with a multi-segment prefix', () => {
    expect(
      readOriginalRequest(call('GET', '/ext/authz/api/x'), { path: '/ext/authz', prefixMode: true }),
    ).toMatchObject({
      uri: '/api/x',
    });
  });
});

describe('claimHeaderValue', () => {
  it.each([
    ['alice', 'alice'],
    [42, '42'],
    [1.5, '1.5'],
    [['admin', 'ops'], 'admin ops'],
    [['a', 7], 'a 7'],
  ])('%j → %j', (claim, value) => {
    expect(claimHeaderValue(claim)).toBe(value);
  });

  it.each([
    [undefined],
    [null],
    [true],
    [{ a: 1 }],
    [['a', { b: 1 }]],
    [['a', true]],
    [[]],
    [''],
    [Number.NaN],
    [Number.POSITIVE_INFINITY],
    ['line\r\nX-Injected: 1'],
    ['tab\there'],
    ['Zoë'],
    ['x'.repeat(4097)],
  ])('%j → no header', (claim) => {
    expect(claimHeaderValue(claim)).toBeUndefined();
  });
});
