import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Summarises V8 `.cpuprofile` files (written by `node --cpu-prof`) for `npm run bench -- --profile`:
 * where a process spent its CPU, by function (self and total time) and by package, excluding idle.
 * `node bench/lib/profile-summary.ts <file.cpuprofile|dir> [top]` prints the same for any profile.
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  /** Busy time (ms): everything but `(idle)`. */
  busyMs: number;
  /** By package / area: share of busy time. */
  byArea: Array<{ area: string; ms: number; share: number }>;
  /** Top functions by self time. */
  bySelf: Array<{ fn: string; ms: number; share: number }>;
  /** Top functions by total (inclusive) time. */
  byTotal: Array<{ fn: string; ms: number; share: number }>;
}

/** Where a frame's code lives: `pino`, `express`, `src/pipeline`, `node:http`, `(garbage collector)`… */
export function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith('node:'))
    return url
      .split('/')
      .slice(0, 2)
      .join('/')
      .replace(/^node:internal\//, 'node:');
  const src = url.indexOf('/src/');
  if (src >= 0) {
    const parts = url.slice(src + 1).split('/');
    return parts.length > 2 ? `${parts[0]}/${parts[1]}` : parts.join('/');
  }
  const bench = url.indexOf('/bench/');
  if (bench >= 0) return url.slice(bench + 1);
  return url;
}

function label(frame: CallFrame): string {
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  if (frame.url === '') return name;
  const file = frame.url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, '');
  const short = file.includes('/src/') ? file.slice(file.indexOf('/src/') + 1) : file;
  return `${name} ${short}:${frame.lineNumber + 1}`;
}

export function summariseProfile(profile: CpuProfile, top = 15): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const area = new Map<string, number>();
  let busy = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]!);
    const dt = (profile.timeDeltas[i] ?? 0) / 1000;
    if (node === undefined || node.callFrame.functionName === '(idle)') continue;
    busy += dt;
    const key = label(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + dt);
    const a = areaOf(node.callFrame);
    area.set(a, (area.get(a) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const k = label(byId.get(id)!.callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + dt);
    }
  }
  const rank = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .filter(([k]) => k !== '(root)')
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, ms]) => ({ ms: Math.round(ms), share: busy > 0 ? ms / busy : 0, key: k }));
  return {
    busyMs: Math.round(busy),
    byArea: rank(area, top).map(({ key, ms, share }) => ({ area: key, ms, share })),
    bySelf: rank(self, top).map(({ key, ms, share }) => ({ fn: key, ms, share })),
    byTotal: rank(total, top).map(({ key, ms, share }) => ({ fn: key, ms, share })),
  };
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;

/** Markdown for one process's profile. */
export function profileMarkdown(name: string, s: ProfileSummary): string {
  const rows = (xs: Array<{ ms: number; share: number }>, key: (x: never) => string) =>
    xs.map((x) => `| ${key(x as never)} | ${x.ms} | ${pct(x.share)} |`).join('\n');
  return [
    `### ${name} — ${s.busyMs} ms busy`,
    '',
    '| area (self time) | ms | share |',
    '|---|--:|--:|',
    rows(s.byArea, (x: { area: string }) => x.area),
    '',
    '| function (self time) | ms | share |',
    '|---|--:|--:|',
    rows(s.bySelf, (x: { fn: string }) => `\`${x.fn}\``),
    '',
    '| function (total time) | ms | share |',
    '|---|--:|--:|',
    rows(s.byTotal, (x: { fn: string }) => `\`${x.fn}\``),
    '',
  ].join('\n');
}

/** Summaries of every `<dir>/<contender>/*.cpuprofile` (the largest profile of each contender). */
export function summariseProfileDir(dir: string, top = 15): string {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const sub = join(dir, name);
    let files: string[];
    try {
      files = readdirSync(sub).filter((f) => f.endsWith('.cpuprofile'));
    } catch {
      continue;
    }
    const pick = files
      .map((f) => ({ f, data: readFileSync(join(sub, f), 'utf8') }))
      .sort((a, b) => b.data.length - a.data.length)[0];
    if (pick === undefined) continue;
    out.push(profileMarkdown(name, summariseProfile(JSON.parse(pick.data) as CpuProfile, top)));
  }
  return out.join('\n');
}

if (import.meta.main) {
  const [target, topArg] = process.argv.slice(2);
  if (target === undefined) {
    console.error('usage: node bench/lib/profile-summary.ts <file.cpuprofile | profiles dir> [top]');
    process.exit(1);
  }
  const top = Number(topArg ?? 15);
  if (target.endsWith('.cpuprofile')) {
    const s = summariseProfile(JSON.parse(readFileSync(target, 'utf8')) as CpuProfile, top);
    console.log(profileMarkdown(target, s));
  } else {
    console.log(summariseProfileDir(target, top));
  }
}
