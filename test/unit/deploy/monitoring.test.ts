// biome-ignore-all lint/suspicious/noExplicitAny: rendered manifests and dashboard JSON are read loosely, after schema validation.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { kustomize, only, ROOT, selects, validateObject } from './k8s.ts';
import { baseMetric, checkPromql, GATEWAY_METRICS, metricsOf } from './promql.ts';

/**
 * k8s/monitoring: the Grafana dashboard and the alert rules read only metrics the gateway exports
 * (names, labels and label values), the required alerts exist, the PrometheusRule equals the plain
 * rule file, and the monitoring objects pass their CRD schemas.
 */

const MONITORING = join(ROOT, 'k8s/monitoring');
const dashboard = JSON.parse(readFileSync(join(MONITORING, 'grafana-dashboard.json'), 'utf8'));
const alerts = parse(readFileSync(join(MONITORING, 'alerts.yaml'), 'utf8'));

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rules: Rule[] = alerts.groups.flatMap((g: { rules: Rule[] }) => g.rules);

const panels: any[] = dashboard.panels.filter((p: any) => p.type !== 'row');
const panelExprs: string[] = panels.flatMap((p) => p.targets.map((t: { expr: string }) => t.expr));

describe('PromQL checker', () => {
  it('finds metric names, label matchers and grouping labels', () => {
    expect(
      checkPromql(
        'histogram_quantile(0.99, sum by (le, route) (rate(phantom_gateway_request_duration_seconds_bucket{namespace=~"$namespace"}[$__rate_interval]))) > 1e-3',
      ),
    ).toEqual([]);
    expect(
      metricsOf('sum(rate(process_cpu_seconds_total[5m])) / on (pod) nodejs_heap_size_used_bytes'),
    ).toEqual(['process_cpu_seconds_total', 'nodejs_heap_size_used_bytes']);
  });

  it('reports unknown metrics, unknown labels, unknown label values and unknown grouping labels', () => {
    expect(checkPromql('rate(phantom_gateway_request_total[5m])')).toEqual([
      'unknown metric phantom_gateway_request_total',
    ]);
    expect(checkPromql('phantom_gateway_decisions_total{code="401"}')).toEqual([
      'phantom_gateway_decisions_total has no label code',
    ]);
    expect(checkPromql('phantom_gateway_introspections_total{outcome=~"error|unavailable"}')).toEqual([
      'phantom_gateway_introspections_total{outcome} has no value "error"',
    ]);
    expect(checkPromql('sum by (stauts) (phantom_gateway_requests_total)')).toEqual([
      'grouping by unknown label stauts',
    ]);
    expect(checkPromql('phantom_gateway_redis_up_total')).toEqual([
      'unknown metric phantom_gateway_redis_up_total',
    ]);
    expect(checkPromql('phantom_gateway_request_duration_seconds')).toEqual([
      'unknown metric phantom_gateway_request_duration_seconds',
    ]);
  });
});

describe('Grafana dashboard', () => {
  it('is a Grafana dashboard with unique panel ids inside the 24-column grid', () => {
    expect(dashboard).toMatchObject({ title: 'phantom-gateway', uid: 'phantom-gateway' });
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    const ids = dashboard.panels.map((p: { id: number }) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dashboard.panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      expect(typeof p.title).toBe('string');
    }
    for (const p of panels) {
      expect(p.datasource).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets.length, p.title).toBeGreaterThan(0);
      const refIds = p.targets.map((t: { refId: string }) => t.refId);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
    }
    const variables = dashboard.templating.list.map((v: { name: string }) => v.name);
    expect(variables).toEqual(['datasource', 'namespace']);
  });

  it('reads only the metrics the gateway exports, with their labels and values', () => {
    const queries = [...panelExprs, dashboard.templating.list[1].definition];
    for (const expr of queries) expect(checkPromql(expr), expr).toEqual([]);
  });

  it('has a panel for every exported metric, and for memory and CPU', () => {
    const used = new Set(panelExprs.flatMap(metricsOf).map(baseMetric));
    for (const metric of Object.keys(GATEWAY_METRICS)) expect(used.has(metric), metric).toBe(true);
    for (const metric of [
      'process_resident_memory_bytes',
      'process_cpu_seconds_total',
      'nodejs_heap_size_used_bytes',
    ]) {
      expect(used.has(metric), metric).toBe(true);
    }
    const titles = panels.map((p) => p.title as string);
    for (const title of [
      'Throughput',
      'Latency p50 / p99',
      'Decisions',
      'Cache hit',
      'Introspection',
      'Redis up',
      'Upstream latency',
      'Upstream errors',
      'Config reloads',
      'Memory',
      'CPU',
    ]) {
      expect(
        titles.some((t) => t.includes(title)),
        title,
      ).toBe(true);
    }
  });

  it('ships as the dashboard ConfigMap of k8s/monitoring, byte for byte', () => {
    const objects = kustomize(MONITORING);
    const map = only(objects, 'ConfigMap', 'phantom-gateway-dashboard');
    expect(map.metadata.labels.grafana_dashboard).toBe('1');
    expect(map.data['grafana-dashboard.json']).toBe(
      readFileSync(join(MONITORING, 'grafana-dashboard.json'), 'utf8'),
    );
  });
});

