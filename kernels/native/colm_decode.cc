// colm_decode: the CoLM-Air forward over block-quantized weights (models/QUANTIZATION.md: q8 / q4,
// blocks of 16, 32 or 64) as a Node-API addon; it runs every call of a quantized model, decode
// steps and prompts. Why it exists: onnxruntime's MatMulNBits splits each of a step's ~350 small
// chain-block products over the threads on its own, so a second core gained only 1.1x
// (models/QUANTIZATION.md, "Where a quantized decode step goes"). Here each phase of a layer
// (q·k·v, o, gate·up, down, head) is one threaded pass over all of its chain blocks, the
// activations are quantized once per phase, and the int8 dot products run on AVX-512 VNNI.
//
// The math is kernels/reference.ts (spec §3) with onnxruntime's accuracy level 4: activations are
// quantized to int8 per block (scale max|x|/127), weights are the stored blocks, each block's
// integer dot product is scaled by both scales. Every output is computed the same way whatever
// the batch, the number of tokens of the call or the thread that computes it, so a batch, a
// verification step or a prompt never changes a token's result; sub-model k reads chains ≤ k only
// (spec §5.1), and keys and values come from chain 1 alone.
#include <fcntl.h>
#include <node_api.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define COLM_VNNI 1
#else
#define COLM_VNNI 0
#endif

