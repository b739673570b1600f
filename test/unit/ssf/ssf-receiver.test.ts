import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import express from 'express';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Revocation } from '../../../src/cache/revocation.ts';
import { createLogger } from '../../../src/observability/logger.ts';
import { createSsfReceiver, MAX_SET_BYTES } from '../../../src/ssf/ssf-receiver.ts';
import { SetError, SetKeysUnavailable, type SetVerifier } from '../../../src/ssf/verify-set.ts';
import { request } from '../../helpers/http.ts';

/** The receiver's HTTP behaviour with a stubbed verifier (verification itself: verify-set.test.ts). */
const SECRET = 'Bearer transmitter-push-secret-0123';
const SET = 'eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiIxIn0.c2ln';
const CT = { 'content-type': 'application/secevent+jwt' };

let outcome: () => Promise<Awaited<ReturnType<SetVerifier['verify']>>>;
let received: string[] = [];
let purges: string[] = [];
let purgeFails = false;
let logText = '';
let server: Server;
let url: string;

const ok =
  (jti = '1') =>
  async () => ({
    jti,
    iat: Math.floor(Date.now() / 1000),
    sub: 'alice-secret-subject',
    events: ['https://schemas.openid.net/secevent/caep/event-type/session-revoked'],
  });

beforeAll(async () => {
  const revocation: Revocation = {
    purgeToken: async () => 0,
    purgeSubject: async (sub) => {
      if (purgeFails) throw new Error('redis exploded');
      purges.push(sub);
      return 3;
    },
  };
  const logger = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk, _enc, cb) {
        logText += chunk.toString();
        cb();
      },
    }),
  });
  const verifier: SetVerifier = {
    verify: async (set) => {
      received.push(set);
      return outcome();
    },
  };
  const app = express();
  app.post(
    '/ssf/events',
    createSsfReceiver({
      verifier,
      issuer: 'https://idp',
      revocation,
      logger,
      maxAgeSeconds: 300,
      clockSkewSeconds: 30,
      authorizationHeader: SECRET,
    }),
  );
  server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ssf/events`;
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
});
beforeEach(() => {
  received = [];
  purges = [];
  purgeFails = false;
  outcome = ok(String(Math.random()));
});

const post = (headers: Record<string, string>, body: string | Buffer = SET) =>
  request(url, { method: 'POST', headers: { authorization: SECRET, ...CT, ...headers }, body });

describe('POST /ssf/events', () => {
  it('202 with an empty body, purges the subject and logs jti, events and count but not the subject', async () => {
    outcome = ok('jti-logged');
    const res = await post({}, `${SET}\n`);
    expect(res.status).toBe(202);
    expect(res.body).toBe('');
    expect(received).toEqual([SET]);
    expect(purges).toEqual(['alice-secret-subject']);
    const line = logText
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l['jti'] === 'jti-logged');
    expect(line).toMatchObject({ msg: 'ssf event applied', events: ['session-revoked'], purged: 3 });
    expect(logText).not.toContain('alice-secret-subject');
    expect(logText).not.toContain(SET);
  });

  it('answers a replay 202 without purging again', async () => {
    outcome = ok('jti-replayed');
    expect((await post({})).status).toBe(202);
    expect((await post({})).status).toBe(202);
    expect(purges).toHaveLength(1);
  });

  it('accepts the media type with parameters and in another case', async () => {
    expect((await post({ 'content-type': 'Application/SecEvent+JWT; charset=utf-8' })).status).toBe(202);
  });

  it.each([
    ['missing', undefined],
    ['application/jwt', 'application/jwt'],
    ['application/json', 'application/json'],
    ['text/plain', 'text/plain'],
  ])('400 invalid_request for content type %s, without verifying', async (_n, ct) => {
    const headers: Record<string, string> = { authorization: SECRET };
    if (ct !== undefined) headers['content-type'] = ct;
    const res = await request(url, { method: 'POST', headers, body: SET });
    expect(res.status).toBe(400);
    expect(res.json()).toEqual({ err: 'invalid_request', description: expect.any(String) });
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(received).toEqual([]);
    expect(purges).toEqual([]);
  });

  it.each([
    ['missing', undefined],
    ['wrong', 'Bearer transmitter-push-secret-0124'],
    ['the secret without its scheme', 'transmitter-push-secret-0123'],
  ])('401 authentication_failed when the Authorization header is %s', async (_n, authorization) => {
    const headers: Record<string, string> = { ...CT };
    if (authorization !== undefined) headers['authorization'] = authorization;
    const res = await request(url, { method: 'POST', headers, body: SET });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="ssf"');
    expect(res.json()['err']).toBe('authentication_failed');
    expect(received).toEqual([]);
  });

  it.each([
    ['with Content-Length', {}],
    ['chunked', { 'transfer-encoding': 'chunked' }],
  ])('413 for a body over 64 KiB (%s), without verifying', async (_n, headers) => {
    const res = await post(headers, Buffer.alloc(MAX_SET_BYTES + 1, 0x61));
    expect(res.status).toBe(413);
    expect(res.json()['err']).toBe('invalid_request');
    expect(received).toEqual([]);
  });

  it.each([
    ['invalid_request', 400],
    ['invalid_key', 400],
    ['invalid_issuer', 400],
    ['invalid_audience', 400],
    ['access_denied', 403],
  ] as const)('maps a refused SET (%s) to HTTP %i with {err, description}', async (errCode, status) => {
    outcome = async () => {
      throw new SetError(errCode, 'fixed text');
    };
    const res = await post({});
    expect(res.status).toBe(status);
    expect(res.json()).toEqual({ err: errCode, description: 'fixed text' });
    expect(res.headers['cache-control']).toBe('no-store');
    expect(purges).toEqual([]);
  });

  it('503 with Retry-After when the transmitter keys cannot be fetched', async () => {
    outcome = async () => {
      throw new SetKeysUnavailable('JWKS request failed (ECONNREFUSED)');
    };
    const res = await post({});
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('5');
    expect(purges).toEqual([]);
  });

  it('500 when the purge fails, and a retry of the same SET is applied', async () => {
    outcome = ok('jti-retried');
    purgeFails = true;
    expect((await post({})).status).toBe(500);
    purgeFails = false;
    expect((await post({})).status).toBe(202);
    expect(purges).toHaveLength(1);
  });
});
