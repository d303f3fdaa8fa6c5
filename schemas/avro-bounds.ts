/**
 * A structure check of an Avro body against its writer schema, run before avsc decodes it. avsc reads a declared
 * array or map block count and loops (allocating an item per turn) before it finds the buffer short, and a string
 * length is taken as it is: a 20-byte record declaring 2^31 items or a 2 GiB string costs seconds of CPU and
 * gigabytes of memory. Here every declared length is checked against the bytes left first, and Avro's own limits
 * (an int at most 5 bytes and 32 bits, a long at most 10 bytes and 64 bits) are enforced, so a body this accepts
 * is one avsc reads in time and memory linear in its size.
 *
 * The varint readers are shared with the lazy ExecveEvent view (execve-view.ts), which checks its one schema the
 * same way on the detector's hot path.
 */
import type avro from 'avsc';
import { EdrError } from '../infra/errors.js';

/** Errors here say what is wrong; the codec names the record (`corrupt <name> record body: <why>`). */
export function corrupt(why: string): EdrError {
  return new EdrError('EDR_SCHEMA_CORRUPT', why);
}

/** Reads a zigzag varint that must fit a JS number exactly (lengths, counts, ints); `out.pos` is set past it. */
export function readSmall(buf: Buffer, pos: number, out: { pos: number }): number {
  let u = 0;
  let mul = 1;
  for (let i = 0; i < 8; i++) {
    const b = buf[pos++];
    if (b === undefined) throw corrupt('truncated');
    u += (b & 0x7f) * mul;
    if (b < 0x80) {
      out.pos = pos;
      return u % 2 === 0 ? u / 2 : -(u + 1) / 2;
    }
    mul *= 128;
  }
  throw corrupt('a length or int is out of range');
}

/**
 * Skips a varint of at most `bytes` bytes whose last possible byte carries at most `lastBits` bits: Avro's int
 * (5 bytes, 32 bits) and long (10 bytes, 64 bits). What passes here reads, decodes and encodes again; an int of 6
 * to 10 bytes, or one past 32 bits, would throw only when it is read.
 */
export function skipVarint(buf: Buffer, pos: number, bytes: number, lastBits: number, what: string): number {
  for (let i = 0; i < bytes; i++) {
    const b = buf[pos++];
    if (b === undefined) throw corrupt('truncated');
    if (b < 0x80) {
      if (i === bytes - 1 && b >= 1 << lastBits) throw corrupt(`${what} is out of range`);
      return pos;
    }
  }
  throw corrupt(`${what} is longer than ${bytes} bytes`);
}

export const skipInt = (buf: Buffer, pos: number): number => skipVarint(buf, pos, 5, 4, 'an int');
export const skipLong = (buf: Buffer, pos: number): number => skipVarint(buf, pos, 10, 1, 'a long');

/**
 * Items of a type that encodes in zero bytes (null, an empty record) take no room, so the bytes left do not bound
 * their count: past this many in one record the body is refused.
 */
export const MAX_EMPTY_ITEMS = 65_536;
/** Nesting of records, arrays, maps and unions within one body (a recursive schema could nest per byte). */
export const MAX_DEPTH = 64;

/** Walks one value from `pos`, returns where it ends; throws EDR_SCHEMA_CORRUPT. */
type Walk = (buf: Buffer, pos: number, s: WalkState) => number;
interface WalkState {
  depth: number;
  /** Zero-byte items seen so far in this body. */
  empty: number;
}

const cursor = { pos: 0 };

/** A string or bytes: a length, then that many bytes, all within the buffer. */
const skipBytes: Walk = (buf, pos) => {
  const len = readSmall(buf, pos, cursor);
  const end = cursor.pos + len;
  if (len < 0 || end > buf.length) throw corrupt(`a length of ${len} runs past the end`);
  return end;
};

/** Array (or map, `entry` walking key and value) blocks: each count checked against the bytes left. */
function blocks(item: Walk, minItem: number, what: string): Walk {
  return (buf, pos, s) => {
    if (++s.depth > MAX_DEPTH) throw corrupt(`nested deeper than ${MAX_DEPTH}`);
    for (;;) {
      let count = readSmall(buf, pos, cursor);
      pos = cursor.pos;
      if (count === 0) break;
      let blockEnd = -1;
      if (count < 0) {
        count = -count;
        const size = readSmall(buf, pos, cursor);
        pos = cursor.pos;
        if (size < 0 || pos + size > buf.length)
          throw corrupt(`a${what === 'array' ? 'n' : ''} ${what} block of ${size} bytes runs past the end`);
        blockEnd = pos + size;
      }
      if (minItem === 0) {
        s.empty += count;
        if (s.empty > MAX_EMPTY_ITEMS) throw corrupt(`more than ${MAX_EMPTY_ITEMS} empty ${what} items`);
      } else if (count > (buf.length - pos) / minItem) {
        throw corrupt(`${what} block of ${count} items in ${buf.length - pos} bytes`);
      }
      for (let i = 0; i < count; i++) pos = item(buf, pos, s);
      if (blockEnd >= 0 && pos !== blockEnd) throw corrupt(`${what} block size does not match its items`);
    }
    s.depth--;
    return pos;
  };
}

