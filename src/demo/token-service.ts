import { X509Certificate } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { exportJWK, generateKeyPair } from 'jose';
import type { Adapter, AdapterPayload, Configuration } from 'oidc-provider';
import { Agent } from 'undici';

/**
 * A development token service on oidc-provider 9: real opaque access tokens (client_credentials),
 * RFC 7662 introspection (+ RFC 9701 JWT responses), RFC 7009 revocation. Used by the demo and the
 * integration tests. oidc-provider is a devDependency and is imported dynamically, so the gateway
 * itself never loads it.
 */

export interface DevClient {
  client_id: string;
  /** Absent for a client that authenticates with private_key_jwt or tls_client_auth. */
  client_secret?: string;
  /** Scopes the client may request (space-separated). */
  scope?: string;
  /** Default client_secret_basic. */
  token_endpoint_auth_method?: string;
  /** Default ['client_credentials']; [] for a client that only introspects. */
  grant_types?: string[];
  /** Further client metadata (e.g. `jwks`, `introspection_signed_response_alg`, `tls_client_auth_subject_dn`). */
  extra?: Record<string, unknown>;
}

export interface DevTokenServiceOptions {
  host?: string;
  /** 0 or absent: the OS picks a free port. */
  port?: number;
  clients: DevClient[];
  scopes: string[];
  /** Lifetime of issued access tokens (default 300 s). */
  accessTokenTtlSeconds?: number;
  /** The gateway's client (or clients): may introspect (and revoke) the tokens of every client. */
  introspectionClientId?: string | string[];
  /**
   * Serve HTTPS and enable RFC 8705 tls_client_auth: `cert`/`key` are the server's certificate
   * (PEM), `ca` the CA(s) whose client certificates count as verified (also trusted by
   * issueToken() for the server's own certificate: tests use one private CA). Client
   * certificates are asked for but not required in the handshake, so a missing or foreign one is
   * the provider's invalid_client, as with a real deployment.
   */
  tls?: DevTokenServiceTls;
}

export interface DevTokenServiceTls {
  cert: string;
  key: string;
  ca: string;
  /**
   * Only a second listener asks for client certificates, published as RFC 8705 §5
   * `mtls_endpoint_aliases` (token, introspection, revocation); the main listener does not ask.
   */
  mtlsEndpointAliases?: boolean;
}

export interface DevTokenService {
  issuer: string;
  tokenEndpoint: string;
  introspectionEndpoint: string;
  revocationEndpoint: string;
  jwksUri: string;
  /** With `tls.mtlsEndpointAliases`: the introspection endpoint of the listener that asks for client certificates. */
  mtlsIntrospectionEndpoint?: string;
  /** client_credentials grant at the token endpoint, with the client's own auth method. */
  issueToken(
    clientId: string,
    clientSecret: string,
    scope?: string,
  ): Promise<{ access_token: string; expires_in: number }>;
  /** Revokes an access token (it is inactive from now on). */
  revoke(token: string): Promise<void>;
  /** Introspection requests received so far (any outcome). */
  introspectionCount(): number;
  close(): Promise<void>;
}

type Stored = { payload: AdapterPayload; expiresAt: number };

/**
 * In-memory adapter (one store per token service). Providing our own keeps oidc-provider from
 * printing its "development-only in-memory adapter" warning and isolates parallel instances.
 */
function memoryAdapterFactory(): (model: string) => Adapter {
  const store = new Map<string, Stored>();
  const get = (key: string): AdapterPayload | undefined => {
    const e = store.get(key);
    if (e === undefined) return undefined;
    if (e.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return e.payload;
  };
  return (model: string): Adapter => {
    const k = (id: string) => `${model}:${id}`;
    return {
      async upsert(id, payload, expiresIn) {
        // Drop expired entries now and then so a long demo run stays small.
        if (store.size > 10_000) for (const key of store.keys()) get(key);
        const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
        store.set(k(id), { payload, expiresAt });
        if (payload.uid) store.set(`uid:${payload.uid}`, { payload, expiresAt });
        if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload, expiresAt });
      },
      async find(id) {
        return get(k(id));
      },
      async findByUid(uid) {
        return get(`uid:${uid}`);
      },
      async findByUserCode(userCode) {
        return get(`userCode:${userCode}`);
      },
      async consume(id) {
        const p = get(k(id));
        if (p) p.consumed = Math.floor(Date.now() / 1000);
      },
      async destroy(id) {
        store.delete(k(id));
      },
      async revokeByGrantId(grantId) {
        for (const [key, e] of store) if (e.payload.grantId === grantId) store.delete(key);
      },
    };
  };
}

