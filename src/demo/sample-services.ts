import http, { type Server } from 'node:http';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

/** A running sample service. */
export interface SampleService {
  url: string;
  close(): Promise<void>;
}

function listen(server: Server, host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const a = server.address();
      resolve(`http://${host}:${a !== null && typeof a === 'object' ? a.port : port}`);
    });
  });
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function closer(server: Server): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
}

/**
 * The demo's invoices API: an internal service that trusts nothing but a JWT signed by the
 * gateway. It verifies the forwarded JWT with jose against the gateway's JWKS (issuer and its own
 * audience checked) and shows the claims it received.
 */
export async function startInvoicesService(opts: {
  host: string;
  port: number;
  /** Where the gateway publishes its public keys (admin /.well-known/jwks.json). */
  jwksUri: () => string;
  issuer: string;
}): Promise<SampleService> {
  const invoices = [
    { id: 1, customer: 'ACME Corp', amount: 1200, currency: 'EUR' },
    { id: 2, customer: 'Globex', amount: 560, currency: 'EUR' },
  ];
  let jwks: ReturnType<typeof createRemoteJWKSet> | undefined;
  let ownOrigin = '';
  const server = http.createServer(async (req, res) => {
    const auth = req.headers.authorization ?? '';
    const jwt = auth.startsWith('Bearer ') ? auth.slice(7) : '';
    try {
      jwks ??= createRemoteJWKSet(new URL(opts.jwksUri()));
      const { payload } = await jwtVerify(jwt, jwks, {
        issuer: opts.issuer,
        audience: ownOrigin,
        typ: 'at+jwt',
        algorithms: ['ES256'],
      });
      const received = { header: decodeProtectedHeader(jwt), claims: payload };
      const url = new URL(req.url ?? '/', ownOrigin);
      const idMatch = /^\/api\/invoices\/(\d+)$/.exec(url.pathname);
      if (req.method === 'POST' && url.pathname === '/api/invoices') {
        const invoice = { id: invoices.length + 1, customer: 'New customer', amount: 100, currency: 'EUR' };
        invoices.push(invoice);
        return sendJson(res, 201, { created: invoice, receivedJwt: received });
      }
      if (idMatch) {
        const inv = invoices.find((i) => i.id === Number(idMatch[1]));
        return sendJson(
          res,
          inv ? 200 : 404,
          inv ? { invoice: inv, receivedJwt: received } : { error: 'no such invoice' },
        );
      }
      return sendJson(res, 200, { invoices, receivedJwt: received });
    } catch (err) {
      return sendJson(res, 401, {
        error: 'the invoices service rejected the JWT',
        reason: (err as Error).message,
      });
    }
  });
  const url = await listen(server, opts.host, opts.port);
  ownOrigin = url;
  return { url, close: closer(server) };
}

/** The demo's public status service (route `auth: none`): shows that no Authorization reached it. */
export async function startStatusService(opts: { host: string; port: number }): Promise<SampleService> {
  const server = http.createServer((req, res) => {
    sendJson(res, 200, {
      status: 'ok',
      path: req.url,
      receivedAuthorization: req.headers.authorization !== undefined,
    });
  });
  const url = await listen(server, opts.host, opts.port);
  return { url, close: closer(server) };
}