namespace {


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

// ---------------------------------------------------------------------------------------------
// Threads: the caller is thread 0; workers spin briefly between a step's phases, then sleep.

class Pool {
 public:
  explicit Pool(int n) : n_(std::max(1, n)) {
    for (int t = 1; t < n_; t++) workers_.emplace_back([this, t] { work(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }

  // The step is over: workers sleep now instead of spinning, so that they leave the cores to the
  // threads that take the result (the event loop) until the next step.
  void park() { parked_.store(true, std::memory_order_relaxed); }

  // Runs fn(t) for t in 0 … n-1, t = 0 on the calling thread; returns when all are done.
  template <class F>
  void run(F&& fn) {
    if (n_ == 1) return fn(0);
    job_ = [](void* ctx, int t) { (*static_cast<F*>(ctx))(t); };
    ctx_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    parked_.store(false, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(0);
    while (done_.load(std::memory_order_acquire) < n_ - 1) pause();
  }

 private:
  static void pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  void work(int t) {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; gen_.load(std::memory_order_acquire) == seen; i++) {
        pause();
        // Spin while a step runs (its phases are microseconds apart; at most ~2 ms), else sleep
        // until the next run.
        if (parked_.load(std::memory_order_relaxed) || ((i & 1023) == 1023 && std::chrono::steady_clock::now() - start > std::chrono::milliseconds(2))) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return gen_.load() != seen; });
        }
      }
      seen = gen_.load(std::memory_order_acquire);
      if (stop_) return;
      job_(ctx_, t);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  const int n_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> done_{0};
  std::atomic<bool> parked_{false};
  void (*job_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

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
  std::mutex stepMu;  // held by a step while it runs
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

// Each chain of x [M, width] normalised on its own and scaled by its gain, chains 1 … k.
void chainRmsNorm(const Model& md, const float* x, float* y, int M, int k, const float* gain) {
  const int W = md.dk[k];
  for (int m = 0; m < M; m++) {
    for (int i = 0; i < k; i++) {
      double ss = 0;
      for (int j = md.dk[i]; j < md.dk[i + 1]; j++) ss += static_cast<double>(x[m * W + j]) * x[m * W + j];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / md.c[i] + md.eps));
      for (int j = md.dk[i]; j < md.dk[i + 1]; j++) y[m * W + j] = x[m * W + j] * inv * gain[j];
    }
  }
}

// Quantizes rows of x [M, width] (each its first n values) into groups from `at`, returning QVecs.
QVec* quantizeRows(Model& md, const float* x, int width, int n, int M, size_t& at, size_t& qat) {
  const int bpg = blocksPerGroup(md.bits, md.bs);
  const int ngroups = ((n + md.bs - 1) / md.bs + bpg - 1) / bpg;
  QVec* out = &md.qv[qat];
  Group* groups = &md.acts[at];
  auto rows = [&](int m0, int m1) {
    for (int m = m0; m < m1; m++) quantizeActivations(x + static_cast<size_t>(m) * width, n, md.bits, md.bs, groups + static_cast<size_t>(m) * ngroups);
  };
  if (M < 8) rows(0, M);
  else md.pool->run([&](int t) { rows(M * t / md.pool->size(), M * (t + 1) / md.pool->size()); });
  for (int m = 0; m < M; m++) md.qv[qat + m].g = groups + static_cast<size_t>(m) * ngroups;
  at += static_cast<size_t>(M) * ngroups;
  qat += M;
  return out;
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
// every row's scores come from it, and each value vector is loaded once for every row, so a
// prompt's attention streams its keys once per block of tokens, not once per token. Pieces start
// at fixed key positions, so a long context splits over the threads even for one token
// (flash-decoding), and each row's arithmetic (its chunks, its pieces, their order, one chain of
// multiply-adds per score and per output) depends on its own position only: a token gets the same
// bits alone, in a batch, in a verification step or in a prompt.
constexpr int kQueryBlock = 32;
constexpr int kPieceKeys = 256;
constexpr int kChunk = 64;  // keys per online-softmax update

#if COLM_VNNI
// Scores of RN rows (queries qs[0 … RN)) against the chunk's 64 transposed keys: RN × 4
// accumulators, each key vector and each query value loaded once per j.
template <int RN>
inline void scoreRows(const float* const* qs, const float* kt, int hd, float scale, float* p) {
  __m512 acc[RN][4];
  for (auto& row : acc) for (auto& v : row) v = _mm512_setzero_ps();
  for (int j = 0; j < hd; j++) {
    const float* k = kt + j * kChunk;
    const __m512 k0 = _mm512_loadu_ps(k), k1 = _mm512_loadu_ps(k + 16), k2 = _mm512_loadu_ps(k + 32), k3 = _mm512_loadu_ps(k + 48);
    for (int r = 0; r < RN; r++) {
      const __m512 qj = _mm512_set1_ps(qs[r][j]);
      acc[r][0] = _mm512_fmadd_ps(qj, k0, acc[r][0]), acc[r][1] = _mm512_fmadd_ps(qj, k1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(qj, k2, acc[r][2]), acc[r][3] = _mm512_fmadd_ps(qj, k3, acc[r][3]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < RN; r++)
    for (int i = 0; i < 4; i++) _mm512_storeu_ps(p + r * kChunk + 16 * i, _mm512_mul_ps(acc[r][i], sc));
}

// acc_r[j0 … j0+16·U) += Σ_s p[r][s] · values[s] for RN rows: each value vector and weight loaded once.
template <int RN, int U>
inline void weighRows(const float* p, const float* values, int n, int hd, int j0, float* const* acc) {
  __m512 a[RN][U];
  for (int r = 0; r < RN; r++)
    for (int i = 0; i < U; i++) a[r][i] = _mm512_loadu_ps(acc[r] + j0 + 16 * i);
  for (int s = 0; s < n; s++) {
    __m512 v[U];
    for (int i = 0; i < U; i++) v[i] = _mm512_loadu_ps(values + static_cast<size_t>(s) * hd + j0 + 16 * i);
    for (int r = 0; r < RN; r++) {
      const __m512 w = _mm512_set1_ps(p[r * kChunk + s]);
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
  static_assert(kChunk == 64, "four vectors of keys");
  int r = 0;
  for (; r + 4 <= R; r += 4) scoreRows<4>(q + r, kt, hd, scale, p + r * kChunk);
  for (; r < R; r++) scoreRows<1>(q + r, kt, hd, scale, p + r * kChunk);
#else
  for (int r = 0; r < R; r++)
    for (int s = 0; s < kChunk; s++) {
      float acc = 0;
      for (int j = 0; j < hd; j++) acc = std::fma(q[r][j], kt[j * kChunk + s], acc);
      p[r * kChunk + s] = acc * scale;
    }
#endif
}

// acc_r[0 … hd) += Σ_s p[r][s] · values[s] for rows r < R and keys s < n (values hd apart), key
// after key for each row, whatever the other rows.
void weightedRows(const float* p, int R, const float* values, int n, int hd, float* const* acc) {
#if COLM_VNNI
  if (hd % 64 == 0) {
    for (int j0 = 0; j0 < hd; j0 += 64) {
      int r = 0;
      for (; r + 4 <= R; r += 4) weighRows<4, 4>(p + r * kChunk, values, n, hd, j0, acc + r);
      for (; r < R; r++) weighRows<1, 4>(p + r * kChunk, values, n, hd, j0, acc + r);
    }
    return;
  }
  if (hd % 16 == 0) {
    for (int j0 = 0; j0 < hd; j0 += 16) {
      int r = 0;
      for (; r + 4 <= R; r += 4) weighRows<4, 1>(p + r * kChunk, values, n, hd, j0, acc + r);
      for (; r < R; r++) weighRows<1, 1>(p + r * kChunk, values, n, hd, j0, acc + r);
    }
    return;
  }
#endif
  for (int r = 0; r < R; r++)
    for (int s = 0; s < n; s++)
      for (int j = 0; j < hd; j++) acc[r][j] = std::fma(p[r * kChunk + s], values[static_cast<size_t>(s) * hd + j], acc[r][j]);
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
  int items = 0;
  for (int b = 0; b < a.B; b++) {
    for (int kv = 0; kv < md.kvh; kv++) {
      for (int i = 0; i < a.tc; i += kQueryBlock) {
        const int count = std::min(kQueryBlock, a.tc - i), longest = a.past[b] + a.t0 + i + count;
        const int pieces = (longest + kPieceKeys - 1) / kPieceKeys;
        units.push_back({b, kv, b * a.tc + i, count, pieces, items});
        items += pieces;
      }
    }
  }
  const int stride = hd + 2;  // per (token, head) of an item: max, sum, Σ p·v
  const size_t perItem = static_cast<size_t>(kQueryBlock) * G * stride;
  std::vector<float>& part = md.attnPart;  // reused: a prompt's pass needs hundreds of KiB
  if (part.size() < static_cast<size_t>(items) * perItem) part.resize(static_cast<size_t>(items) * perItem);
  md.pool->run([&](int t) {
    const int rowsMax = kQueryBlock * G;
    std::vector<float> p(static_cast<size_t>(rowsMax) * kChunk), kt(static_cast<size_t>(hd) * kChunk, 0.0f);
    std::vector<const float*> qs(rowsMax);
    std::vector<float*> accs(rowsMax);
    std::vector<int> limit(rowsMax);
    size_t u = 0;
    for (int it = static_cast<int>(static_cast<int64_t>(items) * t / threads); it < static_cast<int64_t>(items) * (t + 1) / threads; it++) {
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
      for (int c0 = s0; c0 < s1; c0 += kChunk) {
        const int c1 = std::min(c0 + kChunk, s1);
        segments(c0, c1, [&](const float* keys, const float*, int from, int n2) {  // transposed once for every row
          transposeKeys(keys, n2, hd, kt.data() + (from - c0));
        });
        scoresRows(qs.data(), R, kt.data(), hd, scale, p.data());
        for (int r = 0; r < R; r++) {  // online softmax: a larger max rescales what is summed so far
          float* pr = &p[static_cast<size_t>(r) * kChunk];
          float* res = res0 + static_cast<size_t>(r) * stride;
          const int cnt = std::min(c1, limit[r]) - c0;
          if (cnt <= 0) {
            std::fill(pr, pr + kChunk, 0.0f);
            continue;
          }
          const float mx = std::max(res[0], maxOf(pr, cnt));
          if (mx > res[0] && res[0] != -INFINITY) {
            const float w = std::exp(res[0] - mx);
            res[1] *= w;
            for (int j = 0; j < hd; j++) res[2 + j] *= w;
          }
          res[0] = mx;
          res[1] += expShifted(pr, cnt, mx);
          std::fill(pr + cnt, pr + kChunk, 0.0f);  // keys past its own: weight 0
        }
        segments(c0, c1, [&](const float*, const float* values, int from, int n2) {
          // A row adds keys up to its own only: the rows whose limit falls inside add exact zeros.
          weightedRows(p.data() + (from - c0), R, values, n2, hd, accs.data());
        });
      }
    }
  });
  // Merge each (token, head)'s pieces in order: e^(max_p − max) rescales a piece's sum and values.
  for (const Unit& U : units) {
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
  }
}

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

  std::vector<Task> tasks;
  for (int l = 0; l < md.L; l++) {
    const Layer& L = md.layers[l];
    size_t at = 0, qat = 0;
    // Attention: queries from chains ≤ k, keys and values from chain 1 only.
    chainRmsNorm(md, x, xn, M, K, L.attnNorm);
    const QVec* ax = quantizeRows(md, xn, W, W, M, at, qat);
    tasks.clear();
    for (int i = 0; i < K; i++) tasks.push_back({&L.q[i], ax, q + md.dk[i], W});
    tasks.push_back({&L.k, ax, kb, kvw});
    tasks.push_back({&L.v, ax, vb, kvw});
    runTasks(md, tasks, M);
    for (int m = 0; m < M; m++) {
      const int b = a.rowB(m), t = a.rowT(m), pos = a.past[b] + t;
      rope(md, q + static_cast<size_t>(m) * W, md.hk[K], pos);
      rope(md, kb + static_cast<size_t>(m) * kvw, md.kvh, pos);
      for (int h = 0; h < md.kvh; h++) {  // the cache's layout [B, kvh, T, hd]
        const size_t to = ((static_cast<size_t>(b) * md.kvh + h) * a.T + t) * hd;
        std::memcpy(a.newK[l] + to, kb + static_cast<size_t>(m) * kvw + h * hd, hd * sizeof(float));
        std::memcpy(a.newV[l] + to, vb + static_cast<size_t>(m) * kvw + h * hd, hd * sizeof(float));
      }
    }
    attention(md, a, l, q, att);
    at = 0, qat = 0;
    const QVec* aa = quantizeRows(md, att, W, W, M, at, qat);
    tasks.clear();
    for (int i = 0; i < K; i++) tasks.push_back({&L.o[i], aa, ob + md.dk[i], W});
    runTasks(md, tasks, M);
    for (size_t j = 0; j < static_cast<size_t>(M) * W; j++) x[j] += ob[j];

    // SwiGLU feed-forward.
    chainRmsNorm(md, x, xn, M, K, L.ffnNorm);
    at = 0, qat = 0;
    const QVec* ah = quantizeRows(md, xn, W, W, M, at, qat);
    tasks.clear();
    for (int i = 0; i < K; i++) {
      tasks.push_back({&L.gate[i], ah, g + md.fk[i], F});
      tasks.push_back({&L.up[i], ah, u + md.fk[i], F});
    }
    runTasks(md, tasks, M);
    if (M < 8) swiglu(g, u, static_cast<size_t>(M) * F);
    else md.pool->run([&](int t) {
      const int T = md.pool->size(), m0 = M * t / T, m1 = M * (t + 1) / T;
      swiglu(g + static_cast<size_t>(m0) * F, u + static_cast<size_t>(m0) * F, static_cast<size_t>(m1 - m0) * F);
    });
    at = 0, qat = 0;
    tasks.clear();
    if (md.downAligned) {
      const QVec* ag = quantizeRows(md, g, F, F, M, at, qat);
      for (int i = 0; i < K; i++) tasks.push_back({&L.down[i], ag, ob + md.dk[i], W});
    } else {  // a block would straddle two chains' values: each chain's prefix quantized on its own
      for (int i = 0; i < K; i++) tasks.push_back({&L.down[i], quantizeRows(md, g, F, md.fk[i + 1], M, at, qat), ob + md.dk[i], W});
    }
    runTasks(md, tasks, M);
    for (size_t j = 0; j < static_cast<size_t>(M) * W; j++) x[j] += ob[j];
  }

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
  chainRmsNorm(md, xr.data(), y, R, K, md.norm);
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
  for (int t0 = 0; t0 < a.T; t0 += tc) {
    a.t0 = t0, a.tc = std::min(tc, a.T - t0);
    forwardPass(md, a);
  }
  md.pool->park();
}

// ---------------------------------------------------------------------------------------------
// Node-API glue

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, nullptr, "colm_decode: " #call " failed"); \
      return nullptr;                                                 \
    }                                                                 \
  } while (0)

napi_value throwError(napi_env env, const std::string& msg) {
  napi_throw_error(env, "ERR_COLM_NATIVE", msg.c_str());
  return nullptr;
}

bool typedArray(napi_env env, napi_value v, napi_typedarray_type want, void** data, size_t* length) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, data, &ab, &offset) != napi_ok) return false;
  return type == want;
}

napi_value element(napi_env env, napi_value arr, uint32_t i) {
  napi_value v = nullptr;
  napi_get_element(env, arr, i, &v);
  return v;
}

void finalizeModel(napi_env, void* data, void*) {
  Model* md = static_cast<Model*>(data);
  if (md->arena) munmap(md->arena, md->arenaBytes);
  delete md->pool;
  delete md;
}

// Copies `bytes` from a source to dst; false (with err set) when a file cannot be read.
bool copyFrom(const Source& from, size_t bytes, uint8_t* dst, std::string& err) {
  if (from.ptr) {
    std::memcpy(dst, from.ptr, bytes);
    return true;
  }
  const int fd = open(from.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return err = "cannot open " + from.path, false;
  size_t done = 0;
  while (done < bytes) {
    const ssize_t got = pread(fd, dst + done, bytes - done, from.offset + static_cast<off_t>(done));
    if (got <= 0) break;
    done += static_cast<size_t>(got);
  }
  close(fd);
  if (done != bytes) return err = "short read from " + from.path, false;
  return true;
}

// Copies every matrix into one mapping on huge pages (where the kernel grants them), in the order
// a step reads them.
bool copyToArena(Model& md, std::string& err) {
  std::vector<Mat*> mats;
  for (auto& m : md.embed) mats.push_back(&m);
  for (auto& m : md.head) mats.push_back(&m);
  for (auto& L : md.layers) {
    for (auto& m : L.q) mats.push_back(&m);
    mats.push_back(&L.k), mats.push_back(&L.v);
    for (auto* group : {&L.o, &L.gate, &L.up, &L.down}) for (auto& m : *group) mats.push_back(&m);
  }
  auto up64 = [](size_t n) { return (n + 63) & ~size_t(63); };
  const size_t huge = size_t(2) << 20;
  size_t total = 0;
  std::vector<std::pair<const void*, size_t>> seen;  // a tied head is the embedding: copied once
  for (Mat* m : mats) total += up64(static_cast<size_t>(m->rows) * m->nb * md.bs * md.bits / 8) + up64(static_cast<size_t>(m->rows) * m->nb * 4);
  md.arenaBytes = (total + huge - 1) / huge * huge + huge;
  void* p = mmap(nullptr, md.arenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return err = "could not map memory for the weights", false;
  md.arena = static_cast<uint8_t*>(p);
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1));
  madvise(base, md.arenaBytes - (base - md.arena), MADV_HUGEPAGE);
  size_t at = 0;
  std::vector<std::pair<Source, const uint8_t*>> moved;  // where each matrix went
  for (Mat* m : mats) {
    const size_t qb = static_cast<size_t>(m->rows) * m->nb * md.bs * md.bits / 8, sb = static_cast<size_t>(m->rows) * m->nb * 4;
    auto done = std::find_if(moved.begin(), moved.end(), [&](auto& e) { return e.first == m->qFrom; });
    if (done != moved.end()) {
      m->s = reinterpret_cast<const float*>(done->second + up64(qb));
      m->q = done->second;
      continue;
    }
    if (!copyFrom(m->qFrom, qb, base + at, err) || !copyFrom(m->sFrom, sb, base + at + up64(qb), err)) return false;
    moved.push_back({m->qFrom, base + at});
    m->q = base + at;
    m->s = reinterpret_cast<const float*>(base + at + up64(qb));
    at += up64(qb) + up64(sb);
  }
  return true;
}

// The call's arguments into argv; false (with a JS error thrown naming `usage`) unless exactly n.
bool arguments(napi_env env, napi_callback_info info, napi_value* argv, size_t n, const char* usage) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) == napi_ok && argc == n) return true;
  throwError(env, usage);
  return false;
}

