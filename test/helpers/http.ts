import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { recordOutput } from './leak-registry.ts';

export interface SimpleResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  json(): Record<string, unknown>;
}

/**
 * One HTTP request with node:http (not fetch: headers such as two `Authorization` lines must go
 * out exactly as written). Bounded by `timeoutMs`.
 */
export function request(
  url: string,
  opts: {
    method?: string;
    headers?: OutgoingHttpHeaders;
    body?: string | Buffer;
    timeoutMs?: number;
    agent?: http.Agent;
  } = {},
): Promise<SimpleResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString();
          // Error answers (the gateway's renderer, admin errors) go to the whole-run leak check.
          if ((res.statusCode ?? 0) >= 400) recordOutput(`${JSON.stringify(res.headers)}\n${body}`);
          resolve({ status: res.statusCode!, headers: res.headers, body, json: () => JSON.parse(body) });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(opts.timeoutMs ?? 15_000, () => req.destroy(new Error(`request to ${url} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Sends raw bytes on a fresh TCP connection and returns everything read until close (bounded). */
export function rawRequest(port: number, raw: string, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(out);
    }, timeoutMs);
    sock.on('data', (d) => (out += d.toString('latin1')));
    sock.on('error', (e) => {
      clearTimeout(timer);
      if (out) resolve(out);
      else reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (/^HTTP\/1\.[01] [45]/.test(out)) recordOutput(out.slice(0, 65_536));
      resolve(out);
    });
    sock.write(raw);
  });
}

/** Status code of the first response in a raw HTTP answer. */
export function rawStatus(raw: string): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
  return m ? Number(m[1]) : 0;
}
