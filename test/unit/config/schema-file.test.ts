// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { generateConfigSchema, renderConfigSchema, SCHEMA_FILE } from '../../../scripts/generate-schema.ts';

type Node = { [key: string]: unknown };

/** Every schema node of the document, with its JSON pointer. */
function* nodes(node: unknown, pointer = '#'): Generator<[string, Node]> {
  if (typeof node !== 'object' || node === null) return;
  if (Array.isArray(node)) {
    for (const [i, child] of node.entries()) yield* nodes(child, `${pointer}/${i}`);
    return;
  }
  yield [pointer, node as Node];
  for (const [key, child] of Object.entries(node)) {
    if (key === 'default' || key === 'enum' || key === 'required') continue; // values, not schemas
    yield* nodes(child, `${pointer}/${key}`);
  }
}

function at(schema: Node, ...path: string[]): Node {
  let node: unknown = schema;
  for (const key of path) node = (node as Node)[key];
  return node as Node;
}

describe('config/gateway.schema.json', () => {
  it('is exactly what scripts/generate-schema.ts generates from the parser schema (run npm run schema)', () => {
    expect(readFileSync(SCHEMA_FILE, 'utf8')).toBe(renderConfigSchema());
  });

  it('forbids unknown keys on every object', () => {
    const objects = [...nodes(generateConfigSchema())].filter(([, node]) => node['type'] === 'object');
    expect(objects.length).toBeGreaterThan(10);
    for (const [pointer, node] of objects) {
      expect({ pointer, additionalProperties: node['additionalProperties'] }).toEqual({
        pointer,
        additionalProperties: false,
      });
    }
  });

  it('identifies itself', () => {
    const schema = generateConfigSchema();
    expect(schema['$schema']).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema['$id']).toEqual(expect.any(String));
    expect(schema['title']).toBe('phantom-gateway configuration');
    expect(schema['description']).toEqual(expect.any(String));
  });

  it('describes a port as an integer in range with its default, or a ${…} reference', () => {
    const port = at(generateConfigSchema(), 'properties', 'listen', 'properties', 'port');
    expect(port).toEqual({
      default: 8080,
      anyOf: [
        { type: 'integer', minimum: 0, maximum: 65535 },
        expect.objectContaining({ type: 'string', pattern: '^\\$\\{[^}]+\\}$' }),
      ],
    });
    const pattern = new RegExp((port['anyOf'] as Node[])[1]!['pattern'] as string);
    expect(pattern.test('${PORT}')).toBe(true);
    expect(pattern.test('${PORT:-8080}')).toBe(true);
    expect(pattern.test('80${X}')).toBe(false);
  });

  it('describes a boolean as a boolean with its default, or a ${…} reference', () => {
    const strip = at(generateConfigSchema(), 'properties', 'routes', 'items', 'properties', 'stripPrefix');
    expect(strip).toEqual({
      default: false,
      anyOf: [{ type: 'boolean' }, expect.objectContaining({ type: 'string', pattern: '^\\$\\{[^}]+\\}$' })],
    });
  });

  it('accepts a ${…} reference wherever an integer or boolean is expected', () => {
    for (const [pointer, node] of nodes(generateConfigSchema())) {
      if (node['type'] !== 'integer' && node['type'] !== 'number' && node['type'] !== 'boolean') continue;
      expect(pointer).toMatch(/\/anyOf\/0$/);
    }
  });

  it('keeps the defaults of SPEC §3', () => {
    const schema = generateConfigSchema();
    expect(at(schema, 'properties', 'admin', 'properties', 'host', 'default')).toBe('127.0.0.1');
    expect(at(schema, 'properties', 'tokenService', 'properties', 'timeoutMs', 'default')).toBe(2000);
    expect(at(schema, 'properties', 'jwt', 'properties', 'clockSkewSeconds', 'default')).toBe(30);
    expect(at(schema, 'properties', 'cache', 'properties', 'maxTtlSeconds', 'default')).toBe(900);
    expect(schema['required']).toEqual(['tokenService', 'routes']);
  });
});
