import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createAccessLog } from '../../../src/observability/access-log.ts';
import { createLogger, lineWriter } from '../../../src/observability/logger.ts';
import { type GatewayContext, setCtx } from '../../../src/pipeline/context.ts';

/** A destination that keeps every written chunk. */
function sink(): { stream: Writable; lines: () => string[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== ''),
  };
}

describe('lineWriter (the access line without pino’s object serializer)', () => {
  it('writes exactly the line pino writes for the same fields', () => {
    const out = sink();
    const logger = createLogger({ level: 'info', destination: out.stream });
    const fields = {
      requestId: 'r-1',
      route: 'api',
      method: 'GET',
      status: 200,
      durationMs: 1.5,
      completed: true,
    };
    logger.info(fields, 'request');
    lineWriter(logger, 'request')!(
      '"requestId":"r-1","route":"api","method":"GET","status":200,"durationMs":1.5,"completed":true',
    );
    const [viaPino, viaWriter] = out.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(viaWriter).toBeDefined();
    // Same keys in the same order, same values; only the timestamp differs.
    expect(Object.keys(viaWriter!)).toEqual(Object.keys(viaPino!));
    expect({ ...viaWriter, time: 0 }).toEqual({ ...viaPino, time: 0 });
    expect(new Date(viaWriter!['time'] as string).toISOString()).toBe(viaWriter!['time']);
  });

  it('is undefined when the level hides info (LOG_LEVEL=warn writes no access lines)', () => {
    expect(
      lineWriter(createLogger({ level: 'warn', destination: sink().stream }), 'request'),
    ).toBeUndefined();
    expect(lineWriter(createLogger({ level: 'debug', destination: sink().stream }), 'request')).toBeTypeOf(
      'function',
    );
  });
});

describe('access log line (a real request on a real socket)', () => {
  let server: http.Server | undefined;
  afterEach(() => server?.close());

  /** Serves one request through createAccessLog with `ctx` as the stages would have left it. */
  async function lineFor(
    path: string,
    context: Partial<GatewayContext>,
    opts: { includeSubject?: boolean } = {},
  ): Promise<Record<string, unknown>> {
    const out = sink();
    const access = createAccessLog(createLogger({ level: 'info', destination: out.stream }), opts);
    server = http.createServer((req, res) => {
      setCtx(
        res as never,
        {
          requestId: 'id',
          startedAt: process.hrtime.bigint(),
          cache: 'none',
          ...context,
        } as GatewayContext,
      );
      access(req as never, res as never, () => {
        res.statusCode = context.reason === undefined ? 200 : 401;
        res.end('ok');
      });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const done = new Promise<void>((r) =>
      server!.once('request', (_q, s) => s.once('close', () => setImmediate(r))),
    );
    await new Promise<void>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path }, (res) => res.resume().on('end', resolve))
        .on('error', reject);
    });
    await done;
    const lines = out.lines();
    expect(lines).toHaveLength(1);
    return JSON.parse(lines[0]!) as Record<string, unknown>;
  }

  it('keeps hostile strings inside their JSON fields: one line, one object, nothing injected', async () => {
    const id = 'a"b\\c},"status":999,"x":"';
    const line = await lineFor('/api/%22x%0A?token=secret', {
      requestId: id,
      reason: 'token_inactive',
      cause: { message: 'line1\nline2 "quoted" \u0000 \ud800' },
    });
    expect(line['requestId']).toBe(id);
    expect(line['status']).toBe(401);
    expect(line['x']).toBeUndefined();
    expect(line['path']).toBe('/api/%22x%0A');
    expect(line['reason']).toBe('token_inactive');
    expect(line['cause']).toEqual({ message: 'line1\nline2 "quoted" \u0000 \ud800' });
    expect(JSON.stringify(line)).not.toContain('secret');
  });

  it('leaves out what is undefined, writes sub only with includeSubject, and survives an unserializable cause', async () => {
    const claims = { sub: 'user-1' };
    const resolved = { jwt: 'j', claims, exp: 0, source: 'l1' as const };
    const plain = await lineFor('/x', { cache: 'l1', resolved });
    expect(plain).not.toHaveProperty('route');
    expect(plain).not.toHaveProperty('sub');
    expect(plain).not.toHaveProperty('upstreamMs');
    expect(plain['reason']).toBe('allowed');
    expect(plain['cache']).toBe('l1');
    expect(plain['completed']).toBe(true);
    server?.close();
    const withSub = await lineFor('/x', { resolved }, { includeSubject: true });
    expect(withSub['sub']).toBe('user-1');
    server?.close();
    const cyclic: Record<string, unknown> = {};
    cyclic['self'] = cyclic;
    const odd = await lineFor('/x', { reason: 'jwt_invalid', cause: cyclic, upstreamMs: 2.345 });
    expect(odd['cause']).toEqual({ message: '(cause not serializable)' });
    expect(odd['upstreamMs']).toBe(2.35);
  });
});
