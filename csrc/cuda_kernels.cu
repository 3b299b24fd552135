// CUDA kernels: the grid-stride loops and launches around the per-chunk functions of
// sugar_chunks.h (which the host test driver runs too). 64-bit indexing, float32 opmath for
// half/bfloat16, launched on the current stream, grid sized from each kernel's real occupancy.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "sugar_chunks.h"
#include "kernel_entry_points.h"

namespace sugar {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDevices = 64;

template <bool B>
using Bool = std::integral_constant<bool, B>;

// Calls body(Bool<vector>, chunk) for every chunk of N elements of an n-element tensor:
// grid-stride over the full chunks (128-bit path when kVector), then the one partial chunk at
// the end, if any, on the element path. 64-bit indices.
template <bool kVector, int N, typename Body>
__device__ __forceinline__ void for_each_chunk(int64_t n, Body&& body) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunks = (n + N - 1) / N;
  const int64_t loop_end = kVector ? n / N : chunks;
  for (int64_t c = tid; c < loop_end; c += stride) body(Bool<kVector>{}, c);
  if (kVector && tid == 0 && loop_end < chunks) body(Bool<false>{}, loop_end);
}

// ---- Exact mode ----------------------------------------------------------------------------
// Chunks of one 128-bit pack per operand. Bytes per element: forward reads x, writes y
// (2 * sizeof(scalar_t)); backward reads grad_y and x, writes grad_x (3 * sizeof(scalar_t)).

template <typename scalar_t, bool kVector>
__global__ void relu_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                    int64_t n) {
  for_each_chunk<kVector, kPackElems<scalar_t>>(
      n, [&](auto vec, int64_t c) { relu_chunk<decltype(vec)::value>(x, y, c, n); });
}

// One kernel per surrogate (chosen once on the host): no per-element switch on the surrogate.
template <typename scalar_t, bool kVector, Surrogate S>
__global__ void relu_backward_kernel(const scalar_t* __restrict__ grad_y,
                                     const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ grad_x, int64_t n,
                                     opmath_t<scalar_t> alpha, bool negative_only) {
  for_each_chunk<kVector, kPackElems<scalar_t>>(n, [&](auto vec, int64_t c) {
    backward_chunk<S, decltype(vec)::value>(grad_y, x, grad_x, c, n, alpha, negative_only);
  });
}

// ---- Code modes ----------------------------------------------------------------------------
// Design for bandwidth (it cannot be timed without a GPU, so the reasoning is written here):
// * A thread owns a chunk of 8 elements: 32 bytes of float, 16 of half/bfloat16. It loads the
//   whole chunk with 128-bit loads before it stores anything, so y may alias x (in-place) and
//   the loads of a thread are all in flight together (no load waits for an earlier store, which
//   the old one-byte-per-thread kernel had to do because x and y may alias).
// * Its codes are exactly `bits` bytes (8 elements x bits), written as one 1/2/4/8-byte store:
//   a warp writes 32 * bits contiguous bytes, whole 32-byte sectors. y and grad_x go out with
//   128-bit stores. For bits=1 a warp's x loads are 32 bytes apart per thread, contiguous over
//   the warp (1 KB per warp-chunk), not 8 elements x 32 bytes apart as before.
// * Tables: each block copies them once into shared memory (thresholds <= 1023 + scan entries,
//   <= 1024 interval codes, 4096 bucket starts = 16 KB; 1 KB of levels for backward). The copy
//   is coalesced 4-byte loads from L2 (the tables are hot there), 16 independent loads per
//   thread for the bucket starts. The grid is persistent (as many blocks as are resident), so
//   the copy happens ~SMs x blocks/SM times per launch: ~1000 x 25 KB from L2, against >= 150 MB
//   of HBM traffic at 2^24 float elements. Each block then marks the buckets that hold no
//   threshold (mark_direct_buckets: 4096 x (1 + scan) shared reads, 16 buckets per thread): an
//   element there costs one shared-memory read (its bucket), the others 2 + scan (bucket, scan
//   comparisons, code). Random buckets make bank conflicts (~3-4 way for 32 random lanes), so
//   reads per element, not bytes, bound the search: for bfloat16 at bits=8 (5 bytes/element,
//   ~3.7 elements/clock/SM at H200 bandwidth) the plain search (~13 conflicted wavefronts per
//   32 elements) would cap near 65% of bandwidth. With direct buckets that is less, by how many
//   elements fall in buckets without a threshold: most for bits <= 4 (<= 19 thresholds in 4096
//   buckets), fewer for bits = 8 (371 thresholds, dense where N(0, 1) inputs are). Unmeasured.
//   Shared memory per block: 25 KB (float opmath), 33 KB (double).
// * The tables' values are bounded in the copy (fill_code_tables: scan and bucket starts
//   clamped to [0, num_thresholds]; codes masked to `bits` bits in encode_chunk): a corrupt
//   table gives wrong codes, never an access outside the arrays. The host (ops.cpp) checks
//   every size, dtype and device, and on CPU tensors also the values.
// Bytes per element: forward reads x, writes y and bits/8 of code; backward reads grad_y and
// bits/8 of code, writes grad_x.

