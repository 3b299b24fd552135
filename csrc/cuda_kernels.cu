// CUDA kernels: grid-stride loops over 16-byte packs (when every pointer is aligned), 64-bit
// indexing, float32 opmath for half/bfloat16, launched on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "sugar_kernels.h"

namespace sugar {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Pack {
  scalar_t v[N];
};

template <int N, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, N> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t, N>*>(p);
}

template <int N, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t, N>& v) {
  *reinterpret_cast<Pack<scalar_t, N>*>(p) = v;
}

// Calls body(std::integral_constant<int, W>, first) for packs [first, first + W) covering n
// elements: W = N for the full packs, then W = 1 for the tail. Grid-stride, 64-bit indices.
template <int N, typename Body>
__device__ __forceinline__ void for_each_pack(int64_t n, Body&& body) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / N;
  for (int64_t p = tid; p < packs; p += stride) body(std::integral_constant<int, N>{}, p * N);
  for (int64_t i = packs * N + tid; i < n; i += stride) body(std::integral_constant<int, 1>{}, i);
}

// Bytes per element: reads 1 x, writes 1 y (2 * sizeof(scalar_t)).
template <typename scalar_t, int N>
__global__ void relu_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                    int64_t n) {
  for_each_pack<N>(n, [&](auto width, int64_t first) {
    constexpr int W = decltype(width)::value;
    Pack<scalar_t, W> v = load_pack<W>(x + first);
#pragma unroll
    for (int j = 0; j < W; ++j) v.v[j] = relu(v.v[j]);
    store_pack<W>(y + first, v);
  });
}

// Bytes per element: reads grad_y and x, writes grad_x (3 * sizeof(scalar_t)).
template <typename scalar_t, int N>
__global__ void relu_backward_kernel(const scalar_t* __restrict__ grad_y,
                                     const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ grad_x, int64_t n,
                                     GradParams params) {
  using T = opmath_t<scalar_t>;
  for_each_pack<N>(n, [&](auto width, int64_t first) {
    constexpr int W = decltype(width)::value;
    const Pack<scalar_t, W> g = load_pack<W>(grad_y + first);
    const Pack<scalar_t, W> xv = load_pack<W>(x + first);
    Pack<scalar_t, W> out;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      out.v[j] = static_cast<scalar_t>(static_cast<T>(g.v[j]) *
                                       grad_factor<T>(static_cast<T>(xv.v[j]), params));
    }
    store_pack<W>(grad_x + first, out);
  });
}

// Code modes: one thread per packed byte (8/bits elements); the tables live in shared memory.
// Bytes per element: forward reads x, writes y and bits/8 of code; backward reads grad_y and
// bits/8 of code, writes grad_x.
template <typename scalar_t>
__global__ void relu_forward_codes_kernel(const scalar_t* x, scalar_t* y,
                                          uint8_t* __restrict__ codes, int64_t n, int bits,
                                          const opmath_t<scalar_t>* __restrict__ thresholds_global,
                                          const uint8_t* __restrict__ interval_codes_global,
                                          int num_thresholds,
                                          const int32_t* __restrict__ search_global) {
  using T = opmath_t<scalar_t>;
  __shared__ T thresholds[kMaxPadded];
  __shared__ uint8_t interval_codes[kMaxIntervals];
  __shared__ int32_t bucket_start[kSearchBuckets];
  const int scan = search_global[0];
  for (int i = threadIdx.x; i < num_thresholds + scan; i += blockDim.x) {
    thresholds[i] = i < num_thresholds ? thresholds_global[i] : std::numeric_limits<T>::infinity();
  }
  for (int i = threadIdx.x; i <= num_thresholds; i += blockDim.x) {
    interval_codes[i] = interval_codes_global[i];
  }
  for (int i = threadIdx.x; i < kSearchBuckets; i += blockDim.x) {
    bucket_start[i] = search_global[1 + i];
  }
  __syncthreads();
  const CodeTable<T> table{thresholds, interval_codes, bucket_start,
                           num_thresholds ? thresholds[0] : T(0),
                           inverse_width(thresholds, num_thresholds), scan};
  const int64_t bytes = (n + 8 / bits - 1) / (8 / bits);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t byte = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; byte < bytes;
       byte += stride) {
    encode_byte(x, y, codes, byte, n, bits, table);
  }
}

