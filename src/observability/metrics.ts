import { createHash } from 'node:crypto';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { CacheMetrics } from '../cache/cache-metrics.ts';
import type { RedisState } from '../cache/redis-store.ts';
import { HTTP_METHODS } from '../config/schema.ts';
import { REASON_CODES } from '../errors/reason-codes.ts';
import type { CacheLevel } from '../pipeline/context.ts';

/**
 * Prometheus metrics (SPEC §10), one `Registry` per gateway (never prom-client's global one:
 * several gateways may live in one process). The names are a contract with the Grafana dashboard
 * and the alert rules in k8s/monitoring/ (test/unit/deploy/promql.ts lists them).
 *
 * Hot path: what happens on every request (request count and duration, decision, cache level,
 * upstream latency) is accumulated in plain numbers — one Map lookup per label set, an array
 * increment and a bucket scan: 20–40 ns per request measured — and handed to prom-client only at
 * scrape time (`collect()` of a Counter; the histograms below render their own buckets).
 * prom-client's own `inc`/`observe` hash and validate the labels on every call: ≈ 200 ns each,
 * 670 ns for the four a request needs.
 *
 * Labels are bounded: `route` is a configured route name or `none` (no route matched; a route
 * named `none` shares that label), `method` one of the standard methods or `OTHER`, `status` the
 * 3-digit code, `reason` a SPEC §5 code (or `none`: a status ≥ 400 no stage decided). Never a
 * path, a header value or a token.
 */

/** Histogram buckets in seconds, from half a millisecond (an L1 hit) to the longest timeouts. */
export const DURATION_BUCKETS_SECONDS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

export const CACHE_LEVELS: readonly CacheLevel[] = ['l1', 'l2', 'introspection', 'none'];

/** How one introspection ended (the `outcome` label). */
export type IntrospectionOutcome = 'active' | 'inactive' | 'unavailable' | 'bad_answer';
export const INTROSPECTION_OUTCOMES: readonly IntrospectionOutcome[] = [
  'active',
  'inactive',
  'unavailable',
  'bad_answer',
];

export type UpstreamErrorReason = 'upstream_unavailable' | 'upstream_timeout';

/** The per-route handle forward.ts keeps (looked up once at boot). */
export interface UpstreamMetrics {
  /** Seconds from sending the request upstream to its response headers. */
  observe(seconds: number): void;
  error(reason: UpstreamErrorReason): void;
}

/** What the access log records once per request. */
export interface RequestMetrics {
  request(
    route: string | undefined,
    method: string,
    status: number,
    reason: string | undefined,
    cache: CacheLevel,
    seconds: number,
  ): void;
}

export interface IntrospectionMetrics {
  introspection(outcome: IntrospectionOutcome, seconds: number): void;
}

/** The Redis store as the metrics read it, at scrape time. */
export interface RedisHealth {
  state(): RedisState;
  errors(): number;
}

export interface GatewayMetrics extends RequestMetrics, IntrospectionMetrics {
  readonly registry: Registry;
  upstream(route: string): UpstreamMetrics;
  /** The cache counters and (when configured) Redis, read at every scrape. Call once. */
  watchCache(cache: CacheMetrics, redis: RedisHealth | undefined): void;
  configReload(result: 'success' | 'failure'): void;
  /** phantom_gateway_config_info{hash} = 1 for this hash only. */
  setConfigHash(hash: string): void;
  /** The exposition text (`registry.contentType`). */
  text(): Promise<string>;
}

/**
 * The hash of a configuration as `phantom_gateway_config_info{hash}` shows it: the first 12 hex
 * characters of the SHA-256 of the parsed configuration (defaults applied) serialised as JSON with
 * object keys sorted at every level. Two files that differ only in comments, key order or values
 * equal to the defaults hash the same; `${ENV}` values are the substituted ones (a changed secret
 * changes the hash; 48 bits of a digest of the whole configuration tell nothing about it).
 */
export function configHash(config: unknown): string {
  return createHash('sha256').update(stableJson(config)).digest('hex').slice(0, 12);
}

