import { AggregatorRegistry, register as globalRegistry, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createCacheMetrics } from '../../../src/cache/cache-metrics.ts';
import { HTTP_METHODS } from '../../../src/config/schema.ts';
import { REASON_CODES } from '../../../src/errors/reason-codes.ts';
import {
  CACHE_LEVELS,
  configHash,
  createMetrics,
  DURATION_BUCKETS_SECONDS,
  INTROSPECTION_OUTCOMES,
} from '../../../src/observability/metrics.ts';
import { type Family, parsePrometheusText, samplesOf, sampleValue } from '../../helpers/prometheus-text.ts';
import { GATEWAY_METRICS } from '../deploy/promql.ts';

async function scrape(m: { text(): Promise<string> }): Promise<Map<string, Family>> {
  return parsePrometheusText(await m.text());
}

/** Label names of every sample of a family, `le` aside. */
function labelNamesOf(f: Family): string[] {
  const names = new Set<string>();
  for (const s of f.samples) for (const k of Object.keys(s.labels)) if (k !== 'le') names.add(k);
  return [...names].sort();
}

describe('createMetrics: names, types and labels', () => {
  it('exports every metric the dashboard and alerts use, with their type and exactly their labels', async () => {
    const m = createMetrics();
    m.watchCache(createCacheMetrics(), { state: () => 'ready', errors: () => 0 });
    m.request('invoices', 'GET', 200, 'allowed', 'l1', 0.001);
    m.upstream('invoices').error('upstream_timeout');
    m.setConfigHash('0123456789ab');
    const families = await scrape(m);
    for (const [name, spec] of Object.entries(GATEWAY_METRICS)) {
      const f = families.get(name);
      expect(f, name).toBeDefined();
      expect(f!.type, name).toBe(spec.type);
      expect(f!.help.length, name).toBeGreaterThan(10);
      expect(f!.samples.length, name).toBeGreaterThan(0);
      expect(labelNamesOf(f!), name).toEqual([...spec.labels].sort());
    }
    // prom-client's default process and Node.js metrics, on this registry.
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
      'nodejs_eventloop_lag_seconds',
      'nodejs_eventloop_lag_p99_seconds',
    ]) {
      expect(families.has(name), name).toBe(true);
    }
    // Every gateway metric name follows the conventions: prefix, base unit or _total.
    for (const f of families.values()) {
      if (!f.name.startsWith('phantom_gateway_')) {
        expect(f.name).toMatch(/^(process|nodejs)_/);
        continue;
      }
      if (f.type === 'counter') expect(f.name).toMatch(/_total$/);
      if (f.type === 'histogram') expect(f.name).toMatch(/_seconds$/);
    }
  });

  it('uses its own registry: several gateways in one process, nothing on the global registry', async () => {
    const a = createMetrics();
    const b = createMetrics();
    a.request('r', 'GET', 200, 'allowed', 'l1', 0.001);
    expect(
      sampleValue(await scrape(a), 'phantom_gateway_requests_total', labels('r', 'GET', '200', 'allowed')),
    ).toBe(1);
    expect(
      sampleValue(await scrape(b), 'phantom_gateway_requests_total', labels('r', 'GET', '200', 'allowed')),
    ).toBe(undefined);
    expect(a.registry).not.toBe(b.registry);
    expect(globalRegistry.getSingleMetric('phantom_gateway_requests_total')).toBeUndefined();
    expect(a.registry.contentType).toBe(Registry.PROMETHEUS_CONTENT_TYPE);
  });
});

function labels(route: string, method: string, status: string, reason: string) {
  return { route, method, status, reason };
}