template <typename scalar_t>
__global__ void relu_backward_codes_kernel(const scalar_t* __restrict__ grad_y,
                                           const uint8_t* __restrict__ codes,
                                           const opmath_t<scalar_t>* __restrict__ levels_global,
                                           scalar_t* __restrict__ grad_x, int64_t n, int bits) {
  using T = opmath_t<scalar_t>;
  __shared__ T levels[256];
  for (int i = threadIdx.x; i < (1 << bits); i += blockDim.x) levels[i] = levels_global[i];
  __syncthreads();
  const int64_t bytes = (n + 8 / bits - 1) / (8 / bits);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t byte = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; byte < bytes;
       byte += stride) {
    decode_byte(grad_y, codes, levels, grad_x, byte, n, bits);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int max_resident_blocks() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms * (2048 / kThreads);
}

int blocks_for(int64_t items) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads,
                                             max_resident_blocks())));
}

// Calls go(blocks, stream, width) with width = 16 bytes of elements when every pointer is
// 16-byte aligned, else 1; checks the launch.
template <typename scalar_t, typename Launch>
void launch(int64_t n, bool vectorizable, Launch&& go) {
  if (n == 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t items = vectorizable ? (n + kVec - 1) / kVec : n;
  const int blocks = blocks_for(items);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vectorizable) {
    go(blocks, stream, std::integral_constant<int, kVec>{});
  } else {
    go(blocks, stream, std::integral_constant<int, 1>{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void relu_forward_codes_cuda(c10::ScalarType dtype, const void* x_, void* y_, uint8_t* codes,
                             int64_t n, const CodeArgs& args) {
  if (n == 0) return;
  dispatch_float_types(dtype, "sugar::relu_forward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    relu_forward_codes_kernel<scalar_t>
        <<<blocks_for(packed_size(n, args.bits)), kThreads, 0,
           c10::cuda::getCurrentCUDAStream()>>>(
            static_cast<const scalar_t*>(x_), static_cast<scalar_t*>(y_), codes, n, args.bits,
            static_cast<const opmath_t<scalar_t>*>(args.thresholds), args.interval_codes,
            args.num_thresholds, args.search);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void relu_backward_codes_cuda(c10::ScalarType dtype, const void* grad_y_, const uint8_t* codes,
                              const void* levels_, void* grad_x_, int64_t n, int bits) {
  if (n == 0) return;
  dispatch_float_types(dtype, "sugar::relu_backward_codes", [&](auto tag) {
    using scalar_t = decltype(tag);
    relu_backward_codes_kernel<scalar_t>
        <<<blocks_for(packed_size(n, bits)), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            static_cast<const scalar_t*>(grad_y_), codes,
            static_cast<const opmath_t<scalar_t>*>(levels_), static_cast<scalar_t*>(grad_x_), n,
            bits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void relu_forward_cuda(c10::ScalarType dtype, const void* x_, void* y_, int64_t n) {
  dispatch_float_types(dtype, "sugar::relu_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* y = static_cast<scalar_t*>(y_);
    auto go = [&](int blocks, cudaStream_t stream, auto width) {
      relu_forward_kernel<scalar_t, decltype(width)::value>
          <<<blocks, kThreads, 0, stream>>>(x, y, n);
    };
    launch<scalar_t>(n, aligned16(x) && aligned16(y), go);
  });
}

void relu_backward_cuda(c10::ScalarType dtype, const void* grad_y_, const void* x_, void* grad_x_,
                        int64_t n, const GradParams& params) {
  dispatch_float_types(dtype, "sugar::relu_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* grad_y = static_cast<const scalar_t*>(grad_y_);
    const auto* x = static_cast<const scalar_t*>(x_);
    auto* grad_x = static_cast<scalar_t*>(grad_x_);
    auto go = [&](int blocks, cudaStream_t stream, auto width) {
      relu_backward_kernel<scalar_t, decltype(width)::value>
          <<<blocks, kThreads, 0, stream>>>(grad_y, x, grad_x, n, params);
    };
    launch<scalar_t>(n, aligned16(grad_y) && aligned16(x) && aligned16(grad_x), go);
  });
}

}  // namespace sugar
