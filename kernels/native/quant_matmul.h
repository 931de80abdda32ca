// Block-quantized matrices, int8 activations and their products (the int8 dot products on
// AVX-512 VNNI). Part of colm_decode.cc (one translation unit).
#pragma once

#include "simd.h"

namespace {  // one translation unit: internal linkage, as if written in colm_decode.cc

// ---------------------------------------------------------------------------------------------
// Quantized matrices and activations

// Where a tensor's bytes come from when the model is made: memory, or a byte range of a file.
struct Source {
  const void* ptr = nullptr;
  std::string path;
  int64_t offset = 0;
  bool operator==(const Source& o) const { return ptr == o.ptr && path == o.path && offset == o.offset; }
};

// A rows x cols matrix blocked along cols: q [rows, nb, bs·bits/8], s [rows, nb].
struct Mat {
  const uint8_t* q = nullptr;
  const float* s = nullptr;
  int rows = 0, cols = 0, nb = 0;
  Source qFrom, sFrom;  // until copied into the model's arena
};

// One group of activations: the values one 64-byte load of weights multiplies (4 blocks of 32 at
// q4, 2 at q8). At q4 a weight byte holds values 2j (low nibble) and 2j+1 (high), so the group
// keeps the even-indexed values of its blocks in lo and the odd ones in hi. xs is each
// block's activation scale, repeated over the block's int32 lanes; bias is −zero·Σx of each block
// in its first lane, so the unsigned stored q dotted with x gives Σ (q − zero)·x.
struct alignas(64) Group {
  int8_t lo[64];
  int8_t hi[64];  // q4 only
  float xs[16];
  int32_t bias[16];
};

// Activations of one vector quantized for one bit width: ceil(blocks / per group) groups.
struct QVec {
  const Group* g = nullptr;
};

// Blocks of `bs` values in 64 bytes of weights.
inline int blocksPerGroup(int bits, int bs) { return 64 * 8 / (bits * bs); }

// Quantizes x[0 .. n) (the last block padded with zeros) into groups of blocks of bs values.
void quantizeActivations(const float* x, int n, int bits, int bs, Group* out) {
  const int nblocks = (n + bs - 1) / bs;
  const int bpg = blocksPerGroup(bits, bs);
  const int ngroups = (nblocks + bpg - 1) / bpg;
  const int lanes = 16 / bpg;
  const int zero = bits == 4 ? 8 : 128;
  for (int gi = 0; gi < ngroups; gi++) {
    Group& G = out[gi];
    std::memset(&G, 0, sizeof(Group));
    for (int bj = 0; bj < bpg; bj++) {
      const int b = gi * bpg + bj;
      if (b >= nblocks) break;
#if COLM_VNNI
      if (bs == 32 && (b + 1) * bs <= n) {  // a whole block of 32, 16 lanes at a time; the same values as below
        const __m512 x0 = _mm512_loadu_ps(x + b * bs), x1 = _mm512_loadu_ps(x + b * bs + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inv));  // nearest, ties to even
        if (bits == 4) {
          const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
          const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(G.lo + bj * 16), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, even, q1)));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(G.hi + bj * 16), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, odd, q1)));
        } else {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(G.lo + bj * 32), _mm512_cvtepi32_epi8(q0));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(G.lo + bj * 32 + 16), _mm512_cvtepi32_epi8(q1));
        }
        for (int l = 0; l < lanes; l++) G.xs[bj * lanes + l] = amax / 127.0f;
        G.bias[bj * lanes] = -zero * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        continue;
      }
#endif
      float v[64];
      float amax = 0;
      for (int j = 0; j < bs; j++) {
        const int at = b * bs + j;
        v[j] = at < n ? x[at] : 0.0f;
        amax = std::max(amax, std::fabs(v[j]));
      }
      const float scale = amax / 127.0f;
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int j = 0; j < bs; j++) {
        const int qv = static_cast<int>(std::nearbyint(v[j] * inv));
        const int8_t q = static_cast<int8_t>(std::clamp(qv, -127, 127));
        sum += q;
        if (bits == 4) (j & 1 ? G.hi : G.lo)[bj * bs / 2 + (j >> 1)] = q;
        else G.lo[bj * bs + j] = q;
      }
      for (int l = 0; l < lanes; l++) G.xs[bj * lanes + l] = scale;
      G.bias[bj * lanes] = -zero * sum;
    }
  }
}

