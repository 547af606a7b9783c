// The tensor codec (docs/PROTOCOL.md, "Tensors"): JavaScript arrays <-> wire tensors.
//
// A wire tensor is {name, datatype, shape, data}: data holds the C-order, little-endian bytes of
// the values. BYTES tensors hold each element as a 4-byte little-endian length and its bytes.
//
// In JavaScript a tensor is {datatype, shape, data}:
//   numeric datatypes: a TypedArray (FP32 Float32Array, FP64 Float64Array, INT8..INT32
//     Int8Array..Int32Array, INT64 BigInt64Array, UINT8..UINT32 Uint8Array..Uint32Array,
//     UINT64 BigUint64Array, BOOL Uint8Array of 0/1, FP16 Uint16Array of raw IEEE-754 half bits);
//   BYTES: an array of strings (sent as UTF-8) or Buffers/Uint8Arrays; decoded as Buffers.

import { endianness } from 'node:os';

import { InvalidInput, PayloadTooLarge } from './errors.js';

export const DATATYPES = Object.freeze({
  BOOL: Uint8Array,
  UINT8: Uint8Array,
  UINT16: Uint16Array,
  UINT32: Uint32Array,
  UINT64: BigUint64Array,
  INT8: Int8Array,
  INT16: Int16Array,
  INT32: Int32Array,
  INT64: BigInt64Array,
  FP16: Uint16Array, // raw half-precision bits: JavaScript has no float16 array in Node 20
  FP32: Float32Array,
  FP64: Float64Array,
});
export const BYTES = 'BYTES';
export const ALL_DATATYPES = Object.freeze([...Object.keys(DATATYPES), BYTES]);
export const MAX_RANK = 16;
export const DEFAULT_MAX_TENSOR_BYTES = 256 * 1024 * 1024;

const BY_CLASS = new Map([
  [Float32Array, 'FP32'],
  [Float64Array, 'FP64'],
  [Int8Array, 'INT8'],
  [Int16Array, 'INT16'],
  [Int32Array, 'INT32'],
  [BigInt64Array, 'INT64'],
  [Uint8Array, 'UINT8'],
  [Uint8ClampedArray, 'UINT8'],
  [Uint16Array, 'UINT16'],
  [Uint32Array, 'UINT32'],
  [BigUint64Array, 'UINT64'],
]);

function inferDatatype(data) {
  for (const [Cls, datatype] of BY_CLASS) if (data instanceof Cls) return datatype;
  return undefined;
}

const LITTLE = endianness() === 'LE';

function swapped(bytes, itemsize) {
  const out = Buffer.from(bytes);
  if (itemsize === 2) out.swap16();
  else if (itemsize === 4) out.swap32();
  else if (itemsize === 8) out.swap64();
  return out;
}

function product(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(name, shape) {
  if (
    !Array.isArray(shape) ||
    shape.length > MAX_RANK ||
    !shape.every((d) => Number.isSafeInteger(d) && d >= 0)
  ) {
    throw new InvalidInput(`tensor '${name}': shape must be an array of at most ${MAX_RANK} non-negative integers`);
  }
  return shape;
}

function packBytes(name, items) {
  const parts = [];
  for (const item of items) {
    let raw;
    if (typeof item === 'string') raw = Buffer.from(item, 'utf8');
    else if (item instanceof Uint8Array) raw = Buffer.from(item.buffer, item.byteOffset, item.byteLength);
    else throw new InvalidInput(`BYTES tensor '${name}': elements must be strings or Buffers`);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(raw.length, 0);
    parts.push(len, raw);
  }
  return Buffer.concat(parts);
}

/** Split BYTES data into `count` Buffers, checking every length prefix. */
export function unpackBytes(data, count) {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const out = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 4 > buf.length) throw new InvalidInput('BYTES tensor data ends inside a length prefix');
    const n = buf.readUInt32LE(pos);
    pos += 4;
    if (pos + n > buf.length) throw new InvalidInput('BYTES tensor element runs past the end of the data');
    out.push(Buffer.from(buf.subarray(pos, pos + n)));
    pos += n;
  }
  if (pos !== buf.length) {
    throw new InvalidInput(`BYTES tensor has ${buf.length - pos} trailing bytes after ${count} elements`);
  }
  return out;
}

function toTypedArray(name, datatype, data) {
  const Cls = DATATYPES[datatype];
  if (ArrayBuffer.isView(data)) {
    const fits = data instanceof Cls || (Cls === Uint8Array && data instanceof Uint8ClampedArray);
    if (!fits) throw new InvalidInput(`tensor '${name}': ${datatype} data must be a ${Cls.name}, got ${data.constructor.name}`);
    if (datatype === 'BOOL') return Uint8Array.from(data, (v) => (v ? 1 : 0));
    return data;
  }
  if (Array.isArray(data)) {
    if (datatype === 'BOOL') return Uint8Array.from(data, (v) => (v ? 1 : 0));
    if (Cls === BigInt64Array || Cls === BigUint64Array) return Cls.from(data, (v) => BigInt(v));
    return Cls.from(data);
  }
  throw new InvalidInput(`tensor '${name}': data must be a TypedArray or an array`);
}

