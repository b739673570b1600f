// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runValidate } from '../../../src/cli/validate.ts';

const dir = mkdtempSync(join(tmpdir(), 'phantom-validate-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** Runs `validate` and collects what it wrote, split into lines. */
function validate(file: string): { code: number; stdout: string[]; stderr: string[] } {
  let stdout = '';
  let stderr = '';
  const code = runValidate(file, { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  const lines = (s: string) => (s === '' ? [] : s.replace(/\n$/, '').split('\n'));
  return { code, stdout: lines(stdout), stderr: lines(stderr) };
}

const VALID = `
tokenService:
  issuer: https://login.example.com
  clientId: api-gateway
  clientSecret: not-from-env
routes:
  - name: invoices
    match: { pathPrefix: /api/invoices }
    upstream: http://invoices:3000
    scopes: [invoice_read]
  - name: status
    match: { pathPrefix: /status }
    upstream: http://status:3000
    auth: none
`;

describe('phantom-gateway validate', () => {
  it('exits 0 for a valid file, printing the route count on stdout and the warnings on stderr', () => {
    const file = writeConfig('valid.yaml', VALID);
    expect(validate(file)).toEqual({
      code: 0,
      stdout: [`${file}: configuration is valid (2 routes)`],
      stderr: [
        'warning: tokenService.clientSecret is written literally in the config file; use ${ENV_VAR} instead',
      ],
    });
  });

  it('exits 1 for an invalid file, printing the problem count and every problem with its path on stderr', () => {
    const file = writeConfig(
      'invalid.yaml',
      `${VALID.replace('http://invoices:3000', 'invoices:3000')}    bogus: true\njwt:\n  clockSkewSeconds: 61\n`,
    );
    expect(validate(file)).toEqual({
      code: 1,
      stdout: [],
      stderr: [
        `${file}: 3 problems`,
        'jwt.clockSkewSeconds: must be at most 60',
        'routes[0].upstream: must be an absolute http(s) URL',
        'routes[1]: unknown key "bogus"',
        'warning: tokenService.clientSecret is written literally in the config file; use ${ENV_VAR} instead',
      ],
    });
  });

  it('exits 1 for a missing file, with one problem', () => {
    const file = join(dir, 'nope.yaml');
    expect(validate(file)).toEqual({
      code: 1,
      stdout: [],
      stderr: [`${file}: 1 problem`, `${file}: cannot read (ENOENT)`],
    });
  });
});