describe('request metrics (the access log)', () => {
  it('counts requests per label set, decisions per reason and lookups per cache level', async () => {
    const m = createMetrics({ defaultMetrics: false });
    for (let i = 0; i < 3; i++) m.request('invoices', 'GET', 200, 'allowed', 'l1', 0.0002);
    m.request('invoices', 'GET', 200, 'allowed', 'introspection', 0.02);
    m.request('invoices', 'POST', 401, 'token_missing', 'none', 0.0001);
    m.request(undefined, 'GET', 404, 'route_not_found', 'none', 0.0001);
    m.request('invoices', 'GET', 502, 'upstream_unavailable', 'l2', 0.003);
    const f = await scrape(m);
    const req = (l: ReturnType<typeof labels>) => sampleValue(f, 'phantom_gateway_requests_total', l);
    expect(req(labels('invoices', 'GET', '200', 'allowed'))).toBe(4);
    expect(req(labels('invoices', 'POST', '401', 'token_missing'))).toBe(1);
    expect(req(labels('none', 'GET', '404', 'route_not_found'))).toBe(1);
    expect(req(labels('invoices', 'GET', '502', 'upstream_unavailable'))).toBe(1);
    expect(samplesOf(f, 'phantom_gateway_requests_total')).toHaveLength(4);

    // Every SPEC §5 reason is a series (0 until seen), so rate() works from the first scrape.
    const decisions = samplesOf(f, 'phantom_gateway_decisions_total');
    expect(decisions.map((s) => s.labels['reason']).sort()).toEqual([...REASON_CODES].sort());
    const decision = (reason: string) => sampleValue(f, 'phantom_gateway_decisions_total', { reason });
    expect(decision('allowed')).toBe(4);
    expect(decision('token_missing')).toBe(1);
    expect(decision('route_not_found')).toBe(1);
    expect(decision('upstream_unavailable')).toBe(1);
    expect(decision('scope_missing')).toBe(0);

    const lookups = samplesOf(f, 'phantom_gateway_cache_lookups_total');
    expect(lookups.map((s) => s.labels['level']).sort()).toEqual([...CACHE_LEVELS].sort());
    const level = (l: string) => sampleValue(f, 'phantom_gateway_cache_lookups_total', { level: l });
    expect([level('l1'), level('l2'), level('introspection'), level('none')]).toEqual([3, 1, 1, 2]);

    // Durations by route and status.
    const count = (route: string, status: string) =>
      sampleValue(f, 'phantom_gateway_request_duration_seconds_count', { route, status });
    expect(count('invoices', '200')).toBe(4);
    expect(count('invoices', '401')).toBe(1);
    expect(count('none', '404')).toBe(1);
    expect(
      sampleValue(f, 'phantom_gateway_request_duration_seconds_sum', { route: 'invoices', status: '200' }),
    ).toBeCloseTo(0.0206, 10);
  });

  it('keeps label values bounded: unknown methods are OTHER, unknown reasons none, never a path', async () => {
    const m = createMetrics({ defaultMetrics: false });
    for (let i = 0; i < 1000; i++) {
      m.request('invoices', `X-METHOD-${i}`, 400, `reason-${i}` as never, 'none', 0.0001);
    }
    for (const method of HTTP_METHODS) m.request('invoices', method, 200, 'allowed', 'l1', 0.0001);
    m.request('invoices', 'get', 200, 'allowed', 'l1', 0.0001);
    m.request('invoices', 'GET', 500, undefined, 'none', 0.0001);
    const f = await scrape(m);
    const series = samplesOf(f, 'phantom_gateway_requests_total');
    expect(series).toHaveLength(1 + HTTP_METHODS.length + 2);
    expect(sampleValue(f, 'phantom_gateway_requests_total', labels('invoices', 'OTHER', '400', 'none'))).toBe(
      1000,
    );
    // Lower-case `get` is not GET (HTTP methods are case-sensitive): OTHER.
    expect(
      sampleValue(f, 'phantom_gateway_requests_total', labels('invoices', 'OTHER', '200', 'allowed')),
    ).toBe(1);
    expect(sampleValue(f, 'phantom_gateway_requests_total', labels('invoices', 'GET', '500', 'none'))).toBe(
      1,
    );
    const methods = new Set(series.map((s) => s.labels['method']));
    expect([...methods].every((x) => x === 'OTHER' || (HTTP_METHODS as readonly string[]).includes(x!))).toBe(
      true,
    );
    // Requests without a SPEC §5 reason are not decisions.
    const decisions = samplesOf(f, 'phantom_gateway_decisions_total');
    expect(decisions.reduce((a, s) => a + s.value, 0)).toBe(HTTP_METHODS.length + 1);
    // The status label is the numeric code.
    expect(series.every((s) => /^[1-5]\d\d$/.test(s.labels['status']!))).toBe(true);
  });
});

