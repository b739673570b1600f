import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';
import { recordSecret } from './leak-registry.ts';

/**
 * A stub token service with Curity's phantom-token behaviour (no real server here offers it):
 * `POST /introspect` with `Accept: application/jwt` answers 200 + the JWT as `application/jwt`
 * for an active token and 204 for an inactive one. `behaviour` switches it into failure modes.
 */
export type StubBehaviour =
  | 'ok'
  /** Answer this HTTP status (JSON error body; a Location header for 3xx). */
  | `status:${number}`
  /** Accept the request and never answer. */
  | 'hang'
  /** 200 application/jwt whose body is not a JWT. */
  | 'garbage'
  /** 200 text/html (a login page, a proxy's error page). */
  | 'html'
  /** Wait this many ms, then answer as 'ok'. */
  | `slow:${number}`
  /** RFC 7662 JSON with the JWT in member <name> (mode claim). */
  | `jwt-claim:${string}`
  /** Read the request, then reset the connection (RST) without answering. */
  | 'reset'
  /** Like 'reset' for one request; the stub then switches itself back to 'ok'. */
  | 'reset-once'
  /** Wait this many ms, then reset the connection without answering. */
  | `reset-after:${number}`
  /** 200 with a body of HUGE_BODY_BYTES, written with backpressure (see hugeBytesWritten). */
  | 'huge'
  /** 200 application/json, an RFC 7662-looking object without `active`. */
  | 'no-active'
  /** 200 application/json whose body is not valid JSON. */
  | 'bad-json';

/** Size of the 'huge' answer: far above any sane cap on an introspection answer. */
export const HUGE_BODY_BYTES = 64 * 1024 * 1024;

export interface CurityStubOptions {
  clientId: string;
  clientSecret: string;
  host?: string;
  /** Default 0 (the OS picks one). */
  port?: number;
  /** `typ` header of issued JWTs; default 'at+jwt'; null: no typ header. */
  typ?: string | null;
  /** Lifetime of issued JWTs when the registered claims have no exp (default 300 s). */
  jwtLifetimeSeconds?: number;
  /** Issuer to put in metadata and JWTs (default: the stub's own origin). */
  issuer?: string;
}

export interface RecordedRequest {
  headers: IncomingHttpHeaders;
  body: URLSearchParams;
}

export interface CurityStub {
  issuer: string;
  origin: string;
  port: number;
  introspectionEndpoint: string;
  jwksUri: string;
  behaviour: StubBehaviour;
  /** JWKS endpoint behaviour: 'ok', 'status:<code>' or 'hang'. */
  jwksBehaviour: 'ok' | `status:${number}` | 'hang';
  /** Extra headers on every introspection answer (e.g. Retry-After). */
  responseHeaders: Record<string, string>;
  /** `Location` of 3xx answers (default http://127.0.0.1:9/elsewhere). */
  redirectTo: string;
  /** Members merged over the discovery document (e.g. another introspection_endpoint or issuer). */
  discovery: Record<string, unknown>;
  /** Bytes of the last 'huge' answer the stub managed to write before the client went away. */
  hugeBytesWritten: number;
  /** `typ` header of issued JWTs (null: none). */
  typ: string | null;
  /**
   * When set, an accept-jwt 200 answer also carries the JWT in this response header (default null:
   * body only, as Curity). For nginx `auth_request`, which sees a subrequest's headers, never its body.
   */
  jwtHeader: string | null;
  /** Introspection requests received (any outcome). */
  calls: number;
  /** JWKS requests received. */
  jwksCalls: number;
  /** Every introspection request, in order (test assertions on headers and form). */
  requests: RecordedRequest[];
  /** Maps an opaque token to the claims of the JWT issued for it. */
  register(token: string, claims?: JWTPayload, opts?: { maxAge?: number }): void;
  /**
   * Consulted for tokens not registered (null: none): claims for an active token, undefined for an
   * inactive one. For millions of tokens (the soak) without a map entry each.
   */
  resolve: ((token: string) => { claims: JWTPayload; maxAge?: number } | undefined) | null;
  /** Forget a token (it becomes inactive). */
  revoke(token: string): void;
  /**
   * Maps an opaque token to exactly this JWT text, answered as is (accept-jwt body, or the member
   * of a `jwt-claim:<name>` answer): for tests that craft the JWT themselves (attacks, other algs).
   */
  registerJwt(token: string, jwt: string, opts?: { maxAge?: number }): void;
  /** Generates a signing key for `alg` and publishes it in the JWKS (rotateKeys drops it). */
  addKey(alg: StubKeyAlg): Promise<StubKey>;
  /** Signs a JWT with the stub's current key (or an attacker's key). Claims default iss/iat/exp; `undefined` removes one. */
  signJwt(
    claims?: Record<string, unknown>,
    header?: Record<string, unknown>,
    opts?: { foreignKey?: boolean },
  ): Promise<string>;
  /** New signing key with a new kid; the old public key stays in the JWKS when keepOld. */
  rotateKeys(opts?: { keepOld?: boolean }): Promise<void>;
  /** Public key of the attacker key used by signJwt(…, { foreignKey: true }). */
  attackerPublicJwk: JWK;
  /** Current public JWKS. */
  publicJwks(): { keys: JWK[] };
  /** A fresh opaque token value (random). */
  newToken(): string;
  close(): Promise<void>;
}

