/**
 * Path canonicalisation policy (SPEC §4 stage 2). We never rewrite a path: a path that could be
 * read two ways by the gateway and an upstream is rejected, everything else is forwarded
 * byte-for-byte as matched. Returns the reason a path is rejected, or undefined when it is fine.
 */
export function rejectPath(path: string): string | undefined {
  if (path.length === 0 || path.charCodeAt(0) !== 0x2f) return 'the request target must be an absolute path';
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c <= 0x1f || c === 0x7f) return 'control characters are not allowed in the path';
    if (c === 0x5c) return 'backslashes are not allowed in the path';
    // A fragment is never part of a request target (RFC 9112 §3.2): `/api/admin#x` would be
    // matched as one path here and read as /api/admin by an upstream's URL parser.
    if (c === 0x23) return 'a fragment (#) is not part of a request target';
    if (c > 0x7e) return 'non-ASCII characters must be percent-encoded';
    if (c === 0x25) {
      const hex = path.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return 'malformed percent-encoding in the path';
      const byte = Number.parseInt(hex, 16);
      if (byte === 0x2f || byte === 0x5c || byte === 0x2e)
        return 'encoded slashes, dots or backslashes are not allowed';
      if (byte <= 0x1f || byte === 0x7f) return 'encoded control characters are not allowed';
      // Unreserved characters (RFC 3986 §2.3) have one meaning; an upstream that normalises
      // `%69` to `i` would see a different path than the one we matched.
      if (isUnreserved(byte)) return 'percent-encoded unreserved characters are not allowed';
      i += 2;
    }
  }
  if (path.includes('//')) return 'empty path segments are not allowed';
  // `..;x` / `.;x` count as dot segments: Tomcat, Jetty and Spring drop the `;` path parameter
  // (RFC 2396 segment grammar) and would resolve `/api/public/..;/admin` to /api/admin.
  if (/\/\.\.?(?:[/;]|$)/.test(path)) return 'dot segments are not allowed';
  return undefined;
}

/** Host: a reg-name, IPv4 or bracketed IPv6 literal, optional port (RFC 9110 §7.2, RFC 3986 §3.2.2). */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?$/;

/**
 * The request's Host field (SPEC §4 stage 2, RFC 9112 §3.2: more than one Host field, or an
 * invalid value, is a 400): the reason it is rejected, or undefined. A missing Host is the HTTP
 * parser's business (HTTP/1.1 without one never gets here; HTTP/1.0 may omit it).
 */
export function rejectHost(values: readonly string[] | undefined): string | undefined {
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) return 'more than one Host header';
  if (!HOST.test(values[0]!)) return 'the Host header is not a valid host[:port]';
  return undefined;
}

function isUnreserved(b: number): boolean {
  return (
    (b >= 0x30 && b <= 0x39) || // DIGIT
    (b >= 0x41 && b <= 0x5a) || // ALPHA
    (b >= 0x61 && b <= 0x7a) ||
    b === 0x2d || // -
    b === 0x5f || // _
    b === 0x7e // ~   ('.' is rejected above as an encoded dot)
  );
}