// create(config Int32Array [L, n, V, hd, kvh, bits, blockSize, maxPos, threads, tied, heads…, ffn…],
//        floats Float64Array [eps, theta], matrices: the data and the scales of each matrix in
//        models/quantized.ts's quantizedLayout order (a tied head reuses the embedding), each a
//        typed array or {path, offset, bytes} of a file, norms: Float32Array[] (attn 0…L-1,
//        ffn 0…L-1, final)) → handle
napi_value Create(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!arguments(env, info, argv, 4, "create(config, floats, matrices, norms)")) return nullptr;
  int32_t* cfg;
  size_t ncfg;
  double* fl;
  size_t nfl;
  if (!typedArray(env, argv[0], napi_int32_array, reinterpret_cast<void**>(&cfg), &ncfg) || ncfg < 10) return throwError(env, "config must be an Int32Array");
  if (!typedArray(env, argv[1], napi_float64_array, reinterpret_cast<void**>(&fl), &nfl) || nfl != 2) return throwError(env, "floats must be a Float64Array [eps, theta]");
  auto md = std::make_unique<Model>();
  md->L = cfg[0], md->n = cfg[1], md->V = cfg[2], md->hd = cfg[3], md->kvh = cfg[4], md->bits = cfg[5];
  const int threads = cfg[8];
  md->bs = cfg[6];
  md->maxPos = cfg[7];
  const bool tied = cfg[9] != 0;
  if (ncfg != static_cast<size_t>(10 + 2 * md->n)) return throwError(env, "config length does not match its chain count");
  if (md->bits != 4 && md->bits != 8) return throwError(env, "bits must be 4 or 8");
  if (md->bs != 16 && md->bs != 32 && md->bs != 64) return throwError(env, "block size must be 16, 32 or 64");
  md->eps = static_cast<float>(fl[0]);
  md->dk.assign(1, 0), md->fk.assign(1, 0), md->hk.assign(1, 0);
  for (int i = 0; i < md->n; i++) {
    md->heads.push_back(cfg[10 + i]);
    md->c.push_back(cfg[10 + i] * md->hd);
    md->dk.push_back(md->dk.back() + md->c.back());
    md->hk.push_back(md->hk.back() + cfg[10 + i]);
    md->fk.push_back(md->fk.back() + cfg[10 + md->n + i]);
    if (md->c.back() % md->bs) return throwError(env, "chain widths must be multiples of the block size");
    if (md->fk.back() % md->bs) md->downAligned = false;
  }
  const int half = md->hd / 2;
  md->cosT.resize(static_cast<size_t>(md->maxPos) * half);
  md->sinT.resize(md->cosT.size());
  for (int pos = 0; pos < md->maxPos; pos++) {
    for (int j = 0; j < half; j++) {
      const double angle = pos * std::pow(fl[1], (-2.0 * j) / md->hd);
      md->cosT[static_cast<size_t>(pos) * half + j] = static_cast<float>(std::cos(angle));
      md->sinT[static_cast<size_t>(pos) * half + j] = static_cast<float>(std::sin(angle));
    }
  }
  // Matrices in quantizedLayout order.
  uint32_t nmat = 0;
  CHECK(napi_get_array_length(env, argv[2], &nmat));
  uint32_t next = 0;
  std::string err;
  auto take = [&](int rows, int cols) -> Mat {
    Mat m;
    m.rows = rows, m.cols = cols, m.nb = (cols + md->bs - 1) / md->bs;
    if (next + 2 > nmat) { err = "too few matrices"; return m; }
    const size_t want[2] = {static_cast<size_t>(rows) * m.nb * md->bs * md->bits / 8, static_cast<size_t>(rows) * m.nb * 4};
    Source* into[2] = {&m.qFrom, &m.sFrom};
    for (int part = 0; part < 2; part++) {
      const napi_value v = element(env, argv[2], next++);
      void* d;
      size_t n;
      bool is = false;
      napi_is_typedarray(env, v, &is);
      if (is) {  // bytes in memory: a Uint8Array, or the Float32Array of scales
        if (!typedArray(env, v, part ? napi_float32_array : napi_uint8_array, &d, &n) || n * (part ? 4 : 1) != want[part]) { err = "matrix " + std::to_string(next / 2) + " has the wrong type or size"; return m; }
        into[part]->ptr = d;
        continue;
      }
      // {path, offset, bytes}: a byte range of a file, read straight into the arena
      napi_value path, offset, bytes;
      char buf[4096];
      size_t len = 0;
      double off = -1, nb = -1;
      if (napi_get_named_property(env, v, "path", &path) != napi_ok || napi_get_value_string_utf8(env, path, buf, sizeof buf, &len) != napi_ok ||
          napi_get_named_property(env, v, "offset", &offset) != napi_ok || napi_get_value_double(env, offset, &off) != napi_ok ||
          napi_get_named_property(env, v, "bytes", &bytes) != napi_ok || napi_get_value_double(env, bytes, &nb) != napi_ok || off < 0 || nb != static_cast<double>(want[part])) {
        err = "matrix " + std::to_string(next / 2) + ": expected a typed array or {path, offset, bytes} of " + std::to_string(want[part]) + " bytes";
        return m;
      }
      into[part]->path.assign(buf, len);
      into[part]->offset = static_cast<int64_t>(off);
    }
    return m;
  };
  for (int i = 0; i < md->n; i++) md->embed.push_back(take(md->V, md->c[i]));
  for (int i = 0; i < md->n; i++) md->head.push_back(tied ? md->embed[i] : take(md->V, md->c[i]));
  md->layers.resize(md->L);
  for (int l = 0; l < md->L; l++) {
    Layer& L = md->layers[l];
    L.k = take(md->kvh * md->hd, md->c[0]);
    L.v = take(md->kvh * md->hd, md->c[0]);
    for (int i = 1; i <= md->n; i++) L.q.push_back(take(md->c[i - 1], md->dk[i]));
    for (int i = 1; i <= md->n; i++) L.o.push_back(take(md->c[i - 1], md->dk[i]));
    for (int i = 1; i <= md->n; i++) L.gate.push_back(take(md->fk[i] - md->fk[i - 1], md->dk[i]));
    for (int i = 1; i <= md->n; i++) L.up.push_back(take(md->fk[i] - md->fk[i - 1], md->dk[i]));
    for (int i = 1; i <= md->n; i++) L.down.push_back(take(md->c[i - 1], md->fk[i]));
  }
  if (err.empty() && next != nmat) err = "too many matrices";
  // Norm gains.
  uint32_t nnorm = 0;
  CHECK(napi_get_array_length(env, argv[3], &nnorm));
  const int D = md->dk.back();
  md->gains.resize(static_cast<size_t>(2 * md->L + 1) * D);
  auto gain = [&](uint32_t i) -> const float* {
    void* d;
    size_t dn;
    if (i >= nnorm || !typedArray(env, element(env, argv[3], i), napi_float32_array, &d, &dn) || dn != static_cast<size_t>(D)) { err = "norm gain " + std::to_string(i) + " must be a Float32Array of the full width"; return nullptr; }
    std::memcpy(&md->gains[static_cast<size_t>(i) * D], d, D * sizeof(float));
    return &md->gains[static_cast<size_t>(i) * D];
  };
  for (int l = 0; l < md->L; l++) md->layers[l].attnNorm = gain(l);
  for (int l = 0; l < md->L; l++) md->layers[l].ffnNorm = gain(md->L + l);
  md->norm = gain(2 * md->L);
  if (!err.empty() || !copyToArena(*md, err)) return throwError(env, err);
  md->pool = new Pool(threads);
  napi_value handle;
  Model* raw = md.release();
  CHECK(napi_create_external(env, raw, finalizeModel, nullptr, &handle));
  return handle;
}

