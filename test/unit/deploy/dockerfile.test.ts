import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './k8s.ts';

/**
 * The Dockerfile and .dockerignore, read as Docker reads them (no Docker engine here): pinned
 * bases, production dependencies only, a numeric non-root user, tini as PID 1, both ports, OCI
 * labels, no secrets; a build context without node_modules, .git, tests or key material.
 */

interface Instruction {
  readonly cmd: string;
  readonly args: string;
}
interface Stage {
  readonly from: string;
  readonly alias: string | undefined;
  readonly instructions: Instruction[];
}

/** Instructions of a Dockerfile: comments dropped, `\` continuations joined, split into stages. */
function parseDockerfile(text: string): { args: Instruction[]; stages: Stage[] } {
  const logical: string[] = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (/^\s*#/.test(line)) continue; // comments (also between continuation lines)
    if (line.endsWith('\\')) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim() !== '') logical.push(current.trim());
    current = '';
  }
  if (current.trim() !== '') logical.push(current.trim());
  const args: Instruction[] = [];
  const stages: Stage[] = [];
  for (const line of logical) {
    const m = /^(\w+)\s+([\s\S]*)$/.exec(line);
    if (m === null) throw new Error(`cannot read Dockerfile line: ${line}`);
    const instruction = { cmd: m[1]!.toUpperCase(), args: m[2]!.replace(/\s+/g, ' ').trim() };
    if (instruction.cmd === 'FROM') {
      const from = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args);
      if (from === null) throw new Error(`cannot read FROM ${instruction.args}`);
      stages.push({ from: from[1]!, alias: from[2], instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.cmd !== 'ARG') throw new Error(`${instruction.cmd} before the first FROM`);
      args.push(instruction);
    } else {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return { args, stages };
}

/** `.dockerignore` as Docker applies it: last matching pattern wins, `!` re-includes, a matching folder covers its content. */
function dockerIgnored(patterns: string[], path: string): boolean {
  let ignored = false;
  const parts = path.split('/');
  const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const pattern = (negate ? raw.slice(1) : raw).replace(/^\/+|\/+$/g, '');
    const re = new RegExp(
      `^${pattern
        .split(/(\*\*\/|\*\*|\*|\?)/)
        .map((tok) => {
          if (tok === '**/') return '(?:.*/)?';
          if (tok === '**') return '.*';
          if (tok === '*') return '[^/]*';
          if (tok === '?') return '[^/]';
          return tok.replace(/[.+^${}()|[\]\\]/g, '\\$&');
        })
        .join('')}$`,
    );
    if (prefixes.some((p) => re.test(p))) ignored = !negate;
  }
  return ignored;
}

const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const final = dockerfile.stages.at(-1)!;
const ignorePatterns = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

/** Values of one instruction in the final stage, e.g. every LABEL key. */
function finalOf(cmd: string): Instruction[] {
  return final.instructions.filter((i) => i.cmd === cmd);
}
/** `KEY=value KEY2="v 2"` → entries. */
function keyValues(args: string): [string, string][] {
  return [...args.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)/g)].map((m) => [
    m[1]!,
    m[2]!.replace(/^"|"$/g, ''),
  ]);
}

