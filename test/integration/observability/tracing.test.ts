import { randomBytes, randomUUID } from 'node:crypto';
import http, { type Server } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tracingRequested, tracingSettingsFromEnv } from '../../../src/observability/tracing.ts';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * OpenTelemetry tracing of the real gateway process (SPEC §10, issue 7 part 3): a local OTLP/HTTP
 * receiver (JSON) started here, a stub token service (Curity's accept-jwt behaviour) and an echo
 * upstream that both record the `traceparent` they receive. One gateway with
 * OTEL_EXPORTER_OTLP_ENDPOINT set (spans, parent links, propagation, no credentials in any
 * attribute), one without (nothing exported, the client's `traceparent` passed through as before).
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'tracing-gateway-secret-0123456789';
const AUD = 'https://api.example.test';

/** One span as the OTLP JSON encoding carries it, attributes flattened. */
interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  status: number;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
}

/** OTLP SpanKind / StatusCode values. */
const KIND = { internal: 1, server: 2, client: 3 } as const;
const STATUS_ERROR = 2;

interface OtlpReceiver {
  url: string;
  /** Every export body, as received (decompressed) text. */
  bodies: string[];
  spans(): ExportedSpan[];
  close(): Promise<void>;
}

type OtlpValue = {
  stringValue?: string;
  intValue?: string | number;
  boolValue?: boolean;
  doubleValue?: number;
};
type OtlpAttribute = { key: string; value: OtlpValue };

function flatten(attrs: OtlpAttribute[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const a of attrs ?? []) {
    const v = a.value;
    out[a.key] =
      v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.boolValue ?? v.doubleValue));
  }
  return out;
}

