import type { NextFunction, Request, Response } from 'express';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GatewayError } from '../../src/errors/gateway-errors.ts';
import { type GatewayContext, setCtx } from '../../src/pipeline/context.ts';
import { createExtractToken } from '../../src/pipeline/extract-token.ts';
import type { CompiledRoute } from '../../src/routing/route-table.ts';
import { runs } from './params.ts';

// SPEC §4 stage 3 (RFC 6750 §2.1) against a reference written as one regular expression: the real
// stage function, driven with minimal request/response objects, must give exactly the reference's
// outcome for random Authorization headers (and header counts, and query strings).

const MAX = 4096;
const B64TOKEN_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/';
const B64URL_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** The whole rule in one place: scheme (any case), 1*SP, one b64token, end. */
const REFERENCE = /^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)$/;
/** An auth-scheme is a token (RFC 9110 §11.1): the scheme "Bearer" is the value's first six chars, case-insensitive, not followed by another tchar. */
const OTHER_SCHEME = /^(?![Bb][Ee][Aa][Rr][Ee][Rr](?![!#$%&'*+\-.^_`|~0-9A-Za-z]))/;

type Outcome =
  | { kind: 'token'; token: string }
  | { kind: 'pass' } // auth: none route, nothing read
  | { kind: 'error'; status: number; error: string; challenge: string };

function reference(headers: readonly string[], query: QueryCase, route: RouteCase): Outcome {
  const badRequest: Outcome = { kind: 'error', status: 400, error: 'invalid_request', challenge: 'error' };
  if (query.accessToken) return badRequest; // refused everywhere, even on public routes
  if (route === 'public') return { kind: 'pass' };
  if (headers.length === 0) return { kind: 'error', status: 401, error: 'unauthorized', challenge: 'bare' };
  if (headers.length > 1) return badRequest;
  const value = headers[0]!;
  if (OTHER_SCHEME.test(value))
    return { kind: 'error', status: 401, error: 'unauthorized', challenge: 'bare' };
  const m = REFERENCE.exec(value);
  if (m === null || Buffer.byteLength(m[1]!, 'utf8') > MAX) return badRequest;
  const token = m[1]!;
  const parts = token.split('.');
  const jwtShaped =
    parts.length === 3 &&
    parts.every((p) => [...p].every((ch) => B64URL_CHARS.includes(ch))) &&
    parts[0] !== '' &&
    parts[1] !== '';
  if (jwtShaped && route !== 'acceptJwt')
    return { kind: 'error', status: 401, error: 'invalid_token', challenge: 'error' };
  return { kind: 'token', token };
}

type RouteCase = 'protected' | 'acceptJwt' | 'public';

function runStage(headers: readonly string[], query: QueryCase, route: RouteCase): Outcome {
  const compiled = {
    name: 'r',
    scopes: route === 'public' ? undefined : { mode: 'all', scopes: ['s'] },
    acceptJwt: route === 'acceptJwt',
  } as unknown as CompiledRoute;
  const context = { requestId: 'id', startedAt: 0n, cache: 'none', route: compiled } as GatewayContext;
  const res = {} as Response;
  setCtx(res, context);
  const req = {
    url: `/api/x${query.text}`,
    // As node's parser leaves it: the raw field list (names in any case; the stage reads every one).
    rawHeaders: headers.flatMap((h, i) => [i % 2 === 0 ? 'authorization' : 'Authorization', h]),
  } as unknown as Request;
  let nextCalls = 0;
  const next: NextFunction = () => {
    nextCalls += 1;
  };
  try {
    createExtractToken()(req, res, next);
  } catch (err) {
    expect(nextCalls).toBe(0);
    expect(context.token).toBeUndefined();
    if (!(err instanceof GatewayError)) throw err;
    return { kind: 'error', status: err.status, error: err.error, challenge: err.challenge?.kind ?? 'none' };
  }
  expect(nextCalls).toBe(1);
  if (context.token === undefined) return { kind: 'pass' };
  return { kind: 'token', token: context.token };
}

// ---------------------------------------------------------------------------------------------
// Arbitraries

const b64 = (min: number, max: number) =>
  fc.string({ unit: fc.constantFrom(...B64TOKEN_CHARS), minLength: min, maxLength: max });

/** A credential of about `length` characters, cheaply (one random chunk repeated). */
const longCredential = fc
  .tuple(b64(1, 16), fc.integer({ min: MAX - 4, max: MAX + 4 }), fc.constantFrom('', '=', '=='))
  .map(
    ([chunk, length, pad]) =>
      chunk.repeat(Math.ceil(length / chunk.length)).slice(0, length - pad.length) + pad,
  );

const jwtLike = fc
  .tuple(
    fc.string({ unit: fc.constantFrom(...B64URL_CHARS), minLength: 0, maxLength: 12 }),
    fc.string({ unit: fc.constantFrom(...B64URL_CHARS), minLength: 0, maxLength: 12 }),
    fc.string({ unit: fc.constantFrom(...B64URL_CHARS), minLength: 0, maxLength: 12 }),
    fc.constantFrom('.', '.', '..'),
  )
  .map(([a, b, c, dot]) => `${a}.${b}${dot}${c}`);

/** Characters a b64token does not allow (and some it does, in wrong places). */
const junkChar = fc.constantFrom(
  '"',
  ',',
  ';',
  ' ',
  '\t',
  '=',
  '\\',
  '(',
  ':',
  '@',
  '\u00e9',
  '\u0000',
  '\r',
  '\n',
  '\u00a0',
  '%',
);

const credential = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.tuple(b64(1, 40), fc.constantFrom('', '', '=', '==', '===')).map(([t, p]) => t + p),
  },
  { weight: 1, arbitrary: longCredential },
  { weight: 2, arbitrary: jwtLike },
  // A valid-looking credential with a foreign character somewhere inside it.
  {
    weight: 2,
    arbitrary: fc.tuple(b64(0, 12), junkChar, b64(0, 12)).map(([a, j, b]) => a + j + b),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
  { weight: 1, arbitrary: fc.constant('') },
);

const scheme = fc.oneof(
  { weight: 5, arbitrary: fc.mixedCase(fc.constant('bearer')) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      'Basic',
      'DPoP',
      'Token',
      'Bearertoken',
      'Bearer-x',
      'Bearer1',
      'Bear',
      'earer',
      'Bearer,',
      'Bearer"',
      '',
      'Negotiate',
      'Bearer\u0000',
      'BEARER\u00e9',
    ),
  },
);

/** 0–3 separators, mostly spaces, sometimes a tab or another blank. */
const separator = fc
  .array(fc.constantFrom(' ', ' ', ' ', '\t', '\u00a0', '\r\n'), { maxLength: 3 })
  .map((s) => s.join(''));

const trailing = fc.constantFrom(
  '',
  '',
  '',
  ' ',
  '\t',
  ',',
  ', ',
  ' extra',
  ',realm="x"',
  '=',
  ' =',
  '\u0000',
);

/** One Authorization value: scheme, separator, 1–3 credentials, trailing junk; or something arbitrary. */
const headerValue = fc.oneof(
  // Mostly well-formed: `Bearer` in any case, 1–3 spaces, one credential (itself sometimes wrong).
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.mixedCase(fc.constant('bearer')), fc.integer({ min: 1, max: 3 }), credential)
      .map(([s, n, c]) => `${s}${' '.repeat(n)}${c}`),
  },
  {
    weight: 6,
    arbitrary: fc
      .tuple(
        fc.constantFrom('', '', '', '', '', '', ' ', '\t'),
        scheme,
        separator,
        fc.oneof(
          { weight: 3, arbitrary: credential.map((c) => [c]) },
          { weight: 1, arbitrary: fc.array(credential, { minLength: 2, maxLength: 3 }) },
        ),
        fc.constantFrom(' ', ', ', ',', '\t'),
        trailing,
      )
      .map(([lead, s, sep, creds, join, trail]) => lead + s + sep + creds.join(join) + trail),
  },
  { weight: 1, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 30 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 30 }).map((s) => `Bearer ${s}`) },
);

