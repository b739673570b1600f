import { describe, expect, it } from 'vitest';
import { grantedScopes, normaliseScopeRule, satisfies } from '../../../src/policy/scopes.ts';

describe('scopes', () => {
  it('reads a space-separated scope string', () => {
    expect([...grantedScopes({ scope: 'a  b c' })]).toEqual(['a', 'b', 'c']);
  });
  it('reads an scp array and string', () => {
    expect([...grantedScopes({ scp: ['a', 'b', 3] })]).toEqual(['a', 'b']);
    expect([...grantedScopes({ scp: 'x y' })]).toEqual(['x', 'y']);
  });
  it('grants nothing for a missing or odd claim', () => {
    expect(grantedScopes({}).size).toBe(0);
    expect(grantedScopes({ scope: 42 }).size).toBe(0);
  });
  it('a list means all of these', () => {
    const rule = normaliseScopeRule(['a', 'b']);
    expect(satisfies(new Set(['a', 'b', 'c']), rule)).toBe(true);
    expect(satisfies(new Set(['a']), rule)).toBe(false);
  });
  it('allOf means all of these', () => {
    const rule = normaliseScopeRule({ allOf: ['a', 'b'] });
    expect(satisfies(new Set(['b']), rule)).toBe(false);
    expect(satisfies(new Set(['a', 'b']), rule)).toBe(true);
  });
  it('anyOf means one of these is enough', () => {
    const rule = normaliseScopeRule({ anyOf: ['a', 'b'] });
    expect(satisfies(new Set(['b']), rule)).toBe(true);
    expect(satisfies(new Set(['c']), rule)).toBe(false);
  });
  it('does not treat a scope that merely contains the required one as granting it', () => {
    expect(
      satisfies(grantedScopes({ scope: 'invoice_read_all' }), normaliseScopeRule(['invoice_read'])),
    ).toBe(false);
  });
});
