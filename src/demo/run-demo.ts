import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfigText } from '../config/load-config.ts';
import { generateSigningKeysFile } from '../jwt/signing-keys.ts';
import { startGateway } from '../main.ts';
import { createLogger } from '../observability/logger.ts';
import { startInvoicesService, startStatusService } from './sample-services.ts';
import { startDevTokenService } from './token-service.ts';

const HOST = '127.0.0.1';
const DEMO_CONFIG = join(dirname(fileURLToPath(import.meta.url)), '../../config/demo.yaml');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const a = s.address();
      const port = a !== null && typeof a === 'object' ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * `phantom-gateway demo`: a development token service (oidc-provider), the invoices and status
 * sample services and the gateway in mint mode, all on free loopback ports, in one process.
 * In-process cache unless REDIS_URL is set. Runs until SIGINT/SIGTERM.
 */
export async function runDemo(): Promise<number> {
  const logger = createLogger({ level: process.env['LOG_LEVEL'] ?? 'warn' });
  const dir = mkdtempSync(join(tmpdir(), 'phantom-demo-'));
  const introspectionSecret = randomBytes(18).toString('base64url');
  const clients = [
    { client_id: 'phantom-gateway', client_secret: introspectionSecret, grant_types: [] as string[] },
    { client_id: 'reader-app', client_secret: 'reader-secret', scope: 'invoice_read' },
    { client_id: 'writer-app', client_secret: 'writer-secret', scope: 'invoice_read invoice_write' },
  ];
  const tokenService = await startDevTokenService({
    host: HOST,
    port: await freePort(),
    clients,
    scopes: ['invoice_read', 'invoice_write'],
    introspectionClientId: 'phantom-gateway',
  });
  const keysFile = join(dir, 'signing-keys.json');
  await generateSigningKeysFile(keysFile);

  const gatewayPort = await freePort();
  const adminPort = await freePort();
  const mintIssuer = `http://${HOST}:${gatewayPort}`;
  const adminJwks = `http://${HOST}:${adminPort}/.well-known/jwks.json`;
  const invoices = await startInvoicesService({
    host: HOST,
    port: 0,
    jwksUri: () => adminJwks,
    issuer: mintIssuer,
  });
  const status = await startStatusService({ host: HOST, port: 0 });

  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DEMO_GATEWAY_PORT: String(gatewayPort),
    DEMO_ADMIN_PORT: String(adminPort),
    DEMO_ISSUER: tokenService.issuer,
    DEMO_INTROSPECTION_SECRET: introspectionSecret,
    DEMO_MINT_ISSUER: mintIssuer,
    DEMO_SIGNING_KEYS_FILE: keysFile,
    DEMO_INVOICES_URL: invoices.url,
    DEMO_STATUS_URL: status.url,
  };
  let text = readFileSync(DEMO_CONFIG, 'utf8');
  if (process.env['REDIS_URL']) {
    // Shared cache wanted: add the Redis block (the demo derives a cache key if none is given).
    env['PHANTOM_CACHE_KEY'] ??= randomBytes(32).toString('base64url');
    process.env['PHANTOM_CACHE_KEY'] = env['PHANTOM_CACHE_KEY'];
    text += '\ncache:\n  redis:\n    url: ${REDIS_URL}\n';
  }
  const { config } = parseConfigText(text, env, DEMO_CONFIG);
  const running = await startGateway(config, logger);

  const gw = `http://${HOST}:${gatewayPort}`;
  const token = (id: string, secret: string, scope: string) =>
    `curl -s -u ${id}:${secret} -d grant_type=client_credentials -d scope='${scope}' ${tokenService.tokenEndpoint} | sed -E 's/.*"access_token":"([^"]+)".*/\\1/'`;
  process.stdout.write(
    [
      '',
      'phantom-gateway demo is running',
      `  gateway          ${gw}   (admin ${`http://${HOST}:${adminPort}`})`,
      `  token service    ${tokenService.issuer}   (oidc-provider, opaque tokens)`,
      `  invoices service ${invoices.url}   (verifies the gateway's JWT)`,
      `  status service   ${status.url}   (public)`,
      `  cache            ${process.env['REDIS_URL'] ? 'in-process + Redis' : 'in-process (set REDIS_URL for Redis)'}`,
      '',
      'Try it (copy-paste into another terminal):',
      '',
      '  # an opaque token that may read invoices',
      `  READER=$(${token('reader-app', 'reader-secret', 'invoice_read')})`,
      '  echo "$READER"   # opaque: this is all a client ever holds',
      '',
      '  # 200: the invoices service received a JWT minted by the gateway and shows its claims',
      `  curl -i -H "Authorization: Bearer $READER" ${gw}/api/invoices`,
      '',
      '  # 401: no token',
      `  curl -i ${gw}/api/invoices`,
      '',
      '  # 403: the reader token lacks invoice_write',
      `  curl -i -X POST -H "Authorization: Bearer $READER" ${gw}/api/invoices`,
      '',
      '  # 201: a token with invoice_write may create an invoice',
      `  WRITER=$(${token('writer-app', 'writer-secret', 'invoice_read invoice_write')})`,
      `  curl -i -X POST -H "Authorization: Bearer $WRITER" ${gw}/api/invoices`,
      '',
      '  # 200: a public route, no token needed',
      `  curl -i ${gw}/status`,
      '',
      `  # the gateway's public signing keys: curl ${adminJwks}`,
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );

  return new Promise<number>((resolve) => {
    const stop = async () => {
      await running.shutdown();
      await Promise.all([invoices.close(), status.close(), tokenService.close()]);
      rmSync(dir, { recursive: true, force: true });
      resolve(0);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