interface QueryCase {
  readonly text: string;
  /** The reference's reading: an `access_token` parameter is present. */
  readonly accessToken: boolean;
}

const query: fc.Arbitrary<QueryCase> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ text: '', accessToken: false }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      { text: '?a=1', accessToken: false },
      { text: '?', accessToken: false },
      { text: '?access_token_hint=x&token=y', accessToken: false },
      { text: '?xaccess_token=1', accessToken: false },
      { text: '?access_token=abc', accessToken: true },
      { text: '?a=1&access_token=', accessToken: true },
      { text: '?access_token', accessToken: true },
      { text: '?access%5Ftoken=1', accessToken: true },
      { text: '?x=1;access_token=1', accessToken: false },
    ),
  },
);

const headerCount = fc.oneof(
  { weight: 8, arbitrary: fc.constant(1) },
  { weight: 1, arbitrary: fc.constant(0) },
  { weight: 2, arbitrary: fc.integer({ min: 2, max: 3 }) },
);

const routeCase = fc.constantFrom<RouteCase>('protected', 'protected', 'protected', 'acceptJwt', 'public');

// ---------------------------------------------------------------------------------------------

describe('token extraction (property, RFC 6750 §2.1)', () => {
  it('the extract-token stage gives exactly the reference outcome', () => {
    fc.assert(
      fc.property(
        headerCount.chain((n) => fc.array(headerValue, { minLength: n, maxLength: n })),
        query,
        routeCase,
        (headers, q, route) => {
          expect(runStage(headers, q, route)).toEqual(reference(headers, q, route));
        },
      ),
      runs(4000),
    );
  });

  it('every well-formed single Bearer credential up to 4096 bytes is extracted unchanged', () => {
    fc.assert(
      fc.property(
        fc.mixedCase(fc.constant('bearer')),
        fc.integer({ min: 1, max: 3 }),
        fc.oneof(b64(1, 64), longCredential),
        (s, spaces, token) => {
          fc.pre(Buffer.byteLength(token) <= MAX && !/^[^.]+\.[^.]+\.[^.]*$/.test(token));
          expect(
            runStage([`${s}${' '.repeat(spaces)}${token}`], { text: '', accessToken: false }, 'protected'),
          ).toEqual({
            kind: 'token',
            token,
          });
        },
      ),
      runs(1000),
    );
  });
});
