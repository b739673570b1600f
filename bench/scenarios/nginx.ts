import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../test/helpers/free-port.ts';
import { accepts, childrenOf, exitedWithin, nginxUserDirective } from '../../test/helpers/nginx.ts';

/**
 * The `nginx-authreq` contender (issue 6): Debian's nginx doing the phantom-token job the classic
 * nginx way, with stock modules only:
 *
 * - `auth_request` sends every request's opaque token (from `Authorization: Bearer …`) to the token
 *   service's introspection endpoint, Curity style (`POST token=…`, `Accept: application/jwt`,
 *   the gateway's client credentials);
 * - that introspection location has `proxy_cache` keyed by the token, valid for a fixed TTL, with
 *   `proxy_cache_lock on`: concurrent first requests for one token wait for one introspection —
 *   per nginx instance (the cache and its lock live in that instance's shared memory);
 * - the JWT is forwarded upstream as `Authorization: Bearer <JWT>`.
 *
 * What stock nginx cannot do, and how this contender deals with it (read before comparing):
 * - `auth_request` sees only the status and headers of its subrequest, never the body, so it
 *   cannot read Curity's `application/jwt` body. The token service must copy the JWT into a
 *   response header (NGINX_JWT_HEADER; the test stub's `jwtHeader`). A real Curity does not do
 *   that: with Curity nginx needs Curity's C module or njs.
 * - `auth_request` treats every 2xx as "allowed", and Curity answers an inactive token with 204:
 *   the contender therefore routes a request whose subrequest gave no JWT to a local deny server
 *   (401 invalid_token) instead of the upstream (a `map` on the JWT variable).
 * - No JWT verification (signature, iss, exp, typ): nginx forwards whatever the token service sent.
 * - No scope check: every active token reaches every path.
 * - The cache TTL is fixed (`cacheTtlSeconds`), not derived from the JWT's `exp`: it must be set
 *   below the token lifetime by hand. Inactive answers (204, `no-store`) are not cached: no
 *   negative cache. The cache is per instance: N nginx replicas introspect a token N times.
 * - The cache stores the raw token as the cache key and the JWT in clear in its files (in the temp
 *   dir here); there is no keyed hash and no encryption at rest.
 * - Token-service trouble (refused, timeout, 5xx) makes `auth_request` answer 500, not 502/503
 *   with Retry-After; no request id, no JSON error bodies.
 * - The token is taken as `Bearer <[A-Za-z0-9_~.-]+>` (base64url-ish, so it needs no form
 *   encoding in the introspection body); anything else is 401.
 */

/** The response header that carries the JWT for nginx (set the stub's `jwtHeader` to this). */
export const NGINX_JWT_HEADER = 'x-phantom-jwt';

/** One-line summary for reports. */
export const NGINX_AUTHREQ_NOTE =
  'nginx auth_request + proxy_cache (key = token, fixed TTL) + proxy_cache_lock per instance; JWT taken from a ' +
  'response header the token service adds (auth_request cannot read a body); no JWT verification, no scope check, ' +
  'no negative cache; 204 (inactive) routed to a deny server';

export interface NginxAuthReqOptions {
  /** Where allowed requests go (http://host:port, no path). */
  upstreamUrl: string;
  /** The token service's introspection endpoint (http only). */
  introspectionUrl: string;
  /** The whole Authorization header value for the introspection request (e.g. `Basic …`). */
  clientAuthHeader: string;
  /** CPU list for `taskset -c` (nginx master and workers). */
  serverCpus?: string;
  /** nginx worker processes (default 1: one core, like one gateway process). */
  workers?: number;
  /** Lifetime of a cached introspection answer (default 240 s; must be below the JWT lifetime). */
  cacheTtlSeconds?: number;
  /** Response header of the introspection answer holding the JWT (default NGINX_JWT_HEADER). */
  jwtHeader?: string;
  /** Sent to the token service as `X-Bench-Instance` (to count introspections per instance). */
  instance?: string;
}

export interface NginxAuthReq {
  url: string;
  /** PID of the nginx master process. */
  pid: number;
  stop(): Promise<void>;
}