describe('Dockerfile', () => {
  it('parses into a multi-stage build with continuation lines joined', () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    const run = final.instructions.find((i) => i.cmd === 'RUN' && i.args.includes('apt-get'));
    expect(run?.args).toMatch(/apt-get update && apt-get install .*tini/);
    expect(
      parseDockerfile('FROM a:1.0 AS x\nRUN one \\\n# comment\n  two\n').stages[0]!.instructions,
    ).toEqual([{ cmd: 'RUN', args: 'one two' }]);
  });

  it('pins every base image by an exact version tag or digest, never latest', () => {
    const aliases = new Set<string>();
    for (const stage of dockerfile.stages) {
      if (!aliases.has(stage.from)) {
        expect(stage.from).not.toMatch(/\$/); // no ARG-chosen base
        expect(stage.from).toMatch(
          /^[\w.\-/]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[a-f0-9]{64})?$|@sha256:[a-f0-9]{64}$/,
        );
        expect(stage.from).not.toMatch(/:latest\b/);
      }
      if (stage.alias !== undefined) aliases.add(stage.alias);
    }
  });

  it("uses the Node major of the project's engines (24, >= 24.11) in every stage", () => {
    const engines = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).engines.node as string;
    expect(engines).toMatch(/^>=24\.11\.0 <25$/);
    for (const stage of dockerfile.stages.filter((s) => s.from.startsWith('node:'))) {
      const [major, minor] = /^node:(\d+)\.(\d+)\./.exec(stage.from)!.slice(1).map(Number);
      expect(major).toBe(24);
      expect(minor).toBeGreaterThanOrEqual(11);
    }
  });

  it('installs production dependencies only, from the lockfile', () => {
    const installs = dockerfile.stages
      .flatMap((s) => s.instructions)
      .filter((i) => /\bnpm (ci|install|i)\b/.test(i.args));
    expect(installs.length).toBeGreaterThan(0);
    for (const i of installs) {
      expect(i.args).toMatch(/\bnpm ci\b/);
      expect(i.args).toMatch(/--omit=dev\b/);
    }
  });

  it('runs the final stage as a numeric non-root user', () => {
    const users = finalOf('USER');
    expect(users.length).toBeGreaterThan(0);
    const user = users.at(-1)!.args;
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(Number(user.split(':')[0])).toBeGreaterThan(0);
    // Matches the Deployment's runAsUser.
    expect(user.split(':')[0]).toBe('10001');
  });

  it('starts under tini as PID 1 with the serve command and the mounted config', () => {
    const entrypoint = JSON.parse(finalOf('ENTRYPOINT').at(-1)!.args) as string[];
    expect(entrypoint[0]).toMatch(/\/(tini|dumb-init)$/);
    expect(
      final.instructions.some((i) => i.cmd === 'RUN' && /apt-get install[^&]*\btini\b/.test(i.args)),
    ).toBe(true);
    const cmd = JSON.parse(finalOf('CMD').at(-1)!.args) as string[];
    expect([...entrypoint, ...cmd]).toEqual([
      '/usr/bin/tini',
      '--',
      '/app/bin/phantom-gateway',
      'serve',
      '--config',
      '/etc/phantom-gateway/gateway.yaml',
    ]);
  });

  it('exposes the public (8080) and admin (9090) ports', () => {
    const ports = finalOf('EXPOSE').flatMap((i) => i.args.split(' '));
    expect(ports).toEqual(expect.arrayContaining(['8080', '9090']));
  });

  it('carries the OCI labels', () => {
    const labels = Object.fromEntries(finalOf('LABEL').flatMap((i) => keyValues(i.args)));
    for (const key of ['title', 'description', 'source', 'licenses', 'version']) {
      expect(labels[`org.opencontainers.image.${key}`], key).toBeTruthy();
    }
    expect(labels['org.opencontainers.image.licenses']).toBe(
      JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).license,
    );
  });

  it('sets no secret-looking ENV or ARG with a value, and copies no key material', () => {
    const secretName = /SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_?KEY|CACHE_KEY|REDIS_URL/i;
    const all = [...dockerfile.args, ...dockerfile.stages.flatMap((s) => s.instructions)];
    for (const i of all.filter((i) => i.cmd === 'ENV' || i.cmd === 'ARG')) {
      for (const [key, value] of keyValues(i.args)) {
        if (secretName.test(key)) expect(value, `${i.cmd} ${key}`).toBe('');
      }
      const legacy = /^(\S+)\s+\S/.exec(i.args); // `ENV KEY value`
      if (legacy && !legacy[1]!.includes('=')) expect(legacy[1]).not.toMatch(secretName);
    }
    for (const i of all.filter((i) => i.cmd === 'COPY' || i.cmd === 'ADD')) {
      expect(i.args).not.toMatch(/\.(pem|key|p12|pfx)\b|\.env\b|id_rsa|secret/i);
    }
  });

  it('copies only files that exist and that .dockerignore sends', () => {
    const copies = final.instructions.filter((i) => i.cmd === 'COPY' && !i.args.startsWith('--from'));
    expect(copies.length).toBeGreaterThan(0);
    for (const c of copies) {
      const sources = c.args
        .split(' ')
        .filter((a) => !a.startsWith('--'))
        .slice(0, -1);
      for (const src of sources) {
        expect(existsSync(join(ROOT, src)), src).toBe(true);
        expect(dockerIgnored(ignorePatterns, src), src).toBe(false);
      }
    }
    for (const dir of ['src', 'bin', 'config']) {
      expect(
        copies.some((c) => c.args.startsWith(`${dir} `)),
        dir,
      ).toBe(true);
    }
  });
});

describe('.dockerignore', () => {
  it('keeps node_modules, .git, tests, bench results, docs and key material out of the build context', () => {
    for (const path of [
      'node_modules/express/index.js',
      '.git/HEAD',
      'test/unit/deploy/dockerfile.test.ts',
      'bench/results/2026-11-23.json',
      'README.md',
      'k8s/base/deployment.yaml',
      '.env',
      '.env.production',
      'secrets/token.txt',
      'tls.key',
      'config/tls.key',
      'config/server.pem',
      'src/keystore.p12',
      'config/private-jwks.json',
      'config/signing-jwks.json',
      'id_rsa',
      'src/node_modules/x.js',
    ]) {
      expect(dockerIgnored(ignorePatterns, path), path).toBe(true);
    }
  });

  it('sends what the image needs', () => {
    for (const path of [
      'package.json',
      'package-lock.json',
      'bin/phantom-gateway',
      'src/cli/main.ts',
      'src/config/schema.ts',
      'config/gateway.yaml',
    ]) {
      expect(dockerIgnored(ignorePatterns, path), path).toBe(false);
    }
    // Every source, launcher and config file of the repository reaches the image.
    const shipped = ['src', 'bin', 'config'].flatMap((dir) =>
      readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true })
        .filter((e) => e.isFile())
        .map((e) => relative(ROOT, join(e.parentPath, e.name))),
    );
    expect(shipped.length).toBeGreaterThan(50);
    expect(shipped.filter((path) => dockerIgnored(ignorePatterns, path))).toEqual([]);
  });

  it('reads patterns as Docker does: last match wins, `!` re-includes, `**/` matches any depth', () => {
    expect(dockerIgnored(['*', '!src'], 'src/a.ts')).toBe(false);
    expect(dockerIgnored(['*', '!src', '**/*.pem'], 'src/deep/k.pem')).toBe(true);
    expect(dockerIgnored(['**/*.pem'], 'k.pem')).toBe(true);
    expect(dockerIgnored(['test'], 'test/a/b.ts')).toBe(true);
    expect(dockerIgnored(['test'], 'src/test/b.ts')).toBe(false);
  });
});
