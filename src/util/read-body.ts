/**
 * Reads a fetch response body up to `max` bytes. Returns undefined (and cancels the stream) when
 * the body is larger, so a hostile or broken server cannot make us buffer without bound.
 */
export async function readBodyLimited(res: Response, max: number): Promise<Buffer | undefined> {
  if (res.body === null) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}
