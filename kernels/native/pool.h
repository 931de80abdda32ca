// The kernel's threads. Part of colm_decode.cc (one translation unit).
#pragma once

#include "simd.h"

namespace {  // one translation unit: internal linkage, as if written in colm_decode.cc

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

  // A worker thread's call is over: workers sleep now instead of spinning, so that they leave the
  // cores to the event loop, which takes the result. (After a call on the event loop's own thread
  // they spin on for the next decode step, which comes within a millisecond or two.)
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

}  // namespace