#if COLM_VNNI
// What every tile of one matrix shares.
struct Consts {
  __m512i nibble, expand;  // expand: lane l → its block's scale
  __mmask16 allScales, tailScales;
  __mmask64 tailBytes;
  int bpg, full, tail, rowBytes;
};

// The sums of the 16 lanes of a, b, c and d.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  auto half = [](__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); };
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(half(a), half(b)), _mm256_hadd_ps(half(c), half(d)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Rows r … r+R-1 of w against MM activation rows: R·MM independent accumulator chains, each
// group of activations loaded once for the R rows.
template <int R, int MM, int BITS>
inline void tile(const Mat& w, const Consts& k, int r, const QVec* acts, float* const* outs, bool accumulate) {
  __m512 f[R][MM];
  for (int i = 0; i < R; i++) for (int m = 0; m < MM; m++) f[i][m] = _mm512_setzero_ps();
  auto group = [&](int gi, bool last) {
    __m512i lo[MM], hi[MM], bias[MM];
    __m512 xs[MM];
    for (int m = 0; m < MM; m++) {
      const Group& G = acts[m].g[gi];
      lo[m] = _mm512_load_si512(G.lo);
      if (BITS == 4) hi[m] = _mm512_load_si512(G.hi);
      bias[m] = _mm512_load_si512(G.bias);
      xs[m] = _mm512_load_ps(G.xs);
    }
    for (int i = 0; i < R; i++) {
      const uint8_t* wq = w.q + static_cast<size_t>(r + i) * k.rowBytes + gi * 64;
      const float* ws = w.s + static_cast<size_t>(r + i) * w.nb + gi * k.bpg;
      // The last blocks of a row: the missing ones get weight bytes and scales 0.
      const __m512i wv = last ? _mm512_maskz_loadu_epi8(k.tailBytes, wq) : _mm512_loadu_si512(wq);
      const __m512 sv = _mm512_permutexvar_ps(k.expand, _mm512_maskz_loadu_ps(last ? k.tailScales : k.allScales, ws));
      if (BITS == 4) {
        const __m512i wl = _mm512_and_si512(wv, k.nibble);
        const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(wv, 4), k.nibble);
        for (int m = 0; m < MM; m++) {
          const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(bias[m], wl, lo[m]), wh, hi[m]);
          f[i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sv, xs[m]), f[i][m]);
        }
      } else {
        for (int m = 0; m < MM; m++) {
          const __m512i acc = _mm512_dpbusd_epi32(bias[m], wv, lo[m]);
          f[i][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sv, xs[m]), f[i][m]);
        }
      }
    }
  };
  for (int gi = 0; gi < k.full; gi++) group(gi, false);
  if (k.tail) group(k.full, true);
  for (int m = 0; m < MM; m++) {
    float* o = outs[m] + r;
    if (R == 4) {
      const __m128 v = reduce4(f[0][m], f[1][m], f[2][m], f[3][m]);
      _mm_storeu_ps(o, accumulate ? _mm_add_ps(_mm_loadu_ps(o), v) : v);
    } else {
      for (int i = 0; i < R; i++) {
        const float v = _mm_cvtss_f32(reduce4(f[i][m], f[i][m], f[i][m], f[i][m]));  // summed as reduce4 sums each lane
        o[i] = accumulate ? o[i] + v : v;
      }
    }
  }
}

// Rows r0 … r1 against MM activation rows: four rows at a time, then one.
// Rows r0 … r1 against MM activation rows: four weight rows at a time when `four` (many activation
// rows: compute-bound, each loaded activation group serves four rows), else one (few: the weights
// stream from memory, one row after another).
template <int MM, int BITS>
void rowsOf(const Mat& w, const Consts& k, int r0, int r1, const QVec* acts, float* const* outs, bool accumulate, bool four) {
  int r = r0;
  if (four)
    for (; r + 4 <= r1; r += 4) tile<4, MM, BITS>(w, k, r, acts, outs, accumulate);
  for (; r < r1; r++) tile<1, MM, BITS>(w, k, r, acts, outs, accumulate);
}