/**
 * oidc-provider's RFC 8705 feature for tls_client_auth: the certificate is the one the TLS
 * handshake received, "verified" means it chains to `tls.ca`, and `tls_client_auth_subject_dn`
 * is compared with the subject in RFC 4514 order (`CN=gw,O=example`: last RDN first).
 */
function mtlsFeature() {
  const peer = (ctx: { socket: unknown }): X509Certificate | undefined => {
    const socket = ctx.socket as Partial<TLSSocket>;
    const raw = socket.getPeerCertificate?.(true)?.raw;
    return raw === undefined ? undefined : new X509Certificate(raw);
  };
  return {
    enabled: true,
    tlsClientAuth: true,
    getCertificate: (ctx: { socket: unknown }) => peer(ctx)?.toString(),
    certificateAuthorized: (ctx: { socket: unknown }) =>
      (ctx.socket as Partial<TLSSocket>).authorized === true,
    certificateSubjectMatches: (ctx: { socket: unknown }, property: string, expected: string) => {
      const cert = peer(ctx);
      if (cert === undefined) return false;
      switch (property) {
        case 'tls_client_auth_subject_dn':
          return cert.subject.split('\n').reverse().join(',') === expected;
        case 'tls_client_auth_san_dns':
          return cert.checkHost(expected, { subject: 'never' }) === expected;
        case 'tls_client_auth_san_ip':
          return cert.checkIP(expected) === expected;
        default:
          return false;
      }
    },
  };
}

/** Signing keys for the provider itself (ID tokens, JWT introspection responses). */
async function providerJwks(): Promise<{ keys: Record<string, unknown>[] }> {
  const [rsa, ec] = await Promise.all([
    generateKeyPair('RS256', { extractable: true }),
    generateKeyPair('ES256', { extractable: true }),
  ]);
  return {
    keys: [
      { ...(await exportJWK(rsa.privateKey)), kid: 'dev-rs256', alg: 'RS256', use: 'sig' },
      { ...(await exportJWK(ec.privateKey)), kid: 'dev-es256', alg: 'ES256', use: 'sig' },
    ],
  };
}