const INSTALL_TIMEOUT_MS = 300_000;

function nginxBinary(): string | undefined {
  for (const bin of ['nginx', '/usr/sbin/nginx']) {
    const r = spawnSync(bin, ['-V'], { encoding: 'utf8', timeout: 5000 });
    if (r.status === 0) return bin;
  }
  return undefined;
}

function runBounded(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): boolean {
  const r = spawnSync(cmd, args, {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive', ...env },
    stdio: 'ignore',
    timeout: INSTALL_TIMEOUT_MS,
  });
  return r.status === 0;
}

let ensured: Promise<{ bin: string } | { skipped: string }> | undefined;

/**
 * nginx with the auth_request module, installed from Debian when missing (`apt-get install
 * nginx-light`, else `nginx`; as root, no sudo). Debian's maintainer scripts must not start a system nginx on
 * port 80: when no `/usr/sbin/policy-rc.d` exists, a temporary one that denies every service
 * start (exit 101, see invoke-rc.d(8)) is in place during the install. Any failure (not root,
 * no network, no apt) is a `skipped` notice, never an exception.
 */
export function ensureNginx(): Promise<{ bin: string } | { skipped: string }> {
  ensured ??= (async () => {
    let bin = nginxBinary();
    if (bin === undefined) {
      if (process.getuid?.() !== 0)
        return { skipped: 'nginx not installed and not root (no apt-get install)' };
      if (spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status !== 0) {
        return { skipped: 'nginx not installed and no apt-get' };
      }
      const policy = '/usr/sbin/policy-rc.d';
      const ownPolicy = !existsSync(policy);
      try {
        if (ownPolicy)
          writeFileSync(policy, '#!/bin/sh\n# phantom-gateway bench: no service starts\nexit 101\n', {
            mode: 0o755,
          });
        // nginx-light (Debian 12: the smallest build with auth_request); Debian 13 has only nginx.
        const install = () =>
          ['nginx-light', 'nginx'].some((pkg) =>
            runBounded('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg]),
          );
        if (!install()) {
          // A fresh machine may have no package lists yet.
          if (!runBounded('apt-get', ['update', '-qq']) || !install()) {
            return {
              skipped:
                'nginx could not be installed (apt-get install nginx-light / nginx failed: no network?)',
            };
          }
        }
      } finally {
        if (ownPolicy) rmSync(policy, { force: true });
      }
      bin = nginxBinary();
      if (bin === undefined) return { skipped: 'nginx installed but not runnable' };
    }
    const v = spawnSync(bin, ['-V'], { encoding: 'utf8', timeout: 5000 });
    if (!`${v.stdout}${v.stderr}`.includes('--with-http_auth_request_module')) {
      return { skipped: 'this nginx has no auth_request module' };
    }
    return { bin };
  })();
  return ensured;
}

/** nginx.conf of the contender (every path in `dir`, every socket on 127.0.0.1). */
export function nginxAuthReqConf(o: {
  dir: string;
  port: number;
  denyPort: number;
  upstream: URL;
  introspection: URL;
  clientAuthHeader: string;
  workers: number;
  cacheTtlSeconds: number;
  jwtHeader: string;
  instance: string;
}): string {
  const jwtVar = `$upstream_http_${o.jwtHeader.toLowerCase().replace(/-/g, '_')}`;
  /** A quoted nginx string; quotes, backslashes and $ (variables) cannot occur in these values. */
  const q = (s: string) => `"${s.replace(/["\\$]/g, '')}"`;
  return `# generated by bench/scenarios/nginx.ts (nginx-authreq contender)
daemon off;
master_process on;
worker_processes ${o.workers};
${nginxUserDirective()}
pid ${o.dir}/nginx.pid;
error_log ${o.dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
  client_body_temp_path ${o.dir}/client_body;
  proxy_temp_path ${o.dir}/proxy_temp;
  fastcgi_temp_path ${o.dir}/fastcgi_temp;
  uwsgi_temp_path ${o.dir}/uwsgi_temp;
  scgi_temp_path ${o.dir}/scgi_temp;
  proxy_cache_path ${o.dir}/cache levels=1:2 keys_zone=introspection:10m max_size=64m inactive=10m use_temp_path=off;

  # The opaque token: exactly one credential after "Bearer " (base64url-ish, needs no form encoding).
  map $http_authorization $phantom_token {
    default "";
    "~*^Bearer +(?<t>[A-Za-z0-9_~.-]+)$" $t;
  }
  # auth_request allows on any 2xx, and an inactive token is a 204 without a JWT: such requests go
  # to the deny server, never to the API.
  map $phantom_jwt $phantom_backend {
    "" phantom_deny;
    default phantom_api;
  }
  upstream phantom_api { server ${o.upstream.host}; keepalive 64; }
  upstream phantom_deny { server 127.0.0.1:${o.denyPort}; keepalive 16; }
  upstream phantom_introspect { server ${o.introspection.host}; keepalive 32; }

  server {
    listen 127.0.0.1:${o.port} backlog=4096;
    keepalive_requests 100000;

    location / {
      if ($phantom_token = "") {
        add_header WWW-Authenticate 'Bearer realm="api"' always;
        return 401;
      }
      auth_request /_phantom_introspect;
      auth_request_set $phantom_jwt ${jwtVar};
      proxy_pass http://$phantom_backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header Authorization "Bearer $phantom_jwt";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_request_buffering off;
      proxy_buffering off;
    }

    location = /_phantom_introspect {
      internal;
      proxy_pass http://phantom_introspect${o.introspection.pathname};
      proxy_method POST;
      proxy_http_version 1.1;
      proxy_pass_request_headers off;
      proxy_pass_request_body off;
      proxy_set_header Connection "";
      proxy_set_header Host ${o.introspection.host};
      proxy_set_header Content-Type application/x-www-form-urlencoded;
      proxy_set_header Accept application/jwt;
      proxy_set_header Authorization ${q(o.clientAuthHeader)};
      proxy_set_header X-Bench-Instance ${q(o.instance)};
      proxy_set_body "token=$phantom_token&token_type_hint=access_token";
      proxy_buffer_size 16k;
      proxy_buffers 4 16k;
      proxy_busy_buffers_size 16k;
      proxy_cache introspection;
      proxy_cache_key $phantom_token;
      proxy_cache_methods GET HEAD POST;
      proxy_cache_valid 200 ${o.cacheTtlSeconds}s;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 5s;
      proxy_connect_timeout 2s;
      proxy_read_timeout 2s;
    }
  }

  # The deny server: inactive tokens.
  server {
    listen 127.0.0.1:${o.denyPort};
    keepalive_requests 100000;
    location / {
      add_header WWW-Authenticate 'Bearer realm="api", error="invalid_token"' always;
      return 401;
    }
  }
}
`;
}

/**
 * Starts one nginx-authreq instance on a free loopback port: `nginx -p <tmp> -c <tmp>/nginx.conf`
 * in the foreground (`daemon off`), so its PID is ours; stop() sends SIGTERM to the master (which
 * stops its workers), SIGKILLs master and workers after a bounded wait, and removes the temp dir.
 */
export async function startNginxAuthReq(
  opts: NginxAuthReqOptions,
): Promise<NginxAuthReq | { skipped: string }> {
  const have = await ensureNginx();
  if ('skipped' in have) return have;
  const upstream = new URL(opts.upstreamUrl);
  const introspection = new URL(opts.introspectionUrl);
  if (upstream.protocol !== 'http:' || introspection.protocol !== 'http:') {
    return { skipped: 'nginx-authreq: only http upstream and token service URLs are supported' };
  }
  let lastError = 'not started';
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'phantom-bench-nginx-'));
    chmodSync(dir, 0o755); // the workers (nobody) create cache files below it
    const [port, denyPort] = [await freePort(), await freePort()];
    const conf = join(dir, 'nginx.conf');
    writeFileSync(
      conf,
      nginxAuthReqConf({
        dir,
        port,
        denyPort,
        upstream,
        introspection,
        clientAuthHeader: opts.clientAuthHeader,
        workers: opts.workers ?? 1,
        cacheTtlSeconds: opts.cacheTtlSeconds ?? 240,
        jwtHeader: opts.jwtHeader ?? NGINX_JWT_HEADER,
        instance: opts.instance ?? 'nginx',
      }),
    );
    const args = ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')];
    const [cmd, argv] =
      opts.serverCpus !== undefined && spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0
        ? ['taskset', ['-c', opts.serverCpus, have.bin, ...args]]
        : [have.bin, args];
    const child = spawn(cmd as string, argv as string[], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.once('error', (err) => (stderr += err.message));
    const pid = child.pid ?? -1;
    let stopped: Promise<void> | undefined;
    const stop = (): Promise<void> => {
      stopped ??= (async () => {
        const workers = childrenOf(pid);
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          if (!(await exitedWithin(child, 5000))) child.kill('SIGKILL');
          await exitedWithin(child, 2000);
        }
        for (const w of workers) {
          try {
            process.kill(w, 'SIGKILL'); // only if still alive (a worker outliving its master)
          } catch {
            // already gone
          }
        }
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopped;
    };
    const deadline = Date.now() + 10_000;
    let up = false;
    for (let i = 0; i < 200 && Date.now() < deadline; i++) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      if ((await accepts(port)) && (await accepts(denyPort))) {
        up = true;
        break;
      }
      await sleep(50);
    }
    if (up) return { url: `http://127.0.0.1:${port}`, pid, stop };
    let log = '';
    try {
      log = readFileSync(join(dir, 'error.log'), 'utf8').slice(-1000);
    } catch {
      // no log
    }
    lastError = `${stderr} ${log}`.trim();
    await stop();
  }
  return { skipped: `nginx-authreq did not start: ${lastError}` };
}