describe('histograms', () => {
  it('uses buckets in seconds, from 0.5 ms to 10 s, le inclusive, the rest in +Inf', async () => {
    const m = createMetrics({ defaultMetrics: false });
    for (const v of [0.0003, 0.0005, 0.001, 0.0011, 0.2, 9.9, 12])
      m.request('r', 'GET', 200, 'allowed', 'l1', v);
    const f = await scrape(m);
    const buckets = samplesOf(f, 'phantom_gateway_request_duration_seconds_bucket');
    expect(buckets.map((b) => b.labels['le'])).toEqual([...DURATION_BUCKETS_SECONDS.map(String), '+Inf']);
    const le = (x: string) =>
      sampleValue(f, 'phantom_gateway_request_duration_seconds_bucket', { route: 'r', status: '200', le: x });
    expect(le('0.0005')).toBe(2);
    expect(le('0.001')).toBe(3);
    expect(le('0.0025')).toBe(4);
    expect(le('0.25')).toBe(5);
    expect(le('10')).toBe(6);
    expect(le('+Inf')).toBe(7);
    expect(DURATION_BUCKETS_SECONDS[0]).toBe(0.0005);
    expect(DURATION_BUCKETS_SECONDS.at(-1)).toBe(10);
  });

  it("renders exactly what prom-client's own Histogram renders for the same observations", async () => {
    const m = createMetrics({ defaultMetrics: false });
    const reference = new Registry();
    const h = new Histogram({
      name: 'phantom_gateway_upstream_duration_seconds',
      help: 'x',
      labelNames: ['route'],
      buckets: [...DURATION_BUCKETS_SECONDS],
      registers: [reference],
    });
    const up = m.upstream('invoices');
    const values = [0.0001, 0.0005, 0.0007, 0.003, 0.04, 0.04, 0.6, 3, 11, 0];
    for (const v of values) {
      up.observe(v);
      h.observe({ route: 'invoices' }, v);
    }
    const ours = (await m.registry.getSingleMetricAsString('phantom_gateway_upstream_duration_seconds'))
      .split('\n')
      .slice(2);
    const theirs = (await reference.getSingleMetricAsString('phantom_gateway_upstream_duration_seconds'))
      .split('\n')
      .slice(2);
    expect(ours).toEqual(theirs);
    // And the JSON the cluster AggregatorRegistry reads: two workers' histograms add up.
    const jsonA = await m.registry.getMetricsAsJSON();
    const merged = AggregatorRegistry.aggregate([jsonA, jsonA]);
    const text = await merged.getSingleMetricAsString('phantom_gateway_upstream_duration_seconds');
    expect(text).toContain(
      `phantom_gateway_upstream_duration_seconds_count{route="invoices"} ${2 * values.length}`,
    );
    expect(text).toContain(
      'phantom_gateway_upstream_duration_seconds_bucket{le="0.0005",route="invoices"} 6',
    );
  });

  it('resetMetrics() zeroes the series in place: handles taken before keep counting', async () => {
    const m = createMetrics({ defaultMetrics: false });
    const up = m.upstream('a');
    up.observe(0.01);
    m.registry.resetMetrics();
    let f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_upstream_duration_seconds_count', { route: 'a' })).toBe(0);
    up.observe(0.01);
    f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_upstream_duration_seconds_count', { route: 'a' })).toBe(1);
  });
});