// Weight rows a block at a time (a block stays in L1 while every activation row passes over it),
// the activation rows four, two or one at a time.
template <int BITS>
void rowsAny(const Mat& w, const Consts& k, int r0, int r1, const QVec* acts, int M, float* const* outs, bool accumulate) {
  const int block = M <= 4 ? r1 - r0 : std::max(1, 16384 / std::max(1, k.rowBytes));
  for (int rb = r0; rb < r1; rb += block) {
    const int re = std::min(r1, rb + block);
    for (int m0 = 0; m0 < M;) {
      const int left = M - m0;
      if (left >= 4) rowsOf<4, BITS>(w, k, rb, re, acts + m0, outs + m0, accumulate, M >= 8), m0 += 4;
      else if (left >= 2) rowsOf<2, BITS>(w, k, rb, re, acts + m0, outs + m0, accumulate, M >= 8), m0 += 2;
      else rowsOf<1, BITS>(w, k, rb, re, acts + m0, outs + m0, accumulate, M >= 8), m0 += 1;
    }
  }
}
#endif

// outs[m][r] (+)= Σ over blocks of row r of w · acts[m], rows r0 … r1, m < M.
void dotRows(const Mat& w, int bits, int bs, int r0, int r1, const QVec* acts, int M, float* const* outs, bool accumulate) {
  const int bpg = blocksPerGroup(bits, bs);
  const int rowBytes = w.nb * bs * bits / 8;
  const int full = w.nb / bpg, tail = w.nb % bpg;
#if COLM_VNNI
  Consts k;
  alignas(64) int32_t laneBlock[16];  // lane l holds a sum of block l / (16 / bpg)'s products
  for (int l = 0; l < 16; l++) laneBlock[l] = l / (16 / bpg);
  k.nibble = _mm512_set1_epi8(0x0F);
  k.expand = _mm512_load_si512(laneBlock);
  k.allScales = static_cast<__mmask16>((1u << bpg) - 1);
  k.tailScales = static_cast<__mmask16>((1u << tail) - 1);
  k.tailBytes = tail ? (1ULL << (tail * 64 / bpg)) - 1 : 0;
  k.bpg = bpg, k.full = full, k.tail = tail, k.rowBytes = rowBytes;
  if (bits == 4) rowsAny<4>(w, k, r0, r1, acts, M, outs, accumulate);
  else rowsAny<8>(w, k, r0, r1, acts, M, outs, accumulate);
#else
  // Portable path: the same sums lane by lane (slow; the addon reports fast = false).
  const int lanes = 16 / bpg;
  for (int m = 0; m < M; m++) {
    for (int r = r0; r < r1; r++) {
      const uint8_t* wq = w.q + static_cast<size_t>(r) * rowBytes;
      const float* ws = w.s + static_cast<size_t>(r) * w.nb;
      float lanesum[16];
      std::fill(lanesum, lanesum + 16, 0.0f);
      for (int gi = 0; gi < full + (tail ? 1 : 0); gi++) {
        const Group& G = acts[m].g[gi];
        const int nbg = gi < full ? bpg : tail;
        int32_t acc[16];
        std::memcpy(acc, G.bias, sizeof(acc));
        for (int i = 0; i < 64; i++) {
          const int lane = i / 4;
          if (lane / lanes >= nbg) continue;
          const uint8_t byte = wq[gi * 64 + i];
          if (bits == 4) acc[lane] += (byte & 15) * G.lo[i] + (byte >> 4) * G.hi[i];
          else acc[lane] += byte * G.lo[i];
        }
        for (int l = 0; l < 16; l++) {
          const int b = l / lanes;
          const float sw = b < nbg ? ws[gi * bpg + b] : 0.0f;
          lanesum[l] += static_cast<float>(acc[l]) * (sw * G.xs[l]);
        }
      }
      float v = 0;
      for (int l = 0; l < 16; l++) v += lanesum[l];
      float& o = outs[m][r];
      o = accumulate ? o + v : v;
    }
  }
#endif
}

}  // namespace