/**
 * `node bench/scenarios/nginx.ts`: a self-check of the contender against the Curity-style stub
 * (active token → 200 with the JWT forwarded, second request from the cache, inactive → 401,
 * no token → 401), printed as JSON.
 */
async function selfCheck(): Promise<void> {
  const { startCurityStub } = await import('../../test/helpers/curity-stub.ts');
  const { startEchoUpstream } = await import('../../test/helpers/upstream.ts');
  const stub = await startCurityStub({ clientId: 'nginx', clientSecret: 'nginx-secret' });
  stub.jwtHeader = NGINX_JWT_HEADER;
  const up = await startEchoUpstream();
  let ngx: NginxAuthReq | { skipped: string } | undefined;
  try {
    ngx = await startNginxAuthReq({
      upstreamUrl: up.url,
      introspectionUrl: stub.introspectionEndpoint,
      clientAuthHeader: `Basic ${Buffer.from('nginx:nginx-secret').toString('base64')}`,
    });
    if ('skipped' in ngx) {
      console.log(JSON.stringify(ngx));
      return;
    }
    const token = stub.newToken();
    stub.register(token, { sub: 'alice', scope: 'invoice_read' });
    const get = async (headers: Record<string, string>) => {
      const res = await fetch(`${(ngx as NginxAuthReq).url}/api/invoices/1`, {
        headers,
        signal: AbortSignal.timeout(5000),
      });
      await res.arrayBuffer();
      return res.status;
    };
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
    const first = await get(bearer(token));
    const second = await get(bearer(token));
    const forwarded = String(up.requests.at(-1)?.headers.authorization ?? '');
    const jwtForwarded = /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/.test(forwarded);
    const inactive = await get(bearer(stub.newToken()));
    const none = await get({});
    console.log(
      JSON.stringify({
        active: [first, second],
        jwtForwarded,
        introspectionsForActive: stub.requests.filter((r) => r.body.get('token') === token).length,
        inactive,
        noToken: none,
        upstreamRequests: up.requests.length,
      }),
    );
  } finally {
    if (ngx !== undefined && !('skipped' in ngx)) await ngx.stop();
    await Promise.all([stub.close(), up.close()]);
  }
}

if (import.meta.main) await selfCheck();
