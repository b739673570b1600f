/**
 * The metric names phantom-gateway exports (README "Metrics"), and a small PromQL reader that
 * finds the metric names, label matchers and grouping labels of an expression, so the Grafana
 * dashboard and the alert rules can be checked against them without a Prometheus.
 */

import { REASON_CODES } from '../../../src/errors/reason-codes.ts';

type MetricType = 'counter' | 'gauge' | 'histogram';

interface MetricSpec {
  readonly type: MetricType;
  readonly labels: readonly string[];
}

/** Every reason code the gateway can report (the decisions metric's `reason` values). */
const DECISION_REASONS: readonly string[] = REASON_CODES;

export const GATEWAY_METRICS: Readonly<Record<string, MetricSpec>> = {
  phantom_gateway_requests_total: { type: 'counter', labels: ['route', 'method', 'status', 'reason'] },
  phantom_gateway_request_duration_seconds: { type: 'histogram', labels: ['route', 'status'] },
  phantom_gateway_decisions_total: { type: 'counter', labels: ['reason'] },
  phantom_gateway_cache_lookups_total: { type: 'counter', labels: ['level'] },
  phantom_gateway_cache_coalesced_waits_total: { type: 'counter', labels: [] },
  phantom_gateway_introspections_total: { type: 'counter', labels: ['outcome'] },
  phantom_gateway_introspection_duration_seconds: { type: 'histogram', labels: ['outcome'] },
  phantom_gateway_redis_errors_total: { type: 'counter', labels: [] },
  phantom_gateway_redis_up: { type: 'gauge', labels: [] },
  phantom_gateway_upstream_duration_seconds: { type: 'histogram', labels: ['route'] },
  phantom_gateway_upstream_errors_total: { type: 'counter', labels: ['route', 'reason'] },
  phantom_gateway_config_reloads_total: { type: 'counter', labels: ['result'] },
  phantom_gateway_config_info: { type: 'gauge', labels: ['hash'] },
};

/** Values an exact or simple-alternation matcher may name, per metric and label. */
const LABEL_VALUES: Readonly<Record<string, Readonly<Record<string, readonly string[]>>>> = {
  phantom_gateway_decisions_total: { reason: DECISION_REASONS },
  phantom_gateway_cache_lookups_total: { level: ['l1', 'l2', 'introspection', 'none'] },
  phantom_gateway_introspections_total: { outcome: ['active', 'inactive', 'unavailable', 'bad_answer'] },
  phantom_gateway_introspection_duration_seconds: {
    outcome: ['active', 'inactive', 'unavailable', 'bad_answer'],
  },
  phantom_gateway_config_reloads_total: { result: ['success', 'failure'] },
};

/** Labels the scrape adds (ServiceMonitor / kubernetes_sd relabelling). */
export const TARGET_LABELS = ['namespace', 'pod', 'job', 'instance', 'service', 'container', 'endpoint'];

/** prom-client's default process and Node.js metrics. */
const DEFAULT_METRIC = /^(process|nodejs)_[a-z0-9_]+$/;

const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'inf',
  'nan',
]);

export interface Selector {
  readonly metric: string;
  readonly matchers: readonly { label: string; op: string; value: string }[];
}

export interface ParsedExpr {
  readonly selectors: readonly Selector[];
  /** Labels named in by/without/on/ignoring/group_left/group_right clauses. */
  readonly groupingLabels: readonly string[];
}