function stableJson(value: unknown): string {
  if (Array.isArray(value))
    return `[${value.map((v) => (v === undefined ? 'null' : stableJson(v))).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** One label set of a histogram: `counts[i]` observations in (bounds[i-1], bounds[i]], the last above every bound. */
interface HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

function observe(s: HistogramSeries, bounds: readonly number[], v: number): void {
  let i = 0;
  const n = bounds.length;
  while (i < n && v > bounds[i]!) i++;
  s.counts[i]!++;
  s.sum += v;
  s.count++;
}

type Snapshot = Awaited<ReturnType<Histogram['get']>>;

/**
 * A prom-client Histogram whose series are filled by `observe()` above on plain numbers and
 * rendered at scrape time in prom-client's own format (`le` buckets cumulative, `+Inf`, `_sum`,
 * `_count`; the registry, `getMetricsAsJSON` and the cluster AggregatorRegistry read it as any
 * histogram). Its `observe`/`startTimer` are not used.
 */
class AccumulatedHistogram extends Histogram {
  private readonly series = new Map<string, HistogramSeries>();
  private readonly bounds: readonly number[];

  constructor(cfg: { name: string; help: string; labelNames: readonly string[]; registry: Registry }) {
    super({
      name: cfg.name,
      help: cfg.help,
      labelNames: cfg.labelNames,
      buckets: [...DURATION_BUCKETS_SECONDS],
      registers: [cfg.registry],
    });
    this.bounds = DURATION_BUCKETS_SECONDS;
  }

  /** The series of `labels` (created at 0 on first use); keep it, do not look it up per observation. */
  child(labels: Readonly<Record<string, string>>, key = JSON.stringify(labels)): HistogramSeries {
    let s = this.series.get(key);
    if (s === undefined) {
      s = { labels, counts: new Float64Array(this.bounds.length + 1), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    return s;
  }

  /** Zeroes every series in place (handles kept by callers stay attached). */
  override reset(): void {
    // Called by the base constructor before this class's fields exist.
    for (const s of this.series?.values() ?? []) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  /**
   * prom-client's histogram layout: `labels` holds `le` only and `sharedLabels` the series'
   * labels (rendered `le` first, as prom-client's own Histogram does).
   */
  async getForPromString(): Promise<Snapshot> {
    const name = (this as unknown as { name: string }).name;
    const bucket = `${name}_bucket`;
    const values: Array<{
      labels: Record<string, string | number>;
      sharedLabels: Readonly<Record<string, string>>;
      value: number;
      metricName: string;
    }> = [];
    for (const s of this.series.values()) {
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.counts[i]!;
        values.push({
          labels: { le: this.bounds[i]! },
          sharedLabels: s.labels,
          value: acc,
          metricName: bucket,
        });
      }
      values.push({ labels: { le: '+Inf' }, sharedLabels: s.labels, value: s.count, metricName: bucket });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${name}_sum` });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${name}_count` });
    }
    const self = this as unknown as { help: string; aggregator: string };
    return {
      name,
      help: self.help,
      type: 'histogram',
      values,
      aggregator: self.aggregator,
    } as unknown as Snapshot;
  }

  /** The same with the labels merged (`getMetricsAsJSON`, the cluster AggregatorRegistry). */
  override async get(): Promise<Snapshot> {
    const data = await this.getForPromString();
    const values = (
      data.values as unknown as Array<{
        labels: object;
        sharedLabels: object;
        value: number;
        metricName: string;
      }>
    ).map(({ labels, sharedLabels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } }));
    return { ...data, values } as unknown as Snapshot;
  }
}

const METHOD_INDEX = new Map<string, number>(HTTP_METHODS.map((m, i) => [m, i]));
const METHOD_LABELS: readonly string[] = [...HTTP_METHODS, 'OTHER'];
const OTHER_METHOD = HTTP_METHODS.length;

const REASON_INDEX = new Map<string, number>(REASON_CODES.map((r, i) => [r, i]));
const REASON_LABELS: readonly string[] = [...REASON_CODES, 'none'];
/** A request that ended without a reason code (status ≥ 400 that no stage decided). */
const NO_REASON = REASON_CODES.length;

const LEVEL_INDEX: Readonly<Record<CacheLevel, number>> = { l1: 0, l2: 1, introspection: 2, none: 3 };

/** Requests of one route, by (status, method, reason); durations by status. */
interface RouteSeries {
  readonly name: string;
  readonly requests: Map<number, RequestSeries>;
}

interface RequestSeries {
  readonly labels: { route: string; method: string; status: string; reason: string };
  count: number;
  readonly duration: HistogramSeries;
}

/**
 * The gateway's metrics: `phantom_gateway_*` on a fresh Registry plus prom-client's default
 * process_* / nodejs_* metrics (unless `defaultMetrics: false`).
 */
export function createMetrics(opts: { defaultMetrics?: boolean } = {}): GatewayMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });

  // --- per request (access log) -----------------------------------------------------------------
  const routes = new Map<string, RouteSeries>();
  const decisions = new Float64Array(REASON_CODES.length);
  const lookups = new Float64Array(CACHE_LEVELS.length);

  new Counter({
    name: 'phantom_gateway_requests_total',
    help: 'Requests answered on the public listener, by route (none: no route matched), method, status and reason code.',
    labelNames: ['route', 'method', 'status', 'reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const r of routes.values()) for (const s of r.requests.values()) this.inc(s.labels, s.count);
    },
  });
  const requestDuration = new AccumulatedHistogram({
    name: 'phantom_gateway_request_duration_seconds',
    help: 'Time from receiving a request to the end of its response, by route and status.',
    labelNames: ['route', 'status'],
    registry,
  });
  new Counter({
    name: 'phantom_gateway_decisions_total',
    help: 'Decisions by SPEC §5 reason code (allowed or why the request was refused).',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (let i = 0; i < REASON_CODES.length; i++) this.inc({ reason: REASON_CODES[i]! }, decisions[i]!);
    },
  });
  new Counter({
    name: 'phantom_gateway_cache_lookups_total',
    help: 'Where the JWT of a request came from: l1 (in-process), l2 (Redis), introspection, none (no token needed or refused before).',
    labelNames: ['level'],
    registers: [registry],
    collect() {
      this.reset();
      for (let i = 0; i < CACHE_LEVELS.length; i++) this.inc({ level: CACHE_LEVELS[i]! }, lookups[i]!);
    },
  });

  function routeSeries(name: string): RouteSeries {
    let r = routes.get(name);
    if (r === undefined) {
      r = { name, requests: new Map() };
      routes.set(name, r);
    }
    return r;
  }
  const noRoute = routeSeries('none');

  function addRequestSeries(
    r: RouteSeries,
    key: number,
    status: number,
    m: number,
    ri: number,
  ): RequestSeries {
    const statusLabel = String(status);
    const s: RequestSeries = {
      labels: { route: r.name, method: METHOD_LABELS[m]!, status: statusLabel, reason: REASON_LABELS[ri]! },
      count: 0,
      duration: requestDuration.child({ route: r.name, status: statusLabel }, `${r.name} ${statusLabel}`),
    };
    r.requests.set(key, s);
    return s;
  }

  // --- introspection ----------------------------------------------------------------------------
  const introspections = new Counter({
    name: 'phantom_gateway_introspections_total',
    help: 'Introspection requests to the token service, by outcome (active, inactive, unavailable: could not ask, bad_answer: unusable answer).',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const introspectionDuration = new AccumulatedHistogram({
    name: 'phantom_gateway_introspection_duration_seconds',
    help: 'Duration of an introspection (the one retry after a reset included), by outcome.',
    labelNames: ['outcome'],
    registry,
  });
  const introspectionSeries = new Map<IntrospectionOutcome, HistogramSeries>();
  for (const outcome of INTROSPECTION_OUTCOMES) {
    introspections.inc({ outcome }, 0);
    introspectionSeries.set(outcome, introspectionDuration.child({ outcome }));
  }

  // --- upstream ---------------------------------------------------------------------------------
  const upstreamDuration = new AccumulatedHistogram({
    name: 'phantom_gateway_upstream_duration_seconds',
    help: 'Time from sending a request upstream to its response headers, by route.',
    labelNames: ['route'],
    registry,
  });
  const upstreamErrors = new Counter({
    name: 'phantom_gateway_upstream_errors_total',
    help: 'Upstream requests that failed, by route and reason (upstream_unavailable: refused/reset, upstream_timeout).',
    labelNames: ['route', 'reason'],
    registers: [registry],
  });

  // --- configuration ----------------------------------------------------------------------------
  const reloads = new Counter({
    name: 'phantom_gateway_config_reloads_total',
    help: 'Configuration and key material reloads (SIGHUP), by result.',
    labelNames: ['result'],
    registers: [registry],
  });
  reloads.inc({ result: 'success' }, 0);
  reloads.inc({ result: 'failure' }, 0);
  const configInfo = new Gauge({
    name: 'phantom_gateway_config_info',
    help: 'Always 1; `hash` identifies the active configuration (SHA-256 of its canonical JSON, 12 hex characters).',
    labelNames: ['hash'],
    registers: [registry],
    // listen.workers: one series per hash, 1 whatever the number of workers reporting it.
    aggregator: 'max',
  });

  let watching = false;

  return {
    registry,

    request(route, method, status, reason, cache, seconds) {
      const r = route === undefined ? noRoute : (routes.get(route) ?? routeSeries(route));
      const m = METHOD_INDEX.get(method) ?? OTHER_METHOD;
      const ri = reason === undefined ? NO_REASON : (REASON_INDEX.get(reason) ?? NO_REASON);
      // One small integer per (status, method, reason) label set.
      const key = (status * METHOD_LABELS.length + m) * REASON_LABELS.length + ri;
      const s = r.requests.get(key) ?? addRequestSeries(r, key, status, m, ri);
      s.count++;
      observe(s.duration, DURATION_BUCKETS_SECONDS, seconds);
      if (ri !== NO_REASON) decisions[ri]!++;
      lookups[LEVEL_INDEX[cache]]!++;
    },

    introspection(outcome, seconds) {
      introspections.inc({ outcome });
      observe(introspectionSeries.get(outcome)!, DURATION_BUCKETS_SECONDS, seconds);
    },

    upstream(route) {
      const duration = upstreamDuration.child({ route });
      return {
        observe(seconds) {
          observe(duration, DURATION_BUCKETS_SECONDS, seconds);
        },
        error(reason) {
          upstreamErrors.inc({ route, reason });
        },
      };
    },

    watchCache(cache, redis) {
      if (watching) throw new Error('watchCache: already watching a cache');
      watching = true;
      const counter = (name: string, help: string, read: () => number) =>
        new Counter({
          name,
          help,
          registers: [registry],
          collect() {
            this.reset();
            this.inc(read());
          },
        });
      counter(
        'phantom_gateway_cache_coalesced_waits_total',
        "Requests that waited for another replica's introspection of the same token instead of introspecting.",
        () => cache.coalescedWaits,
      );
      counter(
        'phantom_gateway_cache_lock_contention_total',
        'Introspection lock attempts that found the lock held by another replica.',
        () => cache.lockContention,
      );
      counter(
        'phantom_gateway_cache_coalesce_timeouts_total',
        'Waits for another replica that reached the introspection timeout and introspected themselves.',
        () => cache.coalesceTimeouts,
      );
      counter(
        'phantom_gateway_cache_l2_rejected_total',
        'Redis values that did not decrypt or verify (tampered, foreign key, stale signing key): treated as misses.',
        () => cache.l2Rejected,
      );
      counter(
        'phantom_gateway_cache_purges_total',
        'Purges applied (admin /cache/purge, Security Event Tokens, announcements of other replicas).',
        () => cache.purges,
      );
      counter(
        'phantom_gateway_cache_purged_entries_total',
        'Cache entries removed by purges.',
        () => cache.purgedEntries,
      );
      new Counter({
        name: 'phantom_gateway_cache_negative_hits_total',
        help: 'Lookups answered by a cached "inactive" verdict, by level.',
        labelNames: ['level'],
        registers: [registry],
        collect() {
          this.reset();
          this.inc({ level: 'l1' }, cache.negativeHitsL1);
          this.inc({ level: 'l2' }, cache.negativeHitsL2);
        },
      });
      counter(
        'phantom_gateway_redis_errors_total',
        'Redis operations that did not succeed (errors, timeouts, skipped while Redis is down).',
        () => redis?.errors() ?? 0,
      );
      // Only with Redis configured: a gateway without Redis has no Redis to be down.
      if (redis !== undefined) {
        new Gauge({
          name: 'phantom_gateway_redis_up',
          help: '1 when Redis is connected and answering (circuit closed), else 0.',
          registers: [registry],
          // listen.workers: 0 as soon as one worker has lost Redis.
          aggregator: 'min',
          collect() {
            this.set(redis.state() === 'ready' ? 1 : 0);
          },
        });
      }
    },

    configReload(result) {
      reloads.inc({ result });
    },

    setConfigHash(hash) {
      configInfo.reset();
      configInfo.set({ hash }, 1);
    },

    text() {
      return registry.metrics();
    },
  };
}
