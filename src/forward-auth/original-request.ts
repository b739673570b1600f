import type { IncomingMessage } from 'node:http';
import { rawValues, splitTarget } from '../pipeline/match-route.ts';

/**
 * Which request a forward-auth call asks about. The ingress calls the forward-auth listener with
 * the client's headers and describes the original request in one of three ways:
 *
 * - `forwarded` — Traefik forwardAuth: `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik also
 *   sends `X-Forwarded-Host` / `-Proto`; routes match on the path only, so those are not needed);
 * - `original` — nginx auth_request, with `X-Original-Method` + `X-Original-URI` set in the auth
 *   location (nginx sends neither unless configured: docs/forward-auth.md);
 * - `path` — prefix mode (Envoy ext_authz HTTP with `path_prefix`): the call's own method is the
 *   original one and its path is `<forwardAuth.path><original path and query>`.
 *
 * The ingress passes the CLIENT's headers on to us, so a client can add a header family its ingress
 * does not set (e.g. `X-Forwarded-Uri` through nginx). Both families are therefore read, and when
 * both name a method or a URI they must agree: a client can never make us judge another request
 * than the one its ingress describes. Prefix mode reads no header at all.
 */
export type OriginalRequest =
  | { kind: 'request'; method: string; uri: string; via: 'forwarded' | 'original' | 'path' }
  /** A call the listener answers with 400 invalid_request (path_rejected): `why` is safe to show. */
  | { kind: 'invalid'; why: string }
  /** Not the forward-auth path (404). */
  | { kind: 'not-found' };

export interface OriginalRequestOptions {
  /** `forwardAuth.path`: the exact path of header mode; also the prefix of prefix mode. */
  path: string;
  /** `forwardAuth.prefixMode`: `<path>/…` calls carry the original request in their own request line. */
  prefixMode: boolean;
}

/** Methods as a request line carries them (node's parser produces upper-case tokens only). */
const METHOD = /^[A-Z]{1,32}$/;

/** Reads the original request of a forward-auth call (the caller has checked the peer is trusted). */
export function readOriginalRequest(
  req: Pick<IncomingMessage, 'method' | 'url' | 'rawHeaders'>,
  opts: OriginalRequestOptions,
): OriginalRequest {
  const url = req.url ?? '';
  const { path } = splitTarget(url);
  if (path !== opts.path) {
    if (opts.prefixMode && path.startsWith(`${opts.path}/`)) {
      return { kind: 'request', method: req.method ?? 'GET', uri: url.slice(opts.path.length), via: 'path' };
    }
    return { kind: 'not-found' };
  }
  const one = (name: string): string | undefined | { many: string } => {
    const values = rawValues(req.rawHeaders, name);
    if (values === undefined || values.length === 0) return undefined;
    if (values.length > 1) return { many: name };
    return values[0];
  };
  const fwdMethod = one('x-forwarded-method');
  const fwdUri = one('x-forwarded-uri');
  const origMethod = one('x-original-method');
  const origUri = one('x-original-uri');
  for (const v of [fwdMethod, fwdUri, origMethod, origUri]) {
    if (typeof v === 'object') return { kind: 'invalid', why: `more than one ${canonical(v.many)} header` };
  }
  const method = agree(fwdMethod as string | undefined, origMethod as string | undefined, 'method');
  if (typeof method === 'object') return method;
  const uri = agree(fwdUri as string | undefined, origUri as string | undefined, 'URI');
  if (typeof uri === 'object') return uri;
  if (uri === undefined) {
    return {
      kind: 'invalid',
      why: 'the forward-auth request does not name the original URI (X-Forwarded-Uri or X-Original-URI)',
    };
  }
  if (method === undefined) {
    return {
      kind: 'invalid',
      why: 'the forward-auth request does not name the original method (X-Forwarded-Method or X-Original-Method)',
    };
  }
  if (!METHOD.test(method)) return { kind: 'invalid', why: 'the original method is not an HTTP method' };
  if (!uri.startsWith('/')) return { kind: 'invalid', why: 'the original URI must start with /' };
  const via = fwdUri !== undefined ? 'forwarded' : 'original';
  return { kind: 'request', method, uri, via };
}

/** The one value two header families give for a part of the request (either may be absent). */
function agree(
  forwarded: string | undefined,
  original: string | undefined,
  what: 'method' | 'URI',
): string | undefined | { kind: 'invalid'; why: string } {
  if (forwarded !== undefined && original !== undefined && forwarded !== original) {
    return {
      kind: 'invalid',
      why: `X-Forwarded-${what === 'URI' ? 'Uri' : 'Method'} and X-Original-${what === 'URI' ? 'URI' : 'Method'} name different ${what === 'URI' ? 'URIs' : 'methods'}`,
    };
  }
  return forwarded ?? original;
}

function canonical(name: string): string {
  return name === 'x-original-uri'
    ? 'X-Original-URI'
    : name.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase());
}