/** Finds the selectors and grouping labels of a PromQL expression (Grafana variables allowed). */
export function parsePromql(expr: string): ParsedExpr {
  const selectors: Selector[] = [];
  const groupingLabels: string[] = [];
  let rest = expr
    // Grafana variables and range selectors: `[$__rate_interval]`, `[5m]`, `[5m:1m]`.
    .replace(/\[[^\]]*\]/g, ' ')
    // label_values(metric, label) in templating queries.
    .replace(
      /label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*([a-zA-Z_]\w*)\s*\)/g,
      (_m, metric: string, label) => {
        selectors.push({ metric, matchers: [{ label, op: 'label_values', value: '' }] });
        return ' ';
      },
    );
  rest = rest.replace(
    /([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}/g,
    (_m, metric: string | undefined, body: string) => {
      if (metric === undefined) throw new Error(`selector without a metric name: {${body}} in ${expr}`);
      const matchers: { label: string; op: string; value: string }[] = [];
      const re = /\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)/y;
      let m = re.exec(body);
      let consumed = 0;
      while (m !== null && m[0] !== '') {
        matchers.push({ label: m[1]!, op: m[2]!, value: m[3]! });
        consumed = re.lastIndex;
        m = re.exec(body);
      }
      if (body.slice(consumed).trim() !== '')
        throw new Error(`cannot read label matchers {${body}} in ${expr}`);
      selectors.push({ metric, matchers });
      return ' ';
    },
  );
  rest = rest
    .replace(/"(?:[^"\\]|\\.)*"/g, ' ')
    .replace(
      /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g,
      (_m, _kw, labels: string) => {
        for (const l of labels.split(',')) if (l.trim() !== '') groupingLabels.push(l.trim());
        return ' ';
      },
    )
    .replace(/\$\{?\w+\}?/g, ' ');
  for (const m of rest.matchAll(/(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (call !== undefined || KEYWORDS.has(name!.toLowerCase())) continue;
    selectors.push({ metric: name!, matchers: [] });
  }
  return { selectors, groupingLabels };
}

/** The exported metric a series name belongs to (histograms: _bucket, _sum, _count). */
function specOf(name: string): { base: string; spec: MetricSpec; bucket: boolean } | undefined {
  const direct = GATEWAY_METRICS[name];
  if (direct !== undefined && direct.type !== 'histogram') return { base: name, spec: direct, bucket: false };
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  const hist = m ? GATEWAY_METRICS[m[1]!] : undefined;
  if (m && hist?.type === 'histogram') return { base: m[1]!, spec: hist, bucket: m[2] === 'bucket' };
  return undefined;
}

const ALL_LABELS = new Set([
  ...TARGET_LABELS,
  'le',
  ...Object.values(GATEWAY_METRICS).flatMap((s) => s.labels),
]);

/**
 * Problems of an expression: unknown metric names, labels a metric does not have, label values
 * outside a label's known set, grouping by unknown labels. Empty when the expression is fine.
 */
export function checkPromql(expr: string): string[] {
  const problems: string[] = [];
  let parsed: ParsedExpr;
  try {
    parsed = parsePromql(expr);
  } catch (err) {
    return [(err as Error).message];
  }
  if (parsed.selectors.length === 0) problems.push(`no metric in ${expr}`);
  for (const { metric, matchers } of parsed.selectors) {
    if (DEFAULT_METRIC.test(metric)) continue;
    const known = specOf(metric);
    if (known === undefined) {
      problems.push(`unknown metric ${metric}`);
      continue;
    }
    for (const { label, op, value } of matchers) {
      const allowed = known.spec.labels.includes(label) || TARGET_LABELS.includes(label);
      if (!allowed && !(known.bucket && label === 'le')) {
        problems.push(`${metric} has no label ${label}`);
        continue;
      }
      const values = LABEL_VALUES[known.base]?.[label];
      if (values === undefined || op === 'label_values' || !/^[\w|]+$/.test(value)) continue;
      for (const v of value.split('|')) {
        if (!values.includes(v)) problems.push(`${metric}{${label}} has no value ${JSON.stringify(v)}`);
      }
    }
  }
  for (const label of parsed.groupingLabels) {
    if (!ALL_LABELS.has(label)) problems.push(`grouping by unknown label ${label}`);
  }
  return problems;
}

/** The series names an expression reads (for coverage checks). */
export function metricsOf(expr: string): string[] {
  return parsePromql(expr).selectors.map((s) => s.metric);
}

/** The exported metric base name of a series name, or the name itself. */
export function baseMetric(name: string): string {
  return specOf(name)?.base ?? name;
}
