import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/load-config.ts';

const DOC = join(import.meta.dirname, '../../../docs/token-services.md');

/** Every ```yaml block of docs/token-services.md with the product heading (##) it appears under. */
function snippets(): Array<{ product: string; yaml: string }> {
  const out: Array<{ product: string; yaml: string }> = [];
  let product = '';
  const lines = readFileSync(DOC, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith('## ')) product = line.slice(3).trim();
    if (line.trim() === '```yaml') {
      const end = lines.indexOf('```', i + 1);
      out.push({ product, yaml: lines.slice(i + 1, end).join('\n') });
      i = end;
    }
  }
  return out;
}

describe('docs/token-services.md', () => {
  const all = snippets();

  it('has a snippet for each product the issue names', () => {
    const products = new Set(all.map((s) => s.product));
    for (const p of [
      'Curity Identity Server',
      'Keycloak',
      'oidc-provider (Node.js) and other RFC 7662 servers',
      'Ory Hydra',
      'Generic RFC 7662 server',
    ]) {
      expect(products, p).toContain(p);
    }
    // Every client authentication method and every mode appears in at least one snippet.
    const text = all.map((s) => s.yaml).join('\n');
    for (const m of ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth']) {
      expect(text).toContain(`clientAuth: ${m}`);
    }
    for (const m of ['accept-jwt', 'claim', 'mint']) expect(text).toContain(`mode: ${m}`);
    expect(text).toContain('introspectionFormat: jwt');
  });

  it.each(all.map((s, i) => [`${s.product} #${i + 1}`, s.yaml] as const))(
    '%s is a valid configuration for the real loader',
    (_name, yaml) => {
      const env = { INTROSPECTION_CLIENT_SECRET: 'from-the-environment' };
      const { config, warnings } = parseConfigText(yaml, env, 'snippet.yaml');
      expect(config.routes.length).toBeGreaterThan(0);
      // No literal secrets in the documentation.
      expect(warnings.filter((w) => w.includes('written literally'))).toEqual([]);
    },
  );
});
