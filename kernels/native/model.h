// The model the kernel holds, a call's arguments, and the pieces of a layer around attention.
// Part of colm_decode.cc (one translation unit).
#pragma once

#include "simd.h"
#include "pool.h"
#include "quant_matmul.h"

namespace {  // one translation unit: internal linkage, as if written in colm_decode.cc

// ---------------------------------------------------------------------------------------------
// The model

struct Layer {
  Mat k, v;
  std::vector<Mat> q, o, gate, up, down;  // one per output chain
  const float* attnNorm = nullptr;
  const float* ffnNorm = nullptr;
};

struct Model {
  int L = 0, n = 0, V = 0, hd = 0, kvh = 0, bits = 0, bs = 0, maxPos = 0;
  float eps = 1e-5f;
  std::vector<int> heads, c, dk, fk, hk;  // chain heads, widths; prefixes (size n+1)
  std::vector<Mat> embed, head;           // per chain, [V, c_i]
  std::vector<Layer> layers;
  const float* norm = nullptr;
  std::vector<float> cosT, sinT;  // [maxPos, hd/2]
  bool downAligned = true;        // every FFN prefix f_1+…+f_i a multiple of the block size
  // The weights, copied into one mapping on 2 MiB pages: a step reads every page of them, and on
  // 4 KiB pages that is a TLB miss per 4 KiB (~23,000 a step on bench-m at q4).
  uint8_t* arena = nullptr;
  size_t arenaBytes = 0;
  std::vector<float> gains;       // the norm gains, copied
  Pool* pool = nullptr;
  // Scratch, grown to the largest call.
  std::vector<float> x, xn, qb, kb, vb, att, ob, g, u, y, attnPart;
  std::vector<std::vector<float>> attnScores, attnKeys;  // per thread
  std::mutex stepMu;  // held by a step while it runs
  // COLM_PROFILE=1: each call's wall time per phase, summed over layers and passes, on stderr.
  bool profile = std::getenv("COLM_PROFILE") != nullptr;
  std::vector<double> phaseMs;
  std::chrono::steady_clock::time_point phaseFrom;
  void mark(int phase) {  // the time since the last mark goes to `phase`
    if (!profile) return;
    const auto now = std::chrono::steady_clock::now();
    if (phase >= 0) phaseMs[phase] += std::chrono::duration<double, std::milli>(now - phaseFrom).count();
    phaseFrom = now;
  }
  std::vector<Group> acts;
  std::vector<QVec> qv;
};

// One product of a phase: rows r of `w` against the activations acts[m] (m < M), into out.
struct Task {
  const Mat* w;
  const QVec* acts;  // M entries
  float* out;        // row m's outputs at out + m · stride
  int stride;
};

// Thread t's share [first, last) of items whose work before each is before[0 … n] (prefix sums):
// the items that start in its equal part of the whole.
std::pair<int, int> shareOf(const std::vector<int64_t>& before, int t, int threads) {
  const int64_t total = before.back();
  auto at = [&](int u) {
    const int64_t bound = total * u / threads;
    return static_cast<int>(std::lower_bound(before.begin(), before.end() - 1, bound) - before.begin());
  };
  return {at(t), t + 1 == threads ? static_cast<int>(before.size()) - 1 : at(t + 1)};
}

// Splits the tasks' rows over the pool by weight bytes and runs them.
void runTasks(Model& md, const std::vector<Task>& tasks, int M) {
  std::vector<int64_t> cost(tasks.size() + 1, 0);
  for (size_t i = 0; i < tasks.size(); i++) cost[i + 1] = cost[i] + static_cast<int64_t>(tasks[i].w->rows) * tasks[i].w->nb;
  const int T = md.pool->size();
  const int64_t total = cost.back();
  std::vector<float*> outs(tasks.size() * M);
  for (size_t i = 0; i < tasks.size(); i++) for (int m = 0; m < M; m++) outs[i * M + m] = tasks[i].out + static_cast<size_t>(m) * tasks[i].stride;
  md.pool->run([&](int t) {
    const int64_t a = total * t / T, b = total * (t + 1) / T;
    for (size_t i = 0; i < tasks.size(); i++) {
      const int64_t lo = std::max(a, cost[i]), hi = std::min(b, cost[i + 1]);
      if (lo >= hi) continue;
      const int nb = tasks[i].w->nb;
      const int r0 = static_cast<int>((lo - cost[i] + nb - 1) / nb), r1 = static_cast<int>((hi - cost[i] + nb - 1) / nb);
      if (r0 < r1) dotRows(*tasks[i].w, md.bits, md.bs, r0, r1, tasks[i].acts, M, &outs[i * M], false);
    }
  });
}

// Each chain of rows m0 … m1-1 of x [·, width] normalised on its own and scaled by its gain, chains 1 … k.
void chainRmsNorm(const Model& md, const float* x, float* y, int m0, int m1, int k, const float* gain) {
  const int W = md.dk[k];
  for (int m = m0; m < m1; m++) {
    for (int i = 0; i < k; i++) {
      double ss = 0;
      for (int j = md.dk[i]; j < md.dk[i + 1]; j++) ss += static_cast<double>(x[m * W + j]) * x[m * W + j];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / md.c[i] + md.eps));
      for (int j = md.dk[i]; j < md.dk[i + 1]; j++) y[m * W + j] = x[m * W + j] * inv * gain[j];
    }
  }
}

