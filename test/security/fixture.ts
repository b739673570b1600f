import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { expect } from 'vitest';
import { type CurityStub, startCurityStub } from '../helpers/curity-stub.ts';
import { type GatewayProcess, startGateway, waitFor } from '../helpers/gateway-process.ts';
import { request } from '../helpers/http.ts';
import { recordSecret } from '../helpers/leak-registry.ts';
import { type EchoUpstream, type RecordedRequest, startEchoUpstream } from '../helpers/upstream.ts';

/**
 * The security suite's world (issue 8 part 1): the REAL gateway process (accept-jwt mode), a
 * Curity-style token service stub and ONE recording upstream behind two routes with different
 * scopes. Attackers hold a token with only `read` and try to reach `/api/admin` (scope `admin`):
 * both routes point at the same upstream, as they often do, so a path the upstream reads
 * differently from the gateway would land on the admin handler.
 */

export const CLIENT_ID = 'security-gateway';
export const GW_SECRET = 'security-suite-gateway-secret-0123456789';
export const AUD = 'https://api.security.test';

export interface SecurityEnv {
  stub: CurityStub;
  up: EchoUpstream;
  gw: GatewayProcess;
  /** Opaque token with scope `read` only (allowed on /api/reports, not on /api/admin). */
  readToken: string;
  /** Opaque token with scope `admin` (the control: /api/admin does work for it). */
  adminToken: string;
  close(): Promise<void>;
}

export interface SecurityEnvOptions {
  trustProxyHeaders?: boolean;
  /** Extra gateway config merged at the top level. */
  extra?: Record<string, unknown>;
}

