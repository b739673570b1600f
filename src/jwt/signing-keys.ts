import { randomBytes } from 'node:crypto';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import {
  CompactSign,
  type CryptoKey,
  calculateJwkThumbprint,
  compactVerify,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
} from 'jose';

/** A JSON Web Key as published (public members + kid, alg, use). */
export type JsonWebKey = JWK;

/** One key of the signing keys file, validated and imported. */
export interface SigningKey {
  kid: string;
  alg: string;
  /** The private key (never leaves the process). */
  privateKey: CryptoKey;
  /** Only public members + kid, alg, use:'sig': what is published. */
  publicJwk: JsonWebKey;
  /** RFC 7638 thumbprint of the public key: tells a new key from an old one reusing its kid. */
  thumbprint: string;
}

/** The gateway's own signing keys (mode mint), in file order. */
export interface SigningKeys {
  /** Private key of the FIRST key in the file: it signs every minted JWT. */
  signingKey: CryptoKey;
  kid: string;
  alg: string;
  /** Public parts of ALL keys (only public members + kid, alg, use:'sig'), served as the JWKS. */
  publicJwks: { keys: JsonWebKey[] };
  /** Every key of the file, in file order (the key ring's input). */
  keys: SigningKey[];
}

/** Asymmetric JWS algorithms a signing key may declare (never none / HS*). */
const SIGNING_ALGS: Record<string, 'EC' | 'RSA' | 'OKP'> = {
  ES256: 'EC',
  ES384: 'EC',
  ES512: 'EC',
  RS256: 'RSA',
  RS384: 'RSA',
  RS512: 'RSA',
  PS256: 'RSA',
  PS384: 'RSA',
  PS512: 'RSA',
  EdDSA: 'OKP',
  Ed25519: 'OKP',
};

/**
 * Every algorithm a signing key may have. A verifier of minted JWTs allows all of them: each
 * published key declares its `alg`, and a key is only used for JWTs whose header names that alg.
 */
export const SIGNING_ALGORITHMS: readonly string[] = Object.keys(SIGNING_ALGS);

/** Curve each EC algorithm requires (RFC 7518 §3.4). */
const EC_CURVE: Record<string, string> = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521' };

