import { createPrivateKey, type JsonWebKey, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { SignJWT } from 'jose';
import { Agent } from 'undici';
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

/** RFC 7523 §2.2 client assertion type. */
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** Lifetime of one client assertion: it is made for one request and sent at once. */
export const ASSERTION_LIFETIME_SECONDS = 60;

/** The private_key_jwt signing key, checked once at load. */
interface AssertionKey {
  key: KeyObject;
  alg: string;
  /** The JWK's `kid` (a PEM key has none). */
  kid?: string;
}

/** Everything read from files; replaced as a whole by reload(). */
interface Material {
  /** Set when a CA bundle or a client certificate is configured; otherwise Node's default agent is used. */
  agent?: Agent;
  assertionKey?: AssertionKey;
}

/** Curve each EC algorithm requires (RFC 7518 §3.4), as Node names it. */
const EC_CURVE: Record<string, string> = { ES256: 'prime256v1', ES384: 'secp384r1', ES512: 'secp521r1' };
const EC_ALG_BY_CURVE: Record<string, string> = {
  prime256v1: 'ES256',
  secp384r1: 'ES384',
  secp521r1: 'ES512',
};
/** Asymmetric JWS algorithms a client assertion may use, and the Node key types that fit each. */
const ALG_KEY_TYPES: Record<string, readonly string[]> = {
  ES256: ['ec'],
  ES384: ['ec'],
  ES512: ['ec'],
  RS256: ['rsa'],
  RS384: ['rsa'],
  RS512: ['rsa'],
  PS256: ['rsa', 'rsa-pss'],
  PS384: ['rsa', 'rsa-pss'],
  PS512: ['rsa', 'rsa-pss'],
  EdDSA: ['ed25519'],
  Ed25519: ['ed25519'],
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads a configured file; the error names the config key and the errno, never content. */
async function readConfigFile(key: string, file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new Error(`tokenService.${key}: cannot read ${file} (${code})`);
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Every certificate of a PEM bundle, parsed (so a broken file fails at load, not at the first request). */
function parseCertificates(key: string, pem: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new Error(
      `tokenService.${key}: no PEM certificate in the file (expected -----BEGIN CERTIFICATE-----)`,
    );
  }
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch {
      throw new Error(
        `tokenService.${key}: certificate ${i + 1} of the file is not a valid X.509 certificate`,
      );
    }
  });
}

/** A short description of a key for error messages ("EC P-256", "RSA 2048-bit"): never key material. */
function describeKey(k: KeyObject): string {
  const d = k.asymmetricKeyDetails ?? {};
  switch (k.asymmetricKeyType) {
    case 'ec':
      return `EC ${d.namedCurve ?? ''}`.trim();
    case 'rsa':
    case 'rsa-pss':
      return `${k.asymmetricKeyType.toUpperCase()} ${d.modulusLength ?? '?'}-bit`;
    default:
      return String(k.asymmetricKeyType);
  }
}

/** The algorithm a key implies when neither the config nor the JWK names one. */
function defaultAlg(k: KeyObject): string | undefined {
  switch (k.asymmetricKeyType) {
    case 'ec':
      return EC_ALG_BY_CURVE[k.asymmetricKeyDetails?.namedCurve ?? ''];
    case 'rsa':
      return 'RS256';
    case 'rsa-pss':
      return 'PS256';
    case 'ed25519':
      return 'EdDSA';
    default:
      return undefined;
  }
}

function algFits(alg: string, k: KeyObject): boolean {
  const types = ALG_KEY_TYPES[alg];
  if (types === undefined || !types.includes(k.asymmetricKeyType ?? '')) return false;
  return k.asymmetricKeyType !== 'ec' || EC_CURVE[alg] === k.asymmetricKeyDetails?.namedCurve;
}

/**
 * Loads the private_key_jwt key: a PEM private key (PKCS#8; PKCS#1 / SEC1 are read too) or a
 * private JWK (a JWK Set holding exactly one key is accepted as well). Symmetric and public-only
 * keys are refused. Errors name the config key and never quote the file (JSON.parse and OpenSSL
 * messages could echo key material).
 */
