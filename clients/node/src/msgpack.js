// msgpack encoding that produces the same bytes as Python's msgpack.packb(obj, use_bin_type=True):
// integers in their smallest format (unsigned formats for non-negative values), every float as
// float64 (0xcb), strings as str, Uint8Array/Buffer as bin. A JavaScript number cannot say
// whether it is a float, so protocol fields that are floats on the wire (created, deadline) are
// wrapped in Float64. Decoding uses @msgpack/msgpack.

import { decode as msgpackDecode } from '@msgpack/msgpack';

/** A number that is always encoded as a msgpack float64, even when it is integral. */
export class Float64 {
  constructor(value) {
    this.value = Number(value);
  }
}

class Writer {
  constructor() {
    this.chunks = [];
    this.size = 0;
  }
  push(buf) {
    this.chunks.push(buf);
    this.size += buf.length;
  }
  byte(b) {
    this.push(Buffer.of(b));
  }
  head(tag, n, bytes) {
    const buf = Buffer.alloc(1 + bytes);
    buf[0] = tag;
    if (bytes === 1) buf.writeUInt8(n, 1);
    else if (bytes === 2) buf.writeUInt16BE(n, 1);
    else if (bytes === 4) buf.writeUInt32BE(n, 1);
    this.push(buf);
  }
  finish() {
    return Buffer.concat(this.chunks, this.size);
  }
}

function writeInt(w, n) {
  // n: a safe-integer number or a bigint
  const big = BigInt(n);
  if (big >= 0n) {
    if (big < 128n) return w.byte(Number(big));
    if (big < 0x100n) return w.head(0xcc, Number(big), 1);
    if (big < 0x10000n) return w.head(0xcd, Number(big), 2);
    if (big < 0x100000000n) return w.head(0xce, Number(big), 4);
    if (big < 0x10000000000000000n) {
      const buf = Buffer.alloc(9);
      buf[0] = 0xcf;
      buf.writeBigUInt64BE(big, 1);
      return w.push(buf);
    }
  } else {
    if (big >= -32n) return w.byte(Number(big) & 0xff);
    const buf = Buffer.alloc(9);
    if (big >= -0x80n) {
      buf[0] = 0xd0;
      buf.writeInt8(Number(big), 1);
      return w.push(buf.subarray(0, 2));
    }
    if (big >= -0x8000n) {
      buf[0] = 0xd1;
      buf.writeInt16BE(Number(big), 1);
      return w.push(buf.subarray(0, 3));
    }
    if (big >= -0x80000000n) {
      buf[0] = 0xd2;
      buf.writeInt32BE(Number(big), 1);
      return w.push(buf.subarray(0, 5));
    }
    if (big >= -0x8000000000000000n) {
      buf[0] = 0xd3;
      buf.writeBigInt64BE(big, 1);
      return w.push(buf);
    }
  }
  throw new RangeError(`integer ${n} does not fit msgpack's 64 bits`);
}

function writeFloat(w, x) {
  const buf = Buffer.alloc(9);
  buf[0] = 0xcb;
  buf.writeDoubleBE(x, 1);
  w.push(buf);
}

function writeLength(w, n, fix, fixMax, t8, t16, t32) {
  if (n <= fixMax && fix !== null) w.byte(fix | n);
  else if (n < 0x100 && t8 !== null) w.head(t8, n, 1);
  else if (n < 0x10000) w.head(t16, n, 2);
  else w.head(t32, n, 4);
}

function write(w, v) {
  if (v === null || v === undefined) return w.byte(0xc0);
  if (v === false) return w.byte(0xc2);
  if (v === true) return w.byte(0xc3);
  if (v instanceof Float64) return writeFloat(w, v.value);
  if (typeof v === 'bigint') return writeInt(w, v);
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && !Object.is(v, -0)) return writeInt(w, v);
    return writeFloat(w, v);
  }
  if (typeof v === 'string') {
    const bytes = Buffer.from(v, 'utf8');
    writeLength(w, bytes.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
    return w.push(bytes);
  }
  if (v instanceof Uint8Array) {
    writeLength(w, v.length, null, -1, 0xc4, 0xc5, 0xc6);
    return w.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
  }
  if (Array.isArray(v)) {
    writeLength(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (const item of v) write(w, item);
    return undefined;
  }
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const entries = Object.entries(v);
    writeLength(w, entries.length, 0x80, 15, null, 0xde, 0xdf);
    for (const [k, item] of entries) {
      write(w, k);
      write(w, item);
    }
    return undefined;
  }
  throw new TypeError(`cannot encode ${Object.prototype.toString.call(v)} as msgpack`);
}

/** Encode like Python's msgpack.packb(obj, use_bin_type=True). Returns a Buffer. */
export function encode(value) {
  const w = new Writer();
  write(w, value);
  return w.finish();
}

/** Decode msgpack bytes: str -> string, bin -> Uint8Array, map -> object. */
export function decode(bytes) {
  return msgpackDecode(bytes, { useBigInt64: false });
}
