import { describe, expect, it } from 'vitest';
import { ConfigSchema } from '../../../src/config/schema.ts';
import { RouteTable, upstreamPath } from '../../../src/routing/route-table.ts';

function table(routes: unknown[]) {
  return new RouteTable(
    ConfigSchema.parse({ tokenService: { issuer: 'http://127.0.0.1:1', clientId: 'gw' }, routes }),
  );
}

const routes = [
  {
    name: 'inv-read',
    match: { pathPrefix: '/api/invoices', methods: ['GET', 'HEAD'] },
    upstream: 'http://inv:3000',
    scopes: ['r'],
  },
  {
    name: 'inv-write',
    match: { pathPrefix: '/api/invoices', methods: ['POST'] },
    upstream: 'http://inv:3000',
    scopes: ['w'],
  },
  { name: 'api', match: { pathPrefix: '/api' }, upstream: 'http://api:3000/base', scopes: ['a'] },
  { name: 'root', match: { pathPrefix: '/' }, upstream: 'http://www:80', auth: 'none' },
];

describe('RouteTable', () => {
  const t = table(routes);
  const name = (method: string, path: string) => {
    const m = t.match(method, path);
    return m.kind === 'route' ? m.route.name : m.kind;
  };

  it('matches the prefix itself and paths below it', () => {
    expect(name('GET', '/api/invoices')).toBe('inv-read');
    expect(name('GET', '/api/invoices/7')).toBe('inv-read');
    expect(name('GET', '/api/invoices/')).toBe('inv-read');
  });
  it('does not match a longer sibling name (/api/invoicesX)', () => {
    expect(name('GET', '/api/invoicesX')).toBe('api');
  });
  it('picks the longest matching prefix', () => {
    expect(name('GET', '/api/other')).toBe('api');
    expect(name('GET', '/elsewhere')).toBe('root');
  });
  it('picks the route of that prefix whose methods include the request method', () => {
    expect(name('POST', '/api/invoices/7')).toBe('inv-write');
  });
  it('answers method-not-allowed with the union of methods instead of falling back to a shorter prefix', () => {
    const m = t.match('DELETE', '/api/invoices/7');
    expect(m).toEqual({ kind: 'method-not-allowed', allow: ['GET', 'HEAD', 'POST'] });
  });
  it('is case-sensitive', () => {
    expect(name('GET', '/API/invoices')).toBe('root');
  });
  it('denies by default when no route matches', () => {
    const t2 = table([routes[0]]);
    expect(t2.match('GET', '/nothing').kind).toBe('no-route');
    expect(t2.match('GET', '/api').kind).toBe('no-route');
  });
});

describe('upstreamPath (SPEC §3 Upstream paths)', () => {
  const t = table([
    { name: 'a', match: { pathPrefix: '/api' }, upstream: 'http://svc/base', scopes: ['s'] },
    {
      name: 'b',
      match: { pathPrefix: '/strip' },
      upstream: 'http://svc/base',
      stripPrefix: true,
      scopes: ['s'],
    },
    { name: 'c', match: { pathPrefix: '/plain' }, upstream: 'http://svc', stripPrefix: true, scopes: ['s'] },
    { name: 'd', match: { pathPrefix: '/slash' }, upstream: 'http://svc/base/', scopes: ['s'] },
  ]);
  const route = (n: string) => t.routes.find((r) => r.name === n)!;
  it('appends the request path to the upstream path', () => {
    expect(upstreamPath(route('a'), '/api/x', '')).toBe('/base/api/x');
  });
  it('keeps the query string as received', () => {
    expect(upstreamPath(route('a'), '/api/x', '?a=1&b=%20')).toBe('/base/api/x?a=1&b=%20');
  });
  it('removes the prefix first with stripPrefix', () => {
    expect(upstreamPath(route('b'), '/strip/x', '')).toBe('/base/x');
  });
  it('maps exactly the prefix to /base/ or / with stripPrefix', () => {
    expect(upstreamPath(route('b'), '/strip', '')).toBe('/base/');
    expect(upstreamPath(route('c'), '/plain', '')).toBe('/');
  });
  it('does not double the slash of an upstream path ending in /', () => {
    expect(upstreamPath(route('d'), '/slash/x', '')).toBe('/base/slash/x');
  });
});
