import type { JWK } from 'jose';
import { readBodyLimited } from '../util/read-body.ts';

/** Upper bound on a JWKS document. */
export const MAX_JWKS_BYTES = 512 * 1024;

/**
 * A fetch for jose's remote JWKS (`[customFetch]`) under which EVERY failure to obtain a usable key
 * set — network, timeout, non-200, too large, not JSON, not a JWK Set — surfaces as the error made
 * by `unavailable` ("could not ask"), while a key set that was fetched but has no matching key
 * stays a verification failure ("said no"). Used for the token service's and the SSF
 * transmitter's keys.
 */
export function jwksFetch(fetchImpl: typeof fetch, unavailable: (message: string, cause?: unknown) => Error) {
  return async (
    url: string,
    init: { headers: Headers; method: 'GET'; redirect: 'manual'; signal: AbortSignal },
  ): Promise<Response> => {
    let res: Response;
    try {
      res = await fetchImpl(url, init);
    } catch (err) {
      const e = err as Error;
      const code = (e.cause as NodeJS.ErrnoException | undefined)?.code;
      throw unavailable(
        e.name === 'TimeoutError' || e.name === 'AbortError'
          ? 'JWKS request timed out'
          : `JWKS request failed${code ? ` (${code})` : ''}`,
        err,
      );
    }
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => {});
      throw unavailable(`JWKS endpoint answered HTTP ${res.status}`);
    }
    let body: Buffer | undefined;
    try {
      body = await readBodyLimited(res, MAX_JWKS_BYTES);
    } catch (err) {
      throw unavailable('JWKS response could not be read', err);
    }
    if (body === undefined) throw unavailable(`JWKS response larger than ${MAX_JWKS_BYTES} bytes`);
    const text = body.toString('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw unavailable('JWKS response is not JSON');
    }
    const keys = (json as { keys?: unknown } | null)?.keys;
    if (
      !Array.isArray(keys) ||
      !keys.every((k) => typeof k === 'object' && k !== null && !Array.isArray(k))
    ) {
      throw unavailable('JWKS response is not a JWK Set');
    }
    return new Response(text, { status: 200, headers: { 'content-type': 'application/json' } });
  };
}

/**
 * GETs a JWK Set with one deadline of `timeoutMs` for the whole exchange (headers and body),
 * redirects not followed. Every failure is the error made by `unavailable` (see `jwksFetch`).
 */
export async function fetchJwks(
  fetchImpl: typeof fetch,
  url: string,
  timeoutMs: number,
  unavailable: (message: string, cause?: unknown) => Error,
): Promise<{ keys: JWK[] }> {
  const res = await jwksFetch(fetchImpl, unavailable)(url, {
    method: 'GET',
    headers: new Headers({ accept: 'application/jwk-set+json, application/json' }),
    redirect: 'manual',
    signal: AbortSignal.timeout(Math.max(1, Math.round(timeoutMs))),
  });
  // jwksFetch has read and validated the body: this parse cannot fail.
  return (await res.json()) as { keys: JWK[] };
}
