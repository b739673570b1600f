/** Fails (rejects) when `p` has not settled within `ms`: a hang becomes a test failure, not a stall. */
export async function guard<T>(p: Promise<T>, ms = 2000, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `cond` every `intervalMs` until true; bounded in time and in iterations. */
export async function pollUntil(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 25,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const maxIterations = Math.ceil(timeoutMs / intervalMs) + 1;
  for (let i = 0; i < maxIterations && Date.now() < deadline; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  if (!(await cond())) throw new Error(`timed out waiting for ${what}`);
}
