import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';

/**
 * Pieces shared by every nginx the project runs itself (the forward-auth test's and the bench's
 * nginx-authreq contender): foreground nginx from a temp prefix, stopped by PID.
 */

/** `user …;` for the workers: when root, nobody with its own primary group (names from /etc). */
export function nginxUserDirective(): string {
  if (process.getuid?.() !== 0) return '';
  try {
    const pw = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('nobody:'));
    const gid = pw?.split(':')[3];
    const group = readFileSync('/etc/group', 'utf8')
      .split('\n')
      .map((l) => l.split(':'))
      .find((f) => f[2] === gid)?.[0];
    if (pw !== undefined && group !== undefined) return `user nobody ${group};`;
  } catch {
    // fall through
  }
  return 'user root;';
}

/** Child PIDs of `pid` (the nginx workers), from /proc. */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** True if `child` exits within `ms`. */
export function exitedWithin(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.off('exit', done);
      resolve(false);
    }, ms);
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    child.once('exit', done);
  });
}

/** True if 127.0.0.1:`port` accepts a TCP connection within 500 ms. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    const t = setTimeout(() => finish(false), 500);
    const finish = (ok: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => finish(true));
    s.once('error', () => finish(false));
  });
}
