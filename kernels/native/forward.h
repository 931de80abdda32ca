// The forward pass: layers, head, and a call in passes. Part of colm_decode.cc (one
// translation unit).
#pragma once

#include "simd.h"
#include "attention.h"

namespace {  // one translation unit: internal linkage, as if written in colm_decode.cc

// g[j] = silu(g[j]) · u[j] = g / (1 + e^−g) · u for j < n, every element by the same vector code.
void swiglu(float* g, const float* u, size_t n) {
#if COLM_VNNI
  for (size_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 gv = _mm512_maskz_loadu_ps(k, g + j), uv = _mm512_maskz_loadu_ps(k, u + j);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    _mm512_mask_storeu_ps(g + j, k, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), uv));
  }
#else
  for (size_t j = 0; j < n; j++) g[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
#endif
}

// The phases COLM_PROFILE times (Model::mark).
enum Phase { kNormQuantize, kQkv, kRope, kAttention, kO, kGateUp, kDown, kHead, kPhases };
constexpr const char* kPhaseNames[] = {"norm+quantize", "qkv", "rope", "attention", "o", "gate+up", "down", "embed+head"};

// One pass: tokens t0 … t0+tc-1 of every row through every layer, and the logits of the requested
// rows among them. Earlier passes' keys and values are in newK / newV already.
void forwardPass(Model& md, const StepArgs& a) {
  const int K = a.kmax, M = a.B * a.tc, W = md.dk[K], F = md.fk[K], kvw = md.kvh * md.hd, hd = md.hd;
  const int bpg = blocksPerGroup(md.bits, md.bs);
  auto groupsOf = [&](int n) { return ((n + md.bs - 1) / md.bs + bpg - 1) / bpg; };
  // Scratch: activations of one phase at a time (down with unaligned prefixes: one set per chain).
  int headGroups = 0;
  for (int i = 0; i < K; i++) headGroups += groupsOf(md.c[i]);
  const size_t perPhase = static_cast<size_t>(M) * std::max({groupsOf(W), groupsOf(F) * (md.downAligned ? 1 : K), headGroups});
  if (md.acts.size() < perPhase) md.acts.resize(perPhase);
  if (md.qv.size() < static_cast<size_t>(M) * (K + 1)) md.qv.resize(static_cast<size_t>(M) * (K + 1));
  auto grow = [](std::vector<float>& v, size_t n) { if (v.size() < n) v.resize(n); };
  grow(md.x, static_cast<size_t>(M) * W); grow(md.xn, static_cast<size_t>(M) * W); grow(md.qb, static_cast<size_t>(M) * W);
  grow(md.att, static_cast<size_t>(M) * W); grow(md.ob, static_cast<size_t>(M) * W);
  grow(md.kb, static_cast<size_t>(M) * kvw); grow(md.vb, static_cast<size_t>(M) * kvw);
  grow(md.g, static_cast<size_t>(M) * F); grow(md.u, static_cast<size_t>(M) * F);
  float *x = md.x.data(), *xn = md.xn.data(), *q = md.qb.data(), *att = md.att.data(), *ob = md.ob.data();
  float *kb = md.kb.data(), *vb = md.vb.data(), *g = md.g.data(), *u = md.u.data();

  // Embedding: chain i's columns of the token's row, dequantized.
  for (int m = 0; m < M; m++) {
    const int tok = a.tokens[a.rowB(m) * a.T + a.rowT(m)];
    for (int i = 0; i < K; i++) {
      const Mat& e = md.embed[i];
      const int zero = md.bits == 4 ? 8 : 128;
      for (int j = 0; j < md.c[i]; j++) {
        const int blk = j / md.bs;
        const float s = e.s[static_cast<size_t>(tok) * e.nb + blk];
        const size_t at = static_cast<size_t>(tok) * e.nb * md.bs * md.bits / 8;
        const int qv = md.bits == 8 ? e.q[at + j] : (e.q[at + j / 2] >> ((j & 1) * 4)) & 15;
        x[m * W + md.dk[i] + j] = s * static_cast<float>(qv - zero);
      }
    }
  }

  // x += ob for rows m0 … m1-1: a phase's output added to the residual stream.
  auto addOut = [&](int m0, int m1) {
    for (size_t j = static_cast<size_t>(m0) * W; j < static_cast<size_t>(m1) * W; j++) x[j] += ob[j];
  };
  std::vector<Task> tasks;
  for (int l = 0; l < md.L; l++) {
    const Layer& L = md.layers[l];
    size_t at = 0, qat = 0;
    // Attention: queries from chains ≤ k, keys and values from chain 1 only.
    const QVec* ax = quantizeRows(md, xn, W, W, M, at, qat, [&](int m0, int m1) {
      if (l > 0) addOut(m0, m1);  // the previous layer's feed-forward output
      chainRmsNorm(md, x, xn, m0, m1, K, L.attnNorm);
    });
    md.mark(kNormQuantize);
    tasks.clear();
    for (int i = 0; i < K; i++) tasks.push_back({&L.q[i], ax, q + md.dk[i], W});
    tasks.push_back({&L.k, ax, kb, kvw});
    tasks.push_back({&L.v, ax, vb, kvw});
    runTasks(md, tasks, M);
    md.mark(kQkv);
    forRows(md, M, [&](int m0, int m1) {
      for (int m = m0; m < m1; m++) {
        const int b = a.rowB(m), t = a.rowT(m), pos = a.past[b] + t;
        rope(md, q + static_cast<size_t>(m) * W, md.hk[K], pos);
        rope(md, kb + static_cast<size_t>(m) * kvw, md.kvh, pos);
        for (int h = 0; h < md.kvh; h++) {  // the cache's layout [B, kvh, T, hd]
          const size_t to = ((static_cast<size_t>(b) * md.kvh + h) * a.T + t) * hd;
          std::memcpy(a.newK[l] + to, kb + static_cast<size_t>(m) * kvw + h * hd, hd * sizeof(float));
          std::memcpy(a.newV[l] + to, vb + static_cast<size_t>(m) * kvw + h * hd, hd * sizeof(float));
        }
      }
    });
    md.mark(kRope);
    attention(md, a, l, q, att);
    md.mark(kAttention);
    at = 0, qat = 0;
    const QVec* aa = quantizeRows(md, att, W, W, M, at, qat);
    md.mark(kNormQuantize);
    tasks.clear();
    for (int i = 0; i < K; i++) tasks.push_back({&L.o[i], aa, ob + md.dk[i], W});
    runTasks(md, tasks, M);
    md.mark(kO);

    // SwiGLU feed-forward.
    at = 0, qat = 0;
    const QVec* ah = quantizeRows(md, xn, W, W, M, at, qat, [&](int m0, int m1) {
      addOut(m0, m1);  // the attention's output
      chainRmsNorm(md, x, xn, m0, m1, K, L.ffnNorm);
    });
    md.mark(kNormQuantize);
    tasks.clear();
    for (int i = 0; i < K; i++) {
      tasks.push_back({&L.gate[i], ah, g + md.fk[i], F});
      tasks.push_back({&L.up[i], ah, u + md.fk[i], F});
    }
    runTasks(md, tasks, M);
    md.mark(kGateUp);
    auto swigluRows = [&](int m0, int m1) {
      swiglu(g + static_cast<size_t>(m0) * F, u + static_cast<size_t>(m0) * F, static_cast<size_t>(m1 - m0) * F);
    };
    at = 0, qat = 0;
    tasks.clear();
    if (md.downAligned) {
      const QVec* ag = quantizeRows(md, g, F, F, M, at, qat, swigluRows);
      for (int i = 0; i < K; i++) tasks.push_back({&L.down[i], ag, ob + md.dk[i], W});
    } else {  // a block would straddle two chains' values: each chain's prefix quantized on its own
      forRows(md, M, swigluRows);
      for (int i = 0; i < K; i++) tasks.push_back({&L.down[i], quantizeRows(md, g, F, md.fk[i + 1], M, at, qat), ob + md.dk[i], W});
    }
    md.mark(kNormQuantize);
    runTasks(md, tasks, M);
    md.mark(kDown);
  }
  forRows(md, M, addOut);  // the last layer's feed-forward output

  // Head: logits of each requested row at its own chain count, Σ over its chains of y_i · H_iᵀ.
  // The requested rows in this pass: logitRows index b·T + t; rowOf is their row here, out their index there.
  std::vector<int> rowOf, outIdx;
  for (int r = 0; r < a.R; r++) {
    const int b = a.logitRows[r] / a.T, t = a.logitRows[r] % a.T;
    if (t >= a.t0 && t < a.t0 + a.tc) rowOf.push_back(b * a.tc + t - a.t0), outIdx.push_back(r);
  }
  const int R = static_cast<int>(rowOf.size());
  if (!R) return;
  grow(md.y, static_cast<size_t>(R) * W);
  float* y = md.y.data();
  std::vector<float> xr(static_cast<size_t>(R) * W);
  for (int r = 0; r < R; r++) {
    std::memcpy(&xr[static_cast<size_t>(r) * W], x + static_cast<size_t>(rowOf[r]) * W, W * sizeof(float));
    std::memcpy(a.hidden + static_cast<size_t>(outIdx[r]) * W, x + static_cast<size_t>(rowOf[r]) * W, W * sizeof(float));
  }
  chainRmsNorm(md, xr.data(), y, 0, R, K, md.norm);
  size_t at = 0;
  std::vector<std::vector<QVec>> perChain(K);
  std::vector<std::vector<float*>> rowsOf(K);  // the logits rows of the rows running chain i
  for (int i = 0; i < K; i++) {
    for (int r = 0; r < R; r++) {
      const int b = a.logitRows[outIdx[r]] / a.T;
      if (a.chains[b] <= i) continue;
      quantizeActivations(y + static_cast<size_t>(r) * W + md.dk[i], md.c[i], md.bits, md.bs, &md.acts[at]);
      perChain[i].push_back({&md.acts[at]});
      rowsOf[i].push_back(a.logits + static_cast<size_t>(outIdx[r]) * md.V);
      at += groupsOf(md.c[i]);
    }
  }
  const int V = md.V, T = md.pool->size();
  md.pool->run([&](int t) {
    const int v0 = V * t / T, v1 = V * (t + 1) / T;
    for (int i = 0; i < K; i++) {  // chain 1 covers every row: it writes, the others add
      const int n = static_cast<int>(rowsOf[i].size());
      if (n) dotRows(md.head[i], md.bits, md.bs, v0, v1, perChain[i].data(), n, rowsOf[i].data(), i > 0);
    }
  });
}

// A call in passes of at most kPassRows rows (a prompt's tokens in order, each pass attending to the
// ones before it), so that scratch memory stays small whatever the prompt's length.
constexpr int kPassRows = 128;
void forward(Model& md, StepArgs& a) {
  const int tc = std::max(1, std::min(a.T, kPassRows / a.B));
  md.phaseMs.assign(kPhases, 0.0);
  md.mark(-1);
  for (int t0 = 0; t0 < a.T; t0 += tc) {
    a.t0 = t0, a.tc = std::min(tc, a.T - t0);
    forwardPass(md, a);
  }
  md.mark(kHead);
  if (md.profile) {
    std::string line = "colm_decode: B " + std::to_string(a.B) + " T " + std::to_string(a.T) + " k " + std::to_string(a.kmax) + " ms";
    for (int i = 0; i < kPhases; i++) line += std::string(" ") + kPhaseNames[i] + " " + std::to_string(md.phaseMs[i]).substr(0, 6);
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

}  // namespace
