import { execFileSync } from 'node:child_process';
import { constants, createPrivateKey, KeyObject, sign, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CryptoKey } from 'jose';

/**
 * Builders for malicious JWTs (RFC 8725 attacks) that jose refuses to produce on purpose: raw
 * compact serialization with any header, `alg: none`, tampered parts, an all-zero ECDSA signature,
 * an attacker's self-signed certificate. Every signature made here is a real one.
 */

/** base64url of a JSON value (objects, arrays, strings as JSON) or of raw bytes. */
export function b64u(value: unknown): string {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64url');
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** Node's signature parameters for a JWS `alg` (RFC 7518 §3). */
function signParams(alg: string): { hash: string | null; pss?: number; p1363?: boolean } {
  const m = /^(ES|RS|PS)(256|384|512)$/.exec(alg);
  if (m) {
    const hash = `sha${m[2]}`;
    if (m[1] === 'ES') return { hash, p1363: true };
    if (m[1] === 'PS') return { hash, pss: Number(m[2]) / 8 };
    return { hash };
  }
  if (alg === 'EdDSA' || alg === 'Ed25519') return { hash: null };
  throw new Error(`signRaw: unsupported alg ${alg}`);
}

/**
 * Compact JWS over exactly these header and payload (objects are JSON-encoded, strings are taken
 * as the already-encoded part), signed for real with `key` using `alg`'s parameters — jose's
 * signers validate `crit` and friends, which is what an attacker does not do.
 */
export function signRaw(
  header: Record<string, unknown> | string,
  payload: unknown,
  key: CryptoKey | KeyObject,
  alg: string,
): string {
  const h = typeof header === 'string' ? header : b64u(header);
  const p = typeof payload === 'string' ? payload : b64u(payload);
  const input = Buffer.from(`${h}.${p}`);
  const k =
    key instanceof KeyObject ? key : KeyObject.from(key as unknown as Parameters<typeof KeyObject.from>[0]);
  const { hash, pss, p1363 } = signParams(alg);
  const sig = sign(hash, input, {
    key: k,
    ...(p1363 ? { dsaEncoding: 'ieee-p1363' as const } : {}),
    ...(pss !== undefined ? { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: pss } : {}),
  });
  return `${h}.${p}.${sig.toString('base64url')}`;
}

/** The three parts of a compact JWT. */
export function partsOf(jwt: string): [string, string, string] {
  const [h = '', p = '', s = ''] = jwt.split('.');
  return [h, p, s];
}

/** The payload of `jwt` replaced by `claims`, the original signature kept. */
export function withPayload(jwt: string, claims: Record<string, unknown>): string {
  const [h, , s] = partsOf(jwt);
  return `${h}.${b64u(claims)}.${s}`;
}

/** The signature of `jwt` with one bit of its byte `index` flipped. */
export function flipSignatureByte(jwt: string, index = 10): string {
  const [h, p, s] = partsOf(jwt);
  const sig = Buffer.from(s, 'base64url');
  sig[index % sig.length]! ^= 0x01;
  return `${h}.${p}.${sig.toString('base64url')}`;
}

/** CVE-2022-21449 ("psychic signatures"): an ES256 signature with r = s = 0. */
export function psychicSignature(header: Record<string, unknown>, payload: unknown): string {
  return `${b64u(header)}.${b64u(payload)}.${b64u(new Uint8Array(64))}`;
}

export interface AttackerCertificate {
  /** The certificate's DER, standard base64 (an `x5c` entry, RFC 7515 §4.1.6). */
  x5c: string;
  pem: string;
  /** Its P-256 private key: tokens "vouched for" by the certificate are signed with it. */
  privateKey: KeyObject;
}

/** A self-signed P-256 certificate of an attacker, made with the openssl CLI (bounded). */
export function attackerCertificate(): AttackerCertificate {
  const dir = mkdtempSync(join(tmpdir(), 'jwt-attack-cert-'));
  try {
    const keyFile = join(dir, 'key.pem');
    const certFile = join(dir, 'cert.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        keyFile,
        '-out',
        certFile,
        '-days',
        '1',
        '-subj',
        '/CN=attacker.example',
      ],
      { stdio: 'ignore', timeout: 10_000 },
    );
    const pem = readFileSync(certFile, 'utf8');
    return {
      pem,
      x5c: new X509Certificate(pem).raw.toString('base64'),
      privateKey: createPrivateKey(readFileSync(keyFile)),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