// fn(m0, m1) over rows 0 … M-1: on the calling thread for a few rows, else split over the pool.
template <class F>
void forRows(Model& md, int M, F&& fn) {
  if (M < 8) return fn(0, M);
  md.pool->run([&](int t) { fn(M * t / md.pool->size(), M * (t + 1) / md.pool->size()); });
}

// Quantizes rows of x [M, width] (each its first n values) into groups from `at`, returning QVecs;
// prepare(m0, m1) first computes those rows of x (in the same pass over the threads).
template <class F>
QVec* quantizeRows(Model& md, const float* x, int width, int n, int M, size_t& at, size_t& qat, F&& prepare) {
  const int bpg = blocksPerGroup(md.bits, md.bs);
  const int ngroups = ((n + md.bs - 1) / md.bs + bpg - 1) / bpg;
  QVec* out = &md.qv[qat];
  Group* groups = &md.acts[at];
  forRows(md, M, [&](int m0, int m1) {
    prepare(m0, m1);
    for (int m = m0; m < m1; m++) quantizeActivations(x + static_cast<size_t>(m) * width, n, md.bits, md.bs, groups + static_cast<size_t>(m) * ngroups);
  });
  for (int m = 0; m < M; m++) md.qv[qat + m].g = groups + static_cast<size_t>(m) * ngroups;
  at += static_cast<size_t>(M) * ngroups;
  qat += M;
  return out;
}
QVec* quantizeRows(Model& md, const float* x, int width, int n, int M, size_t& at, size_t& qat) {
  return quantizeRows(md, x, width, n, M, at, qat, [](int, int) {});
}

void rope(const Model& md, float* x, int heads, int pos) {
  const int half = md.hd / 2;
  const float* cs = &md.cosT[static_cast<size_t>(pos) * half];
  const float* sn = &md.sinT[static_cast<size_t>(pos) * half];
  for (int h = 0; h < heads; h++) {
    float* v = x + h * md.hd;
    for (int j = 0; j < half; j++) {
      const float a = v[j], b = v[j + half];
      v[j] = a * cs[j] - b * sn[j];
      v[j + half] = b * cs[j] + a * sn[j];
    }
  }
}

inline void axpy(float p, const float* v, float* y, int n) {
  for (int j = 0; j < n; j++) y[j] += p * v[j];
}

struct StepArgs {
  int B, T, kmax;
  const int32_t* tokens;   // [B·T]
  const int32_t* chains;   // [B]
  const int32_t* past;     // [B] tokens already in each row's cache
  std::vector<const float*> pastK, pastV;  // per layer [B, kvh, C, hd]
  int C;                   // cache capacity (slots per row)
  std::vector<float*> newK, newV;          // per layer [B, kvh, T, hd]
  int R;
  const int32_t* logitRows;  // [R] indexes b·T + t
  float* logits;             // [R, V]
  float* hidden;             // [R, dk[kmax]]
  // The pass being computed: tokens t0 … t0+tc-1 of every row; its row m is (b, t) below.
  int t0 = 0, tc = 0;
  int rowB(int m) const { return m / tc; }
  int rowT(int m) const { return t0 + m % tc; }
};

}  // namespace
