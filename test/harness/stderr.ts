/** What a piece of code writes to stderr (where the logger writes), to check a secret is in no log line. */
export async function withStderr<T>(
  fn: () => Promise<T>,
): Promise<{ outcome: PromiseSettledResult<T>; logged: string }> {
  const chunks: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    chunks.push(String(chunk));
    return write(chunk, ...rest);
  }) as typeof process.stderr.write;
  try {
    const [outcome] = await Promise.allSettled([fn()]);
    return { outcome: outcome!, logged: chunks.join('') };
  } finally {
    process.stderr.write = write;
  }
}
