// Minimal protobuf encoder for the parts of onnx.proto the graph builder emits.
// Field numbers follow onnx/onnx.proto (IR version 8). Writing our own keeps the model bytes
// in one pass with no intermediate message objects: initializer data is copied exactly once.

export enum DataType {
  FLOAT = 1,
  UINT8 = 2,
  INT32 = 6,
  INT64 = 7,
  BOOL = 9,
  DOUBLE = 11,
}

export enum AttrType {
  FLOAT = 1,
  UINT8 = 2,
  INT = 2,
  STRING = 3,
  TENSOR = 4,
  GRAPH = 5,
  FLOATS = 6,
  INTS = 7,
}

/** A protobuf message under construction: a list of byte chunks (no copying until `finish`). */
export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  length = 0;

  private push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.length += bytes.length;
  }

  private varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    const out: number[] = [];
    while (v >= 0x80n) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    this.push(Uint8Array.from(out));
  }

  private tag(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, value: number | bigint): this {
    this.tag(field, 0);
    this.varint(value);
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.push(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, 2);
    this.varint(value.length);
    this.push(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, sub: ProtoWriter): this {
    this.tag(field, 2);
    this.varint(sub.length);
    for (const c of sub.chunks) this.push(c);
    return this;
  }

  packedInts(field: number, values: readonly number[]): this {
    const sub = new ProtoWriter();
    for (const v of values) sub.varint(v);
    return this.message(field, sub);
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

export type Dim = number | string;

/** TensorProto with raw little-endian data. */
export function tensorProto(name: string, type: DataType, dims: readonly number[], raw: Uint8Array): ProtoWriter {
  return new ProtoWriter().packedInts(1, dims).int(2, type).string(8, name).bytes(9, raw);
}

/** ValueInfoProto for a tensor of the given element type and (possibly symbolic) shape. */
export function valueInfo(name: string, type: DataType, shape?: readonly Dim[]): ProtoWriter {
  const tensorType = new ProtoWriter().int(1, type);
  if (shape) {
    const shapeProto = new ProtoWriter();
    for (const d of shape) {
      const dim = new ProtoWriter();
      if (typeof d === "number") dim.int(1, d);
      else dim.string(2, d);
      shapeProto.message(1, dim);
    }
    tensorType.message(2, shapeProto);
  }
  return new ProtoWriter().string(1, name).message(2, new ProtoWriter().message(1, tensorType));
}

export type AttrValue = number | number[] | string | { graph: ProtoWriter } | { float: number } | { tensor: ProtoWriter };

export function attribute(name: string, value: AttrValue): ProtoWriter {
  const a = new ProtoWriter().string(1, name);
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: use {float} for non-integers`);
    return a.int(20, AttrType.INT).int(3, value);
  }
  if (typeof value === "string") return a.int(20, AttrType.STRING).string(4, value);
  if (Array.isArray(value)) return a.int(20, AttrType.INTS).packedInts(8, value);
  if ("graph" in value) return a.int(20, AttrType.GRAPH).message(6, value.graph);
  if ("tensor" in value) return a.int(20, AttrType.TENSOR).message(5, value.tensor);
  return a.int(20, AttrType.FLOAT).float(2, value.float);
}

export function nodeProto(
  op: string,
  inputs: readonly string[],
  outputs: readonly string[],
  name: string,
  attrs: Record<string, AttrValue> = {},
  domain = "",
): ProtoWriter {
  const n = new ProtoWriter();
  for (const i of inputs) n.string(1, i);
  for (const o of outputs) n.string(2, o);
  n.string(3, name).string(4, op);
  for (const [k, v] of Object.entries(attrs)) n.message(5, attribute(k, v));
  if (domain) n.string(7, domain);
  return n;
}
