/**
 * A strict reader of the Prometheus text exposition format 0.0.4 (what prom-client writes): every
 * line must be a `# HELP`, a `# TYPE`, a comment or a well-formed sample of a family declared by
 * `# TYPE` before it; label values are unescaped; histograms are checked for cumulative buckets
 * and `+Inf` = `_count`. Anything else throws, so a test cannot pass on garbage.
 */

export type MetricKind = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  /** The series name as written (`x_bucket`, `x_sum`, `x_count` for histograms). */
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: MetricKind;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const KINDS = new Set<MetricKind>(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(text: string, line: string): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY;
  if (text === '-Inf') return Number.NEGATIVE_INFINITY;
  if (/^nan$/i.test(text)) return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value ${text} in: ${line}`);
  return Number(text);
}

/** The labels of `{...}` starting at `s[i] === '{'`; returns them and the index after `}`. */
function parseLabels(
  s: string,
  start: number,
  line: string,
): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = start + 1;
  for (;;) {
    if (s[i] === '}') return { labels, end: i + 1 };
    const eq = s.indexOf('=', i);
    if (eq === -1) throw new Error(`label without = in: ${line}`);
    const name = s.slice(i, eq);
    if (!LABEL.test(name)) throw new Error(`bad label name ${JSON.stringify(name)} in: ${line}`);
    if (s[eq + 1] !== '"') throw new Error(`unquoted label value in: ${line}`);
    let value = '';
    let j = eq + 2;
    for (; j < s.length && s[j] !== '"'; j++) {
      if (s[j] === '\\') {
        const next = s[++j];
        if (next === 'n') value += '\n';
        else if (next === '\\' || next === '"') value += next;
        else throw new Error(`bad escape in: ${line}`);
      } else value += s[j];
    }
    if (j >= s.length) throw new Error(`unterminated label value in: ${line}`);
    if (Object.hasOwn(labels, name)) throw new Error(`label ${name} twice in: ${line}`);
    labels[name] = value;
    i = j + 1;
    if (s[i] === ',') i++;
    else if (s[i] !== '}') throw new Error(`expected , or } in: ${line}`);
  }
}

/** The family a sample name belongs to (histogram/summary series carry a suffix). */
function familyOf(families: Map<string, Family>, name: string): Family | undefined {
  const direct = families.get(name);
  if (direct !== undefined && direct.type !== 'histogram') return direct;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m === null) return direct;
  const f = families.get(m[1]!);
  if (f === undefined) return direct;
  if (f.type === 'histogram') return f;
  if (f.type === 'summary' && m[2] !== 'bucket') return f;
  return direct;
}

export function parsePrometheusText(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (m === null) continue; // a plain comment
      const [, kw, name, rest] = m as unknown as [string, string, string, string];
      if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
      let f = families.get(name);
      if (f === undefined) {
        f = { name, type: 'untyped', help: '', samples: [] };
        families.set(name, f);
      }
      if (kw === 'HELP') f.help = rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      else {
        if (!KINDS.has(rest as MetricKind)) throw new Error(`bad type in: ${line}`);
        if (f.samples.length > 0) throw new Error(`TYPE after samples in: ${line}`);
        f.type = rest as MetricKind;
      }
      continue;
    }
    const nameEnd = line.search(/[{ ]/);
    if (nameEnd <= 0) throw new Error(`bad sample line: ${line}`);
    const name = line.slice(0, nameEnd);
    if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
    let labels: Record<string, string> = {};
    let i = nameEnd;
    if (line[i] === '{') {
      const parsed = parseLabels(line, i, line);
      labels = parsed.labels;
      i = parsed.end;
    }
    if (line[i] !== ' ') throw new Error(`expected a space before the value in: ${line}`);
    const parts = line.slice(i + 1).split(' ');
    if (parts.length < 1 || parts.length > 2 || parts[0] === '')
      throw new Error(`bad value part in: ${line}`);
    const value = parseValue(parts[0]!, line);
    if (parts.length === 2 && !/^-?\d+$/.test(parts[1]!)) throw new Error(`bad timestamp in: ${line}`);
    const family = familyOf(families, name);
    if (family === undefined || family.type === 'untyped')
      throw new Error(`sample of an undeclared family: ${line}`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`duplicate series: ${line}`);
    seen.add(key);
    family.samples.push({ name, labels, value });
  }
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return families;
}

/** Buckets cumulative and ascending in `le`, `+Inf` present and equal to `_count`, one `_sum` per series. */
function checkHistogram(f: Family): void {
  const series = new Map<string, Sample[]>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    if ((s.name === `${f.name}_bucket`) !== (le !== undefined)) throw new Error(`${s.name}: le misplaced`);
    const key = JSON.stringify(Object.entries(rest).sort());
    series.set(key, [...(series.get(key) ?? []), s]);
  }
  for (const [key, samples] of series) {
    const buckets = samples.filter((s) => s.name === `${f.name}_bucket`);
    const count = samples.filter((s) => s.name === `${f.name}_count`);
    const sum = samples.filter((s) => s.name === `${f.name}_sum`);
    if (count.length !== 1 || sum.length !== 1)
      throw new Error(`${f.name}${key}: needs one _sum and one _count`);
    let lastLe = Number.NEGATIVE_INFINITY;
    let lastValue = 0;
    for (const b of buckets) {
      const le = parseValue(b.labels['le']!, `${f.name} le`);
      if (!(le > lastLe)) throw new Error(`${f.name}${key}: le not ascending`);
      if (b.value < lastValue) throw new Error(`${f.name}${key}: buckets not cumulative`);
      lastLe = le;
      lastValue = b.value;
    }
    if (lastLe !== Number.POSITIVE_INFINITY) throw new Error(`${f.name}${key}: no +Inf bucket`);
    if (lastValue !== count[0]!.value) throw new Error(`${f.name}${key}: +Inf bucket ≠ _count`);
  }
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
}

/** The value of the one sample `name` with exactly `labels`, or undefined when there is none. */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const family = familyOf(families, name);
  const found = family?.samples.filter((s) => s.name === name && sameLabels(s.labels, labels)) ?? [];
  if (found.length > 1) throw new Error(`${name}: ${found.length} samples with the same labels`);
  return found[0]?.value;
}

/** Every sample of series `name` (all label sets). */
export function samplesOf(families: Map<string, Family>, name: string): Sample[] {
  return familyOf(families, name)?.samples.filter((s) => s.name === name) ?? [];
}
