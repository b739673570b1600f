import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import autocannon, { type AutocannonRequest } from 'autocannon';

/**
 * The load generator, run as its own process (pinned to the load CPUs by bench/lib/load.ts) so
 * it never shares an event loop with the runner or the servers. Reads a LoadSpec (JSON file
 * named by argv[2]), drives autocannon 9 (or, for `keepAlive: false`, a bounded loop of
 * one-connection-per-request clients), and prints one JSON line: a LoadSample.
 *
 * Latency percentiles come from every 2xx response time autocannon reports (float ms), not from
 * its own histogram, which records whole milliseconds: the goals compare p99s within 1 ms.
 */

export interface LoadSpec {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  connections: number;
  durationSeconds: number;
  /** false: a new TCP connection for every request (client sends Connection: close). */
  keepAlive: boolean;
  /** Request body of this many bytes (uploads). */
  bodyBytes?: number;
  /** A file with one token per line: request i carries `Authorization: Bearer <tokens[offset + i]>`. */
  tokensFile?: string;
  tokenOffset?: number;
  /** Cycle through the file's tokens (L2 pool) instead of using each token once (misses). */
  tokensCycle?: boolean;
}

export interface LoadSample {
  /** Responses received (any status) per second. */
  rps: number;
  /** Response bytes per second. */
  bytesPerSec: number;
  latencyMs: { p50: number; p99: number; p999: number };
  requests: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  /** Tokens taken from the file (miss scenario bookkeeping). */
  tokensUsed: number;
  /** Requests that found the token file exhausted and reused a token (makes a miss figure invalid). */
  tokensExhausted: number;
  statusCodes: Record<string, number>;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i]! * 1000) / 1000;
}

/** Latency samples: a growable Float64Array (hundreds of thousands of responses per run). */
class Samples {
  buf = new Float64Array(1 << 16);
  n = 0;
  push(v: number): void {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = v;
  }
  percentiles(): LoadSample['latencyMs'] {
    const s = this.buf.subarray(0, this.n).sort();
    return { p50: percentile(s, 50), p99: percentile(s, 99), p999: percentile(s, 99.9) };
  }
}

function tokenSource(spec: LoadSpec): { next(): string; used(): number; exhausted(): number } | undefined {
  if (spec.tokensFile === undefined) return undefined;
  const tokens = readFileSync(spec.tokensFile, 'utf8').split('\n').filter(Boolean);
  let i = spec.tokenOffset ?? 0;
  let used = 0;
  let exhausted = 0;
  return {
    next() {
      used++;
      if (i >= tokens.length) {
        if (!spec.tokensCycle) exhausted++;
        i = 0;
      }
      return tokens[i++]!;
    },
    used: () => used,
    exhausted: () => exhausted,
  };
}

function runAutocannon(spec: LoadSpec): Promise<LoadSample> {
  const samples = new Samples();
  const tokens = tokenSource(spec);
  const body = spec.bodyBytes === undefined ? undefined : Buffer.alloc(spec.bodyBytes, 0x62);
  const baseHeaders = { ...spec.headers, ...(body ? { 'content-type': 'application/octet-stream' } : {}) };
  const requests: AutocannonRequest[] | undefined =
    tokens === undefined
      ? undefined
      : [
          {
            setupRequest: (req) => ({
              ...req,
              headers: { ...req.headers, authorization: `Bearer ${tokens.next()}` },
            }),
          },
        ];
  return new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url: spec.url,
        connections: spec.connections,
        duration: spec.durationSeconds,
        method: spec.method ?? (body ? 'POST' : 'GET'),
        headers: baseHeaders,
        ...(body ? { body } : {}),
        ...(requests ? { requests } : {}),
        timeout: 10,
      },
      (err, r) => {
        if (err) return reject(err);
        const codes: Record<string, number> = {};
        for (const [code, { count }] of Object.entries(r.statusCodeStats)) codes[code] = count;
        resolve({
          rps: r.requests.total / r.duration,
          bytesPerSec: r.throughput.total / r.duration,
          latencyMs: samples.percentiles(),
          requests: r.requests.total,
          non2xx: r.non2xx,
          errors: r.errors,
          timeouts: r.timeouts,
          tokensUsed: tokens?.used() ?? 0,
          tokensExhausted: tokens?.exhausted() ?? 0,
          statusCodes: codes,
        });
      },
    );
    instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status >= 200 && status < 300) samples.push(ms);
    });
  });
}

/**
 * No keep-alive: autocannon 9 cannot do it correctly (`reconnectRate: 1` drops the response it
 * reconnects after from its statistics, and `Connection: close` leaves a stale request in its
 * pipeline queue), so `connections` loops each send one request per fresh TCP connection with
 * node:http (no agent), for `durationSeconds`.
 */
async function runNoKeepAlive(spec: LoadSpec): Promise<LoadSample> {
  const samples = new Samples();
  const target = new URL(spec.url);
  const codes: Record<string, number> = {};
  let requests = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  let bytes = 0;
  const started = performance.now();
  const deadline = started + spec.durationSeconds * 1000;
  const one = () =>
    new Promise<void>((resolve) => {
      const t0 = performance.now();
      const req = request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname + target.search,
          method: spec.method ?? 'GET',
          headers: { ...spec.headers, connection: 'close' },
          // No agent: an Agent hands a finished socket to a queued request even with keepAlive off,
          // which would send a second request after `Connection: close`.
          agent: false,
          timeout: 10_000,
        },
        (res) => {
          res.on('data', (c: Buffer) => {
            bytes += c.length;
          });
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            requests++;
            codes[status] = (codes[status] ?? 0) + 1;
            if (status >= 200 && status < 300) samples.push(performance.now() - t0);
            else non2xx++;
            resolve();
          });
          res.on('error', () => {
            errors++;
            resolve();
          });
        },
      );
      req.on('timeout', () => {
        timeouts++;
        req.destroy(new Error('timeout'));
      });
      req.on('error', () => {
        errors++;
        resolve();
      });
      req.end();
    });
  const loop = async () => {
    // Bounded by the deadline; each iteration is bounded by the request timeout.
    while (performance.now() < deadline) await one();
  };
  await Promise.all(Array.from({ length: spec.connections }, loop));
  const seconds = (performance.now() - started) / 1000;
  return {
    rps: requests / seconds,
    bytesPerSec: bytes / seconds,
    latencyMs: samples.percentiles(),
    requests,
    non2xx,
    errors,
    timeouts,
    tokensUsed: 0,
    tokensExhausted: 0,
    statusCodes: codes,
  };
}

if (import.meta.main) {
  const spec = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as LoadSpec;
  const sample = spec.keepAlive ? await runAutocannon(spec) : await runNoKeepAlive(spec);
  process.stdout.write(`${JSON.stringify(sample)}\n`);
}