interface Compiled {
  walk: Walk;
  /** The fewest bytes a value of the type encodes in. */
  min: number;
}

/** The walk of `type`; `seen` ties recursive named types to the one walk being built. */
function compile(type: avro.Type, seen: Map<avro.Type, Compiled>): Compiled {
  const known = seen.get(type);
  if (known !== undefined) return known;
  const name = type.typeName;
  switch (name) {
    case 'null':
      return { walk: (_b, pos) => pos, min: 0 };
    case 'boolean':
      return {
        walk: (buf, pos) => {
          const b = buf[pos];
          if (b !== 0 && b !== 1)
            throw corrupt(b === undefined ? 'truncated' : 'a boolean is neither 0 nor 1');
          return pos + 1;
        },
        min: 1,
      };
    case 'int':
      return { walk: skipInt, min: 1 };
    case 'long':
    case 'abstract:long':
      return { walk: skipLong, min: 1 };
    case 'float':
    case 'double': {
      const n = name === 'float' ? 4 : 8;
      return {
        walk: (buf, pos) => {
          if (pos + n > buf.length) throw corrupt('truncated');
          return pos + n;
        },
        min: n,
      };
    }
    case 'string':
    case 'bytes':
      return { walk: skipBytes, min: 1 };
    case 'fixed': {
      const n = (type as avro.types.FixedType).size;
      return {
        walk: (buf, pos) => {
          if (pos + n > buf.length) throw corrupt('truncated');
          return pos + n;
        },
        min: n,
      };
    }
    case 'enum': {
      const symbols = (type as avro.types.EnumType).symbols.length;
      return {
        walk: (buf, pos) => {
          const i = readSmall(buf, pos, cursor);
          if (i < 0 || i >= symbols) throw corrupt(`enum index ${i} out of range`);
          return cursor.pos;
        },
        min: 1,
      };
    }
    case 'array': {
      const c: Compiled = { walk: () => 0, min: 1 };
      seen.set(type, c);
      const item = compile((type as avro.types.ArrayType).itemsType, seen);
      c.walk = blocks((buf, pos, s) => item.walk(buf, pos, s), item.min, 'array');
      return c;
    }
    case 'map': {
      const c: Compiled = { walk: () => 0, min: 1 };
      seen.set(type, c);
      const value = compile((type as avro.types.MapType).valuesType, seen);
      c.walk = blocks((buf, pos, s) => value.walk(buf, skipBytes(buf, pos, s), s), 1 + value.min, 'map');
      return c;
    }
    case 'record':
    case 'error': {
      const c: Compiled = { walk: () => 0, min: 0 };
      seen.set(type, c);
      const fields = (type as avro.types.RecordType).fields.map((f) => compile(f.type, seen));
      c.min = fields.reduce((a, f) => a + f.min, 0);
      c.walk = (buf, pos, s) => {
        if (++s.depth > MAX_DEPTH) throw corrupt(`nested deeper than ${MAX_DEPTH}`);
        for (const f of fields) pos = f.walk(buf, pos, s);
        s.depth--;
        return pos;
      };
      return c;
    }
    default: {
      if (name.startsWith('union')) {
        const c: Compiled = { walk: () => 0, min: 1 };
        seen.set(type, c);
        const branches = (type as avro.types.UnwrappedUnionType).types.map((t) => compile(t, seen));
        c.walk = (buf, pos, s) => {
          const i = readSmall(buf, pos, cursor);
          const branch = branches[i];
          if (branch === undefined) throw corrupt(`union branch ${i} out of range`);
          if (++s.depth > MAX_DEPTH) throw corrupt(`nested deeper than ${MAX_DEPTH}`);
          const end = branch.walk(buf, cursor.pos, s);
          s.depth--;
          return end;
        };
        return c;
      }
      if (name.startsWith('logical:')) {
        return compile((type as avro.types.LogicalType).underlyingType, seen);
      }
      throw new EdrError('EDR_SCHEMA_INVALID', `no structure check for Avro type ${name}`);
    }
  }
}

const checks = new WeakMap<avro.Type, Walk>();

/**
 * Checks the body `buf[start..]` against the writer schema `type`: every length and count within the bytes left,
 * ints and longs within Avro's limits, union branches and enum indexes in range, and no trailing bytes. Throws
 * EDR_SCHEMA_CORRUPT saying what is wrong.
 */
export function checkBody(type: avro.Type, buf: Buffer, start: number): void {
  let walk = checks.get(type);
  if (walk === undefined) {
    walk = compile(type, new Map()).walk;
    checks.set(type, walk);
  }
  const end = walk(buf, start, { depth: 0, empty: 0 });
  if (end !== buf.length) throw corrupt(`${buf.length - end} trailing bytes`);
}