describe('alert rules (alerts.yaml)', () => {
  it('is a Prometheus rule file whose alerts all have an expression, a severity and a summary', () => {
    expect(alerts.groups.length).toBeGreaterThan(0);
    for (const rule of rules) {
      expect(rule.alert, JSON.stringify(rule)).toMatch(/^PhantomGateway\w+$/);
      expect(rule.expr.trim()).not.toBe('');
      expect(['critical', 'warning']).toContain(rule.labels?.severity);
      expect(rule.annotations?.summary).toBeTruthy();
      if (rule.for !== undefined) expect(rule.for).toMatch(/^\d+[smh]$/);
    }
    const names = rules.map((r) => r.alert);
    expect(new Set(names).size).toBe(names.length);
  });

  it('reads only the metrics the gateway exports, with their labels and values', () => {
    for (const rule of rules) expect(checkPromql(rule.expr), rule.alert).toEqual([]);
  });

  it('has the four required alerts', () => {
    const byName = (name: string) => {
      const rule = rules.find((r) => r.alert === name);
      if (rule === undefined) throw new Error(`missing alert ${name}`);
      return rule;
    };
    const tokenService = byName('PhantomGatewayTokenServiceErrors');
    expect(tokenService.expr).toContain(
      'phantom_gateway_introspections_total{outcome=~"unavailable|bad_answer"}',
    );

    const redis = byName('PhantomGatewayRedisDown');
    expect(redis.expr).toMatch(/phantom_gateway_redis_up\)? == 0/);
    expect(redis.for).toMatch(/^([2-9]|[1-5]\d)m$/);

    const errors = byName('PhantomGatewayHigh5xxRatio');
    expect(errors.expr).toContain('phantom_gateway_requests_total{status=~"5.."}');
    expect(errors.expr).toMatch(/\/\s*sum by \(namespace\) \(rate\(phantom_gateway_requests_total\[5m\]\)\)/);

    const cache = byName('PhantomGatewayCacheHitRatioLow');
    expect(cache.expr).toContain('phantom_gateway_cache_lookups_total{level=~"l1|l2"}');
    expect(cache.expr).toContain('phantom_gateway_cache_lookups_total{level=~"l1|l2|introspection"}');
    expect(cache.expr).toMatch(/< 0\.\d+/);
  });

  it('ships identically as a PrometheusRule (prometheusrule.yaml)', () => {
    const objects = kustomize(MONITORING);
    const rule = only(objects, 'PrometheusRule', 'phantom-gateway');
    expect(rule.spec.groups).toEqual(alerts.groups);
  });
});

describe('k8s/monitoring objects', () => {
  it('pass the Kubernetes and prometheus-operator CRD schemas, and the CRD schema can fail', () => {
    const objects = kustomize(MONITORING);
    expect(objects.map((o) => o.kind).sort()).toEqual(['ConfigMap', 'PrometheusRule', 'ServiceMonitor']);
    for (const o of objects) validateObject(o);
    const broken = structuredClone(only(objects, 'PrometheusRule'));
    delete broken.spec.groups[0].rules[0].expr;
    expect(() => validateObject(broken)).toThrow(/must have required property expr/);
  });

  it("the ServiceMonitor scrapes /metrics on the admin Service's port in both overlay namespaces", () => {
    const monitor = only(kustomize(MONITORING), 'ServiceMonitor');
    const admin = only(kustomize(join(ROOT, 'k8s/base')), 'Service', 'phantom-gateway-admin');
    expect(selects(monitor.spec.selector.matchLabels, admin.metadata.labels)).toBe(true);
    expect(monitor.spec.endpoints).toEqual([
      expect.objectContaining({ port: admin.spec.ports[0].name, path: '/metrics' }),
    ]);
    expect(monitor.spec.namespaceSelector.matchNames.sort()).toEqual([
      'phantom-gateway',
      'phantom-gateway-dev',
    ]);
    // Only the admin Service: never the public one.
    const pub = only(kustomize(join(ROOT, 'k8s/base')), 'Service', 'phantom-gateway');
    expect(selects(monitor.spec.selector.matchLabels, pub.metadata.labels)).toBe(false);
  });

  it("the metrics adapter rule serves the HPA's Pods metric from phantom_gateway_requests_total", () => {
    const adapter = parse(readFileSync(join(MONITORING, 'prometheus-adapter-rules.yaml'), 'utf8'));
    const hpa = only(kustomize(join(ROOT, 'k8s/base')), 'HorizontalPodAutoscaler');
    const podsMetric = hpa.spec.metrics.find((m: { type: string }) => m.type === 'Pods').pods.metric.name;
    expect(adapter.rules).toHaveLength(1);
    const [rule] = adapter.rules;
    expect(checkPromql(rule.seriesQuery)).toEqual([]);
    expect(metricsOf(rule.seriesQuery)).toEqual(['phantom_gateway_requests_total']);
    expect(rule.name.as).toBe(podsMetric);
    expect(new RegExp(rule.name.matches).test('phantom_gateway_requests_total')).toBe(true);
    expect(rule.resources.overrides).toEqual({
      namespace: { resource: 'namespace' },
      pod: { resource: 'pod' },
    });
    expect(rule.metricsQuery).toContain('rate(<<.Series>>{<<.LabelMatchers>>}');
  });
});
