import express, { type Express } from 'express';

/**
 * The admin listener (SPEC §8), never mounted on the public one: liveness, readiness (config
 * loaded + token service metadata known; Redis reported but never makes us unready) and the
 * public JWKS of minted tokens.
 */
export function createAdminApp(opts: {
  ready: () => boolean;
  redisState: () => string;
  jwks?: { keys: unknown[] };
}): Express {
  const admin = express();
  admin.disable('x-powered-by');
  admin.disable('etag');
  admin.get('/livez', (_req, res) => {
    res.status(200).json({ status: 'ok' });
  });
  admin.get('/readyz', (_req, res) => {
    const ready = opts.ready();
    res
      .status(ready ? 200 : 503)
      .set('Cache-Control', 'no-store')
      .json({ ready, config: 'loaded', tokenService: ready ? 'known' : 'unknown', redis: opts.redisState() });
  });
  admin.get('/.well-known/jwks.json', (_req, res) => {
    if (opts.jwks === undefined) {
      res
        .status(404)
        .json({ error: 'not_found', error_description: 'No signing keys: the gateway is not in mint mode' });
      return;
    }
    res.set('Cache-Control', 'public, max-age=300').json(opts.jwks);
  });
  admin.use((_req, res) => {
    res.status(404).json({ error: 'not_found', error_description: 'Unknown admin endpoint' });
  });
  return admin;
}
