import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LEAK_DIR } from '../helpers/leak-registry.ts';

/**
 * After the whole suite (this project runs last): every opaque token, JWT, client secret and key
 * any test file handed out (test/helpers/leak-registry.ts) is searched for in the output of every
 * gateway process any test file ran — every log line of the run. Expected: none.
 * Only meaningful after the other projects: run by `npm test` (vitest's project order).
 */

interface Record_ {
  file: string;
  secrets: string[];
  outputs: string[];
}

function readRecords(): Record_[] {
  let names: string[];
  try {
    names = readdirSync(LEAK_DIR).filter((n) => n.endsWith('.json'));
  } catch {
    names = [];
  }
  return names.map((n) => JSON.parse(readFileSync(join(LEAK_DIR, n), 'utf8')) as Record_);
}

/** Every run of token characters (base64url, `.`, `~`, `+`, `/`, `=`) in `text`, and each `.`-separated part. */
function tokenRuns(text: string, into: Set<string>): void {
  for (const m of text.matchAll(/[A-Za-z0-9_\-.~+/=]{16,}/g)) {
    into.add(m[0]);
    if (m[0].includes('.')) for (const part of m[0].split('.')) if (part.length >= 16) into.add(part);
  }
}

describe('the whole test run', () => {
  const records = readRecords();
  const secrets = new Map<string, string>();
  for (const r of records) for (const s of r.secrets) if (!secrets.has(s)) secrets.set(s, r.file);
  const outputs = records.flatMap((r) => r.outputs.map((text) => ({ file: r.file, text })));

  it('recorded what it handed out and what the gateways printed', () => {
    // A full `npm test` issues thousands of tokens and runs well over a hundred gateway processes;
    // far fewer means the recording broke (or this file ran alone), not that nothing leaked.
    expect(records.length, `no records in ${LEAK_DIR}: run the whole suite (npm test)`).toBeGreaterThan(10);
    expect(secrets.size).toBeGreaterThan(500);
    expect(outputs.length).toBeGreaterThan(50);
    expect(outputs.reduce((a, o) => a + o.text.length, 0)).toBeGreaterThan(1_000_000);
  });

  it('never printed a token, JWT, client secret or key in any gateway output', () => {
    const leaks: string[] = [];
    const tokenLike = /^[A-Za-z0-9_\-.~+/=]+$/;
    // One pass per test file: every token-like run of all its outputs in one set (thousands of
    // error responses and whole Redis dumps: a per-output pass times every secret took minutes).
    for (const r of records) {
      const runs = new Set<string>();
      for (const text of r.outputs) tokenRuns(text, runs);
      const others = [...secrets.keys()].filter((x) => !tokenLike.test(x));
      const all = others.length > 0 ? r.outputs.join('\n') : '';
      for (const [secret, issuedIn] of secrets) {
        const found = tokenLike.test(secret) ? runs.has(secret) : all.includes(secret);
        if (found)
          leaks.push(`${secret.slice(0, 6)}… (issued in ${issuedIn}) printed by a gateway of ${r.file}`);
      }
    }
    expect(leaks).toEqual([]);
  });

  it('would find a leak: a recorded secret inside a log line is detected', () => {
    // The search itself, on a synthetic line shaped like the gateway's (proves it can fail).
    const [secret] = secrets.keys();
    const runs = new Set<string>();
    tokenRuns(`{"level":"info","msg":"request","note":"Bearer ${secret}","x":1}`, runs);
    expect(runs.has(secret!)).toBe(true);
  });
});
