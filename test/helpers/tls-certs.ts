import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A PEM certificate and its unencrypted PEM key, as files and as text. */
export interface CertFiles {
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

function openssl(args: string[], timeoutMs = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`openssl ${args[0]} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
  });
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function read(dir: string, name: string): CertFiles {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  return { certFile, keyFile, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
}

/** A self-signed CA (EC P-256, valid 2 days) named `name` in `dir`, made with the openssl CLI. */
export async function makeCa(dir: string, name: string): Promise<CertFiles> {
  await openssl([
    'req',
    '-x509',
    ...EC_KEY,
    '-keyout',
    join(dir, `${name}.key`),
    '-out',
    join(dir, `${name}.crt`),
    '-days',
    '2',
    '-subj',
    `/CN=phantom test ${name}`,
  ]);
  return read(dir, name);
}

/**
 * A certificate issued by `ca` (EC P-256, valid 2 days). `subject` in openssl's `/O=x/CN=y`
 * form; `san` e.g. `IP:127.0.0.1,DNS:localhost` (server certificates); usable for TLS server and
 * client authentication.
 */
export async function makeCert(
  dir: string,
  name: string,
  ca: CertFiles,
  opts: { subject: string; san?: string },
): Promise<CertFiles> {
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  await openssl(['req', ...EC_KEY, '-keyout', join(dir, `${name}.key`), '-out', csr, '-subj', opts.subject]);
  writeFileSync(
    ext,
    [
      ...(opts.san !== undefined ? [`subjectAltName=${opts.san}`] : []),
      'basicConstraints=CA:FALSE',
      'keyUsage=digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth,clientAuth',
      '',
    ].join('\n'),
  );
  await openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.certFile,
    '-CAkey',
    ca.keyFile,
    '-CAcreateserial',
    '-out',
    join(dir, `${name}.crt`),
    '-days',
    '2',
    '-extfile',
    ext,
  ]);
  return read(dir, name);
}