/**
 * Encode one named tensor as a wire tensor {name, datatype, shape, data: Buffer}.
 * `value` is a TypedArray (1-D, datatype from its class) or {data, shape?, datatype?}.
 */
export function encode(name, value, { maxBytes = DEFAULT_MAX_TENSOR_BYTES } = {}) {
  if (typeof name !== 'string' || !name || name.length > 256) {
    throw new InvalidInput('tensor names must be non-empty strings of at most 256 characters');
  }
  const spec = ArrayBuffer.isView(value) || Array.isArray(value) ? { data: value } : value;
  if (spec === null || typeof spec !== 'object' || spec.data === undefined) {
    throw new InvalidInput(`input '${name}' must be a TypedArray, an array of strings/Buffers, or {data, shape, datatype}`);
  }
  let { datatype, data } = spec;
  const isBytesArray = Array.isArray(data) && data.every((x) => typeof x === 'string' || x instanceof Uint8Array);
  if (datatype === undefined) {
    if (isBytesArray && data.length > 0) datatype = BYTES;
    else if (ArrayBuffer.isView(data)) datatype = inferDatatype(data);
    if (datatype === undefined) {
      throw new InvalidInput(`input '${name}': give a datatype (one of ${ALL_DATATYPES.join(', ')})`);
    }
  }
  if (!ALL_DATATYPES.includes(datatype)) {
    throw new InvalidInput(`input '${name}': unknown datatype ${JSON.stringify(datatype)}`);
  }
  let count;
  let bytes;
  if (datatype === BYTES) {
    if (!isBytesArray) throw new InvalidInput(`BYTES input '${name}' must be an array of strings or Buffers`);
    count = data.length;
    bytes = packBytes(name, data);
  } else {
    const arr = toTypedArray(name, datatype, data);
    count = arr.length;
    bytes = Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength);
    if (!LITTLE) bytes = swapped(bytes, arr.BYTES_PER_ELEMENT);
  }
  const shape = checkShape(name, spec.shape === undefined ? [count] : [...spec.shape]);
  if (product(shape) !== count) {
    throw new InvalidInput(`input '${name}': shape [${shape}] holds ${product(shape)} elements, the data has ${count}`);
  }
  if (bytes.length > maxBytes) {
    throw new PayloadTooLarge(`input '${name}' is ${bytes.length} bytes; the limit is ${maxBytes} bytes`);
  }
  return { name, datatype, shape, data: bytes };
}

/** Decode a wire tensor with inline data to {datatype, shape, data} (see the top of this file). */
export function decode(wire) {
  const { name, datatype, shape } = wire;
  if (!ALL_DATATYPES.includes(datatype)) throw new InvalidInput(`tensor '${name}': unknown datatype ${datatype}`);
  checkShape(name, shape);
  const raw = wire.data;
  if (!(raw instanceof Uint8Array)) throw new InvalidInput(`tensor '${name}': data must be raw bytes (msgpack bin)`);
  const count = product(shape);
  if (datatype === BYTES) return { datatype, shape, data: unpackBytes(raw, count) };
  const Cls = DATATYPES[datatype];
  const expected = count * Cls.BYTES_PER_ELEMENT;
  if (raw.length !== expected) {
    throw new InvalidInput(`tensor '${name}': ${raw.length} bytes of data but shape [${shape}] x ${datatype} needs ${expected}`);
  }
  // Copy into a fresh, aligned buffer (the msgpack bin may sit at any offset).
  const copy = new Uint8Array(raw.byteLength);
  copy.set(LITTLE ? raw : swapped(raw, Cls.BYTES_PER_ELEMENT));
  return { datatype, shape, data: new Cls(copy.buffer, 0, count) };
}

/** Raw IEEE-754 half bits (FP16 data) -> JavaScript numbers. */
export function halfToNumbers(bits) {
  return Array.from(bits, (h) => {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
    if (exp === 0x1f) return frac ? NaN : sign * Infinity;
    return sign * 2 ** (exp - 15) * (1 + frac / 1024);
  });
}

/**
 * A BYTES tensor's elements (Buffers, as results hold them) as strings, each decoded as UTF-8
 * (what string models put out); strings pass through. InvalidInput for anything else, or for
 * bytes that are not valid UTF-8 (naming the element). Python: icow.tensor.as_str.
 */
export function asStrings(value) {
  const items = value !== null && typeof value === 'object' && !Array.isArray(value) ? value.data : value;
  if (!Array.isArray(items)) throw new InvalidInput('asStrings takes a BYTES tensor ({datatype, shape, data: [Buffer]}) or its data');
  const decoder = new TextDecoder('utf-8', { fatal: true });
  return items.map((item, i) => {
    if (typeof item === 'string') return item;
    if (!(item instanceof Uint8Array)) throw new InvalidInput(`asStrings: element ${i} is not bytes or a string`);
    try {
      return decoder.decode(item);
    } catch {
      throw new InvalidInput(`asStrings: element ${i} is not valid UTF-8`);
    }
  });
}