interface KeyEntry {
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}

/** Algorithms `addKey` can make a published key for. */
export type StubKeyAlg = 'ES256' | 'ES384' | 'ES512' | 'RS256' | 'PS256' | 'EdDSA';

/** A key added with `addKey`: the public half is in the stub's JWKS (kid and alg set). */
export interface StubKey extends KeyEntry {
  alg: StubKeyAlg;
}

async function newKeyOf(alg: StubKeyAlg): Promise<StubKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, {
    extractable: true,
    ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}),
  });
  const kid = randomBytes(8).toString('hex');
  return { alg, kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

async function newKey(): Promise<KeyEntry> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = randomBytes(8).toString('hex');
  return { kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function formDecode(s: string): string {
  return decodeURIComponent(s.replace(/\+/g, '%20'));
}

export async function startCurityStub(opts: CurityStubOptions): Promise<CurityStub> {
  const host = opts.host ?? '127.0.0.1';
  let current = await newKey();
  let published: KeyEntry[] = [current];
  const attacker = await newKey();
  const registered = new Map<string, { claims: JWTPayload; maxAge?: number }>();
  /** registerJwt: tokens answered with a fixed JWT text. */
  const rawAnswers = new Map<string, { jwt: string; maxAge?: number }>();
  const timers = new Set<NodeJS.Timeout>();
  const lifetime = opts.jwtLifetimeSeconds ?? 300;

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const origin = `http://${host}:${port}`;
  const issuer = opts.issuer ?? origin;

  const stub: CurityStub = {
    issuer,
    origin,
    port,
    introspectionEndpoint: `${origin}/introspect`,
    jwksUri: `${origin}/jwks`,
    behaviour: 'ok',
    jwksBehaviour: 'ok',
    responseHeaders: {},
    redirectTo: 'http://127.0.0.1:9/elsewhere',
    discovery: {},
    hugeBytesWritten: 0,
    typ: opts.typ === undefined ? 'at+jwt' : opts.typ,
    jwtHeader: null,
    resolve: null,
    calls: 0,
    jwksCalls: 0,
    requests: [],
    register(token, claims = {}, o = {}) {
      registered.set(token, { claims, ...(o.maxAge !== undefined ? { maxAge: o.maxAge } : {}) });
    },
    revoke(token) {
      registered.delete(token);
      rawAnswers.delete(token);
    },
    registerJwt(token, jwt, o = {}) {
      rawAnswers.set(token, { jwt, ...(o.maxAge !== undefined ? { maxAge: o.maxAge } : {}) });
    },
    async addKey(alg) {
      const key = await newKeyOf(alg);
      published = [...published, key];
      return key;
    },
    async signJwt(claims = {}, header = {}, o = {}) {
      const now = Math.floor(Date.now() / 1000);
      const payload: Record<string, unknown> = { iss: issuer, iat: now, exp: now + lifetime, ...claims };
      for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
      const key = o.foreignKey ? attacker : current;
      const h: Record<string, unknown> = {
        alg: 'ES256',
        kid: current.kid,
        ...(stub.typ !== null ? { typ: stub.typ } : {}),
        ...header,
      };
      for (const k of Object.keys(h)) if (h[k] === undefined) delete h[k];
      const jwt = await new SignJWT(payload as JWTPayload)
        .setProtectedHeader(h as { alg: string })
        .sign(key.privateKey);
      recordSecret(jwt);
      return jwt;
    },
    async rotateKeys(o = {}) {
      const next = await newKey();
      published = o.keepOld ? [next, ...published] : [next];
      current = next;
    },
    attackerPublicJwk: attacker.publicJwk,
    publicJwks: () => ({ keys: published.map((k) => k.publicJwk) }),
    newToken: () => {
      const t = randomBytes(24).toString('base64url');
      recordSecret(t);
      return t;
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };

  function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
    res.end(JSON.stringify(body));
  }

  /** RFC 6749 §2.3.1: exactly one of basic / post, with the right id and secret. */
  function authenticate(
    req: IncomingMessage,
    form: URLSearchParams,
  ): 'ok' | 'invalid_request' | 'invalid_client' {
    const authz = req.headers.authorization;
    const postId = form.get('client_id');
    const postSecret = form.get('client_secret');
    if (authz !== undefined && postSecret !== null) return 'invalid_request';
    if (authz !== undefined) {
      const m = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(authz);
      if (!m) return 'invalid_client';
      const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i < 0) return 'invalid_client';
      try {
        const id = formDecode(decoded.slice(0, i));
        const secret = formDecode(decoded.slice(i + 1));
        return id === opts.clientId && secret === opts.clientSecret ? 'ok' : 'invalid_client';
      } catch {
        return 'invalid_request';
      }
    }
    return postId === opts.clientId && postSecret === opts.clientSecret ? 'ok' : 'invalid_client';
  }

  async function answer(res: ServerResponse, req: IncomingMessage, form: URLSearchParams): Promise<void> {
    const extra = stub.responseHeaders;
    const b = stub.behaviour;
    if (b === 'hang') return; // never answered; close() ends the connection
    if (b.startsWith('status:')) {
      const status = Number(b.slice('status:'.length));
      const headers: Record<string, string> = { ...extra };
      if (status >= 300 && status < 400) headers['location'] = stub.redirectTo;
      json(res, status, { error: status >= 500 ? 'server_error' : 'invalid_request' }, headers);
      return;
    }
    if (b === 'garbage') {
      res.writeHead(200, { 'content-type': 'application/jwt', ...extra });
      res.end('this is not a JWT at all \u0000\u00ff{"active":true}');
      return;
    }
    if (b === 'reset' || b === 'reset-once') {
      if (b === 'reset-once') stub.behaviour = 'ok';
      req.socket.resetAndDestroy();
      return;
    }
    if (b.startsWith('reset-after:')) {
      const ms = Number(b.slice('reset-after:'.length));
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          timers.delete(t);
          resolve();
        }, ms);
        timers.add(t);
      });
      if (!req.socket.destroyed) req.socket.resetAndDestroy();
      return;
    }
    if (b === 'huge') {
      // 64 KiB chunks, each after the previous one drained: what is written is what was read.
      res.writeHead(200, { 'content-type': 'application/json', ...extra });
      stub.hugeBytesWritten = 0;
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      while (stub.hugeBytesWritten < HUGE_BODY_BYTES && !res.destroyed) {
        stub.hugeBytesWritten += chunk.length;
        if (!res.write(chunk)) {
          await new Promise<void>((resolve) => {
            const go = () => {
              res.off('drain', go);
              res.off('close', go);
              resolve();
            };
            res.on('drain', go);
            res.on('close', go);
          });
        }
      }
      res.end();
      return;
    }
    if (b === 'no-active') {
      return json(res, 200, { iss: issuer, sub: 'alice', scope: 'invoice_read', client_id: 'web' }, extra);
    }
    if (b === 'bad-json') {
      res.writeHead(200, { 'content-type': 'application/json', ...extra });
      res.end('{"active": tru');
      return;
    }
    if (b === 'html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', ...extra });
      res.end('<!doctype html><html><body><h1>Please sign in</h1></body></html>');
      return;
    }
    if (b.startsWith('slow:')) {
      const ms = Number(b.slice('slow:'.length));
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          timers.delete(t);
          resolve();
        }, ms);
        timers.add(t);
      });
      if (res.destroyed) return;
    } else if (b !== 'ok' && !b.startsWith('jwt-claim:')) {
      throw new Error(`unknown stub behaviour ${b}`);
    }

    const token = form.get('token') ?? '';
    const raw = rawAnswers.get(token);
    if (raw !== undefined && b.startsWith('jwt-claim:')) {
      return json(res, 200, { active: true, [b.slice('jwt-claim:'.length)]: raw.jwt }, extra);
    }
    if (raw !== undefined) {
      res.writeHead(200, {
        'content-type': 'application/jwt',
        ...(raw.maxAge !== undefined ? { 'cache-control': `max-age=${raw.maxAge}` } : {}),
        ...extra,
      });
      res.end(raw.jwt);
      return;
    }
    const entry = registered.get(token) ?? stub.resolve?.(token);
    const wantsJwt = (req.headers.accept ?? '').toLowerCase().includes('application/jwt');
    if (b.startsWith('jwt-claim:')) {
      const member = b.slice('jwt-claim:'.length);
      if (!entry) return json(res, 200, { active: false }, extra);
      const jwt = await stub.signJwt(entry.claims as Record<string, unknown>);
      return json(res, 200, { active: true, iss: issuer, ...entry.claims, [member]: jwt }, extra);
    }
    if (!wantsJwt) {
      if (!entry) return json(res, 200, { active: false }, extra);
      return json(res, 200, { active: true, iss: issuer, ...entry.claims }, extra);
    }
    if (!entry) {
      res.writeHead(204, { 'cache-control': 'no-store', ...extra });
      res.end();
      return;
    }
    const jwt = await stub.signJwt(entry.claims as Record<string, unknown>);
    res.writeHead(200, {
      'content-type': 'application/jwt',
      ...(entry.maxAge !== undefined ? { 'cache-control': `max-age=${entry.maxAge}` } : {}),
      ...(stub.jwtHeader !== null ? { [stub.jwtHeader]: jwt } : {}),
      ...extra,
    });
    res.end(jwt);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/.well-known/openid-configuration') {
      return json(res, 200, {
        issuer,
        introspection_endpoint: stub.introspectionEndpoint,
        jwks_uri: stub.jwksUri,
        token_endpoint: `${origin}/token`,
        introspection_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
        ...stub.discovery,
      });
    }
    if (req.method === 'GET' && path === '/jwks') {
      stub.jwksCalls++;
      const jb = stub.jwksBehaviour;
      if (jb === 'hang') return;
      if (jb.startsWith('status:'))
        return json(res, Number(jb.slice('status:'.length)), { error: 'server_error' });
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' });
      res.end(JSON.stringify(stub.publicJwks()));
      return;
    }
    if (path === '/introspect') {
      if (req.method !== 'POST') return json(res, 405, { error: 'invalid_request' }, { allow: 'POST' });
      const form = new URLSearchParams(await readBody(req));
      stub.calls++;
      stub.requests.push({ headers: req.headers, body: form });
      const auth = authenticate(req, form);
      if (auth === 'invalid_client') {
        return json(res, 401, { error: 'invalid_client' }, { 'www-authenticate': 'Basic realm="stub"' });
      }
      if (auth === 'invalid_request') return json(res, 400, { error: 'invalid_request' });
      return answer(res, req, form);
    }
    json(res, 404, { error: 'not_found' });
  }

  return stub;
}
