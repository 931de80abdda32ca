// The CoLM-Air forward pass (spec §3) as one ONNX graph: one copy of every weight serves every
// chain count k (sub-model k computes chains 1 … k). Read top-down: colmGraph (inputs → chain 1 →
// chains 2 … n → outputs), forward (embed → blocks → final norm → head, for a stack of chains) and
// block (attention and SwiGLU, each with its residual). The machinery is beneath them:
// layer-stack.ts (each step, chain by chain), attention.ts (one attention per run of chains, fused
// kernel or cache path), chain-gates.ts (which chains a call runs), graph-inputs.ts and
// colm-weights.ts. ops/README.md explains the layout and why it is so.
//
// A call runs B sequences ("rows") of T new tokens each; token (b, t) is flattened to b·T + t.
// Inputs:  tokens int64 [B, T]; chains int64 scalar (the chain count to run); logits_rows int64 [R] (flattened
//          tokens whose logits are wanted; empty for a KV-only prefill); logits_chains int64 [R]
//          (the sub-model, ≤ chains, whose logits each of those rows gets); past_length int64 [B];
//          past_key_l / past_value_l float [B, kv_heads, C, hd], the rows' cache buffers (C ≥ P_b
//          slots, the first P_b of row b valid).
// Outputs: logits [R, V]; hidden [R, d_k] (final hidden state, pre-norm);
//          new_key_l / new_value_l [B, kv_heads, T, hd] (rotated keys and values of the new tokens,
//          head-major like the cache, so appending them is one block copy per row and head).
// Shapes in the comments below are per chain i: c_i its width, d_i = c_1 + … + c_i, h_i its heads.
import type { Checkpoint } from "../models/checkpoint.ts";
import type { ColmConfig } from "../models/config.ts";
import { registerWeights } from "./colm-weights.ts";
import { GraphBuilder, type AccuracyLevel } from "./graph.ts";
import { graphInputs, type Shared } from "./graph-inputs.ts";
import { LayerStack, type ChainActivations, type Stream } from "./layer-stack.ts";

/** The serialized ONNX model (ModelProto) of a checkpoint. */
export function buildColmGraph(ckpt: Checkpoint, accuracyLevel?: AccuracyLevel): Uint8Array {
  return colmGraph(ckpt, accuracyLevel).model();
}

/**
 * The graph of a checkpoint, before serialization (tests inspect who reads each weight). Chain 1
 * runs in the root on every call, and makes every layer's keys and values; chains 2 … n run in
 * If(chains ≥ 2), each reading what the chains before it left at the same layer.
 */
export function colmGraph(ckpt: Checkpoint, accuracyLevel?: AccuracyLevel): GraphBuilder {
  const c = ckpt.config;
  const g = new GraphBuilder("colm-air", undefined, accuracyLevel);
  registerWeights(g, ckpt); // per-chain blocks, each once: see colm-weights.ts
  const s = graphInputs(g, c); // tokens [B, T], … → positions [B, T], masks, …
  const chain1 = forward(new LayerStack(g, c, s, [1], undefined)); // logits [R, V], hidden [R, c_1]
  s.kv.forEach((kv, l) => {
    g.output(`new_key_${l}`, kv.keyHeads); // [B, kv, T, hd]
    g.output(`new_value_${l}`, kv.valueHeads);
  });
  if (c.nChains === 1) {
    g.output("logits", chain1.logits);
    g.output("hidden", chain1.hidden);
    return g;
  }
  chains2Up(g, c, s, chain1); // logits [R, V], hidden [R, d_k]
  g.output("logits", "logits");
  g.output("hidden", "hidden");
  return g;
}

/**
 * The forward pass of a stack of consecutive chains (nanoGPT's GPT.forward): embed → L blocks →
 * final chain norm → head. Chain 1's stack also makes each layer's keys and values, which every
 * chain attends to (spec §3, CoLM-Air).
 */
function forward(st: LayerStack): ChainActivations {
  const L = st.c.n_layers;
  let x: Stream = st.embed(); // x_i = E_i[tokens], x̂_i = ChainNorm₁(x)_i: [B·T, c_i]
  for (let l = 0; l < L; l++) {
    if (st.makesKeysValues) st.keysValues(l, x); // K = rope(x̂_1·Wk), V = x̂_1·Wv: [B, T, kv·hd]
    if (st.makesKeysValues && l === L - 1) x = st.chain1LastBlockWhenRead(l, (b) => block(st, b, l, x)); // skipped by a KV-only prefill
    else x = block(st, st.g, l, x); // x_i: [B·T, c_i]
  }
  return st.head(x); // logits_k = ChainNorm_final(x^L)_{≤k}·H_{≤k}ᵀ: [R, V]
}

/**
 * Block l (spec §3): h = x + Attn(ChainNorm₁(x)), out = h + FFN(ChainNorm₂(h)), built in `b`. Each
 * residual add is fused with the norm that reads its sum, so x arrives with x̂ = ChainNorm₁(x) and
 * leaves with the next layer's. Chain by chain, as chain i's linears read chains ≤ i.
 */
function block(st: LayerStack, b: GraphBuilder, l: number, x: Stream): Stream {
  const q = st.queries(b, l, x.normed); // q_i = x̂_{≤i}·Wq_i: [B·T, h_i·hd]
  const heads = st.attention(b, l, q); // causal, rotary, chain 1's K/V: [B·T, h_i·hd]
  const out: Stream = { x: [], normed: [] };
  for (const i of st.chains) {
    const { h, normed } = st.attnResidual(b, l, i, x.x[i], heads[i]); // h_i = x_i + heads_{≤i}·Wo_i, ĥ_i = ChainNorm₂(h)_i: [B·T, c_i]
    const a = st.swiglu(b, l, i, normed); // a_i = silu(ĥ_{≤i}·Wgate_i) ⊙ (ĥ_{≤i}·Wup_i): [B·T, f_i]
    const next = st.ffnResidual(b, l, i, h, a); // x_i = h_i + a_{≤i}·Wdown_i: [B·T, c_i]
    out.x[i] = next.x;
    if (next.normed) out.normed[i] = next.normed;
  }
  return out;
}

/**
 * Chains 2 … n, in If(chains ≥ 2) on top of chain 1's activations; a call at one chain takes chain
 * 1's logits and hidden state. The branch is one If deep, so onnxruntime still prepacks its weights.
 */
function chains2Up(g: GraphBuilder, c: ColmConfig, s: Shared, chain1: ChainActivations): void {
  const rest = g.subgraph("chains_2_up");
  const more = forward(new LayerStack(rest, c, s, Array.from({ length: c.nChains - 1 }, (_, j) => j + 2), chain1));
  rest.branchOutput(more.logits);
  rest.branchOutput(more.hidden);
  const skip = g.subgraph("chain_1_only");
  skip.branchOutput(chain1.logits);
  skip.branchOutput(chain1.hidden);
  g.ops("If", [g.op("Greater", [s.chains, g.int64([1], true)])], ["logits", "hidden"], { then_branch: { graph: rest.proto() }, else_branch: { graph: skip.proto() } });
}
