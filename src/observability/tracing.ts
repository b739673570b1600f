import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type * as Api from '@opentelemetry/api';
import type { Sampler } from '@opentelemetry/sdk-trace';
import { describeError } from '../errors/error-handler.ts';
import type { Logger } from './logger.ts';

/**
 * OpenTelemetry tracing (SPEC §10), on only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Off, nothing of OpenTelemetry is loaded (this
 * module imports its types only; the SDK comes by dynamic `import()` in initTracing) and the
 * stages pay one `c.trace !== undefined` check each: the client's `traceparent` and `tracestate`
 * reach the upstream as any other header, and the introspection request carries the client's
 * `traceparent`.
 *
 * On: a SERVER span per request, continued from a valid W3C `traceparent` (+ `tracestate`) or a
 * new trace, with the children `route match`, `cache lookup`, `introspection` (CLIENT) and
 * `forward` (CLIENT); the introspection request and the upstream request carry a `traceparent`
 * whose parent is their own CLIENT span. Spans are created with explicit parents (no context
 * manager, no auto-instrumentation), batched (BatchSpanProcessor) and exported as OTLP/HTTP JSON.
 * Attributes are the gateway's own values (method, route prefix, status, reason code, cache
 * level, upstream and token service host): never a token, JWT, header value, query or claim.
 */

/** `phantom.cache` of a `cache lookup` span: where the token's entry was found. */
export type LookupLevel = 'l1' | 'l2' | 'miss';

/** The OpenTelemetry modules and objects a request trace works with (loaded on demand). */
interface Otel {
  api: typeof import('@opentelemetry/api');
  tracer: Api.Tracer;
  propagator: Api.TextMapPropagator;
}

/** A span of the request's trace (the OpenTelemetry API's Span). */
export type TraceSpan = Api.Span;

/** The trace of one request: its SERVER span and the children the stages open under it. */
export class RequestTrace {
  /** For the access line (logs and traces join on it). */
  readonly traceId: string;
  readonly #otel: Otel;
  readonly #server: Api.Span;
  /** Context holding the server span: the parent of every child span. */
  readonly #parent: Api.Context;
  #forward: Api.Span | undefined;
  #ended = false;

  constructor(otel: Otel, req: IncomingMessage, requestId: string) {
    this.#otel = otel;
    const { api } = otel;
    // A valid traceparent (and its tracestate) continues the client's trace; anything else
    // (absent, malformed, two headers joined by Node) starts a new one.
    const remote = otel.propagator.extract(api.ROOT_CONTEXT, req.headers, api.defaultTextMapGetter);
    const url = req.url ?? '';
    const q = url.indexOf('?');
    this.#server = otel.tracer.startSpan(
      req.method ?? 'HTTP',
      {
        kind: api.SpanKind.SERVER,
        attributes: {
          'http.request.method': req.method ?? '_OTHER',
          'url.path': q === -1 ? url : url.slice(0, q),
          'url.scheme': (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http',
          'phantom.request_id': requestId,
        },
      },
      remote,
    );
    this.#parent = api.trace.setSpan(api.ROOT_CONTEXT, this.#server);
    this.traceId = this.#server.spanContext().traceId;
  }