/** A real OTLP/HTTP receiver: POST /v1/traces with a JSON body (gzip accepted), answered 200. */
async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const bodies: string[] = [];
  const server: Server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      const raw = Buffer.concat(chunks);
      bodies.push((req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8'));
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    spans() {
      const out: ExportedSpan[] = [];
      for (const body of bodies) {
        const doc = JSON.parse(body) as {
          resourceSpans?: Array<{
            resource?: { attributes?: OtlpAttribute[] };
            scopeSpans?: Array<{
              spans?: Array<{
                traceId: string;
                spanId: string;
                parentSpanId?: string;
                name: string;
                kind: number;
                status?: { code?: number };
                attributes?: OtlpAttribute[];
              }>;
            }>;
          }>;
        };
        for (const rs of doc.resourceSpans ?? []) {
          const resource = flatten(rs.resource?.attributes);
          for (const ss of rs.scopeSpans ?? [])
            for (const s of ss.spans ?? [])
              out.push({
                traceId: s.traceId,
                spanId: s.spanId,
                parentSpanId: s.parentSpanId ?? '',
                name: s.name,
                kind: s.kind,
                status: s.status?.code ?? 0,
                attributes: flatten(s.attributes),
                resource,
              });
        }
      }
      return out;
    },
    close: () =>
      new Promise((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

let receiver: OtlpReceiver;
let stub: CurityStub;
let up: EchoUpstream;
/** OTEL_EXPORTER_OTLP_ENDPOINT set. */
let traced: GatewayProcess;
/** No OTLP endpoint: tracing off. */
let plain: GatewayProcess;
/** The gateway configuration both use. */
let config: Record<string, unknown>;

const tokens: string[] = [];
const jwts: string[] = [];

function activeToken(): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', aud: AUD, scope: 'read' });
  tokens.push(t);
  return t;
}

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

/** The spans of trace `traceId`, once `count` of them were exported (bounded wait). */
async function spansOf(traceId: string, count: number): Promise<ExportedSpan[]> {
  let found: ExportedSpan[] = [];
  await waitFor(
    () => {
      found = receiver.spans().filter((s) => s.traceId === traceId);
      return found.length >= count;
    },
    10_000,
    `${count} spans of trace ${traceId}`,
  );
  return found;
}

function one(spans: ExportedSpan[], name: string): ExportedSpan {
  const matching = spans.filter((s) => s.name === name);
  expect(matching, `exactly one "${name}" span`).toHaveLength(1);
  return matching[0]!;
}

const upstreamRequest = (id: string) => up.requests.find((r) => r.headers['x-request-id'] === id);
const introspectionOf = (token: string) => stub.requests.filter((r) => r.body.get('token') === token);

beforeAll(async () => {
  let deadPort: number;
  [receiver, stub, up, deadPort] = await Promise.all([
    startOtlpReceiver(),
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
    freePort(),
  ]);
  const sign = stub.signJwt;
  stub.signJwt = async (...args) => {
    const jwt = await sign(...args);
    jwts.push(jwt);
    return jwt;
  };
  config = {
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 2000,
    },
    jwt: { audience: AUD },
    routes: [
      { name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] },
      // Nothing listens there: connection refused → 502.
      {
        name: 'broken',
        match: { pathPrefix: '/broken' },
        upstream: `http://127.0.0.1:${deadPort}`,
        auth: 'none',
      },
    ],
  };
  const common = { GW_SECRET, OTEL_BSP_SCHEDULE_DELAY: '100' };
  [traced, plain] = await Promise.all([
    startGateway(config, {
      env: {
        ...common,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_SERVICE_NAME: '',
        OTEL_TRACES_SAMPLER: '',
      },
    }),
    startGateway(config, {
      env: { ...common, OTEL_EXPORTER_OTLP_ENDPOINT: '', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '' },
    }),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([traced?.stop(), plain?.stop()]);
  await Promise.all([receiver?.close(), stub?.close(), up?.close()]);
});

describe('tracing on (OTEL_EXPORTER_OTLP_ENDPOINT set)', () => {
  it('logs that tracing is on, with the export URL and service name', () => {
    const line = traced.logs().find((l) => l['component'] === 'opentelemetry' && l['level'] === 'info');
    expect(line?.['endpoint']).toBe(`${receiver.url}/v1/traces`);
    expect(line?.['serviceName']).toBe('phantom-gateway');
  });

  it("continues the client's trace: server span under the client's span, children under it, traceparent to the token service and the upstream", async () => {
    const token = activeToken();
    const traceId = hex(16);
    const clientSpan = hex(8);
    const id = `tr-${randomUUID()}`;
    const res = await request(`${traced.url}/api/items/42?secret=query-value`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-request-id': id,
        traceparent: `00-${traceId}-${clientSpan}-01`,
        tracestate: 'vendor=abc',
      },
    });
    expect(res.status).toBe(200);

    const spans = await spansOf(traceId, 5);
    const server = one(spans, 'GET /api');
    expect(server.kind).toBe(KIND.server);
    expect(server.parentSpanId).toBe(clientSpan);
    expect(server.resource['service.name']).toBe('phantom-gateway');
    expect(server.attributes).toMatchObject({
      'http.request.method': 'GET',
      'http.route': '/api',
      'http.response.status_code': 200,
      'url.path': '/api/items/42',
      'phantom.route': 'api',
      'phantom.reason': 'allowed',
      'phantom.cache': 'introspection',
      'phantom.request_id': id,
    });
    expect(server.status).not.toBe(STATUS_ERROR);

    const routeMatch = one(spans, 'route match');
    const lookup = one(spans, 'cache lookup');
    const introspection = one(spans, 'introspection');
    const forward = one(spans, 'forward');
    for (const child of [routeMatch, lookup, introspection, forward])
      expect(child.parentSpanId, `${child.name}'s parent`).toBe(server.spanId);
    expect(routeMatch.kind).toBe(KIND.internal);
    expect(lookup.kind).toBe(KIND.internal);
    expect(lookup.attributes['phantom.cache']).toBe('miss');
    expect(introspection.kind).toBe(KIND.client);
    expect(introspection.attributes).toMatchObject({
      'phantom.introspection.outcome': 'active',
      'server.address': '127.0.0.1',
      'server.port': stub.port,
      'http.response.status_code': 200,
    });
    expect(forward.kind).toBe(KIND.client);
    expect(forward.attributes).toMatchObject({
      'server.address': '127.0.0.1',
      'server.port': up.port,
      'http.request.method': 'GET',
      'http.response.status_code': 200,
    });

    // The token service saw the introspection span as the parent, the upstream the forward span.
    const asked = introspectionOf(token);
    expect(asked).toHaveLength(1);
    expect(asked[0]!.headers.traceparent).toBe(`00-${traceId}-${introspection.spanId}-01`);
    const got = upstreamRequest(id);
    expect(got?.headers.traceparent).toBe(`00-${traceId}-${forward.spanId}-01`);
    expect(got?.headers.tracestate).toBe('vendor=abc');

    // Logs and traces join on the trace id.
    expect((await accessLine(traced, id))['traceId']).toBe(traceId);
  });

  it('starts a new trace when the client sends no traceparent (or an invalid one), and still propagates it', async () => {
    for (const sent of [undefined, '00-not-a-valid-traceparent-01']) {
      const token = activeToken();
      const id = `tr-${randomUUID()}`;
      const res = await request(`${traced.url}/api/new`, {
        headers: {
          authorization: `Bearer ${token}`,
          'x-request-id': id,
          ...(sent !== undefined ? { traceparent: sent } : {}),
        },
      });
      expect(res.status).toBe(200);
      const traceId = (await accessLine(traced, id))['traceId'] as string;
      expect(traceId).toMatch(/^[0-9a-f]{32}$/);
      const spans = await spansOf(traceId, 5);
      const server = one(spans, 'GET /api');
      expect(server.parentSpanId).toBe('');
      const introspection = one(spans, 'introspection');
      const forward = one(spans, 'forward');
      expect(introspectionOf(token)[0]!.headers.traceparent).toBe(`00-${traceId}-${introspection.spanId}-01`);
      expect(upstreamRequest(id)?.headers.traceparent).toBe(`00-${traceId}-${forward.spanId}-01`);
    }
  });

  it('an L1 hit has a cache lookup span at level l1 and no introspection span', async () => {
    const token = activeToken();
    const warm = await request(`${traced.url}/api/warm`, { headers: { authorization: `Bearer ${token}` } });
    expect(warm.status).toBe(200);
    const traceId = hex(16);
    const id = `tr-${randomUUID()}`;
    const res = await request(`${traced.url}/api/hit`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-request-id': id,
        traceparent: `00-${traceId}-${hex(8)}-01`,
      },
    });
    expect(res.status).toBe(200);
    // The server span ends last (with the forward span): once it is in, the set is complete.
    const spans = await spansOf(traceId, 4);
    expect(spans.map((s) => s.name).sort()).toEqual(['GET /api', 'cache lookup', 'forward', 'route match']);
    expect(one(spans, 'cache lookup').attributes['phantom.cache']).toBe('l1');
    expect(one(spans, 'GET /api').attributes['phantom.cache']).toBe('l1');
    expect(introspectionOf(token)).toHaveLength(1);
  });

  it('an unsampled client trace (flags 00) is continued unsampled: nothing exported, a new parent id upstream', async () => {
    const token = activeToken();
    const traceId = hex(16);
    const clientSpan = hex(8);
    const id = `tr-${randomUUID()}`;
    const res = await request(`${traced.url}/api/unsampled`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-request-id': id,
        traceparent: `00-${traceId}-${clientSpan}-00`,
      },
    });
    expect(res.status).toBe(200);
    const sent = upstreamRequest(id)?.headers.traceparent as string;
    expect(sent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
    expect(sent).not.toContain(clientSpan);
    // A later sampled request's spans are exported: the unsampled one's would have been by then.
    const barrier = hex(16);
    await request(`${traced.url}/api/barrier`, {
      headers: { authorization: `Bearer ${token}`, traceparent: `00-${barrier}-${hex(8)}-01` },
    });
    await spansOf(barrier, 4);
    expect(receiver.spans().filter((s) => s.traceId === traceId)).toEqual([]);
  });

  it('a 5xx marks the server and forward spans as errors, with the reason code', async () => {
    const traceId = hex(16);
    const res = await request(`${traced.url}/broken/x`, {
      headers: { traceparent: `00-${traceId}-${hex(8)}-01` },
    });
    expect(res.status).toBe(502);
    const spans = await spansOf(traceId, 3);
    const server = one(spans, 'GET /broken');
    expect(server.status).toBe(STATUS_ERROR);
    expect(server.attributes).toMatchObject({
      'http.response.status_code': 502,
      'phantom.reason': 'upstream_unavailable',
      'phantom.cache': 'none',
    });
    const forward = one(spans, 'forward');
    expect(forward.status).toBe(STATUS_ERROR);
    expect(forward.attributes['phantom.reason']).toBe('upstream_unavailable');
  });

  it('no token, JWT, Authorization value or query string appears in any exported span', async () => {
    expect(receiver.bodies.length).toBeGreaterThan(0);
    expect(tokens.length).toBeGreaterThan(0);
    expect(jwts.length).toBeGreaterThan(0);
    const everything = receiver.bodies.join('\n');
    for (const t of tokens) expect(everything).not.toContain(t);
    for (const j of jwts) {
      expect(everything).not.toContain(j);
      // Not even the signature or the payload part alone.
      for (const part of j.split('.').slice(1)) expect(everything).not.toContain(part);
    }
    expect(everything).not.toMatch(/bearer/i);
    expect(everything).not.toContain('query-value');
    expect(everything).not.toContain(GW_SECRET);
  });
});