template <typename scalar_t, int kBits, bool kVector>
__global__ void relu_forward_codes_kernel(const scalar_t* x, scalar_t* y,
                                          uint8_t* __restrict__ codes, int64_t n,
                                          const opmath_t<scalar_t>* __restrict__ thresholds,
                                          const uint8_t* __restrict__ interval_codes,
                                          int num_thresholds,
                                          const int32_t* __restrict__ search) {
  using T = opmath_t<scalar_t>;
  __shared__ T padded[kMaxPadded];
  __shared__ uint8_t interval_codes_shared[kMaxIntervals];
  __shared__ uint32_t bucket[kSearchBuckets];
  const int scan = clamp_scan(search[0], num_thresholds);
  const int tid = static_cast<int>(threadIdx.x), nthreads = static_cast<int>(blockDim.x);
  fill_code_tables(tid, nthreads, thresholds, interval_codes, num_thresholds, search + 1, scan,
                   padded, interval_codes_shared, bucket);
  __syncthreads();
  const BlockCodeTable<T> table =
      block_code_table(padded, interval_codes_shared, bucket, num_thresholds, scan);
  mark_direct_buckets(tid, nthreads, table, num_thresholds, bucket);
  __syncthreads();
  for_each_chunk<kVector, kCodeChunk>(n, [&](auto vec, int64_t c) {
    encode_chunk<kBits, decltype(vec)::value>(x, y, codes, c, n, table);
  });
}

template <typename scalar_t, int kBits, bool kVector>
__global__ void relu_backward_codes_kernel(const scalar_t* __restrict__ grad_y,
                                           const uint8_t* __restrict__ codes,
                                           const opmath_t<scalar_t>* __restrict__ levels_global,
                                           scalar_t* __restrict__ grad_x, int64_t n) {
  __shared__ opmath_t<scalar_t> levels[1 << kBits];
  for (int i = threadIdx.x; i < (1 << kBits); i += blockDim.x) levels[i] = levels_global[i];
  __syncthreads();
  for_each_chunk<kVector, kCodeChunk>(n, [&](auto vec, int64_t c) {
    decode_chunk<kBits, decltype(vec)::value>(grad_y, codes, levels, grad_x, c, n);
  });
}

// ---- Launch ------------------------------------------------------------------------------

// Resident blocks of kKernel on the current device (occupancy x SMs), queried once per device.
template <auto kKernel>
int resident_blocks() {
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "sugar: CUDA device index ", device,
              " out of range");
  int blocks = cache[device].load(std::memory_order_relaxed);
  if (blocks == 0) {
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kThreads, 0));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    blocks = std::max(1, per_sm) * std::max(1, sms);
    cache[device].store(blocks, std::memory_order_relaxed);
  }
  return blocks;
}