export async function startDevTokenService(opts: DevTokenServiceOptions): Promise<DevTokenService> {
  const { default: Provider } = await import('oidc-provider');
  const host = opts.host ?? '127.0.0.1';

  // The issuer needs the port, the port needs a listening server: bind first, attach the provider after.
  let handler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined;
  let introspections = 0;
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'POST' && req.url?.split('?')[0] === '/token/introspection') introspections++;
    if (handler) handler(req, res);
    else {
      res.statusCode = 503;
      res.end();
    }
  };
  const tls = opts.tls;
  const httpsServer = (requestCert: boolean): Server =>
    createHttpsServer(
      // rejectUnauthorized false: the provider, not the handshake, judges the client certificate.
      { cert: tls!.cert, key: tls!.key, ca: tls!.ca, requestCert, rejectUnauthorized: false },
      listener,
    );
  const server = tls ? httpsServer(tls.mtlsEndpointAliases !== true) : createServer(listener);
  const mtlsServer = tls?.mtlsEndpointAliases === true ? httpsServer(true) : undefined;
  const listen = (srv: Server, port: number) =>
    new Promise<number>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, host, () => {
        srv.off('error', reject);
        resolve((srv.address() as AddressInfo).port);
      });
    });
  const port = await listen(server, opts.port ?? 0);
  const mtlsPort = mtlsServer ? await listen(mtlsServer, 0) : undefined;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const origin = `${tls ? 'https' : 'http'}://${hostPart}:${port}`;
  const mtlsOrigin = mtlsPort === undefined ? undefined : `https://${hostPart}:${mtlsPort}`;
  const issuer = origin;

  const gatewayClients =
    opts.introspectionClientId === undefined
      ? undefined
      : new Set(
          Array.isArray(opts.introspectionClientId)
            ? opts.introspectionClientId
            : [opts.introspectionClientId],
        );
  const clients = opts.clients.map((c) => {
    const grantTypes = c.grant_types ?? ['client_credentials'];
    return {
      client_id: c.client_id,
      ...(c.client_secret !== undefined ? { client_secret: c.client_secret } : {}),
      grant_types: grantTypes,
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
      ...(c.scope !== undefined ? { scope: c.scope } : {}),
      ...c.extra,
    };
  });

  const configuration = {
    adapter: memoryAdapterFactory(),
    clients,
    jwks: await providerJwks(),
    scopes: ['openid', ...opts.scopes],
    ttl: { ClientCredentials: opts.accessTokenTtlSeconds ?? 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      jwtIntrospection: { enabled: true },
      introspection: {
        enabled: true,
        // The gateway may introspect every client's tokens; other clients only their own.
        allowedPolicy: (
          _ctx: unknown,
          client: { clientId: string; clientAuthMethod: string },
          token: { clientId?: string },
        ) =>
          client.clientAuthMethod !== 'none' &&
          (gatewayClients === undefined ||
            gatewayClients.has(client.clientId) ||
            client.clientId === token.clientId),
      },
      revocation: {
        enabled: true,
        allowedPolicy: (_ctx: unknown, client: { clientId: string }, token: { clientId?: string }) =>
          client.clientId === token.clientId || gatewayClients?.has(client.clientId) === true,
      },
      ...(tls ? { mTLS: mtlsFeature() } : {}),
    },
    // oidc-provider's default methods, plus RFC 8705 tls_client_auth when serving HTTPS.
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_jwt',
      'client_secret_post',
      'private_key_jwt',
      'none',
      ...(tls ? ['tls_client_auth'] : []),
    ],
    ...(mtlsOrigin
      ? {
          discovery: {
            mtls_endpoint_aliases: {
              token_endpoint: `${mtlsOrigin}/token`,
              introspection_endpoint: `${mtlsOrigin}/token/introspection`,
              revocation_endpoint: `${mtlsOrigin}/token/revocation`,
            },
          },
        }
      : {}),
    // Only used if a browser reaches the authorization endpoint: no dev interactions here.
    interactions: { url: () => '/interaction-unavailable' },
    renderError: (ctx: { type: string; body: unknown }, out: Record<string, unknown>) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const provider = new Provider(issuer, configuration as unknown as Configuration);
  handler = provider.callback();
  // issueToken() trusts the dev CA for the server's own certificate.
  const issueAgent = tls ? new Agent({ connect: { ca: tls.ca } }) : undefined;

  const tokenEndpoint = `${origin}/token`;
  const introspectionEndpoint = `${origin}/token/introspection`;
  const revocationEndpoint = `${origin}/token/revocation`;
  const jwksUri = `${origin}/jwks`;
  const authMethodOf = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));

  return {
    issuer,
    tokenEndpoint,
    introspectionEndpoint,
    revocationEndpoint,
    jwksUri,
    ...(mtlsOrigin ? { mtlsIntrospectionEndpoint: `${mtlsOrigin}/token/introspection` } : {}),
    async issueToken(clientId, clientSecret, scope) {
      const body = new URLSearchParams({ grant_type: 'client_credentials' });
      if (scope !== undefined) body.set('scope', scope);
      const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
      if (authMethodOf.get(clientId) === 'client_secret_post') {
        body.set('client_id', clientId);
        body.set('client_secret', clientSecret);
      } else {
        const enc = (s: string) => new URLSearchParams({ s }).toString().slice(2);
        headers['authorization'] =
          `Basic ${Buffer.from(`${enc(clientId)}:${enc(clientSecret)}`).toString('base64')}`;
      }
      const res = await fetch(tokenEndpoint, {
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.timeout(5000),
        ...(issueAgent ? { dispatcher: issueAgent } : {}),
      } as RequestInit);
      const json = (await res.json()) as { access_token?: string; expires_in?: number; error?: string };
      if (res.status !== 200 || typeof json.access_token !== 'string') {
        throw new Error(
          `token request for ${clientId} failed: HTTP ${res.status} ${json.error ?? ''}`.trim(),
        );
      }
      return { access_token: json.access_token, expires_in: json.expires_in ?? 0 };
    },
    async revoke(token) {
      // Straight at the model: same effect as RFC 7009 revocation, no client credentials needed.
      const found =
        (await provider.ClientCredentials.find(token)) ?? (await provider.AccessToken.find(token));
      await found?.destroy();
    },
    introspectionCount: () => introspections,
    async close() {
      await issueAgent?.close();
      await Promise.all(
        [server, mtlsServer].map(
          (srv) =>
            srv &&
            new Promise<void>((resolve) => {
              srv.closeAllConnections();
              srv.close(() => resolve());
            }),
        ),
      );
    },
  };
}