export async function loadAssertionKey(file: string, configuredAlg?: string): Promise<AssertionKey> {
  const where = 'tokenService.privateKeyFile';
  const text = await readConfigFile('privateKeyFile', file);
  let key: KeyObject;
  let kid: string | undefined;
  let jwkAlg: string | undefined;

  if (text.trimStart().startsWith('{')) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new Error(`${where}: not valid JSON (expected a private JWK or a PEM PKCS#8 private key)`);
    }
    if (isObject(doc) && Array.isArray(doc['keys'])) {
      const keys = doc['keys'] as unknown[];
      if (keys.length !== 1) {
        throw new Error(`${where}: a JWK Set here must hold exactly one key (it holds ${keys.length})`);
      }
      doc = keys[0];
    }
    if (!isObject(doc)) throw new Error(`${where}: not a JWK (expected a JSON object with "kty")`);
    const kty = doc['kty'];
    if (kty === 'oct') {
      throw new Error(
        `${where}: a symmetric key (kty "oct") cannot be used for private_key_jwt; an asymmetric private key is required`,
      );
    }
    if (kty !== 'EC' && kty !== 'RSA' && kty !== 'OKP') {
      throw new Error(`${where}: unsupported key type (kty must be EC, RSA or OKP)`);
    }
    if (typeof doc['d'] !== 'string' || doc['d'] === '') {
      throw new Error(`${where}: a public key only (no "d" member); private_key_jwt needs the private key`);
    }
    if (doc['use'] !== undefined && doc['use'] !== 'sig') {
      throw new Error(`${where}: "use" must be "sig" when present`);
    }
    try {
      key = createPrivateKey({ key: doc as JsonWebKey, format: 'jwk' });
    } catch {
      throw new Error(`${where}: not a valid ${kty} private JWK`);
    }
    if (typeof doc['kid'] === 'string' && doc['kid'] !== '') kid = doc['kid'];
    if (doc['alg'] !== undefined) {
      if (typeof doc['alg'] !== 'string' || ALG_KEY_TYPES[doc['alg']] === undefined) {
        throw new Error(`${where}: the JWK's "alg" is not an allowed asymmetric signing algorithm`);
      }
      jwkAlg = doc['alg'];
    }
  } else {
    if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text)) {
      throw new Error(
        `${where}: encrypted PEM keys are not supported (store the key unencrypted, mode 0600)`,
      );
    }
    const hasPrivate = /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/.test(text);
    if (!hasPrivate && /-----BEGIN (?:[A-Z]+ )?PUBLIC KEY-----|-----BEGIN CERTIFICATE-----/.test(text)) {
      throw new Error(`${where}: a public key or certificate only; private_key_jwt needs the private key`);
    }
    if (!hasPrivate) {
      throw new Error(`${where}: not a private key (expected PEM "-----BEGIN PRIVATE KEY-----" or a JWK)`);
    }
    try {
      key = createPrivateKey(text);
    } catch {
      throw new Error(`${where}: not a readable PEM private key (PKCS#8 expected)`);
    }
  }

  const described = describeKey(key);
  if (key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss') {
    if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
      throw new Error(`${where}: an ${described} key is too short (RSA keys need at least 2048 bits)`);
    }
  }
  if (configuredAlg !== undefined && jwkAlg !== undefined && configuredAlg !== jwkAlg) {
    throw new Error(`tokenService.privateKeyAlg: ${configuredAlg} differs from the key's "alg" ${jwkAlg}`);
  }
  const alg = configuredAlg ?? jwkAlg ?? defaultAlg(key);
  if (alg === undefined) {
    throw new Error(
      `${where}: an ${described} key cannot sign a client assertion (use EC P-256/384/521, RSA or Ed25519)`,
    );
  }
  if (!algFits(alg, key)) {
    throw new Error(
      configuredAlg !== undefined
        ? `tokenService.privateKeyAlg: ${alg} does not fit the ${described} key of tokenService.privateKeyFile`
        : `${where}: the JWK's "alg" ${alg} does not fit its ${described} key`,
    );
  }
  // Prove the key signs with this algorithm now, not at the first introspection.
  try {
    await new SignJWT({}).setProtectedHeader({ alg }).sign(key);
  } catch {
    throw new Error(`${where}: the ${described} key cannot sign with ${alg}`);
  }
  return kid === undefined ? { key, alg } : { key, alg, kid };
}

/**
 * The TLS options for token-service connections: `caFile` (trust anchors instead of the system
 * CAs) and, for tls_client_auth, the client certificate chain and its key. Undefined when none is
 * configured. Checked here (parsed, key matches certificate, OpenSSL accepts the set) so a broken
 * file is a startup / reload error rather than a 503 at the first request.
 */
async function loadTls(
  ts: Config['tokenService'],
): Promise<{ ca?: string; cert?: string; key?: string } | undefined> {
  const useClientCert = ts.clientAuth === 'tls_client_auth';
  if (ts.caFile === undefined && !useClientCert) return undefined;
  const tls: { ca?: string; cert?: string; key?: string } = {};
  if (ts.caFile !== undefined) {
    tls.ca = await readConfigFile('caFile', ts.caFile);
    parseCertificates('caFile', tls.ca);
  }
  if (useClientCert) {
    if (ts.tlsCertFile === undefined)
      throw new Error('tokenService.tlsCertFile: required for clientAuth tls_client_auth');
    if (ts.tlsKeyFile === undefined)
      throw new Error('tokenService.tlsKeyFile: required for clientAuth tls_client_auth');
    tls.cert = await readConfigFile('tlsCertFile', ts.tlsCertFile);
    tls.key = await readConfigFile('tlsKeyFile', ts.tlsKeyFile);
    const [leaf] = parseCertificates('tlsCertFile', tls.cert);
    let key: KeyObject;
    try {
      key = createPrivateKey(tls.key);
    } catch {
      throw new Error('tokenService.tlsKeyFile: not a readable unencrypted PEM private key');
    }
    if (!leaf!.checkPrivateKey(key)) {
      throw new Error(
        'tokenService.tlsKeyFile: the key does not belong to the first certificate of tokenService.tlsCertFile',
      );
    }
  }
  try {
    createSecureContext(tls);
  } catch {
    throw new Error(
      `tokenService.${useClientCert ? 'tlsCertFile' : 'caFile'}: OpenSSL refused the TLS material (unsupported key or certificate)`,
    );
  }
  return tls;
}

