import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GatewayProcess } from '../../test/helpers/gateway-process.ts';

/** One GET; resolves with the status (0 for a network error or timeout), the body discarded. */
export function getStatus(
  url: string,
  opts: { agent: http.Agent; headers?: http.OutgoingHttpHeaders; timeoutMs: number },
): Promise<number> {
  return new Promise((resolve) => {
    const req = http.request(
      url,
      { agent: opts.agent, headers: opts.headers ?? {}, timeout: opts.timeoutMs },
      (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode ?? 0));
        res.once('error', () => resolve(0));
      },
    );
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(0));
    req.end();
  });
}

/** Waits (bounded, 20 s) until the gateway's /readyz is 200, and Redis ready when it has Redis. */
export async function waitGatewayReady(gw: GatewayProcess, withRedis: boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (let i = 0; i < 400 && Date.now() < deadline; i++) {
    try {
      const res = await fetch(`${gw.adminUrl}/readyz`, { signal: AbortSignal.timeout(1000) });
      const body = (await res.json()) as { redis?: string };
      if (res.status === 200 && (!withRedis || body.redis === 'ready')) return;
    } catch {
      // not yet
    }
    await sleep(50);
  }
  throw new Error(`gateway ${gw.url} not ready`);
}

/** One decimal place, for report figures. */
export const round1 = (n: number): number => Math.round(n * 10) / 10;