/** Public members per key type (RFC 7518 §6). Everything else is dropped from the published key. */
const PUBLIC_MEMBERS: Record<string, readonly string[]> = {
  EC: ['kty', 'crv', 'x', 'y'],
  OKP: ['kty', 'crv', 'x'],
  RSA: ['kty', 'n', 'e'],
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads a private JWKS file (`{"keys":[…]}`). The first key signs; every key's public part is
 * published, so a new key can be published (second position) before it signs (first position;
 * key-ring.ts decides when a new first key takes over after a reload).
 * Every key must be a private asymmetric key with `kid` and `alg` (`alg` defaults to ES256 for an
 * EC P-256 key). Errors are plain `Error`s naming the file and the key index; they never quote
 * the file's content (a JSON.parse message would echo key material).
 */
export async function loadSigningKeys(file: string): Promise<SigningKeys> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`${file}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    // Deliberately not the parser's message: it quotes a piece of the input (private key material).
    throw new Error(`${file}: not valid JSON (expected a JWK Set: {"keys":[…]})`);
  }
  if (!isObject(doc) || !Array.isArray(doc['keys'])) {
    throw new Error(`${file}: not a JWK Set (expected {"keys":[…]})`);
  }
  const keys = doc['keys'] as unknown[];
  if (keys.length === 0) throw new Error(`${file}: keys: must contain at least one key`);

  const kids = new Set<string>();
  const loaded: SigningKey[] = [];

  for (let i = 0; i < keys.length; i++) {
    const where = `${file}: keys[${i}]`;
    const jwk = keys[i];
    if (!isObject(jwk)) throw new Error(`${where}: must be a JSON object`);
    const kty = jwk['kty'];
    if (kty === 'oct')
      throw new Error(`${where}: symmetric keys (kty "oct") cannot sign tokens others verify`);
    if (kty !== 'EC' && kty !== 'RSA' && kty !== 'OKP') {
      throw new Error(`${where}: unsupported key type (kty must be EC, RSA or OKP)`);
    }
    if (typeof jwk['d'] !== 'string' || jwk['d'] === '') {
      throw new Error(`${where}: not a private key (no "d" member); the file must hold private keys`);
    }
    const kid = jwk['kid'];
    if (typeof kid !== 'string' || kid === '') throw new Error(`${where}: "kid" is required`);
    if (kids.has(kid)) throw new Error(`${where}: duplicate "kid" ${JSON.stringify(kid)}`);
    kids.add(kid);
    let alg = jwk['alg'];
    if (alg === undefined && kty === 'EC' && jwk['crv'] === 'P-256') alg = 'ES256';
    if (typeof alg !== 'string' || alg === '')
      throw new Error(`${where}: "alg" is required for this key type`);
    if (SIGNING_ALGS[alg] === undefined) {
      throw new Error(`${where}: "alg" ${JSON.stringify(alg)} is not an allowed signing algorithm`);
    }
    if (SIGNING_ALGS[alg] !== kty)
      throw new Error(`${where}: "alg" ${alg} does not fit a key of type ${kty}`);
    if (kty === 'EC' && EC_CURVE[alg] !== jwk['crv']) {
      throw new Error(`${where}: "alg" ${alg} requires curve ${EC_CURVE[alg]}`);
    }
    if (kty === 'OKP' && jwk['crv'] !== 'Ed25519')
      throw new Error(`${where}: only the Ed25519 curve can sign`);
    if (jwk['use'] !== undefined && jwk['use'] !== 'sig')
      throw new Error(`${where}: "use" must be "sig" when present`);

    const pub: Record<string, unknown> = {};
    for (const m of PUBLIC_MEMBERS[kty]!) {
      if (typeof jwk[m] !== 'string') throw new Error(`${where}: member "${m}" is missing`);
      pub[m] = jwk[m];
    }
    Object.assign(pub, { kid, alg, use: 'sig' });

    // Import both halves and prove they belong together (a typo in x/y would otherwise only show
    // up as every minted JWT failing verification downstream).
    let privateKey: CryptoKey;
    let publicKey: CryptoKey;
    try {
      const { key_ops: _ops, ext: _ext, use: _use, ...importable } = jwk;
      privateKey = (await importJWK({ ...importable, alg } as JWK, alg)) as CryptoKey;
      publicKey = (await importJWK(pub as JWK, alg)) as CryptoKey;
      const probe = await new CompactSign(new TextEncoder().encode('probe'))
        .setProtectedHeader({ alg })
        .sign(privateKey);
      await compactVerify(probe, publicKey, { algorithms: [alg] });
    } catch {
      throw new Error(
        `${where}: not a usable ${alg} key pair (the private and public members do not match or are invalid)`,
      );
    }
    const thumbprint = await calculateJwkThumbprint(pub as JWK);
    loaded.push({ kid, alg, privateKey, publicJwk: pub as JsonWebKey, thumbprint });
  }

  const first = loaded[0]!;
  return {
    signingKey: first.privateKey,
    kid: first.kid,
    alg: first.alg,
    publicJwks: { keys: loaded.map((k) => k.publicJwk) },
    keys: loaded,
  };
}

/**
 * Writes a fresh private JWKS (one ES256 key, random kid) to `file` with mode 0600. Used by the
 * demo; production keys come from the operator's secret store.
 */
export async function generateSigningKeysFile(file: string): Promise<void> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = randomBytes(12).toString('base64url');
  const body = JSON.stringify({ keys: [{ ...jwk, kid, alg: 'ES256', use: 'sig' }] }, null, 2);
  await writeFile(file, body + '\n', { mode: 0o600 });
  await chmod(file, 0o600); // mode only applies when the file is created
}
