// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} is the config file's own env-reference syntax, not a template.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ConfigSchema } from '../src/config/schema.ts';

/**
 * Writes `config/gateway.schema.json`, the JSON Schema editors use to complete and check the
 * configuration file (SPEC §3), from the same zod schema the parser uses, so they cannot drift
 * (`test/unit/config/schema-file.test.ts` fails when the checked-in file is stale).
 * Run: `npm run schema` (`node scripts/generate-schema.ts`).
 */

/** Where the generated schema is checked in. */
export const SCHEMA_FILE = join(import.meta.dirname, '..', 'config', 'gateway.schema.json');

type JsonSchema = { [key: string]: unknown };

/** A value that is exactly one `${NAME}` / `${NAME:-default}` reference (e.g. `port: ${PORT}`). */
const WHOLE_ENV_REFERENCE: JsonSchema = {
  type: 'string',
  pattern: '^\\$\\{[^}]+\\}$',
  description: 'An environment reference, ${NAME} or ${NAME:-default}, replaced before validation.',
};
/** A string containing a reference (e.g. `url: redis://:${REDIS_PASSWORD}@redis:6379`). */
const CONTAINS_ENV_REFERENCE: JsonSchema = {
  type: 'string',
  pattern: '\\$\\{[^}]+\\}',
  description: 'A value with ${NAME} or ${NAME:-default} environment references, replaced before validation.',
};
/** Keys that describe a node rather than constrain it: they stay outside the `anyOf`. */
const ANNOTATIONS = new Set(['default', 'description', 'title', 'examples', 'deprecated']);

/** The configuration's JSON Schema (draft 2020-12), as an object. */
export function generateConfigSchema(): JsonSchema {
  const generated = z.toJSONSchema(ConfigSchema, {
    io: 'input',
    unrepresentable: 'throw',
    override: (ctx) => {
      // zod leaves out the default when the inner schema is a z.preprocess pipe (our int()/bool()).
      const def = ctx.zodSchema._zod.def;
      if (def.type === 'default' && !('default' in ctx.jsonSchema)) {
        ctx.jsonSchema.default = JSON.parse(JSON.stringify((def as z.core.$ZodDefaultDef).defaultValue));
      }
    },
  }) as JsonSchema;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    $id: 'urn:phantom-gateway:config:gateway.schema.json',
    title: 'phantom-gateway configuration',
    description:
      'The phantom-gateway configuration file (YAML). Generated from src/config/schema.ts by ' +
      'scripts/generate-schema.ts; do not edit. Any string may contain ${NAME} or ${NAME:-default} ' +
      'environment references ($${ is a literal ${); a number or boolean may be written as one reference.',
    ...allowEnvReferences(rest),
  };
}

/** The file's exact text: two-space indentation and a trailing newline. */
export function renderConfigSchema(): string {
  return `${JSON.stringify(generateConfigSchema(), null, 2)}\n`;
}

/**
 * `${…}` is substituted before validation, so wherever the file may hold a number, a boolean, an
 * enum or a patterned string, an editor must also accept a reference in its place.
 */
function allowEnvReferences(node: JsonSchema): JsonSchema {
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === 'properties' && isObject(value)) {
      out[key] = Object.fromEntries(
        Object.entries(value).map(([name, child]) => [name, allowEnvReferences(child as JsonSchema)]),
      );
    } else if ((key === 'items' || key === 'additionalProperties') && isObject(value)) {
      out[key] = allowEnvReferences(value);
    } else if ((key === 'anyOf' || key === 'oneOf' || key === 'allOf') && Array.isArray(value)) {
      out[key] = value.map((child) => allowEnvReferences(child as JsonSchema));
    } else {
      out[key] = value;
    }
  }
  const type = out['type'];
  const reference =
    type === 'integer' || type === 'number' || type === 'boolean'
      ? WHOLE_ENV_REFERENCE
      : type === 'string' && ('pattern' in out || 'enum' in out)
        ? CONTAINS_ENV_REFERENCE
        : undefined;
  if (reference === undefined) return out;
  const annotations: JsonSchema = {};
  const constraints: JsonSchema = {};
  for (const [key, value] of Object.entries(out))
    (ANNOTATIONS.has(key) ? annotations : constraints)[key] = value;
  return { ...annotations, anyOf: [constraints, reference] };
}

function isObject(value: unknown): value is JsonSchema {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

if (import.meta.main) {
  writeFileSync(SCHEMA_FILE, renderConfigSchema());
  process.stdout.write(`wrote ${SCHEMA_FILE}\n`);
}
