// safetensors reader and writer (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw tensor bytes.
// Reading validates the header against the file before any tensor is touched; tensors are
// converted to float32 on demand so a checkpoint is never held twice in float32.
import { openSync, readSync, fstatSync, closeSync, writeFileSync, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ModelLoadError } from "./errors.ts";

export type SafetensorsDtype = "F32" | "F16" | "BF16" | "U8";
const BYTES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, U8: 1 };

export class SafetensorsError extends ModelLoadError {
  override name = "SafetensorsError";
}

export interface TensorEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

/** A byte range of a file. */
export interface FileRange {
  path: string;
  offset: number;
  bytes: number;
}

const MAX_HEADER = 100 * 1024 * 1024;

export class SafetensorsFile {
  readonly entries: Map<string, TensorEntry>;
  readonly metadata: Record<string, string>;
  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly dataStart: number,
    entries: Map<string, TensorEntry>,
    metadata: Record<string, string>,
  ) {
    this.entries = entries;
    this.metadata = metadata;
  }

  static open(path: string): SafetensorsFile {
    const fd = openSync(path, "r");
    try {
      const size = fstatSync(fd).size;
      const fail = (msg: string): never => {
        throw new SafetensorsError(`${path}: ${msg}`);
      };
      if (size < 8) fail(`file is ${size} bytes, too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      readSync(fd, lenBuf, 0, 8, 0);
      const headerLen = Number(lenBuf.readBigUInt64LE(0));
      if (headerLen > MAX_HEADER || 8 + headerLen > size) fail(`header length ${headerLen} does not fit in a ${size}-byte file`);
      const headerBuf = Buffer.alloc(headerLen);
      readSync(fd, headerBuf, 0, headerLen, 8);
      let header: unknown;
      try {
        header = JSON.parse(headerBuf.toString("utf8"));
      } catch (e) {
        return fail(`header is not JSON: ${(e as Error).message}`);
      }
      if (typeof header !== "object" || header === null || Array.isArray(header)) fail("header is not a JSON object");
      const dataStart = 8 + headerLen;
      const dataSize = size - dataStart;
      const entries = new Map<string, TensorEntry>();
      let metadata: Record<string, string> = {};
      for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
        if (name === "__metadata__") {
          metadata = raw as Record<string, string>;
          continue;
        }
        const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        if (typeof e.dtype !== "string" || !(e.dtype in BYTES)) {
          fail(`tensor ${name}: dtype ${JSON.stringify(e.dtype)} is not supported (F32, F16, BF16, U8)`);
        }
        const dtype = e.dtype as SafetensorsDtype;
        if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) fail(`tensor ${name}: bad shape`);
        const offs = e.data_offsets;
        if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0)) {
          fail(`tensor ${name}: bad data_offsets`);
        }
        const [begin, end] = offs as [number, number];
        const shape = e.shape as number[];
        const expect = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
        if (end < begin || end - begin !== expect) fail(`tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape ${JSON.stringify(shape)} ${dtype} needs ${expect}`);
        if (end > dataSize) fail(`tensor ${name}: data_offsets end ${end} is past the end of the data (${dataSize} bytes); file truncated?`);
        entries.set(name, { dtype, shape, begin, end });
      }
      return new SafetensorsFile(path, fd, dataStart, entries, metadata);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** The tensor as float32 (converted from F16/BF16). */
  read(name: string): Float32Array {
    const e = this.entry(name);
    if (e.dtype === "U8") throw new SafetensorsError(`${this.path}: tensor ${name} is U8 (quantized), not a float tensor`);
    const buf = this.bytes(e);
    const n = buf.length;
    if (e.dtype === "F32") return new Float32Array(buf.buffer, buf.byteOffset, n / 4).slice();
    const halves = new Uint16Array(buf.buffer, buf.byteOffset, n / 2);
    const out = new Float32Array(n / 2);
    if (e.dtype === "BF16") {
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16;
    } else {
      for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
    }
    return out;
  }

  /** Where a tensor's bytes are in the file (for a reader that copies them itself). */
  locate(name: string): FileRange {
    const e = this.entry(name);
    return { path: this.path, offset: this.dataStart + e.begin, bytes: e.end - e.begin };
  }

  /** A U8 tensor's bytes (quantized weights). */
  readBytes(name: string): Uint8Array {
    const e = this.entry(name);
    if (e.dtype !== "U8") throw new SafetensorsError(`${this.path}: tensor ${name} is ${e.dtype}, not U8`);
    return new Uint8Array(this.bytes(e));
  }

  private entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new SafetensorsError(`${this.path}: no tensor ${name}`);
    return e;
  }

  private bytes(e: TensorEntry): Buffer {
    const buf = Buffer.alloc(e.end - e.begin);
    readSync(this.fd, buf, 0, buf.length, this.dataStart + e.begin);
    return buf;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export interface TensorToWrite {
  name: string;
  shape: number[];
  /** Float32 values (F32) or bytes (U8, quantized weights). */
  data: Float32Array | Uint8Array;
}

/** Writes float32 (F32) and byte (U8) tensors as a safetensors file. */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new SafetensorsError(`tensor ${t.name}: shape ${t.shape} does not match ${t.data.length} values`);
    header[t.name] = { dtype: t.data instanceof Uint8Array ? "U8" : "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + json.length) % 8)) % 8); // align the data section to 8 bytes
  const head = Buffer.alloc(8 + json.length);
  head.writeBigUInt64LE(BigInt(json.length), 0);
  head.write(json, 8, "utf8");
  const parts: Uint8Array[] = [head];
  for (const t of tensors) parts.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  writeFileSync(path, Buffer.concat(parts));
}

/** What reading a checkpoint's tensors needs: one safetensors file, or the shards of one. */
export type TensorSource = Pick<SafetensorsFile, "path" | "entries" | "read" | "readBytes" | "locate" | "close">;

/** Hugging Face's index of a sharded checkpoint: which file holds each tensor. */
export const SHARD_INDEX = "model.safetensors.index.json";

/**
 * The weight files of a model folder, in order: model.safetensors, or the shards its
 * model.safetensors.index.json names (large checkpoints are split so no file passes 30 MB).
 */
export function weightFiles(dir: string): string[] {
  const index = join(dir, SHARD_INDEX);
  if (!existsSync(index)) return [join(dir, "model.safetensors")];
  let map: unknown;
  try {
    map = (JSON.parse(readFileSync(index, "utf8")) as { weight_map?: unknown }).weight_map;
  } catch (e) {
    throw new SafetensorsError(`${index}: ${(e as Error).message}`);
  }
  if (typeof map !== "object" || map === null) throw new SafetensorsError(`${index}: no weight_map object`);
  const files = [...new Set(Object.values(map))];
  if (!files.length || files.some((f) => typeof f !== "string" || f.includes("/"))) throw new SafetensorsError(`${index}: weight_map must name files in the folder`);
  return (files as string[]).map((f) => join(dir, f));
}

/** Opens a model folder's weights: one file, or its shards read as one. */
export function openWeights(dir: string): TensorSource {
  const files = weightFiles(dir);
  if (files.length === 1) return SafetensorsFile.open(files[0]);
  const shards: SafetensorsFile[] = [];
  try {
    for (const f of files) shards.push(SafetensorsFile.open(f));
  } catch (e) {
    for (const s of shards) s.close();
    throw e;
  }
  return new ShardedWeights(join(dir, SHARD_INDEX), shards);
}

class ShardedWeights implements TensorSource {
  readonly entries = new Map<string, TensorEntry>();
  private readonly owner = new Map<string, SafetensorsFile>();

  constructor(
    readonly path: string,
    private readonly shards: SafetensorsFile[],
  ) {
    for (const s of shards) {
      for (const [name, entry] of s.entries) {
        if (this.owner.has(name)) throw new SafetensorsError(`${path}: tensor ${name} is in two shards`);
        this.owner.set(name, s);
        this.entries.set(name, entry);
      }
    }
  }

  read(name: string): Float32Array {
    return this.shard(name).read(name);
  }

  readBytes(name: string): Uint8Array {
    return this.shard(name).readBytes(name);
  }

  locate(name: string): FileRange {
    return this.shard(name).locate(name);
  }

  close(): void {
    for (const s of this.shards) s.close();
  }

  private shard(name: string): SafetensorsFile {
    const s = this.owner.get(name);
    if (!s) throw new SafetensorsError(`${this.path}: no tensor ${name}`);
    return s;
  }
}