// One step in flight: its model, arguments, and the references that keep the arguments alive.
struct StepWork {
  Model* md;
  StepArgs a;
  std::vector<napi_ref> refs;
  napi_deferred deferred = nullptr;
  napi_async_work work = nullptr;
};

void ExecuteStep(napi_env, void* data) {
  auto* w = static_cast<StepWork*>(data);
  std::lock_guard<std::mutex> lk(w->md->stepMu);  // one step at a time per model: the scratch is shared
  forward(*w->md, w->a);
}

void CompleteStep(napi_env env, napi_status, void* data) {
  auto* w = static_cast<StepWork*>(data);
  for (napi_ref r : w->refs) napi_delete_reference(env, r);
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  napi_resolve_deferred(env, w->deferred, undefined);
  napi_delete_async_work(env, w->work);
  delete w;
}

// step(handle, B, T, tokens Int32Array [B·T], chains Int32Array [B], past Int32Array [B],
//      pastKeys Float32Array[] (per layer [B, kvh, C, hd]), pastValues, C,
//      newKeys Float32Array[] (per layer [B, kvh, T, hd]), newValues,
//      logitRows Int32Array [R], logits Float32Array [R, V], hidden Float32Array [R, d_kmax])
//      → a promise, resolved when the outputs are written
napi_value Step(napi_env env, napi_callback_info info) {
  napi_value argv[14];
  if (!arguments(env, info, argv, 14, "step takes 14 arguments")) return nullptr;
  Model* md;
  CHECK(napi_get_value_external(env, argv[0], reinterpret_cast<void**>(&md)));
  StepArgs a;
  int32_t C;
  CHECK(napi_get_value_int32(env, argv[1], &a.B));
  CHECK(napi_get_value_int32(env, argv[2], &a.T));
  CHECK(napi_get_value_int32(env, argv[8], &C));
  a.C = C;
  size_t n;
  void* p;
  auto ints = [&](int i, size_t want, const int32_t** out) {
    if (!typedArray(env, argv[i], napi_int32_array, &p, &n) || (want && n != want)) return false;
    *out = static_cast<const int32_t*>(p);
    return true;
  };
  const int M = a.B * a.T;
  if (a.B < 1 || a.T < 1) return throwError(env, "B and T must be ≥ 1");
  if (!ints(3, M, &a.tokens) || !ints(4, a.B, &a.chains) || !ints(5, a.B, &a.past)) return throwError(env, "tokens, chains and past must be Int32Arrays of B·T, B and B entries");
  if (!ints(11, 0, &a.logitRows)) return throwError(env, "logitRows must be an Int32Array");
  a.R = static_cast<int>(n);
  a.kmax = 0;
  for (int b = 0; b < a.B; b++) {
    if (a.chains[b] < 1 || a.chains[b] > md->n) return throwError(env, "chains out of range");
    if (a.past[b] < 0 || a.past[b] > C) return throwError(env, "past length out of range");
    if (a.past[b] + a.T > md->maxPos) return throwError(env, "sequence exceeds max_position");
    a.kmax = std::max(a.kmax, a.chains[b]);
  }
  for (int m = 0; m < M; m++) if (a.tokens[m] < 0 || a.tokens[m] >= md->V) return throwError(env, "token out of range");
  for (int r = 0; r < a.R; r++) if (a.logitRows[r] < 0 || a.logitRows[r] >= M) return throwError(env, "logit row out of range");
  const size_t pastSize = static_cast<size_t>(a.B) * md->kvh * C * md->hd, newSize = static_cast<size_t>(M) * md->kvh * md->hd;
  auto floats = [&](int i, std::vector<const float*>* ro, std::vector<float*>* rw, size_t want) {
    uint32_t len = 0;
    if (napi_get_array_length(env, argv[i], &len) != napi_ok || len != static_cast<uint32_t>(md->L)) return false;
    for (uint32_t l = 0; l < len; l++) {
      if (!typedArray(env, element(env, argv[i], l), napi_float32_array, &p, &n) || n < want) return false;
      if (ro) ro->push_back(static_cast<const float*>(p));
      else rw->push_back(static_cast<float*>(p));
    }
    return true;
  };
  if (!floats(6, &a.pastK, nullptr, pastSize) || !floats(7, &a.pastV, nullptr, pastSize)) return throwError(env, "past keys/values must be one Float32Array [B, kvh, C, hd] per layer");
  if (!floats(9, nullptr, &a.newK, newSize) || !floats(10, nullptr, &a.newV, newSize)) return throwError(env, "new keys/values must be one Float32Array [B, kvh, T, hd] per layer");
  if (!typedArray(env, argv[12], napi_float32_array, &p, &n) || n < static_cast<size_t>(a.R) * md->V) return throwError(env, "logits must be a Float32Array [R, V]");
  a.logits = static_cast<float*>(p);
  if (!typedArray(env, argv[13], napi_float32_array, &p, &n) || n < static_cast<size_t>(a.R) * md->dk[a.kmax]) return throwError(env, "hidden must be a Float32Array [R, d_k]");
  a.hidden = static_cast<float*>(p);
  // The step runs on a libuv worker thread (the event loop stays free while a prompt is
  // prefilled); the arguments are referenced until it is done, so their buffers stay alive.
  auto* w = new StepWork{md, std::move(a)};
  for (int i : {0, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}) {
    napi_ref r;
    napi_create_reference(env, argv[i], 1, &r);
    w->refs.push_back(r);
  }
  napi_value promise, name;
  CHECK(napi_create_promise(env, &w->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "colm_decode.step", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, nullptr, name, ExecuteStep, CompleteStep, w, &w->work));
  CHECK(napi_queue_async_work(env, w->work));
  return promise;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value fn, fast;
  napi_create_function(env, "create", NAPI_AUTO_LENGTH, Create, nullptr, &fn);
  napi_set_named_property(env, exports, "create", fn);
  napi_create_function(env, "step", NAPI_AUTO_LENGTH, Step, nullptr, &fn);
  napi_set_named_property(env, exports, "step", fn);
  napi_get_boolean(env, COLM_VNNI == 1, &fast);
  napi_set_named_property(env, exports, "fast", fast);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
