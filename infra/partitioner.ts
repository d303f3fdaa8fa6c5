/** Kafka's default key → partition mapping (murmur2, as the Java client computes it), so both transports agree. */

export function murmur2(data: Uint8Array): number {
  const m = 0x5bd1e995;
  const len = data.length;
  let h = (0x9747b28c ^ len) | 0;
  const whole = len & ~3;
  for (let i = 0; i < whole; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const rest = len & 3;
  if (rest === 3) h ^= data[whole + 2]! << 16;
  if (rest >= 2) h ^= data[whole + 1]! << 8;
  if (rest >= 1) {
    h ^= data[whole]!;
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h | 0;
}

// Records are keyed by host id: a few thousand string keys recur in every batch, so their hashes are remembered.
const hashes = new Map<string, number>();

/** The key's partition among `partitions`; a null key takes the next of `roundRobin`. */
export function partitionFor(
  key: string | Uint8Array | null,
  partitions: number,
  roundRobin: () => number,
): number {
  if (key === null) return roundRobin() % partitions;
  if (typeof key !== 'string') return (murmur2(key) & 0x7fffffff) % partitions;
  let h = hashes.get(key);
  if (h === undefined) {
    if (hashes.size >= 100_000) hashes.clear();
    h = murmur2(Buffer.from(key)) & 0x7fffffff;
    hashes.set(key, h);
  }
  return h % partitions;
}
