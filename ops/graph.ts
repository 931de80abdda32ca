// A small ONNX graph builder: nodes are added by op name and return their output names, so
// model code reads like the equations it implements. Subgraphs (If branches) share the root's
// name counter and initializers, so every weight is stored once and read from every branch.
import {
  DataType,
  ProtoWriter,
  nodeProto,
  tensorProto,
  valueInfo,
  type AttrValue,
  type Dim,
} from "./onnx-proto.ts";
import { blockBytes, blocksPerRow, type QuantizedMatrix } from "../models/quantized.ts";

export { DataType } from "./onnx-proto.ts";

interface Root {
  counter: number;
  initializers: ProtoWriter[];
  constants: Map<string, string>;
  /** Per weight, the subgraph depth (0 = root) of every node that reads it. */
  readers: Map<string, number[]>;
  /** The quantized weights (read by MatMulNBits or GatherBlockQuantized), by name. */
  quantized: Map<string, QuantizedMatrix>;
  accuracyLevel: AccuracyLevel;
}

const MS = "com.microsoft";
/**
 * MatMulNBits' accuracy level: 4 quantizes the activations to int8 per block and takes int8 dot
 * products (AVX-512 VNNI / AVX2 where present), the fast path; 0 dequantizes the weights and
 * computes in float32 (several times slower; exact against a dequantized reference, which tests use).
 */
export type AccuracyLevel = 0 | 4;

export class GraphBuilder {
  private readonly nodes: ProtoWriter[] = [];
  private readonly inputs: ProtoWriter[] = [];
  private readonly outputs: ProtoWriter[] = [];
  /** Values made by this graph's own nodes, and the names it outputs. */
  private readonly made = new Set<string>();
  private readonly outputNames = new Set<string>();
  private readonly root: Root;
  /** How many subgraphs deep this graph is (the root is 0). */
  private readonly depth: number;

  constructor(
    readonly name: string,
    parent?: GraphBuilder,
    accuracyLevel: AccuracyLevel = 4,
  ) {
    this.root = parent ? parent.root : { counter: 0, initializers: [], constants: new Map(), readers: new Map(), quantized: new Map(), accuracyLevel };
    this.depth = parent ? parent.depth + 1 : 0;
  }

  /** A new subgraph (e.g. an If branch) that can read this graph's values and initializers. */
  subgraph(name: string): GraphBuilder {
    return new GraphBuilder(name, this);
  }

  private fresh(hint: string): string {
    return `${hint}_${this.root.counter++}`;
  }

  input(name: string, type: DataType, shape?: readonly Dim[]): string {
    this.inputs.push(valueInfo(name, type, shape));
    return name;
  }

  /** Declares `value` a graph output under `name` (an Identity node renames it if needed). */
  output(name: string, value: string, type: DataType = DataType.FLOAT, shape?: readonly Dim[]): void {
    if (value !== name) this.nodes.push(nodeProto("Identity", [value], [name], this.fresh("out")));
    this.outputs.push(valueInfo(name, type, shape));
  }

  /**
   * Declares `value` an output of this subgraph (an If branch, whose outputs are matched by
   * position, not name). A value made by a node of this graph is output as it is: an Identity node
   * costs a kernel call on every run, and a decode step runs hundreds of branch outputs. A value
   * from an enclosing graph, or one already output, goes through an Identity (ONNX wants each
   * output made inside the branch, once).
   */
  branchOutput(value: string, type: DataType = DataType.FLOAT): void {
    const own = this.made.has(value) && !this.outputNames.has(value);
    const name = own ? value : this.fresh("out");
    if (!own) this.nodes.push(nodeProto("Identity", [value], [name], name));
    this.outputNames.add(name);
    this.outputs.push(valueInfo(name, type));
  }

