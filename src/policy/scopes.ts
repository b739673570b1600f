import type { ScopeRule } from '../config/schema.ts';

/** A route's scope rule in normal form: `all` = every scope needed, `any` = one of them. */
export interface RequiredScopes {
  mode: 'all' | 'any';
  scopes: readonly string[];
}

/** Normalises the three spellings of SPEC §3 (`[a, b]`, `{allOf}`, `{anyOf}`). */
export function normaliseScopeRule(rule: ScopeRule): RequiredScopes {
  if (Array.isArray(rule)) return { mode: 'all', scopes: [...rule] };
  if ('anyOf' in rule) return { mode: 'any', scopes: [...rule.anyOf] };
  return { mode: 'all', scopes: [...rule.allOf] };
}

/**
 * The scopes a JWT grants: `scope` as a space-separated string (RFC 8693 §4.2, RFC 9068 §2.2.3)
 * or an array, and `scp` as an array or string (common in other servers). Other shapes grant none.
 */
export function grantedScopes(claims: Record<string, unknown>): Set<string> {
  const out = new Set<string>();
  for (const name of ['scope', 'scp'] as const) {
    const v = claims[name];
    if (typeof v === 'string') {
      for (const s of v.split(' ')) if (s !== '') out.add(s);
    } else if (Array.isArray(v)) {
      for (const s of v) if (typeof s === 'string' && s !== '') out.add(s);
    }
  }
  return out;
}

/** True when the granted set satisfies the rule. */
export function satisfies(granted: ReadonlySet<string>, required: RequiredScopes): boolean {
  return required.mode === 'all'
    ? required.scopes.every((s) => granted.has(s))
    : required.scopes.some((s) => granted.has(s));
}