  /** Starts a child of the server span (`client`: a request to another service). */
  child(name: string, kind: 'internal' | 'client' = 'internal', attributes?: Api.Attributes): Api.Span {
    const { api } = this.#otel;
    return this.#otel.tracer.startSpan(
      name,
      {
        kind: kind === 'client' ? api.SpanKind.CLIENT : api.SpanKind.INTERNAL,
        ...(attributes ? { attributes } : {}),
      },
      this.#parent,
    );
  }

  /** The `traceparent` of a request whose parent is `span`. */
  traceparentOf(span: Api.Span): string {
    const carrier: Record<string, string> = {};
    this.#inject(span, carrier);
    return carrier['traceparent']!;
  }

  #inject(span: Api.Span, carrier: Record<string, unknown>): void {
    const { api } = this.#otel;
    this.#otel.propagator.inject(
      api.trace.setSpan(api.ROOT_CONTEXT, span),
      carrier,
      api.defaultTextMapSetter,
    );
  }

  /** Route found: the server span becomes `GET /prefix` (low cardinality: never the raw path). */
  routeMatched(route: { name: string; pathPrefix: string }, method: string): void {
    this.#server.updateName(`${method} ${route.pathPrefix}`);
    this.#server.setAttribute('http.route', route.pathPrefix);
    this.#server.setAttribute('phantom.route', route.name);
  }

  /** Ends a `cache lookup` span with the level the entry (or the inactive verdict) was found at. */
  endLookup(span: Api.Span, level: LookupLevel, inactive: boolean): void {
    span.setAttribute('phantom.cache', level);
    if (inactive) span.setAttribute('phantom.cache_verdict', 'inactive');
    span.end();
  }

  /** Marks a span failed: error status and `error.type` (a reason code or an error name). */
  fail(span: Api.Span, err: unknown): void {
    const reason = (err as { reason?: unknown } | undefined)?.reason;
    const type =
      typeof reason === 'string' ? reason : ((err as { name?: unknown } | undefined)?.name ?? 'error');
    span.setAttribute('error.type', String(type));
    span.setStatus({ code: this.#otel.api.SpanStatusCode.ERROR });
  }

  /**
   * Stage 6: opens the `forward` span and puts its `traceparent` into the upstream request's
   * headers, replacing the client's (its `tracestate` travels on as the span's trace state).
   */
  startForward(upstream: URL, method: string, headers: IncomingHttpHeaders): void {
    const host = upstream.hostname;
    const span = this.child('forward', 'client', {
      'http.request.method': method,
      'server.address': host.startsWith('[') ? host.slice(1, -1) : host,
      'server.port': upstream.port !== '' ? Number(upstream.port) : upstream.protocol === 'https:' ? 443 : 80,
    });
    this.#forward = span;
    this.#inject(span, headers as Record<string, unknown>);
  }

  /** The upstream's status line arrived. */
  forwardResponse(status: number): void {
    const span = this.#forward;
    if (span === undefined) return;
    span.setAttribute('http.response.status_code', status);
    if (status >= 500) {
      span.setAttribute('error.type', String(status));
      span.setStatus({ code: this.#otel.api.SpanStatusCode.ERROR });
    }
  }

  /** The upstream exchange failed (502 / 504): the forward span ends with the reason. */
  forwardFailed(reason: string): void {
    const span = this.#forward;
    if (span === undefined) return;
    this.#forward = undefined;
    span.setAttribute('phantom.reason', reason);
    span.setAttribute('error.type', reason);
    span.setStatus({ code: this.#otel.api.SpanStatusCode.ERROR });
    span.end();
  }

  /**
   * The response is done (access log): the forward span (the answer streamed back) and the
   * server span end, with the status, reason code and cache level; a 5xx is an error.
   */
  end(status: number, reason: string | undefined, cache: string): void {
    if (this.#ended) return;
    this.#ended = true;
    const forward = this.#forward;
    if (forward !== undefined) {
      this.#forward = undefined;
      forward.end();
    }
    const s = this.#server;
    s.setAttribute('http.response.status_code', status);
    if (reason !== undefined) s.setAttribute('phantom.reason', reason);
    s.setAttribute('phantom.cache', cache);
    if (status >= 500) {
      s.setAttribute('error.type', String(status));
      s.setStatus({ code: this.#otel.api.SpanStatusCode.ERROR });
    }
    s.end();
  }
}

/** The process's tracing, when on. */
export interface Tracing {
  /** Starts the trace of a request (stage 1). */
  startRequest(req: IncomingMessage, requestId: string): RequestTrace;
  /** Exports what is buffered and stops (SIGTERM); bounded, never throws. */
  shutdown(): Promise<void>;
}

/** Whether the environment asks for tracing: an OTLP endpoint, and the SDK not disabled. */
export function tracingRequested(env: NodeJS.ProcessEnv): boolean {
  const endpoint =
    (env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] ?? '').trim() ||
    (env['OTEL_EXPORTER_OTLP_ENDPOINT'] ?? '').trim();
  if (endpoint === '') return false;
  if ((env['OTEL_SDK_DISABLED'] ?? '').trim().toLowerCase() === 'true') return false;
  return (env['OTEL_TRACES_EXPORTER'] ?? '').trim().toLowerCase() !== 'none';
}

/** Sampler names of the OpenTelemetry environment specification (OTEL_TRACES_SAMPLER). */
const SAMPLERS = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
] as const;
export type SamplerName = (typeof SAMPLERS)[number];

/** Batch span processor settings (OTEL_BSP_*); undefined: the SDK's default. */
export interface BatchSettings {
  scheduledDelayMillis?: number;
  exportTimeoutMillis?: number;
  maxQueueSize?: number;
  maxExportBatchSize?: number;
}

export interface TracingSettings {
  sampler: SamplerName;
  /** OTEL_TRACES_SAMPLER_ARG for the ratio samplers (0..1, default 1). */
  ratio: number;
  batch: BatchSettings;
  /** Problems with the variables (each ignored in favour of the default), for the log. */
  warnings: string[];
}

/**
 * The settings the standard variables give that the SDK (since 3.x) no longer reads itself:
 * OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_*. The exporter reads its own (OTEL_EXPORTER_OTLP_*
 * endpoint, headers, timeout, compression, certificates), the resource detectors
 * OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
 */
export function tracingSettingsFromEnv(env: NodeJS.ProcessEnv): TracingSettings {
  const warnings: string[] = [];
  const rawSampler = (env['OTEL_TRACES_SAMPLER'] ?? '').trim().toLowerCase();
  let sampler: SamplerName = 'parentbased_always_on';
  if (rawSampler !== '') {
    if ((SAMPLERS as readonly string[]).includes(rawSampler)) sampler = rawSampler as SamplerName;
    else warnings.push(`OTEL_TRACES_SAMPLER "${rawSampler}" is not supported: using parentbased_always_on`);
  }
  let ratio = 1;
  const rawArg = (env['OTEL_TRACES_SAMPLER_ARG'] ?? '').trim();
  if (rawArg !== '' && sampler.endsWith('traceidratio')) {
    const n = Number(rawArg);
    if (Number.isFinite(n) && n >= 0 && n <= 1) ratio = n;
    else warnings.push(`OTEL_TRACES_SAMPLER_ARG "${rawArg}" is not a ratio in [0, 1]: using 1`);
  }
  const batch: BatchSettings = {};
  const num = (name: string, key: keyof BatchSettings, min: number) => {
    const raw = (env[name] ?? '').trim();
    if (raw === '') return;
    const n = Number(raw);
    if (Number.isInteger(n) && n >= min) batch[key] = n;
    else warnings.push(`${name} "${raw}" is not an integer ≥ ${min}: using the default`);
  };
  num('OTEL_BSP_SCHEDULE_DELAY', 'scheduledDelayMillis', 0);
  num('OTEL_BSP_EXPORT_TIMEOUT', 'exportTimeoutMillis', 1);
  num('OTEL_BSP_MAX_QUEUE_SIZE', 'maxQueueSize', 1);
  num('OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 'maxExportBatchSize', 1);
  const protocol = (
    env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] ??
    env['OTEL_EXPORTER_OTLP_PROTOCOL'] ??
    ''
  ).trim();
  if (protocol !== '' && protocol !== 'http/json')
    warnings.push(`OTEL_EXPORTER_OTLP_PROTOCOL "${protocol}" is not supported: spans are sent as http/json`);
  return { sampler, ratio, batch, warnings };
}

/** Bound on the export at shutdown, so a dead collector cannot hold the exit. */
const SHUTDOWN_TIMEOUT_MS = 5_000;

/**
 * Tracing for this process when the environment asks for it (tracingRequested), else undefined
 * without loading anything. The SDK is loaded here, by dynamic import.
 */
export async function initTracing(
  logger: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Tracing | undefined> {
  if (!tracingRequested(env)) return undefined;
  const [api, core, sdk, resources, otlp] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/core'),
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/exporter-trace-otlp-http'),
  ]);
  // The SDK's own problems (failed exports, bad variables) go to our log, as warnings.
  const log =
    (level: 'warn' | 'error') =>
    (message: string, ...args: unknown[]) =>
      logger[level](
        { component: 'opentelemetry', detail: args.length > 0 ? args.map(String) : undefined },
        message,
      );
  api.diag.setLogger(
    {
      error: log('warn'),
      warn: log('warn'),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    api.DiagLogLevel.WARN,
  );

  const settings = tracingSettingsFromEnv(env);
  for (const w of settings.warnings) logger.warn({ component: 'opentelemetry' }, w);
  const sampler = samplerOf(sdk, settings);
  const resource = resources
    .defaultResource()
    .merge(resources.resourceFromAttributes({ 'service.name': 'phantom-gateway' }))
    .merge(
      resources.detectResources({
        detectors: [resources.resourceAttributesEnvDetector, resources.serviceNameEnvDetector],
      }),
    );
  const exporter = new otlp.OTLPTraceExporter();
  const provider = new sdk.TracerProvider({
    resource,
    sampler,
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter, ...settings.batch })],
  });
  const otel: Otel = {
    api,
    tracer: provider.getTracer('phantom-gateway'),
    propagator: new core.W3CTraceContextPropagator(),
  };
  logger.info(
    {
      component: 'opentelemetry',
      endpoint: endpointForLog(env),
      serviceName: resource.attributes['service.name'],
      sampler: settings.sampler,
      ...(settings.sampler.endsWith('traceidratio') ? { ratio: settings.ratio } : {}),
    },
    'tracing on: spans exported with OTLP/HTTP (JSON)',
  );

  let stopping: Promise<void> | undefined;
  return {
    startRequest: (req, requestId) => new RequestTrace(otel, req, requestId),
    shutdown() {
      stopping ??= new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          logger.warn({ component: 'opentelemetry' }, 'span export at shutdown timed out');
          resolve();
        }, SHUTDOWN_TIMEOUT_MS);
        timer.unref();
        provider.shutdown().then(
          () => {
            clearTimeout(timer);
            resolve();
          },
          (err: unknown) => {
            clearTimeout(timer);
            logger.warn(
              { component: 'opentelemetry', err: describeError(err) },
              'span export at shutdown failed',
            );
            resolve();
          },
        );
      });
      return stopping;
    },
  };
}

function samplerOf(sdk: typeof import('@opentelemetry/sdk-trace'), s: TracingSettings): Sampler {
  switch (s.sampler) {
    case 'always_on':
      return new sdk.AlwaysOnSampler();
    case 'always_off':
      return new sdk.AlwaysOffSampler();
    case 'traceidratio':
      return new sdk.TraceIdRatioBasedSampler(s.ratio);
    case 'parentbased_always_off':
      return new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new sdk.ParentBasedSampler({ root: new sdk.TraceIdRatioBasedSampler(s.ratio) });
    default:
      return new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() });
  }
}

/** The export URL without credentials (userinfo) or query, for the startup line. */
function endpointForLog(env: NodeJS.ProcessEnv): string {
  const specific = (env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] ?? '').trim();
  const raw = specific || `${(env['OTEL_EXPORTER_OTLP_ENDPOINT'] ?? '').trim().replace(/\/$/, '')}/v1/traces`;
  try {
    const u = new URL(raw);
    return `${u.origin}${u.pathname}`;
  } catch {
    return 'invalid URL';
  }
}
