// Attention over the shared chain-1 KV cache (flash-decoding style). Part of colm_decode.cc
// (one translation unit).
#pragma once

#include "simd.h"
#include "model.h"

namespace {  // one translation unit: internal linkage, as if written in colm_decode.cc

#if COLM_VNNI
// e^x for x ≤ 0, 16 at a time (Cephes' expf: 2^n · p(r), r = x − n·ln 2; relative error ~1e-7).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

// p[s] = e^(p[s] − max) for s < n; returns their sum.
float expShifted(float* p, int n, float max) {
  int s = 0;
  float sum = 0;
#if COLM_VNNI
  __m512 acc = _mm512_setzero_ps();
  const __m512 mx = _mm512_set1_ps(max);
  for (; s + 16 <= n; s += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p + s), mx));
    _mm512_storeu_ps(p + s, e);
    acc = _mm512_add_ps(acc, e);
  }
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; s < n; s++) sum += p[s] = std::exp(p[s] - max);
  return sum;
}

// Attention of every query head of chains ≤ kmax for the pass's rows, over each row's cache and its
// new tokens up to its own. Work items are (row b, kv head, a block of up to kQueryBlock
// consecutive tokens, a piece of kPieceKeys keys). An item's rows are its (token, head) pairs:
// every query head of its tokens that reads the kv head. A chunk of keys is transposed once and
// every row's scores come from it, the softmax is taken once over the piece (a row's max and sum of
// 256 scores, then its weighted values), and each value vector is loaded once for every four rows,
// so a prompt's attention streams its keys once per block of tokens, not once per token. Pieces start
// at fixed key positions, so a long context splits over the threads even for one token
// (flash-decoding), and each row's arithmetic (its chunks, its pieces, their order, one chain of
// multiply-adds per score and per output) depends on its own position only: a token gets the same
// bits alone, in a batch, in a verification step or in a prompt.
constexpr int kQueryBlock = 32;
constexpr int kPieceKeys = 256;
constexpr int kChunk = 32;  // keys transposed at a time
constexpr int64_t kParallelMerge = 4096;  // (token, head) pieces from which the threads share the merge

#if COLM_VNNI
// Scores of RN rows (queries qs[0 … RN)) against the chunk's 64 transposed keys: RN × 4
// accumulators, each key vector and each query value loaded once per j.
template <int RN>
inline void scoreRows(const float* const* qs, const float* kt, int hd, float scale, float* p) {
  constexpr int KV = kChunk / 16;  // vectors of keys
  __m512 acc[RN][KV];
  for (auto& row : acc) for (auto& v : row) v = _mm512_setzero_ps();
  for (int j = 0; j < hd; j++) {
    __m512 k[KV];
    for (int i = 0; i < KV; i++) k[i] = _mm512_loadu_ps(kt + j * kChunk + 16 * i);
    for (int r = 0; r < RN; r++) {
      const __m512 qj = _mm512_set1_ps(qs[r][j]);
      for (int i = 0; i < KV; i++) acc[r][i] = _mm512_fmadd_ps(qj, k[i], acc[r][i]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < RN; r++)
    for (int i = 0; i < KV; i++) _mm512_storeu_ps(p + r * kPieceKeys + 16 * i, _mm512_mul_ps(acc[r][i], sc));
}

// acc_r[j0 … j0+16·U) += Σ_s p[r][s] · values[s] for RN rows: each value vector and weight loaded once.
template <int RN, int U>
inline void weighRows(const float* p, const float* values, int n, int hd, int j0, float* const* acc) {
  __m512 a[RN][U];
  for (int r = 0; r < RN; r++)
    for (int i = 0; i < U; i++) a[r][i] = _mm512_loadu_ps(acc[r] + j0 + 16 * i);
  for (int s = 0; s < n; s++) {
    __m512 v[U];
    for (int i = 0; i < U; i++) {
      v[i] = _mm512_loadu_ps(values + static_cast<size_t>(s) * hd + j0 + 16 * i);
      asm("" : "+v"(v[i]));  // keep it in a register: folded into each row's multiply-add, it is loaded RN times
    }
    for (int r = 0; r < RN; r++) {
      const __m512 w = _mm512_set1_ps(p[r * kPieceKeys + s]);
      for (int i = 0; i < U; i++) a[r][i] = _mm512_fmadd_ps(w, v[i], a[r][i]);
    }
  }
  for (int r = 0; r < RN; r++)
    for (int i = 0; i < U; i++) _mm512_storeu_ps(acc[r] + j0 + 16 * i, a[r][i]);
}
#endif

// kt[j][s] = keys[s][j] for s < n, j < hd (kt rows kChunk apart): 16 × 16 tiles in registers.
void transposeKeys(const float* keys, int n, int hd, float* kt) {
  int s = 0;
#if COLM_VNNI
  if (hd % 16 == 0) {
    for (; s + 16 <= n; s += 16) {
      for (int j0 = 0; j0 < hd; j0 += 16) {
        __m512 r[16], t[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(keys + static_cast<size_t>(s + i) * hd + j0);
        for (int i = 0; i < 16; i += 2) t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        for (int i = 0; i < 16; i += 4) {
          r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44), r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
          r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44), r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        // r[4q + c] now holds, in each 128-bit lane L, column c (of the lane's 4) of rows 4q … 4q+3.
        for (int c = 0; c < 4; c++) {
          t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
          t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        }
        for (int c = 0; c < 4; c++) {
          r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88), r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
          r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88), r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
        }
        for (int i = 0; i < 16; i++) _mm512_storeu_ps(kt + static_cast<size_t>(j0 + i) * kChunk + s, r[i]);
      }
    }
  }
#endif
  for (; s < n; s++)
    for (int j = 0; j < hd; j++) kt[static_cast<size_t>(j) * kChunk + s] = keys[static_cast<size_t>(s) * hd + j];
}