// Launches kKernel over `chunks` work items (one per thread) on the current stream: one full
// wave of resident blocks at most, the kernels' grid-stride loops do the rest.
template <auto kKernel, typename... Args>
void launch(int64_t chunks, Args... args) {
  if (chunks == 0) return;
  const int64_t wanted = (chunks + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(std::min<int64_t>(wanted, resident_blocks<kKernel>()));
  kKernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Calls f(Bool<b>{}) for the runtime b.
template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(Bool<true>{});
  } else {
    f(Bool<false>{});
  }
}

// Calls f(std::integral_constant<int, bits>{}) for bits in {1, 2, 4, 8} (checked by ops.cpp).
template <typename F>
void dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: TORCH_CHECK(false, "sugar: bits must be 1, 2, 4 or 8, got ", bits);
  }
}

int64_t chunks_of(int64_t n, int per_chunk) { return (n + per_chunk - 1) / per_chunk; }

}  // namespace

void relu_forward_cuda(c10::ScalarType dtype, const void* x_, void* y_, int64_t n) {
  dispatch_float_types(dtype, "sugar::relu_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    dispatch_bool(aligned(x, 16) && aligned(y, 16), [&](auto vec) {
      launch<relu_forward_kernel<scalar_t, decltype(vec)::value>>(
          chunks_of(n, kPackElems<scalar_t>), x, y, n);
    });
  });
}

void relu_backward_cuda(c10::ScalarType dtype, const void* grad_y_, const void* x_, void* grad_x_,
                        int64_t n, const GradParams& params) {
  dispatch_float_types(dtype, "sugar::relu_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    const auto alpha = static_cast<opmath_t<scalar_t>>(params.alpha);
    dispatch_bool(aligned(grad_y, 16) && aligned(x, 16) && aligned(grad_x, 16), [&](auto vec) {
      dispatch_surrogate(params.surrogate, [&](auto surrogate) {
        launch<relu_backward_kernel<scalar_t, decltype(vec)::value, decltype(surrogate)::value>>(
            chunks_of(n, kPackElems<scalar_t>), grad_y, x, grad_x, n, alpha,
            params.negative_only);
      });
    });
  });
}

void relu_forward_codes_cuda(c10::ScalarType dtype, const void* x_, void* y_, uint8_t* codes,
                             int64_t n, const CodeArgs& args) {
  dispatch_float_types(dtype, "sugar::relu_forward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = opmath_t<scalar_t>;
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    const auto* thresholds = static_cast<const T*>(args.thresholds);
    const bool vector = aligned(x, 16) && aligned(y, 16) && aligned(codes, 8);
    dispatch_bits(args.bits, [&](auto bits) {
      dispatch_bool(vector, [&](auto vec) {
        launch<relu_forward_codes_kernel<scalar_t, decltype(bits)::value, decltype(vec)::value>>(
            chunks_of(n, kCodeChunk), x, y, codes, n, thresholds, args.interval_codes,
            args.num_thresholds, args.search);
      });
    });
  });
}

void relu_backward_codes_cuda(c10::ScalarType dtype, const void* grad_y_, const uint8_t* codes,
                              const void* levels_, void* grad_x_, int64_t n, int bits_) {
  dispatch_float_types(dtype, "sugar::relu_backward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* levels = static_cast<const opmath_t<scalar_t>*>(levels_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    const bool vector = aligned(grad_y, 16) && aligned(grad_x, 16) && aligned(codes, 8);
    dispatch_bits(bits_, [&](auto bits) {
      dispatch_bool(vector, [&](auto vec) {
        launch<relu_backward_codes_kernel<scalar_t, decltype(bits)::value, decltype(vec)::value>>(
            chunks_of(n, kCodeChunk), grad_y, codes, levels, grad_x, n);
      });
    });
  });
}

}  // namespace sugar
