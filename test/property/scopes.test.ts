import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ScopeRule, ScopeRuleSchema } from '../../src/config/schema.ts';
import { grantedScopes, normaliseScopeRule, satisfies } from '../../src/policy/scopes.ts';
import { runs } from './params.ts';

// SPEC §4 stage 5 against a set-based reference model: granted scopes come from `scope` / `scp`
// (a string is split on SP only, RFC 6749 §3.3; an array contributes its non-empty strings;
// anything else grants nothing), a list or allOf needs every scope, anyOf needs one.

/** A small alphabet so that granted and required scopes overlap often; some names are Object.prototype's. */
const scopeName = fc.constantFrom(
  'read',
  'write',
  'admin',
  'invoice_read',
  'a',
  'b',
  'READ',
  'x:y',
  'https://api.example.com/scope',
  'constructor',
  '__proto__',
  'toString',
);

/** Separators between scopes in a `scope` string: SP separates; tab, LF, NBSP, ideographic space do not. */
const whitespace = fc
  .array(fc.constantFrom(' ', ' ', ' ', '\t', '\n', '\r', '\u00a0', '\u3000'), { minLength: 0, maxLength: 3 })
  .map((parts) => parts.join(''));

const scopeString = fc
  .tuple(whitespace, fc.array(fc.tuple(scopeName, whitespace), { maxLength: 6 }))
  .map(([lead, items]) => lead + items.map(([s, w]) => s + w).join(''));

/** Claim values that are not scopes at all (JSON can carry any of them). */
const oddValue = fc.oneof(
  fc.constant(null),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.jsonValue({ maxDepth: 2 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
  fc.constant({ split: 'not a function' }),
);

const scopeArray = fc.array(fc.oneof(scopeName, scopeName, fc.constant(''), scopeString, oddValue), {
  maxLength: 6,
});

const claimValue = fc.oneof(scopeString, scopeArray, oddValue);

/** Claims as a verified JWT's payload would parse: `scope` / `scp` present or not, plus other members. */
const claims = fc
  .record(
    {
      scope: claimValue,
      scp: claimValue,
      sub: fc.string({ maxLength: 8 }),
      scopes: scopeArray, // a look-alike that must grant nothing
    },
    { requiredKeys: [] },
  )
  .map((c) => JSON.parse(JSON.stringify(c)) as Record<string, unknown>);

const rule: fc.Arbitrary<ScopeRule> = fc.oneof(
  fc.array(scopeName, { minLength: 1, maxLength: 4 }),
  fc.record({ anyOf: fc.array(scopeName, { minLength: 1, maxLength: 4 }) }),
  fc.record({ allOf: fc.array(scopeName, { minLength: 1, maxLength: 4 }) }),
);

/** The reference: what a token grants, computed independently of src/policy/scopes.ts. */
function referenceGranted(c: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const name of ['scope', 'scp']) {
    if (!Object.hasOwn(c, name)) continue;
    const v = c[name];
    const items = typeof v === 'string' ? v.split(/ /) : Array.isArray(v) ? v : [];
    for (const item of items) if (typeof item === 'string' && item.length > 0) out.push(item);
  }
  return out;
}

function referenceAllows(granted: readonly string[], r: ScopeRule): boolean {
  const has = (s: string) => granted.includes(s);
  if (Array.isArray(r)) return r.every(has);
  if ('anyOf' in r) return r.anyOf.some(has);
  return r.allOf.every(has);
}

describe('scope evaluation (property)', () => {
  it('grantedScopes equals the reference set, whatever the claim types', () => {
    fc.assert(
      fc.property(claims, (c) => {
        const got = grantedScopes(c);
        expect([...got].sort()).toEqual([...new Set(referenceGranted(c))].sort());
        expect(got.has('')).toBe(false);
      }),
      runs(3000),
    );
  });

  it('satisfies(grantedScopes(claims), normalise(rule)) equals the reference model', () => {
    fc.assert(
      fc.property(claims, rule, (c, r) => {
        ScopeRuleSchema.parse(r); // only rules the configuration accepts
        expect(satisfies(grantedScopes(c), normaliseScopeRule(r))).toBe(
          referenceAllows(referenceGranted(c), r),
        );
      }),
      runs(5000),
    );
  });

  it('a rule is satisfied by exactly its own scopes (list/allOf) or by any one of them (anyOf)', () => {
    fc.assert(
      fc.property(rule, fc.boolean(), (r, asArray) => {
        const n = normaliseScopeRule(r);
        const claim = asArray ? { scp: [...n.scopes] } : { scope: n.scopes.join(' ') };
        expect(satisfies(grantedScopes(claim), n)).toBe(true);
        // Without one of its scopes (every occurrence): an all-rule fails, anyOf needs another one left.
        const without = n.scopes.filter((s) => s !== n.scopes[0]);
        expect(satisfies(new Set(without), n)).toBe(n.mode === 'any' && without.length > 0);
      }),
      runs(2000),
    );
  });
});
