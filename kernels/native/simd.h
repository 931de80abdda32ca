// What every part of the native kernel includes, and COLM_VNNI: whether this build has AVX-512
// VNNI (the fast path) or only the portable one.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <immintrin.h>


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define COLM_VNNI 1
#else
#define COLM_VNNI 0
#endif