  /** Adds a node with one output; returns the output's name. */
  op(op: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}, domain = ""): string {
    return this.ops(op, inputs, 1, attrs, domain)[0];
  }

  /**
   * Adds a node with `count` outputs, or with outputs of the given names (a graph output named so
   * at its node needs no Identity to rename it: for prefill keys and values that is a copy).
   */
  ops(op: string, inputs: readonly string[], count: number | readonly string[], attrs: Record<string, AttrValue> = {}, domain = ""): string[] {
    const base = this.fresh(op);
    const outs = typeof count === "number" ? Array.from({ length: count }, (_, i) => (count === 1 ? base : `${base}:${i}`)) : [...count];
    for (const input of inputs) this.root.readers.get(input)?.push(this.depth);
    for (const out of outs) this.made.add(out);
    this.nodes.push(nodeProto(op, inputs, outs, base, attrs, domain));
    return outs;
  }

  /** A float32 weight, stored once in the root graph. */
  weight(name: string, dims: readonly number[], data: Float32Array): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`weight ${name}: dims [${dims}] do not match ${data.length} values`);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.root.initializers.push(tensorProto(name, DataType.FLOAT, dims, raw));
    this.root.readers.set(name, []);
    return name;
  }

  /**
   * A block-quantized weight: `name` holds its bytes, `name.scales` its scales ([rows, blocks]).
   * Laid out for MatMulNBits ([rows, blocks, block bytes], rows = output features) or for
   * GatherBlockQuantized ([rows, blocks · block bytes], rows = embedding rows).
   */
  quantizedWeight(name: string, m: QuantizedMatrix, layout: "matmul" | "gather"): string {
    const nb = blocksPerRow(m.cols, m.blockSize);
    const bb = blockBytes(m.bits, m.blockSize);
    this.root.initializers.push(tensorProto(name, DataType.UINT8, layout === "matmul" ? [m.rows, nb, bb] : [m.rows, nb * bb], m.data));
    this.root.initializers.push(tensorProto(`${name}.scales`, DataType.FLOAT, [m.rows, nb], new Uint8Array(m.scales.buffer, m.scales.byteOffset, m.scales.byteLength)));
    this.root.readers.set(name, []);
    this.root.readers.set(`${name}.scales`, []);
    this.root.quantized.set(name, m);
    return name;
  }

  hasWeight(name: string): boolean {
    return this.root.readers.has(name);
  }

  /** x · W for a weight W stored [in, out] (float32: MatMul) or quantized as out × in (MatMulNBits). */
  matmul(x: string, weight: string, outputs: number | readonly string[] = 1): string {
    const m = this.root.quantized.get(weight);
    if (!m) return this.ops("MatMul", [x, weight], outputs)[0];
    const attrs = { K: m.cols, N: m.rows, bits: m.bits, block_size: m.blockSize, accuracy_level: this.root.accuracyLevel };
    return this.ops("MatMulNBits", [x, weight, `${weight}.scales`], outputs, attrs, MS)[0];
  }

  /** x · Wᵀ (+ add) for a weight W stored [out, in] (float32: one Gemm) or quantized (MatMulNBits, then Add). */
  matmulTransposed(x: string, weight: string, add: string | undefined, outputs: number | readonly string[] = 1): string {
    if (!this.root.quantized.has(weight)) return this.ops("Gemm", add ? [x, weight, add] : [x, weight], outputs, { transB: 1 })[0];
    return add ? this.ops("Add", [this.matmul(x, weight), add], outputs)[0] : this.matmul(x, weight, outputs);
  }

  /** Rows `indices` of an embedding table (float32: Gather; quantized: GatherBlockQuantized, dequantizing them). */
  gatherRows(table: string, indices: string): string {
    const m = this.root.quantized.get(table);
    if (!m) return this.op("Gather", [table, indices], { axis: 0 });
    return this.op("GatherBlockQuantized", [table, indices, `${table}.scales`], { gather_axis: 0, quantize_axis: 1, block_size: m.blockSize, bits: m.bits }, MS);
  }

  /**
   * Per weight, the depth of every node that reads it: onnxruntime prepacks a MatMul weight once
   * per reading node, and only for nodes at most one subgraph below the weight (deeper, it runs
   * unpacked, much slower; see ops/README.md).
   */
  weightReaders(): ReadonlyMap<string, readonly number[]> {
    return this.root.readers;
  }

  /** An int64 constant (deduplicated), as a root initializer. */
  int64(values: readonly number[], scalar = false): string {
    return this.constant(DataType.INT64, values, scalar, () => {
      const b = new BigInt64Array(values.map((v) => BigInt(v)));
      return new Uint8Array(b.buffer);
    });
  }

  /** A float32 constant (deduplicated). */
  float(values: readonly number[], scalar = false): string {
    return this.constant(DataType.FLOAT, values, scalar, () => new Uint8Array(new Float32Array(values).buffer));
  }

  /** A float64 constant (deduplicated). */
  double(values: readonly number[], scalar = false): string {
    return this.constant(DataType.DOUBLE, values, scalar, () => new Uint8Array(new Float64Array(values).buffer));
  }

  private constant(type: DataType, values: readonly number[], scalar: boolean, bytes: () => Uint8Array): string {
    const key = `${type}:${scalar}:${values.join(",")}`;
    let name = this.root.constants.get(key);
    if (!name) {
      name = `const_${this.root.constants.size}`;
      this.root.initializers.push(tensorProto(name, type, scalar ? [] : [values.length], bytes()));
      this.root.constants.set(key, name);
    }
    return name;
  }


  /** GraphProto of this (sub)graph; only the root carries the initializers. */
  proto(isRoot = false): ProtoWriter {
    const g = new ProtoWriter();
    for (const n of this.nodes) g.message(1, n);
    g.string(2, this.name);
    if (isRoot) for (const t of this.root.initializers) g.message(5, t);
    for (const i of this.inputs) g.message(11, i);
    for (const o of this.outputs) g.message(12, o);
    return g;
  }

  /** Serialized ModelProto with this graph as the main graph. */
  model(opset = 17, msOpset = 1): Uint8Array {
    const opsetId = (domain: string, version: number): ProtoWriter => {
      const o = new ProtoWriter();
      if (domain) o.string(1, domain);
      return o.int(2, version);
    };
    return new ProtoWriter()
      .int(1, 8)
      .string(2, "colm-serve")
      .message(7, this.proto(true))
      .message(8, opsetId("", opset))
      .message(8, opsetId("com.microsoft", msOpset))
      .finish();
  }
}