describe('shutdown', () => {
  it('SIGTERM exports the spans still waiting in the batch before the process exits', async () => {
    // A schedule delay far beyond the test: only the shutdown flush can deliver these spans.
    const gw = await startGateway(config, {
      env: {
        GW_SECRET,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
        OTEL_BSP_SCHEDULE_DELAY: '600000',
      },
    });
    try {
      const traceId = hex(16);
      const res = await request(`${gw.url}/api/last`, {
        headers: { authorization: `Bearer ${activeToken()}`, traceparent: `00-${traceId}-${hex(8)}-01` },
      });
      expect(res.status).toBe(200);
      expect(receiver.spans().filter((s) => s.traceId === traceId)).toEqual([]);
      expect(await gw.stop()).toBe(0);
      const names = receiver
        .spans()
        .filter((s) => s.traceId === traceId)
        .map((s) => s.name)
        .sort();
      expect(names).toEqual(['GET /api', 'cache lookup', 'forward', 'introspection', 'route match']);
    } finally {
      await gw.stop();
    }
  });
});

describe('tracing off (no OTLP endpoint)', () => {
  it("loads nothing, exports nothing and passes the client's traceparent through unchanged", async () => {
    expect(plain.logs().some((l) => l['component'] === 'opentelemetry')).toBe(false);
    const token = activeToken();
    const traceId = hex(16);
    const traceparent = `00-${traceId}-${hex(8)}-01`;
    const id = `pl-${randomUUID()}`;
    const res = await request(`${plain.url}/api/plain`, {
      headers: {
        authorization: `Bearer ${token}`,
        'x-request-id': id,
        traceparent,
        tracestate: 'vendor=xyz',
      },
    });
    expect(res.status).toBe(200);
    const got = upstreamRequest(id);
    expect(got?.headers.traceparent).toBe(traceparent);
    expect(got?.headers.tracestate).toBe('vendor=xyz');
    expect(introspectionOf(token)[0]!.headers.traceparent).toBe(traceparent);
    expect((await accessLine(plain, id))['traceId']).toBeUndefined();
    // Both gateways export every 100 ms when tracing is on: after the traced gateway's next spans
    // arrived, nothing of this trace came in.
    const barrier = hex(16);
    await request(`${traced.url}/api/barrier`, {
      headers: { authorization: `Bearer ${token}`, traceparent: `00-${barrier}-${hex(8)}-01` },
    });
    await spansOf(barrier, 4);
    expect(receiver.spans().filter((s) => s.traceId === traceId)).toEqual([]);
  });
});