describe('introspection, upstream, cache, Redis and config metrics', () => {
  it('counts introspections and their durations by outcome (all four outcomes exist from the start)', async () => {
    const m = createMetrics({ defaultMetrics: false });
    let f = await scrape(m);
    for (const outcome of INTROSPECTION_OUTCOMES) {
      expect(sampleValue(f, 'phantom_gateway_introspections_total', { outcome })).toBe(0);
      expect(sampleValue(f, 'phantom_gateway_introspection_duration_seconds_count', { outcome })).toBe(0);
    }
    m.introspection('active', 0.004);
    m.introspection('active', 0.006);
    m.introspection('unavailable', 2);
    f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_introspections_total', { outcome: 'active' })).toBe(2);
    expect(sampleValue(f, 'phantom_gateway_introspections_total', { outcome: 'unavailable' })).toBe(1);
    expect(
      sampleValue(f, 'phantom_gateway_introspection_duration_seconds_count', { outcome: 'active' }),
    ).toBe(2);
    expect(
      sampleValue(f, 'phantom_gateway_introspection_duration_seconds_sum', { outcome: 'active' }),
    ).toBeCloseTo(0.01, 10);
    expect(
      sampleValue(f, 'phantom_gateway_introspection_duration_seconds_bucket', {
        outcome: 'unavailable',
        le: '1',
      }),
    ).toBe(0);
    expect(
      sampleValue(f, 'phantom_gateway_introspection_duration_seconds_bucket', {
        outcome: 'unavailable',
        le: '2.5',
      }),
    ).toBe(1);
  });

  it('counts upstream errors by route and reason', async () => {
    const m = createMetrics({ defaultMetrics: false });
    const up = m.upstream('orders');
    up.error('upstream_timeout');
    up.error('upstream_timeout');
    up.error('upstream_unavailable');
    const f = await scrape(m);
    const err = (reason: string) =>
      sampleValue(f, 'phantom_gateway_upstream_errors_total', { route: 'orders', reason });
    expect([err('upstream_timeout'), err('upstream_unavailable')]).toEqual([2, 1]);
  });

  it('reads the cache counters and the Redis state at scrape time', async () => {
    const m = createMetrics({ defaultMetrics: false });
    const cache = createCacheMetrics();
    let state: 'ready' | 'down' | 'connecting' = 'connecting';
    let errors = 0;
    m.watchCache(cache, { state: () => state, errors: () => errors });
    let f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_redis_up')).toBe(0);
    expect(sampleValue(f, 'phantom_gateway_cache_coalesced_waits_total')).toBe(0);
    state = 'ready';
    cache.coalescedWaits = 5;
    cache.lockContention = 2;
    cache.negativeHitsL2 = 3;
    cache.purgedEntries = 7;
    f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_redis_up')).toBe(1);
    expect(sampleValue(f, 'phantom_gateway_cache_coalesced_waits_total')).toBe(5);
    expect(sampleValue(f, 'phantom_gateway_cache_lock_contention_total')).toBe(2);
    expect(sampleValue(f, 'phantom_gateway_cache_negative_hits_total', { level: 'l2' })).toBe(3);
    expect(sampleValue(f, 'phantom_gateway_cache_purged_entries_total')).toBe(7);
    state = 'down';
    errors = 12;
    f = await scrape(m);
    expect(sampleValue(f, 'phantom_gateway_redis_up')).toBe(0);
    expect(sampleValue(f, 'phantom_gateway_redis_errors_total')).toBe(12);
    expect(() => m.watchCache(cache, undefined)).toThrow(/already/);
  });

  it('has no redis_up without Redis (nothing to alert on), and redis errors stay 0', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.watchCache(createCacheMetrics(), undefined);
    const f = await scrape(m);
    expect(f.has('phantom_gateway_redis_up')).toBe(false);
    expect(sampleValue(f, 'phantom_gateway_redis_errors_total')).toBe(0);
  });

  it('shows one config hash at a time and counts reloads by result', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.setConfigHash('aaaaaaaaaaaa');
    m.setConfigHash('bbbbbbbbbbbb');
    m.configReload('success');
    m.configReload('failure');
    m.configReload('success');
    const f = await scrape(m);
    expect(samplesOf(f, 'phantom_gateway_config_info')).toEqual([
      { name: 'phantom_gateway_config_info', labels: { hash: 'bbbbbbbbbbbb' }, value: 1 },
    ]);
    expect(sampleValue(f, 'phantom_gateway_config_reloads_total', { result: 'success' })).toBe(2);
    expect(sampleValue(f, 'phantom_gateway_config_reloads_total', { result: 'failure' })).toBe(1);
  });

  it('hashes a configuration independently of key order, and any changed value changes it', () => {
    const a = { routes: [{ name: 'x', upstream: 'http://u' }], realm: 'api', cache: { maxTtlSeconds: 900 } };
    const b = { cache: { maxTtlSeconds: 900 }, realm: 'api', routes: [{ upstream: 'http://u', name: 'x' }] };
    expect(configHash(a)).toMatch(/^[0-9a-f]{12}$/);
    expect(configHash(b)).toBe(configHash(a));
    expect(configHash({ ...a, realm: 'apj' })).not.toBe(configHash(a));
    expect(configHash({ ...a, routes: [...a.routes, ...a.routes] })).not.toBe(configHash(a));
    // An undefined member is the same as an absent one (JSON).
    expect(configHash({ ...a, ssf: undefined })).toBe(configHash(a));
  });
});

describe('the exposition reader used by these tests', () => {
  const ok = '# HELP x_total h\n# TYPE x_total counter\nx_total{a="q\\"\\\\\\n"} 3\n';
  it('reads labels with escapes', () => {
    expect(sampleValue(parsePrometheusText(ok), 'x_total', { a: 'q"\\\n' })).toBe(3);
  });
  it.each([
    ['no TYPE', 'x_total 1\n'],
    ['bad value', '# TYPE x counter\nx abc\n'],
    ['unterminated label', '# TYPE x counter\nx{a="b} 1\n'],
    ['duplicate series', '# TYPE x counter\nx{a="b"} 1\nx{a="b"} 2\n'],
    ['no trailing newline', '# TYPE x counter\nx 1'],
    [
      'buckets not cumulative',
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    ],
    ['+Inf ≠ count', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n'],
    ['garbage', '<html>not metrics</html>\n'],
  ])('rejects %s', (_what, text) => {
    expect(() => parsePrometheusText(text)).toThrow();
  });
});