export async function startSecurityEnv(opts: SecurityEnvOptions = {}): Promise<SecurityEnv> {
  const [stub, up] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
  ]);
  const config = {
    listen: { trustProxyHeaders: opts.trustProxyHeaders ?? false },
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 2000,
    },
    jwt: { audience: AUD },
    routes: [
      { name: 'reports', match: { pathPrefix: '/api/reports' }, upstream: up.url, scopes: ['read'] },
      { name: 'admin', match: { pathPrefix: '/api/admin' }, upstream: up.url, scopes: ['admin'] },
      {
        name: 'jwt-ok',
        match: { pathPrefix: '/api/jwt-ok' },
        upstream: up.url,
        scopes: ['read'],
        acceptJwt: true,
      },
      { name: 'public', match: { pathPrefix: '/public' }, upstream: up.url, auth: 'none' },
    ],
    ...opts.extra,
  };
  let gw: GatewayProcess;
  try {
    gw = await startGateway(config, { env: { GW_SECRET } });
  } catch (err) {
    await Promise.all([stub.close(), up.close()]);
    throw err;
  }
  const readToken = stub.newToken();
  stub.register(readToken, { sub: 'mallory', aud: AUD, scope: 'read' });
  const adminToken = stub.newToken();
  stub.register(adminToken, { sub: 'root', aud: AUD, scope: 'admin' });
  recordSecret(readToken);
  recordSecret(adminToken);
  const env: SecurityEnv = {
    stub,
    up,
    gw,
    readToken,
    adminToken,
    async close() {
      await gw.stop();
      await Promise.all([stub.close(), up.close()]);
    },
  };
  // Warm L1 for both tokens: an attack then runs the synchronous hot path (L1 hit → forward in
  // the same tick as the parser's 'request' event), the one where framing bugs would show.
  for (const [path, t] of [
    ['/api/reports/warm', readToken],
    ['/api/admin/warm', adminToken],
  ] as const) {
    const res = await request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${t}` } });
    expect(res.status).toBe(200);
  }
  return env;
}

/**
 * What reached the upstream since `mark` (an index into `up.requests`), after a barrier: one
 * authorized request on a fresh connection is sent and awaited at the upstream, so everything the
 * gateway forwarded for the attack before it has arrived too. The barrier itself is left out.
 */
export async function upstreamSince(env: SecurityEnv, mark: number): Promise<RecordedRequest[]> {
  const id = `barrier-${randomUUID()}`;
  const res = await request(`${env.gw.url}/api/reports/barrier`, {
    headers: { authorization: `Bearer ${env.readToken}`, 'x-request-id': id },
  });
  expect(res.status).toBe(200);
  await waitFor(
    () => env.up.requests.some((r) => r.headers['x-request-id'] === id),
    5_000,
    'the barrier request at the upstream',
  );
  return env.up.requests.slice(mark).filter((r) => r.headers['x-request-id'] !== id);
}

/** Asserts that what the upstream got is exactly the gateway's JWT for the read token. */
export function expectAuthorizedJwt(r: RecordedRequest, env: SecurityEnv): void {
  const auth = r.headers.authorization;
  expect(typeof auth).toBe('string');
  expect(auth).toMatch(/^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  expect(auth).not.toContain(env.readToken);
  expect(r.rawHeaders.filter((h) => h.toLowerCase() === 'authorization')).toHaveLength(1);
}

// ---------------------------------------------------------------------------------------------
// Raw sockets: requests exactly as written, several responses per connection.

export interface RawResponse {
  status: number;
  /** Lower-cased names; repeated fields joined with ', '. */
  headers: Record<string, string>;
  body: string;
}

export interface RawExchange {
  responses: RawResponse[];
  /** The server closed the connection (FIN or reset) before the deadline. */
  closed: boolean;
  raw: string;
}

/**
 * Writes `raw` (latin1 string or bytes; optionally in several writes with a pause between them)
 * on a fresh TCP connection and reads until `expect` complete responses arrived (then closes
 * itself), the server closes, or `timeoutMs` passes. 1xx interim responses are listed too.
 */
export function rawExchange(
  port: number,
  raw: string | Buffer | Array<string | Buffer>,
  opts: { expect?: number; timeoutMs?: number; pauseMs?: number } = {},
): Promise<RawExchange> {
  const parts = Array.isArray(raw) ? raw : [raw];
  const want = opts.expect ?? 1;
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      const responses = parseResponses(buf);
      resolve({ responses, closed, raw: buf.toString('latin1') });
    };
    const timer = setTimeout(() => finish(false), opts.timeoutMs ?? 5_000);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const finals = parseResponses(buf).filter((r) => r.status >= 200);
      if (finals.length >= want) finish(false);
    });
    sock.on('error', () => finish(true));
    sock.on('close', () => finish(true));
    sock.on('connect', async () => {
      for (let i = 0; i < parts.length; i++) {
        if (done) return;
        const p = parts[i]!;
        sock.write(typeof p === 'string' ? Buffer.from(p, 'latin1') : p);
        if (i < parts.length - 1) await new Promise((r) => setTimeout(r, opts.pauseMs ?? 50));
      }
    });
  });
}

/** Parses the complete HTTP/1.x responses at the start of `buf` (Content-Length or chunked). */
export function parseResponses(buf: Buffer): RawResponse[] {
  const out: RawResponse[] = [];
  let at = 0;
  for (let n = 0; n < 100; n++) {
    const end = buf.indexOf('\r\n\r\n', at);
    if (end === -1) break;
    const head = buf.subarray(at, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '');
    if (m === null) break;
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const line of head.slice(1)) {
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const k = line.slice(0, i).trim().toLowerCase();
      const v = line.slice(i + 1).trim();
      headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    }
    let pos = end + 4;
    let body = '';
    if (status >= 200 && status !== 204 && status !== 304) {
      if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
        const parts: Buffer[] = [];
        let complete = false;
        for (;;) {
          const le = buf.indexOf('\r\n', pos);
          if (le === -1) break;
          const size = Number.parseInt(buf.subarray(pos, le).toString('latin1'), 16);
          if (!Number.isFinite(size)) break;
          if (size === 0) {
            const te = buf.indexOf('\r\n\r\n', le);
            if (te === -1) break;
            pos = te + 4;
            complete = true;
            break;
          }
          if (buf.length < le + 2 + size + 2) break;
          parts.push(buf.subarray(le + 2, le + 2 + size));
          pos = le + 2 + size + 2;
        }
        if (!complete) break;
        body = Buffer.concat(parts).toString('utf8');
      } else if (headers['content-length'] !== undefined) {
        const len = Number(headers['content-length']);
        if (buf.length < pos + len) break;
        body = buf.subarray(pos, pos + len).toString('utf8');
        pos += len;
      } else {
        // Close-delimited: the rest of the stream.
        body = buf.subarray(pos).toString('utf8');
        pos = buf.length;
      }
    }
    out.push({ status, headers, body });
    at = pos;
  }
  return out;
}

/** The final (non-1xx) responses of an exchange. */
export function finals(x: RawExchange): RawResponse[] {
  return x.responses.filter((r) => r.status >= 200);
}

/** The `error` member of a gateway error body ('' when the body is not the gateway's JSON). */
export function errorOf(r: RawResponse): string {
  try {
    return String((JSON.parse(r.body) as { error?: unknown }).error ?? '');
  } catch {
    return '';
  }
}

/** A request head with CRLF line endings (lines joined, blank line appended). */
export function head(lines: string[]): string {
  return `${lines.join('\r\n')}\r\n\r\n`;
}
