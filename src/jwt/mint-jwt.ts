import { randomUUID } from 'node:crypto';
import { type JWTPayload, SignJWT } from 'jose';
import { InvalidToken, TokenServiceUnavailable } from '../errors/gateway-errors.ts';
import type { Signer } from './key-ring.ts';
import type { VerifiedJwt } from './verify-jwt.ts';

export interface Minter {
  /**
   * Mints an RFC 9068 access token JWT from an active introspection answer (`source`) for one
   * audience. Throws InvalidToken('token_inactive') when the source token has already expired.
   */
  mint(source: Record<string, unknown>, audience: string): Promise<VerifiedJwt>;
}

function nonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v !== '';
}

/**
 * Mode mint (SPEC §6): the gateway signs the JWT itself. Header `{alg, kid, typ: 'at+jwt'}`;
 * claims `iss`, `sub` (source `sub`, else its `client_id`), `aud`, `client_id`, `scope`, `iat`,
 * `exp` = min(now + lifetime, source exp), `jti`, and `auth_time` / `acr` / `amr` / `cnf` when the
 * source has them (`cnf` keeps a sender-constrained token sender-constrained, SPEC §9).
 */
export function createMinter(opts: {
  issuer: string;
  lifetimeSeconds: number;
  /** The key for the next JWT, asked on every mint (the key ring; rotation happens there). */
  signer: () => Signer;
  /** Current time in epoch seconds (tests). */
  now?: () => number;
}): Minter {
  const now = opts.now ?? (() => Date.now() / 1000);

  return {
    async mint(source: Record<string, unknown>, audience: string): Promise<VerifiedJwt> {
      const t = now();
      const iat = Math.floor(t);
      let exp = iat + opts.lifetimeSeconds;
      const sourceExp = source['exp'];
      if (typeof sourceExp === 'number' && Number.isFinite(sourceExp)) {
        if (sourceExp <= t) throw new InvalidToken('token_inactive');
        exp = Math.min(exp, Math.floor(sourceExp));
      }
      const sub = nonEmptyString(source['sub']) ? source['sub'] : source['client_id'];
      if (!nonEmptyString(sub)) {
        throw new TokenServiceUnavailable(
          'bad_answer',
          new Error('the introspection answer has neither "sub" nor "client_id": cannot mint a JWT'),
        );
      }

      const claims: JWTPayload = { iss: opts.issuer, sub, aud: audience };
      if (nonEmptyString(source['client_id'])) claims['client_id'] = source['client_id'];
      if (typeof source['scope'] === 'string') claims['scope'] = source['scope'];
      claims.iat = iat;
      claims.exp = exp;
      claims.jti = randomUUID();
      if (typeof source['auth_time'] === 'number') claims['auth_time'] = source['auth_time'];
      if (typeof source['acr'] === 'string') claims['acr'] = source['acr'];
      if (Array.isArray(source['amr']) && source['amr'].every((m) => typeof m === 'string')) {
        claims['amr'] = source['amr'];
      }
      const cnf = source['cnf'];
      if (typeof cnf === 'object' && cnf !== null && !Array.isArray(cnf) && Object.keys(cnf).length > 0) {
        claims['cnf'] = cnf;
      }

      const { key, kid, alg } = opts.signer();
      const jwt = await new SignJWT(claims).setProtectedHeader({ alg, kid, typ: 'at+jwt' }).sign(key);
      return { jwt, claims, exp };
    },
  };
}
