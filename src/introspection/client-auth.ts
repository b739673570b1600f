import type { Config } from '../config/schema.ts';

/**
 * How the gateway authenticates itself to the token service (SPEC §3 `tokenService.clientAuth`)
 * and the HTTP client it uses for every token-service request (discovery, JWKS, introspection).
 */
export interface ClientAuth {
  /** Adds the client authentication to one introspection request (headers or form body). */
  apply(request: { headers: Headers; body: URLSearchParams; endpoint: string }): Promise<void>;
  /** fetch for every request to the token service (trust anchors; the client certificate for tls_client_auth). */
  fetch: typeof fetch;
  /** Re-reads key material from its files (SIGHUP); on failure the old material stays and the error is thrown. */
  reload(): Promise<void>;
}

/** `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1, Appendix B). */
export function formEncode(s: string): string {
  return new URLSearchParams({ v: s }).toString().slice(2);
}

/**
 * Builds the configured client authentication. Throws an Error naming the config key when the
 * configuration cannot be used (startup error, exit 1).
 */
export async function createClientAuth(
  cfg: Config,
  deps: { fetch?: typeof fetch } = {},
): Promise<ClientAuth> {
  const ts = cfg.tokenService;
  const fetchImpl = deps.fetch ?? globalThis.fetch;
  switch (ts.clientAuth) {
    case 'client_secret_basic':
    case 'client_secret_post': {
      const secret = ts.clientSecret;
      if (secret === undefined)
        throw new Error(`tokenService.clientSecret: required for clientAuth ${ts.clientAuth}`);
      const basic = `Basic ${Buffer.from(`${formEncode(ts.clientId)}:${formEncode(secret)}`).toString('base64')}`;
      return {
        fetch: fetchImpl,
        async apply({ headers, body }) {
          if (ts.clientAuth === 'client_secret_basic') headers.set('authorization', basic);
          else {
            body.set('client_id', ts.clientId);
            body.set('client_secret', secret);
          }
        },
        async reload() {},
      };
    }
    default:
      throw new Error(
        `tokenService.clientAuth: ${ts.clientAuth} is not supported yet (use client_secret_basic or client_secret_post)`,
      );
  }
}
