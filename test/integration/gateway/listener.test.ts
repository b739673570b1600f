import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { type DevTokenService, startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * The public listener beyond plain HTTP: TLS (`listen.tls`), trusted proxy headers, WebSocket
 * upgrades authorized before the upgrade, and keep-alive connections to the upstream.
 */
const GW_SECRET = 'listener-test-introspection-secret';
let ts: DevTokenService;
let up: EchoUpstream;
let dir: string;
let keysFile: string;
const tokens: string[] = [];
const gateways: GatewayProcess[] = [];

async function token(): Promise<string> {
  const t = (await ts.issueToken('app', 'app-secret', 'read')).access_token;
  tokens.push(t);
  return t;
}

function baseConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tokenService: { issuer: ts.issuer, clientId: 'gw', clientSecret: '${GW_SECRET}', mode: 'mint' },
    jwt: { mint: { issuer: 'https://gw.test', signingKeysFile: keysFile } },
    routes: [
      { name: 'api', match: { pathPrefix: '/api' }, upstream: up.url, scopes: ['read'] },
      { name: 'ws', match: { pathPrefix: '/ws' }, upstream: `http://127.0.0.1:${wsPort}`, scopes: ['read'] },
    ],
    ...extra,
  };
}

async function gateway(extra: Record<string, unknown> = {}): Promise<GatewayProcess> {
  const gw = await startGateway(baseConfig(extra), { env: { GW_SECRET } });
  gateways.push(gw);
  return gw;
}

// A raw WebSocket-style upstream: answers 101 and echoes bytes; records the upgrade requests.
let wsPort = 0;
let wsServer: http.Server;
const upgrades: http.IncomingHttpHeaders[] = [];
const wsSockets = new Set<import('node:stream').Duplex>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-listener-'));
  keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  ts = await startDevTokenService({
    host: '127.0.0.1',
    port: await freePort(),
    clients: [
      { client_id: 'gw', client_secret: GW_SECRET, grant_types: [] },
      { client_id: 'app', client_secret: 'app-secret', scope: 'read' },
    ],
    scopes: ['read'],
    introspectionClientId: 'gw',
  });
  up = await startEchoUpstream();
  wsServer = http.createServer((_req, res) => res.end('not a websocket'));
  wsServer.on('upgrade', (req, socket) => {
    upgrades.push(req.headers);
    wsSockets.add(socket);
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    socket.on('data', (d) => socket.write(d));
  });
  await new Promise<void>((r) => wsServer.listen(0, '127.0.0.1', r));
  wsPort = (wsServer.address() as { port: number }).port;
}, 60_000);

afterAll(async () => {
  for (const s of wsSockets) s.destroy();
  for (const g of gateways) await g.stop();
  wsServer?.closeAllConnections();
  await new Promise((r) => wsServer?.close(r));
  await Promise.all([ts?.close(), up?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('TLS listener', () => {
  it('serves HTTPS with listen.tls and tells the upstream X-Forwarded-Proto: https', async () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        key,
        '-out',
        cert,
      ],
      { stdio: 'ignore' },
    );
    const gw = await gateway({ listen: { tls: { certFile: cert, keyFile: key } } });
    const t = await token();
    const status = await new Promise<number>((resolve, reject) => {
      const req = https.request(
        `https://127.0.0.1:${gw.port}/api/x`,
        { ca: readFileSync(cert), headers: { authorization: `Bearer ${t}` }, agent: false },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        },
      );
      req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(200);
    expect(up.requests.at(-1)!.headers['x-forwarded-proto']).toBe('https');
  });
});

describe('proxy headers', () => {
  it('appends to X-Forwarded-For and keeps -Proto/-Host only when trustProxyHeaders is true', async () => {
    const gw = await gateway({ listen: { trustProxyHeaders: true } });
    const t = await token();
    const res = await request(`${gw.url}/api/x`, {
      headers: {
        authorization: `Bearer ${t}`,
        'x-forwarded-for': '203.0.113.7',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'api.example.com',
      },
    });
    expect(res.status).toBe(200);
    const h = up.requests.at(-1)!.headers;
    expect(h['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('https');
    expect(h['x-forwarded-host']).toBe('api.example.com');
  });
});

describe('upstream connections', () => {
  it('reuses keep-alive connections to the upstream', async () => {
    const gw = await gateway();
    const t = await token();
    const before = up.requests.length;
    for (let i = 0; i < 10; i++)
      expect((await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${t}` } })).status).toBe(
        200,
      );
    const ports = new Set(up.requests.slice(before).map((r) => r.remotePort));
    expect(up.requests.length - before).toBe(10);
    expect(ports.size).toBe(1);
  });
});

describe('WebSocket upgrades', () => {
  function upgrade(port: number, auth?: string): Promise<string> {
    return new Promise((resolve) => {
      const sock = connect(port, '127.0.0.1');
      let out = '';
      const done = () => {
        clearTimeout(timer);
        sock.destroy();
        resolve(out);
      };
      const timer = setTimeout(done, 5000);
      sock.on('data', (d) => {
        out += d.toString('latin1');
        if (out.includes('\r\n\r\n') && out.startsWith('HTTP/1.1 101')) {
          if (!out.includes('ping')) sock.write('ping');
          else done();
        } else if (out.includes('\r\n\r\n') && /content-length: (\d+)/i.test(out)) {
          const len = Number(/content-length: (\d+)/i.exec(out)![1]);
          if (out.length - out.indexOf('\r\n\r\n') - 4 >= len) done();
        }
      });
      sock.on('close', done);
      sock.on('error', done);
      sock.write(
        `GET /ws/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
          `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
          (auth ? `Authorization: ${auth}\r\n` : '') +
          '\r\n',
      );
    });
  }

  it('refuses an upgrade without a token before it reaches the upstream', async () => {
    const gw = await gateway();
    const before = upgrades.length;
    const out = await upgrade(gw.port);
    expect(out).toMatch(/^HTTP\/1\.1 401/);
    expect(out).toContain('WWW-Authenticate: Bearer realm="api"');
    expect(upgrades.length).toBe(before);
  });

  it('upgrades an authorized request and hands the upstream the JWT', async () => {
    const gw = await gateway();
    const t = await token();
    const out = await upgrade(gw.port, `Bearer ${t}`);
    expect(out).toMatch(/^HTTP\/1\.1 101/);
    expect(out).toContain('ping');
    const h = upgrades.at(-1)!;
    expect(String(h.authorization)).toMatch(/^Bearer ey/);
    expect(h.upgrade).toBe('websocket');
  });
});

describe('secrets', () => {
  it('never logs a token', () => {
    for (const g of gateways) for (const t of tokens) expect(g.output().includes(t)).toBe(false);
  });
});