describe('the standard variables', () => {
  it('turn tracing on only with an OTLP endpoint, and off with OTEL_SDK_DISABLED / OTEL_TRACES_EXPORTER=none', () => {
    expect(tracingRequested({})).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' })).toBe(true);
    expect(
      tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }),
    ).toBe(false);
    expect(
      tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' }),
    ).toBe(false);
  });

  it('give the sampler and batch settings, with a warning for each unusable value', () => {
    expect(tracingSettingsFromEnv({})).toEqual({
      sampler: 'parentbased_always_on',
      ratio: 1,
      batch: {},
      warnings: [],
    });
    const s = tracingSettingsFromEnv({
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.25',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_BSP_MAX_QUEUE_SIZE: '4096',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '256',
      OTEL_BSP_EXPORT_TIMEOUT: '10000',
    });
    expect(s).toEqual({
      sampler: 'parentbased_traceidratio',
      ratio: 0.25,
      batch: {
        scheduledDelayMillis: 100,
        maxQueueSize: 4096,
        maxExportBatchSize: 256,
        exportTimeoutMillis: 10000,
      },
      warnings: [],
    });
    const bad = tracingSettingsFromEnv({
      OTEL_TRACES_SAMPLER: 'jaeger_remote',
      OTEL_BSP_SCHEDULE_DELAY: 'soon',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    });
    expect(bad.sampler).toBe('parentbased_always_on');
    expect(bad.batch).toEqual({});
    expect(bad.warnings).toHaveLength(3);
    expect(
      tracingSettingsFromEnv({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' }),
    ).toMatchObject({
      ratio: 1,
      warnings: [expect.stringContaining('OTEL_TRACES_SAMPLER_ARG')],
    });
  });
});
