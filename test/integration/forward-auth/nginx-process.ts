import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../helpers/free-port.ts';
import { accepts, childrenOf, exitedWithin, nginxUserDirective } from '../../helpers/nginx.ts';

/**
 * A real nginx (Debian's package; `.ci/run` installs it) in front of an upstream, asking the
 * gateway's forward-auth listener with `auth_request` — the configuration of docs/forward-auth.md
 * with test paths and ports. Runs in the foreground (`daemon off`) from a temp prefix, so the
 * master's PID is ours; stop() ends it (and any worker left) by PID.
 */

export interface NginxProcess {
  url: string;
  pid: number;
  /** The error log so far (auth_request reports unexpected statuses there). */
  errorLog(): string;
  stop(): Promise<void>;
}

/** The nginx binary, with the auth_request module; throws (the test fails) when there is none. */
export function nginxBinary(): string {
  for (const bin of ['nginx', '/usr/sbin/nginx']) {
    const r = spawnSync(bin, ['-V'], { encoding: 'utf8', timeout: 5000 });
    if (r.status !== 0) continue;
    if (!`${r.stdout}${r.stderr}`.includes('--with-http_auth_request_module'))
      throw new Error(`${bin} has no auth_request module (install Debian's nginx-light or nginx)`);
    return bin;
  }
  throw new Error('nginx is not installed: .ci/run installs it (apt-get install nginx-light, or nginx)');
}

/**
 * nginx.conf: docs/forward-auth.md's server block (auth_request to the forward-auth listener,
 * the JWT and X-Auth-Subject copied upstream, the gateway's status kept for 400/404/405/502/503).
 */
export function nginxConf(o: { dir: string; port: number; forwardAuth: URL; upstream: URL }): string {
  return `daemon off;
master_process on;
worker_processes 1;
${nginxUserDirective()}
pid ${o.dir}/nginx.pid;
error_log ${o.dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  server_tokens off;
  client_body_temp_path ${o.dir}/client_body;
  proxy_temp_path ${o.dir}/proxy_temp;
  fastcgi_temp_path ${o.dir}/fastcgi_temp;
  uwsgi_temp_path ${o.dir}/uwsgi_temp;
  scgi_temp_path ${o.dir}/scgi_temp;

  upstream phantom_forward_auth {
    server ${o.forwardAuth.host};
    keepalive 16;
  }
  upstream api {
    server ${o.upstream.host};
  }

  server {
    listen 127.0.0.1:${o.port};

    location / {
      auth_request /_phantom_auth;
      auth_request_set $phantom_authorization $upstream_http_authorization;
      auth_request_set $phantom_subject $upstream_http_x_auth_subject;
      auth_request_set $phantom_status $upstream_status;
      auth_request_set $phantom_challenge $upstream_http_www_authenticate;
      auth_request_set $phantom_allow $upstream_http_allow;
      auth_request_set $phantom_retry_after $upstream_http_retry_after;
      error_page 403 = @phantom_forbidden;
      error_page 500 = @phantom_error;

      proxy_pass http://api;
      proxy_set_header Authorization $phantom_authorization;
      proxy_set_header X-Auth-Subject $phantom_subject;
    }

    location = /_phantom_auth {
      internal;
      proxy_pass http://phantom_forward_auth/auth;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-Method "";
      proxy_set_header X-Forwarded-Uri "";
    }

    location @phantom_forbidden {
      add_header WWW-Authenticate $phantom_challenge always;
      return 403;
    }

    location @phantom_error {
      add_header Allow $phantom_allow always;
      add_header Retry-After $phantom_retry_after always;
      if ($phantom_status = 400) { return 400; }
      if ($phantom_status = 404) { return 404; }
      if ($phantom_status = 405) { return 405; }
      if ($phantom_status = 502) { return 502; }
      if ($phantom_status = 503) { return 503; }
      return 500;
    }
  }
}
`;
}

/** Starts nginx on a free loopback port (a few attempts: a free port may be taken meanwhile). */
export async function startNginx(opts: {
  forwardAuthUrl: string;
  upstreamUrl: string;
}): Promise<NginxProcess> {
  const bin = nginxBinary();
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'phantom-fa-nginx-'));
    chmodSync(dir, 0o755);
    const port = await freePort();
    const conf = join(dir, 'nginx.conf');
    writeFileSync(
      conf,
      nginxConf({
        dir,
        port,
        forwardAuth: new URL(opts.forwardAuthUrl),
        upstream: new URL(opts.upstreamUrl),
      }),
    );
    const child = spawn(bin, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.once('error', (err) => (stderr += err.message));
    const pid = child.pid ?? -1;
    const errorLog = () => {
      try {
        return readFileSync(join(dir, 'error.log'), 'utf8');
      } catch {
        return '';
      }
    };
    let stopped: Promise<void> | undefined;
    const stop = () => {
      stopped ??= (async () => {
        const workers = childrenOf(pid);
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          if (!(await exitedWithin(child, 5000))) child.kill('SIGKILL');
          await exitedWithin(child, 2000);
        }
        for (const w of workers) {
          try {
            process.kill(w, 'SIGKILL'); // a worker outliving its master
          } catch {
            // already gone
          }
        }
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopped;
    };
    const deadline = Date.now() + 10_000;
    for (let i = 0; i < 200 && Date.now() < deadline; i++) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      if (await accepts(port)) return { url: `http://127.0.0.1:${port}`, pid, errorLog, stop };
      await sleep(50);
    }
    lastError = `${stderr} ${errorLog().slice(-1000)}`.trim();
    await stop();
  }
  throw new Error(`nginx did not start: ${lastError}`);
}