// p[r][0 … kChunk) = scale · q_r · kt[·][s] for rows r < R (kt [hd][kChunk], the chunk's keys
// transposed): one multiply-add per j in order for each (row, key), whatever the other rows.
void scoresRows(const float* const* q, int R, const float* kt, int hd, float scale, float* p) {
#if COLM_VNNI
  constexpr int group = 64 / kChunk * 4;  // rows whose accumulators fill 16 registers
  int r = 0;
  for (; r + group <= R; r += group) scoreRows<group>(q + r, kt, hd, scale, p + r * kPieceKeys);
  for (; r + 4 <= R; r += 4) scoreRows<4>(q + r, kt, hd, scale, p + r * kPieceKeys);  // a decode step's heads of one kv head
  for (; r < R; r++) scoreRows<1>(q + r, kt, hd, scale, p + r * kPieceKeys);
#else
  for (int r = 0; r < R; r++)
    for (int s = 0; s < kChunk; s++) {
      float acc = 0;
      for (int j = 0; j < hd; j++) acc = std::fma(q[r][j], kt[j * kChunk + s], acc);
      p[r * kPieceKeys + s] = acc * scale;
    }
#endif
}

#if COLM_VNNI
// weightedRows for hd a multiple of 16·U: U column vectors at a time, rows four at a time, then one.
template <int U>
void weighColumns(const float* p, int R, const float* values, int n, int hd, float* const* acc) {
  for (int j0 = 0; j0 < hd; j0 += 16 * U) {
    int r = 0;
    for (; r + 4 <= R; r += 4) weighRows<4, U>(p + r * kPieceKeys, values, n, hd, j0, acc + r);
    for (; r < R; r++) weighRows<1, U>(p + r * kPieceKeys, values, n, hd, j0, acc + r);
  }
}
#endif

// acc_r[0 … hd) += Σ_s p[r][s] · values[s] for rows r < R and keys s < n (values hd apart), key
// after key for each row, whatever the other rows.
void weightedRows(const float* p, int R, const float* values, int n, int hd, float* const* acc) {
#if COLM_VNNI
  if (hd % 64 == 0) return weighColumns<4>(p, R, values, n, hd, acc);
  if (hd % 16 == 0) return weighColumns<1>(p, R, values, n, hd, acc);
#endif
  for (int r = 0; r < R; r++)
    for (int s = 0; s < n; s++)
      for (int j = 0; j < hd; j++) acc[r][j] = std::fma(p[r * kPieceKeys + s], values[static_cast<size_t>(s) * hd + j], acc[r][j]);
}

