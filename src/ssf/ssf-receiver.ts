import { createHash, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler, Response } from 'express';
import type { Revocation } from '../cache/revocation.ts';
import type { Config } from '../config/schema.ts';
import { describeError } from '../errors/error-handler.ts';
import type { Logger } from '../observability/logger.ts';
import {
  createReplayGuard,
  createSetVerifier,
  type ReplayGuard,
  remoteSetKeys,
  SetError,
  type SetErrorCode,
  SetKeysUnavailable,
  type SetVerifier,
  SUPPORTED_EVENTS,
} from './verify-set.ts';

/** Upper bound on a pushed SET. */
export const MAX_SET_BYTES = 64 * 1024;
/** Deadline for fetching the transmitter's JWKS (the transmitter waits on our answer meanwhile). */
export const SSF_JWKS_TIMEOUT_MS = 5000;

/** The exact `Authorization` value matches the configured one; both hashed so the compare is constant-time. */
export function authorizationMatches(header: string | undefined, expected: string): boolean {
  const a = createHash('sha256')
    .update(header ?? '')
    .digest();
  const b = createHash('sha256').update(expected).digest();
  return header !== undefined && timingSafeEqual(a, b);
}

/** RFC 8935 §2 media type, parameters ignored, case-insensitive. */
function isSecEventJwt(contentType: string | undefined): boolean {
  return (contentType ?? '').split(';', 1)[0]!.trim().toLowerCase() === 'application/secevent+jwt';
}

/** RFC 8935 §2.3 failure response: `{"err", "description"}`. */
function fail(res: Response, status: number, err: SetErrorCode | string, description: string): void {
  res.status(status).set('Cache-Control', 'no-store').json({ err, description });
}

class BodyTooLarge extends Error {}

/**
 * Reads the body as UTF-8 text, at most `max` bytes: a larger one is refused, not truncated (the
 * rest is read and discarded so the 413 reaches the client; the connection is then closed).
 */
function readBody(req: Request, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > max) {
      req.resume();
      reject(new BodyTooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    req.on('data', (chunk: Buffer) => {
      if (settled) return;
      size += chunk.length;
      if (size > max) {
        settled = true;
        chunks.length = 0;
        reject(new BodyTooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (settled) return;
      settled = true;
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', (err) => {
      if (settled) return;
      settled = true;
      reject(err);
    });
  });
}

/**
 * `POST /ssf/events` (RFC 8935 push delivery of RFC 8417 SETs): verifies the SET and evicts its
 * subject's cached tokens in every replica (`Revocation.purgeSubject`). 202 with an empty body on
 * success and on a replay (nothing is done again); RFC 8935 error responses otherwise; 503 when the
 * transmitter's keys cannot be fetched. Logs the `jti`, the event names and the number purged,
 * never the SET or the subject.
 */
export function createSsfReceiver(opts: {
  verifier: SetVerifier;
  issuer: string;
  revocation: Revocation;
  logger: Logger;
  maxAgeSeconds: number;
  clockSkewSeconds: number;
  authorizationHeader?: string;
  replay?: ReplayGuard;
}): RequestHandler {
  const { verifier, revocation, logger } = opts;
  const replay =
    opts.replay ??
    createReplayGuard({ maxAgeSeconds: opts.maxAgeSeconds, clockSkewSeconds: opts.clockSkewSeconds });
  const expected = opts.authorizationHeader;
  const scheme =
    expected !== undefined ? (/^([!#$%&'*+.^_`|~0-9A-Za-z-]+) /.exec(expected)?.[1] ?? 'Bearer') : '';

  return async (req: Request, res: Response) => {
    if (expected !== undefined && !authorizationMatches(req.headers.authorization, expected)) {
      req.resume();
      logger.warn({ code: 'authentication_failed' }, 'ssf event refused');
      res.set('WWW-Authenticate', `${scheme} realm="ssf"`);
      fail(res, 401, 'authentication_failed', 'The transmitter could not be authenticated');
      return;
    }
    if (!isSecEventJwt(req.headers['content-type'])) {
      req.resume();
      logger.warn({ code: 'invalid_request' }, 'ssf event refused: wrong content type');
      fail(res, 400, 'invalid_request', 'The content type must be application/secevent+jwt');
      return;
    }
    let body: string;
    try {
      body = await readBody(req, MAX_SET_BYTES);
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        res.set('Connection', 'close');
        fail(res, 413, 'invalid_request', `The SET is larger than ${MAX_SET_BYTES} bytes`);
        return;
      }
      fail(res, 400, 'invalid_request', 'The request body could not be read');
      return;
    }

    let verified: Awaited<ReturnType<SetVerifier['verify']>>;
    try {
      verified = await verifier.verify(body.trim());
    } catch (err) {
      if (err instanceof SetError) {
        logger.warn({ code: err.code, description: err.description }, 'ssf event refused');
        if (err.status === 401) res.set('WWW-Authenticate', `${scheme || 'Bearer'} realm="ssf"`);
        fail(res, err.status, err.code, err.description);
        return;
      }
      if (err instanceof SetKeysUnavailable) {
        logger.warn({ reason: err.message }, 'ssf event not verified: transmitter keys unavailable');
        res.set('Retry-After', '5');
        fail(res, 503, 'temporarily_unavailable', 'The transmitter keys cannot be fetched right now');
        return;
      }
      logger.error({ err: describeError(err) }, 'ssf event verification failed');
      fail(res, 500, 'server_error', 'Internal error');
      return;
    }

    const events = verified.events.map((e) => SUPPORTED_EVENTS.get(e) ?? e);
    if (!replay.claim(opts.issuer, verified.jti, verified.iat)) {
      logger.info({ jti: verified.jti, events, replay: true }, 'ssf event already applied');
      res.status(202).end();
      return;
    }
    try {
      const purged = await revocation.purgeSubject(verified.sub);
      logger.info({ jti: verified.jti, events, purged }, 'ssf event applied');
      res.status(202).end();
    } catch (err) {
      replay.release(opts.issuer, verified.jti);
      logger.error({ jti: verified.jti, events, err: describeError(err) }, 'ssf event purge failed');
      fail(res, 500, 'server_error', 'The purge failed');
    }
  };
}

/**
 * The receiver for `config.ssf` (undefined when the block is absent). `iss_sub` subjects may name
 * the token service's issuer (or `jwt.issuer`), whose `sub`s the cached tokens carry, or the
 * transmitter's own.
 */
export function createSsfReceiverFromConfig(
  config: Config,
  deps: { revocation: Revocation; logger: Logger },
): RequestHandler | undefined {
  const ssf = config.ssf;
  if (ssf === undefined) return undefined;
  const clockSkewSeconds = config.jwt.clockSkewSeconds;
  return createSsfReceiver({
    verifier: createSetVerifier({
      issuer: ssf.issuer,
      audience: ssf.audience,
      algorithms: ssf.algorithms,
      maxAgeSeconds: ssf.maxAgeSeconds,
      clockSkewSeconds,
      subjectIssuers: [config.tokenService.issuer, ...(config.jwt.issuer ? [config.jwt.issuer] : [])],
      keys: remoteSetKeys({ jwksUri: ssf.jwksUri, timeoutMs: SSF_JWKS_TIMEOUT_MS }),
    }),
    issuer: ssf.issuer,
    revocation: deps.revocation,
    logger: deps.logger,
    maxAgeSeconds: ssf.maxAgeSeconds,
    clockSkewSeconds,
    ...(ssf.authorizationHeader !== undefined ? { authorizationHeader: ssf.authorizationHeader } : {}),
  });
}