/**
 * Builds the configured client authentication. Throws an Error naming the config key when the
 * configuration cannot be used (startup error, exit 1).
 *
 * - client_secret_basic / client_secret_post: RFC 6749 §2.3.1.
 * - private_key_jwt (RFC 7523 §2.2, OIDC Core §9): a fresh assertion per introspection request,
 *   `iss` = `sub` = clientId, `aud` = the token service's issuer identifier as one string: the
 *   value draft-ietf-oauth-rfc7523bis requires (endpoint URLs as audience allowed the
 *   audience-injection attack it fixes). oidc-provider 9 accepts the issuer, its token endpoint
 *   or the endpoint called; the issuer is the one value every endpoint accepts. Random `jti`
 *   (oidc-provider refuses a replayed one), `exp` = `iat` + 60 s. No `typ` header: oidc-provider
 *   ignores it, and `client-authentication+jwt` is still refused by some servers (Entra ID).
 * - tls_client_auth (RFC 8705 §2.1): the client certificate goes in the TLS handshake, the body
 *   carries `client_id`.
 *
 * Every token-service request goes through `fetch`: Node's fetch with an undici Agent carrying
 * `caFile` and the client certificate (when configured), so discovery, JWKS and introspection all
 * trust the same anchors. reload() swaps the agent; requests in flight finish on the old one.
 */
export async function createClientAuth(
  cfg: Config,
  deps: { fetch?: typeof fetch } = {},
): Promise<ClientAuth> {
  const ts = cfg.tokenService;
  const baseFetch = deps.fetch ?? globalThis.fetch;

  async function load(): Promise<Material> {
    const tls = await loadTls(ts);
    const material: Material = {};
    if (ts.clientAuth === 'private_key_jwt') {
      if (ts.privateKeyFile === undefined)
        throw new Error('tokenService.privateKeyFile: required for clientAuth private_key_jwt');
      material.assertionKey = await loadAssertionKey(ts.privateKeyFile, ts.privateKeyAlg);
    }
    if (tls !== undefined) material.agent = new Agent({ connect: tls });
    return material;
  }

  let material = await load();

  // Node's fetch takes an undici dispatcher; the agent is looked up per request so reload() applies at once.
  const tlsFetch = ((input: Parameters<typeof fetch>[0], init?: RequestInit) =>
    baseFetch(input, { ...init, dispatcher: material.agent } as RequestInit)) as typeof fetch;

  async function reload(): Promise<void> {
    const next = await load();
    const old = material.agent;
    material = next;
    // Graceful: the old agent closes once its requests in flight are done.
    old?.close().catch(() => {});
  }

  const common = { fetch: material.agent !== undefined ? tlsFetch : baseFetch, reload };

  switch (ts.clientAuth) {
    case 'client_secret_basic':
    case 'client_secret_post': {
      const secret = ts.clientSecret;
      if (secret === undefined)
        throw new Error(`tokenService.clientSecret: required for clientAuth ${ts.clientAuth}`);
      const basic = `Basic ${Buffer.from(`${formEncode(ts.clientId)}:${formEncode(secret)}`).toString('base64')}`;
      return {
        ...common,
        async apply({ headers, body }) {
          if (ts.clientAuth === 'client_secret_basic') headers.set('authorization', basic);
          else {
            body.set('client_id', ts.clientId);
            body.set('client_secret', secret);
          }
        },
      };
    }
    case 'private_key_jwt':
      return {
        ...common,
        async apply({ body }) {
          const { key, alg, kid } = material.assertionKey!;
          const now = Math.floor(Date.now() / 1000);
          const assertion = await new SignJWT({ jti: randomBytes(16).toString('base64url') })
            .setProtectedHeader(kid === undefined ? { alg } : { alg, kid })
            .setIssuer(ts.clientId)
            .setSubject(ts.clientId)
            .setAudience(ts.issuer)
            .setIssuedAt(now)
            .setExpirationTime(now + ASSERTION_LIFETIME_SECONDS)
            .sign(key);
          body.set('client_id', ts.clientId);
          body.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
          body.set('client_assertion', assertion);
        },
      };
    case 'tls_client_auth':
      return {
        ...common,
        async apply({ body }) {
          body.set('client_id', ts.clientId);
        },
      };
  }
}