// The largest of p[0 … n).
inline float maxOf(const float* p, int n) {
#if COLM_VNNI
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int s = 0; s < n; s += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), n - s >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - s)) - 1), p + s));
  return _mm512_reduce_max_ps(m);
#else
  return *std::max_element(p, p + n);
#endif
}

void attention(Model& md, const StepArgs& a, int l, const float* q, float* out) {
  const int K = a.kmax, hd = md.hd, W = md.dk[K], threads = md.pool->size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<std::vector<int>> headsOf(md.kvh);
  for (int i = 0; i < K; i++) {
    const int group = md.heads[i] / md.kvh;
    for (int h = 0; h < md.heads[i]; h++) headsOf[h / group].push_back(md.hk[i] + h);
  }
  const int G = static_cast<int>(headsOf[0].size());
  struct Unit { int b, kv, m0, count, pieces, first; };  // rows m0 … m0+count-1; items first … first+pieces-1
  std::vector<Unit> units;
  // The work before each item and each unit (rows × keys; a unit's merge: rows × pieces), so that
  // the threads split it evenly: pieces at the diagonal and short blocks cost less.
  std::vector<int64_t> itemsBefore{0}, unitsBefore{0};
  int items = 0;
  for (int b = 0; b < a.B; b++) {
    for (int kv = 0; kv < md.kvh; kv++) {
      for (int i = 0; i < a.tc; i += kQueryBlock) {
        const int count = std::min(kQueryBlock, a.tc - i), longest = a.past[b] + a.t0 + i + count;
        const int pieces = (longest + kPieceKeys - 1) / kPieceKeys;
        units.push_back({b, kv, b * a.tc + i, count, pieces, items});
        for (int pc = 0; pc < pieces; pc++) itemsBefore.push_back(itemsBefore.back() + static_cast<int64_t>(count) * G * std::min(kPieceKeys, longest - pc * kPieceKeys));
        unitsBefore.push_back(unitsBefore.back() + static_cast<int64_t>(count) * G * (pieces + 1));
        items += pieces;
      }
    }
  }
  const int stride = hd + 2;  // per (token, head) of an item: max, sum, Σ p·v
  const size_t perItem = static_cast<size_t>(kQueryBlock) * G * stride;
  std::vector<float>& part = md.attnPart;  // reused: a prompt's pass needs hundreds of KiB
  if (part.size() < static_cast<size_t>(items) * perItem) part.resize(static_cast<size_t>(items) * perItem);
  // Each thread's scores [rows, kPieceKeys] and transposed keys [hd, kChunk], kept between calls: a
  // prompt's item has up to kQueryBlock · G rows (128 KiB of scores), and memory that size, freed
  // and allocated again, comes back from the system zeroed page by page at every layer.
  const int rowsMax = std::min(kQueryBlock, a.tc) * G;
  md.attnScores.resize(threads), md.attnKeys.resize(threads);
  for (int t = 0; t < threads; t++) {
    if (md.attnScores[t].size() < static_cast<size_t>(rowsMax) * kPieceKeys) md.attnScores[t].resize(static_cast<size_t>(rowsMax) * kPieceKeys);
    if (md.attnKeys[t].size() < static_cast<size_t>(hd) * kChunk) md.attnKeys[t].resize(static_cast<size_t>(hd) * kChunk);
  }
  md.pool->run([&](int t) {
    float* p = md.attnScores[t].data();
    float* kt = md.attnKeys[t].data();
    std::vector<const float*> qs(rowsMax);
    std::vector<float*> accs(rowsMax);
    std::vector<int> limit(rowsMax);
    size_t u = 0;
    const auto [first, last] = shareOf(itemsBefore, t, threads);
    for (int it = first; it < last; it++) {
      while (units[u].first + units[u].pieces <= it) u++;
      const Unit& U = units[u];
      const int piece = it - U.first, b = U.b, past = a.past[b], R = U.count * G;
      const size_t pastAt = (static_cast<size_t>(b) * md.kvh + U.kv) * a.C * hd, newAt = (static_cast<size_t>(b) * md.kvh + U.kv) * a.T * hd;
      // Keys or values from … to-1, split where the cache ends and the new tokens begin.
      auto segments = [&](int from, int to, auto&& fn) {
        if (from < std::min(to, past)) fn(a.pastK[l] + pastAt + static_cast<size_t>(from) * hd, a.pastV[l] + pastAt + static_cast<size_t>(from) * hd, from, std::min(to, past) - from);
        const int f2 = std::max(from, past);
        if (f2 < to) fn(a.newK[l] + newAt + static_cast<size_t>(f2 - past) * hd, a.newV[l] + newAt + static_cast<size_t>(f2 - past) * hd, f2, to - f2);
      };
      float* res0 = &part[static_cast<size_t>(it) * perItem];
      for (int r = 0; r < R; r++) {  // row r: token U.m0 + r / G, head headsOf[kv][r % G]
        const int m = U.m0 + r / G;
        qs[r] = q + static_cast<size_t>(m) * W + headsOf[U.kv][r % G] * hd;
        limit[r] = past + a.rowT(m) + 1;  // the keys it attends to: 0 … limit-1
        float* res = res0 + static_cast<size_t>(r) * stride;
        res[0] = -INFINITY, res[1] = 0;
        std::fill(res + 2, res + stride, 0.0f);
        accs[r] = res + 2;
      }
      const int s0 = piece * kPieceKeys, s1 = std::min(s0 + kPieceKeys, limit[R - 1]);
      // Every row's scores for the piece's keys, a chunk at a time: its keys transposed once for every row.
      for (int c0 = s0; c0 < s1; c0 += kChunk) {
        segments(c0, std::min(c0 + kChunk, s1), [&](const float* keys, const float*, int from, int n2) {
          transposeKeys(keys, n2, hd, kt + (from - c0));
        });
        scoresRows(qs.data(), R, kt, hd, scale, p + (c0 - s0));
      }
      // Softmax over the piece: a row's keys up to its own; the keys past it get weight 0.
      const int scored = (s1 - s0 + kChunk - 1) / kChunk * kChunk;
      for (int r = 0; r < R; r++) {
        float* pr = p + static_cast<size_t>(r) * kPieceKeys;
        float* res = res0 + static_cast<size_t>(r) * stride;
        const int cnt = std::min(s1, limit[r]) - s0;
        if (cnt > 0) {
          res[0] = maxOf(pr, cnt);
          res[1] = expShifted(pr, cnt, res[0]);
        }
        std::fill(pr + std::max(cnt, 0), pr + scored, 0.0f);
      }
      segments(s0, s1, [&](const float*, const float* values, int from, int n2) {
        // A row adds keys up to its own only: the rows whose limit falls inside add exact zeros.
        weightedRows(p + (from - s0), R, values, n2, hd, accs.data());
      });
    }
  });
  // Merge each (token, head)'s pieces in order: e^(max_p − max) rescales a piece's sum and values.
  auto merge = [&](const Unit& U) {
    for (int r = 0; r < U.count * G; r++) {
      const int m = U.m0 + r / G, pieces = (a.past[U.b] + a.rowT(m) + kPieceKeys) / kPieceKeys;
      auto res = [&](int pc) { return &part[static_cast<size_t>(U.first + pc) * perItem + static_cast<size_t>(r) * stride]; };
      float mx = -INFINITY, sum = 0;
      for (int pc = 0; pc < pieces; pc++) mx = std::max(mx, res(pc)[0]);
      float* o = out + static_cast<size_t>(m) * W + headsOf[U.kv][r % G] * hd;
      std::fill(o, o + hd, 0.0f);
      for (int pc = 0; pc < pieces; pc++) {
        const float w = std::exp(res(pc)[0] - mx);
        sum += res(pc)[1] * w;
        axpy(w, res(pc) + 2, o, hd);
      }
      for (int j = 0; j < hd; j++) o[j] /= sum;
    }
  };
  if (unitsBefore.back() < kParallelMerge) {
    for (const Unit& U : units) merge(U);
  } else {
    md.pool->run([&](int t) {
      const auto [first, last] = shareOf(unitsBefore, t, threads);
      for (int ui = first; ui < last; ui++) merge(units[ui]);
    });
  }
}

}  // namespace
