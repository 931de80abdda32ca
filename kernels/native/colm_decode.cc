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
//
// One translation unit, in parts read top to bottom: quant_matmul.h (the quantized products),
// pool.h (threads), model.h (the weights held, a call's arguments, norms and RoPE), attention.h,
// forward.h (layers, head, a call in passes); this file loads the weights and is the Node-API glue.
#include <fcntl.h>
#include <node_api.h>
#include <sys/mman.h>
#include <unistd.h>

#include "forward.h"

namespace {

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
  w->md->pool->park();  // the event loop takes the result: leave it the cores
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
//      logitRows Int32Array [R], logits Float32Array [R, V], hidden Float32Array [R, d_kmax],
//      async boolean) → undefined once the outputs are written, or (async, or while another
//      call runs) a promise resolved then
napi_value Step(napi_env env, napi_callback_info info) {
  napi_value argv[15];
  if (!arguments(env, info, argv, 15, "step takes 15 arguments")) return nullptr;
  bool async = true;
  CHECK(napi_get_value_bool(env, argv[14], &async));
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
  // A small call (a decode step: milliseconds) runs here, as a server loop's step would; a large
  // one (a prompt) on a libuv worker thread, so the event loop stays free, with its arguments
  // referenced until it is done so that their buffers stay alive.
  if (!async) {
    std::unique_lock<std::mutex> lk(md->stepMu, std::try_to_lock);
    if (lk.owns_lock()) {
      forward(*md, a);
      return nullptr;
    }
  }
  auto* w = new StepWork{md, std::move(a), {}, nullptr, nullptr};
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
