// The layer-norm LSTM's whole time loop as two TensorFlow ops, forward and backward.
//
// asr/rnn/native.py compiles this file on first use for the machine it runs on (-march=native)
// and explains when the loops use it; asr/rnn/cells.py's LayerNormLSTMCell is the math, and the
// tests hold the two to each other. Shapes: n steps, D directions (1, or 2 run side by side, one
// thread each), B batch, U units, G = 4U gate pre-activations in the order i, f, g, o. Tensors
// are direction-major, [D, n, B, ...], so that each direction's thread owns contiguous memory.
//
// One step, for each direction and each sequence b with t < lengths[b]:
//   z = projected[t] + h U                   (the only matmul: float32 or bfloat16 operands)
//   a_k = act_k(LN(z_k) gate_gain_k + gate_shift_k)      k = i, f, g, o; tanh for g, else sigmoid
//   c = LN(f c + i g) state_gain + state_shift;   h = o tanh(c)
// where LN normalises over the U units of its block. At t >= lengths[b] the output is zero and
// the state is carried unchanged, as asr.rnn's loops do. The forward op also returns what the
// backward op needs (activations, normalised values, inverse deviations, c and tanh c per step),
// so that the backward op recomputes nothing; the recurrent kernel's gradient, one big matmul,
// is left to TensorFlow (native.py).

#include <algorithm>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace asr {

using tensorflow::bfloat16;
using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

constexpr float kEpsilon = 1e-5f;  // asr.rnn.cells.LAYER_NORM_EPSILON
constexpr int kGates = 4;

using Array = Eigen::Map<Eigen::ArrayXf>;
using ConstArray = Eigen::Map<const Eigen::ArrayXf>;

// ---------------------------------------------------------------------------------------------
// C[M, N] += A[M, K] B[K, N], A row-major floats, B packed once per op by PackedMatrix.
// float32: B as it is, [K][N]. bfloat16: A rounded to bfloat16 and B in pairs along K,
// [K/2][N][2], the layout of AVX512-BF16's dot product (VDPBF16PS), which multiplies two pairs
// of bfloat16 and adds both products to a float32 lane.

template <typename T>
struct PackedMatrix {
  int rows = 0, cols = 0;  // K, N
  std::vector<T> data;
};

// B[k][n] = source[k * row_stride + n * col_stride]
template <typename T>
PackedMatrix<T> Pack(const T* source, int rows, int cols, int row_stride, int col_stride) {
  PackedMatrix<T> packed;
  packed.rows = rows;
  packed.cols = cols;
  packed.data.resize(static_cast<size_t>(rows) * cols);
  for (int k = 0; k < rows; ++k) {
    for (int n = 0; n < cols; ++n) {
      size_t to = std::is_same<T, bfloat16>::value ? (static_cast<size_t>(k / 2) * cols + n) * 2 + k % 2
                                                  : static_cast<size_t>(k) * cols + n;
      packed.data[to] = source[static_cast<size_t>(k) * row_stride + static_cast<size_t>(n) * col_stride];
    }
  }
  return packed;
}

#if defined(__AVX512F__)
constexpr int kLanes = 16;

template <int MR, int NR>
inline void TileF32(int k_size, const float* a, int lda, const float* b, int n_size, float* c, int ldc) {
  __m512 acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_loadu_ps(c + r * ldc + j * kLanes);
  for (int k = 0; k < k_size; ++k) {
    __m512 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_loadu_ps(b + static_cast<size_t>(k) * n_size + j * kLanes);
    for (int r = 0; r < MR; ++r) {
      __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) _mm512_storeu_ps(c + r * ldc + j * kLanes, acc[r][j]);
}
#endif

#if defined(__AVX512BF16__)
inline int LoadPair(const bfloat16* pair) {  // two bfloat16 as one 32-bit lane (memcpy: no aliasing)
  int32_t bits;
  std::memcpy(&bits, pair, sizeof(bits));
  return bits;
}

// a: rows of bfloat16 (lda in pairs); b: packed pairs, n_size columns.
template <int MR, int NR>
inline void TileBf16(int pairs, const bfloat16* a, int lda, const bfloat16* b, int n_size, float* c, int ldc) {
  __m512 acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_loadu_ps(c + r * ldc + j * kLanes);
  for (int k = 0; k < pairs; ++k) {
    __m512bh bv[NR];
    const bfloat16* row = b + static_cast<size_t>(k) * n_size * 2;
    for (int j = 0; j < NR; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(row + j * kLanes * 2);
    for (int r = 0; r < MR; ++r) {
      __m512bh av = (__m512bh)_mm512_set1_epi32(LoadPair(a + 2 * (r * lda + k)));
      for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) _mm512_storeu_ps(c + r * ldc + j * kLanes, acc[r][j]);
}
#endif

constexpr int kRowBlock = 4;  // rows of a register tile
constexpr int kColBlock = 4;  // vectors of 16 columns of a register tile

// Calls tile<mr, nr>(row, column) over the M x N output in register tiles; N % 16 == 0.
#define ASR_TILE_CASES(TILE, ...)                                                          \
  switch (mr * 8 + nr) {                                                                   \
    case 1 * 8 + 1: TILE<1, 1>(__VA_ARGS__); break;                                        \
    case 1 * 8 + 2: TILE<1, 2>(__VA_ARGS__); break;                                        \
    case 1 * 8 + 3: TILE<1, 3>(__VA_ARGS__); break;                                        \
    case 1 * 8 + 4: TILE<1, 4>(__VA_ARGS__); break;                                        \
    case 2 * 8 + 1: TILE<2, 1>(__VA_ARGS__); break;                                        \
    case 2 * 8 + 2: TILE<2, 2>(__VA_ARGS__); break;                                        \
    case 2 * 8 + 3: TILE<2, 3>(__VA_ARGS__); break;                                        \
    case 2 * 8 + 4: TILE<2, 4>(__VA_ARGS__); break;                                        \
    case 3 * 8 + 1: TILE<3, 1>(__VA_ARGS__); break;                                        \
    case 3 * 8 + 2: TILE<3, 2>(__VA_ARGS__); break;                                        \
    case 3 * 8 + 3: TILE<3, 3>(__VA_ARGS__); break;                                        \
    case 3 * 8 + 4: TILE<3, 4>(__VA_ARGS__); break;                                        \
    case 4 * 8 + 1: TILE<4, 1>(__VA_ARGS__); break;                                        \
    case 4 * 8 + 2: TILE<4, 2>(__VA_ARGS__); break;                                        \
    case 4 * 8 + 3: TILE<4, 3>(__VA_ARGS__); break;                                        \
    case 4 * 8 + 4: TILE<4, 4>(__VA_ARGS__); break;                                        \
  }

// The ops run only where the library was built with AVX-512F (and AVX512-BF16 for bfloat16
// kernels): native.py checks the CPU first, and the ops refuse otherwise (kFloatTiles, kBf16Tiles).
#if defined(__AVX512F__)
constexpr bool kFloatTiles = true;
#else
constexpr bool kFloatTiles = false;
#endif
#if defined(__AVX512BF16__)
constexpr bool kBf16Tiles = true;
#else
constexpr bool kBf16Tiles = false;
#endif

template <typename T>
constexpr bool HasTiles() {
  return std::is_same<T, bfloat16>::value ? kBf16Tiles : kFloatTiles;
}

// C[M, N] += A[M, K] B, float32.
void MatMulAdd(int m_size, const float* a, const PackedMatrix<float>& b, float* c, std::vector<bfloat16>*) {
#if defined(__AVX512F__)
  const int k_size = b.rows, n_size = b.cols;
  for (int n0 = 0; n0 < n_size; n0 += kColBlock * kLanes) {
    const int nr = std::min(kColBlock, (n_size - n0) / kLanes);
    for (int m0 = 0; m0 < m_size; m0 += kRowBlock) {
      const int mr = std::min(kRowBlock, m_size - m0);
      ASR_TILE_CASES(TileF32, k_size, a + m0 * k_size, k_size, b.data.data() + n0, n_size, c + m0 * n_size + n0,
                     n_size)
    }
  }
#endif
}

// C[M, N] += bfloat16(A[M, K]) B, products summed in float32; scratch holds A in bfloat16.
void MatMulAdd(int m_size, const float* a, const PackedMatrix<bfloat16>& b, float* c, std::vector<bfloat16>* scratch) {
#if defined(__AVX512BF16__)
  const int k_size = b.rows, n_size = b.cols;
  scratch->resize(static_cast<size_t>(m_size) * k_size);
  bfloat16* a16 = scratch->data();
  for (int i = 0; i < m_size * k_size; ++i) a16[i] = bfloat16(a[i]);
  const int pairs = k_size / 2;
  for (int n0 = 0; n0 < n_size; n0 += kColBlock * kLanes) {
    const int nr = std::min(kColBlock, (n_size - n0) / kLanes);
    for (int m0 = 0; m0 < m_size; m0 += kRowBlock) {
      const int mr = std::min(kRowBlock, m_size - m0);
      ASR_TILE_CASES(TileBf16, pairs, a16 + m0 * k_size, pairs, b.data.data() + n0 * 2, n_size,
                     c + m0 * n_size + n0, n_size)
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Reproducibility: the result must not depend on where a buffer lies. Eigen's vectorised loops
// peel unaligned leading elements and compute them by its scalar path (other rounding, and for
// tanh and the logistic another approximation), so every buffer here is 64-byte aligned (Buffer;
// TensorFlow aligns tensors to 64 bytes) and every block of U values starts on a multiple of 16
// floats (U % 16 == 0). Sums over U run in a fixed order (Sum, SumProduct), not Eigen's reductions.

constexpr int kBlock = 16;  // floats in 64 bytes
using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;

inline float Sum(const float* x, int n) {  // n % 16 == 0; 16 running sums, then pairwise
  float acc[kBlock] = {};
  for (int i = 0; i < n; i += kBlock)
    for (int j = 0; j < kBlock; ++j) acc[j] += x[i + j];
  for (int width = kBlock / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

inline float SumProduct(const float* x, const float* y, int n) {
  float acc[kBlock] = {};
  for (int i = 0; i < n; i += kBlock)
    for (int j = 0; j < kBlock; ++j) acc[j] += x[i + j] * y[i + j];
  for (int width = kBlock / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

// Layer norm over one block of U values, as asr.rnn.cells._layer_norm: normed = (x - mean) *
// rsqrt(mean((x - mean)^2) + eps); returns the inverse deviation.
inline float Normalize(const float* x, int units, float* normed) {
  const float mean = Sum(x, units) / units;
  Array out(normed, units);
  out = ConstArray(x, units) - mean;
  const float inv_std = 1.0f / std::sqrt(SumProduct(normed, normed, units) / units + kEpsilon);
  out *= inv_std;
  return inv_std;
}

// The gradient of Normalize: d_x from d_normed (the gradient after the gain), normed, inv_std.
inline void NormalizeGrad(const float* d_normed, const float* normed, float inv_std, int units, float* d_x) {
  const float d_mean = Sum(d_normed, units) / units;
  const float d_var = SumProduct(d_normed, normed, units) / units;
  Array(d_x, units) = (ConstArray(d_normed, units) - d_mean - ConstArray(normed, units) * d_var) * inv_std;
}

struct Dims {
  int steps, directions, batch, units;
  size_t Row(int t, int d, int b) const { return (static_cast<size_t>(d) * steps + t) * batch + b; }
};

// The per-step values that the forward op saves for the backward op, [D, n, B, ...] each.
struct Saved {
  float* activations;    // [.., 4U] i, f, g, o
  float* gate_normed;    // [.., 4U] LN(z_k) before gain and shift
  float* gate_inv_std;   // [.., 4]
  float* state_normed;   // [.., U]
  float* state_inv_std;  // [..]
  float* c;              // [.., U] the state after the step (carried unchanged past a length)
  float* tanh_c;         // [.., U]
};

struct Weights {  // one direction's elementwise weights
  const float* gate_gain;    // [4, U]
  const float* gate_shift;   // [4, U]
  const float* state_gain;   // [U]
  const float* state_shift;  // [U]
};

// One sequence's step: z [4U] (projected + h U) and c_prev [U] -> h [U], c (in saved) and the rest.
inline void StepForward(const Dims& dims, const Weights& w, const float* z, const float* c_prev, size_t row,
                        const Saved& saved, float* h, float* c_raw) {
  const int units = dims.units;
  float* act = saved.activations + row * kGates * units;
  float* normed = saved.gate_normed + row * kGates * units;
  for (int k = 0; k < kGates; ++k) {
    saved.gate_inv_std[row * kGates + k] = Normalize(z + k * units, units, normed + k * units);
    Array pre(act + k * units, units);
    pre = ConstArray(normed + k * units, units) * ConstArray(w.gate_gain + k * units, units) +
          ConstArray(w.gate_shift + k * units, units);
    if (k == 2) {
      pre = pre.tanh();
    } else {
      pre = pre.logistic();
    }
  }
  ConstArray i(act, units), f(act + units, units), g(act + 2 * units, units), o(act + 3 * units, units);
  Array(c_raw, units) = f * ConstArray(c_prev, units) + i * g;
  float* c_normed = saved.state_normed + row * units;
  saved.state_inv_std[row] = Normalize(c_raw, units, c_normed);
  Array c(saved.c + row * units, units);
  c = ConstArray(c_normed, units) * ConstArray(w.state_gain, units) + ConstArray(w.state_shift, units);
  Array tanh_c(saved.tanh_c + row * units, units);
  tanh_c = c.tanh();
  Array(h, units) = o * tanh_c;
}

struct Grads {  // one direction's weight gradients, summed over steps and batch
  float* gate_gain;    // [4, U]
  float* gate_shift;   // [4, U]
  float* state_gain;   // [U]
  float* state_shift;  // [U]
};

// One sequence's step backward: d_h (output gradient plus carried), d_c (carried, replaced by
// the gradient for c_prev) -> d_z [4U], the gradient of projected and of h U.
inline void StepBackward(const Dims& dims, const Weights& w, const float* d_h, float* d_c, const float* c_prev,
                         size_t row, const Saved& saved, const Grads& grads, float* d_z, float* scratch) {
  const int units = dims.units;
  const float* act = saved.activations + row * kGates * units;
  const float* normed = saved.gate_normed + row * kGates * units;
  ConstArray i(act, units), f(act + units, units), g(act + 2 * units, units), o(act + 3 * units, units);
  ConstArray tanh_c(saved.tanh_c + row * units, units), dh(d_h, units), c_normed(saved.state_normed + row * units, units);
  Array dc(d_c, units);
  float* d_pre = scratch;                  // [4U]: gradients of the gates' pre-activations
  float* d_c_raw = scratch + kGates * units;  // [U]
  float* d_normed = d_c_raw + units;       // [U]
  Array(d_pre + 3 * units, units) = dh * tanh_c * o * (1.0f - o);
  dc += dh * o * (1.0f - tanh_c.square());
  Array(grads.state_gain, units) += dc * c_normed;
  Array(grads.state_shift, units) += dc;
  Array(d_normed, units) = dc * ConstArray(w.state_gain, units);
  NormalizeGrad(d_normed, saved.state_normed + row * units, saved.state_inv_std[row], units, d_c_raw);
  ConstArray dcr(d_c_raw, units);
  Array(d_pre, units) = dcr * g * i * (1.0f - i);
  Array(d_pre + units, units) = dcr * ConstArray(c_prev, units) * f * (1.0f - f);
  Array(d_pre + 2 * units, units) = dcr * i * (1.0f - g.square());
  dc = dcr * f;
  for (int k = 0; k < kGates; ++k) {
    ConstArray dp(d_pre + k * units, units), nm(normed + k * units, units);
    Array(grads.gate_gain + k * units, units) += dp * nm;
    Array(grads.gate_shift + k * units, units) += dp;
    Array(d_normed, units) = dp * ConstArray(w.gate_gain + k * units, units);
    NormalizeGrad(d_normed, normed + k * units, saved.gate_inv_std[row * kGates + k], units, d_z + k * units);
  }
}

Weights DirectionWeights(OpKernelContext* ctx, int first_input, int d, int units) {
  auto at = [&](int input, int size) { return ctx->input(first_input + input).flat<float>().data() + d * size; };
  return {at(0, kGates * units), at(1, kGates * units), at(2, units), at(3, units)};
}

Saved SavedTensors(const std::vector<Tensor*>& tensors) {
  auto p = [&](int k) { return tensors[k]->flat<float>().data(); };
  return {p(0), p(1), p(2), p(3), p(4), p(5), p(6)};
}

// Whether input `index` has shape `expected`; if not, fails the op with an error naming it.
bool HasShape(OpKernelContext* ctx, int index, const char* name, const TensorShape& expected) {
  const TensorShape& actual = ctx->input(index).shape();
  if (actual == expected) return true;
  ctx->CtxFailure(__FILE__, __LINE__,
                  tensorflow::errors::InvalidArgument(name, " must be ", expected.DebugString(), ", got ",
                                                      actual.DebugString()));
  return false;
}

// The checks both ops share: the weights, the state-shaped inputs, lengths, U and the CPU.
template <typename T>
bool CheckCommon(OpKernelContext* ctx, const Dims& dims, std::initializer_list<std::pair<int, const char*>> states,
                 int kernel, int first_weight, int lengths) {
  const int64_t d = dims.directions, b = dims.batch, u = dims.units;
  if (!HasShape(ctx, kernel, "kernel", TensorShape{d, u, kGates * u})) return false;
  if (!HasShape(ctx, first_weight, "gate_gain", TensorShape{d, kGates, u}) ||
      !HasShape(ctx, first_weight + 1, "gate_shift", TensorShape{d, kGates, u}) ||
      !HasShape(ctx, first_weight + 2, "state_gain", TensorShape{d, u}) ||
      !HasShape(ctx, first_weight + 3, "state_shift", TensorShape{d, u}) ||
      !HasShape(ctx, lengths, "lengths", TensorShape{b}))
    return false;
  for (const auto& state : states)
    if (!HasShape(ctx, state.first, state.second, TensorShape{d, b, u})) return false;
  if (u % kBlock != 0) {
    ctx->CtxFailure(__FILE__, __LINE__,
                    tensorflow::errors::InvalidArgument("units must be a multiple of 16, got ", u));
    return false;
  }
  if (!HasTiles<T>()) {
    ctx->CtxFailure(__FILE__, __LINE__,
                    tensorflow::errors::Unimplemented("this build has no AVX-512 tiles for the kernel's dtype "
                                                      "(asr.rnn.native uses the op only where the CPU has them)"));
    return false;
  }
  return true;
}

// Runs fn(d) for each direction, one thread each when the pool has them.
template <typename Fn>
void ForEachDirection(OpKernelContext* ctx, int directions, int64_t cost, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, directions, cost,
                    [&](int64_t begin, int64_t end) {
                      for (int64_t d = begin; d < end; ++d) fn(static_cast<int>(d));
                    });
}

// ---------------------------------------------------------------------------------------------

template <typename T>
class LayerNormLstmOp : public OpKernel {
 public:
  explicit LayerNormLstmOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& projected = ctx->input(0);  // [D, n, B, 4U]
    const Tensor& kernel = ctx->input(1);     // [D, U, 4U]
    const Tensor& lengths = ctx->input(8);    // [B]
    OP_REQUIRES(ctx, projected.dims() == 4 && projected.dim_size(3) % kGates == 0,
                tensorflow::errors::InvalidArgument("projected must be [D, n, B, 4U], got ",
                                                    projected.shape().DebugString()));
    const Dims dims{static_cast<int>(projected.dim_size(1)), static_cast<int>(projected.dim_size(0)),
                    static_cast<int>(projected.dim_size(2)), static_cast<int>(projected.dim_size(3) / kGates)};
    if (!CheckCommon<T>(ctx, dims, {{6, "h0"}, {7, "c0"}}, 1, 2, 8)) return;
    const TensorShape state_shape{dims.directions, dims.batch, dims.units};
    Tensor *h, *final_h, *final_c;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape{dims.directions, dims.steps, dims.batch, dims.units}, &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, state_shape, &final_h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, state_shape, &final_c));
    const std::vector<int64_t> saved_sizes{kGates * dims.units, kGates * dims.units, kGates, dims.units, 1,
                                           dims.units, dims.units};
    std::vector<Tensor*> saved_tensors(saved_sizes.size());
    for (size_t k = 0; k < saved_sizes.size(); ++k) {
      TensorShape shape{dims.directions, dims.steps, dims.batch};
      if (saved_sizes[k] > 1 || k == 2) shape.AddDim(saved_sizes[k]);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(3 + k, shape, &saved_tensors[k]));
      saved_tensors[k]->flat<float>().setZero();
    }
    if (dims.batch == 0) return;  // every output is empty
    const Saved saved = SavedTensors(saved_tensors);
    const int32_t* len = lengths.flat<int32_t>().data();
    const int units = dims.units, gates = kGates * units, batch = dims.batch;
    const int64_t cost = static_cast<int64_t>(dims.steps) * batch * units * gates * 4;

    ForEachDirection(ctx, dims.directions, cost, [&](int d) {
      const Weights w = DirectionWeights(ctx, 2, d, units);
      const T* k_data = kernel.flat<T>().data() + static_cast<size_t>(d) * units * gates;
      const PackedMatrix<T> packed = Pack(k_data, units, gates, gates, 1);
      Buffer h_carry(ctx->input(6).flat<float>().data() + static_cast<size_t>(d) * batch * units,
                                 ctx->input(6).flat<float>().data() + static_cast<size_t>(d + 1) * batch * units);
      Buffer c_carry(ctx->input(7).flat<float>().data() + static_cast<size_t>(d) * batch * units,
                                 ctx->input(7).flat<float>().data() + static_cast<size_t>(d + 1) * batch * units);
      Buffer z(static_cast<size_t>(batch) * gates), c_raw(units);
      std::vector<bfloat16> scratch;
      float* h_out = h->flat<float>().data();
      const float* p = projected.flat<float>().data();
      for (int t = 0; t < dims.steps; ++t) {
        std::memcpy(z.data(), p + dims.Row(t, d, 0) * gates, sizeof(float) * batch * gates);
        MatMulAdd(batch, h_carry.data(), packed, z.data(), &scratch);
        for (int b = 0; b < batch; ++b) {
          const size_t row = dims.Row(t, d, b);
          float* h_t = h_out + row * units;
          if (t >= len[b]) {  // past the length: zero output, state carried
            std::memset(h_t, 0, sizeof(float) * units);
            std::memcpy(saved.c + row * units, c_carry.data() + b * units, sizeof(float) * units);
            continue;
          }
          StepForward(dims, w, z.data() + b * gates, c_carry.data() + b * units, row, saved, h_t, c_raw.data());
          std::memcpy(h_carry.data() + b * units, h_t, sizeof(float) * units);
          std::memcpy(c_carry.data() + b * units, saved.c + row * units, sizeof(float) * units);
        }
      }
      std::memcpy(final_h->flat<float>().data() + static_cast<size_t>(d) * batch * units, h_carry.data(),
                  sizeof(float) * batch * units);
      std::memcpy(final_c->flat<float>().data() + static_cast<size_t>(d) * batch * units, c_carry.data(),
                  sizeof(float) * batch * units);
    });
  }
};

template <typename T>
class LayerNormLstmGradOp : public OpKernel {
 public:
  explicit LayerNormLstmGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  // Inputs: 0 d_h [D, n, B, U], 1 d_final_h, 2 d_final_c [D, B, U], 3 kernel [D, U, 4U],
  // 4-7 gate_gain, gate_shift, state_gain, state_shift, 8 c0 [D, B, U], 9 lengths [B],
  // 10-16 the forward op's saved outputs.
  void Compute(OpKernelContext* ctx) override {
    const Tensor& d_h = ctx->input(0);
    const Tensor& kernel = ctx->input(3);
    OP_REQUIRES(ctx, d_h.dims() == 4,
                tensorflow::errors::InvalidArgument("d_h must be [D, n, B, U], got ", d_h.shape().DebugString()));
    const Dims dims{static_cast<int>(d_h.dim_size(1)), static_cast<int>(d_h.dim_size(0)),
                    static_cast<int>(d_h.dim_size(2)), static_cast<int>(d_h.dim_size(3))};
    if (!CheckCommon<T>(ctx, dims, {{1, "d_final_h"}, {2, "d_final_c"}, {8, "c0"}}, 3, 4, 9)) return;
    const int64_t d = dims.directions, n = dims.steps, b = dims.batch, u = dims.units;
    const char* saved_names[] = {"activations", "gate_normed", "gate_inv_std", "state_normed",
                                 "state_inv_std", "c", "tanh_c"};
    const TensorShape saved_shapes[] = {{d, n, b, kGates * u}, {d, n, b, kGates * u}, {d, n, b, kGates},
                                        {d, n, b, u}, {d, n, b}, {d, n, b, u}, {d, n, b, u}};
    for (int k = 0; k < 7; ++k)
      if (!HasShape(ctx, 10 + k, saved_names[k], saved_shapes[k])) return;
    const int units = dims.units, gates = kGates * units, batch = dims.batch;
    Tensor *d_projected, *d_h0, *d_c0;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape{dims.directions, dims.steps, batch, gates}, &d_projected));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape{dims.directions, batch, units}, &d_h0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape{dims.directions, batch, units}, &d_c0));
    Tensor* weight_grads[4];
    const TensorShape gate_shape{dims.directions, kGates, units}, state_shape{dims.directions, units};
    for (int k = 0; k < 4; ++k) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(3 + k, k < 2 ? gate_shape : state_shape, &weight_grads[k]));
      weight_grads[k]->flat<float>().setZero();
    }
    std::vector<Tensor*> saved_tensors;
    for (int k = 10; k < 17; ++k) saved_tensors.push_back(const_cast<Tensor*>(&ctx->input(k)));
    if (batch == 0) return;  // every output is empty
    const Saved saved = SavedTensors(saved_tensors);
    const int32_t* len = ctx->input(9).flat<int32_t>().data();
    const int64_t cost = static_cast<int64_t>(dims.steps) * batch * units * gates * 4;

    ForEachDirection(ctx, dims.directions, cost, [&](int d) {
      const Weights w = DirectionWeights(ctx, 4, d, units);
      const Grads grads{weight_grads[0]->flat<float>().data() + d * gates,
                        weight_grads[1]->flat<float>().data() + d * gates,
                        weight_grads[2]->flat<float>().data() + d * units,
                        weight_grads[3]->flat<float>().data() + d * units};
      const T* k_data = kernel.flat<T>().data() + static_cast<size_t>(d) * units * gates;
      const PackedMatrix<T> transposed = Pack(k_data, gates, units, 1, gates);  // kernel^T [4U, U]
      const size_t state_at = static_cast<size_t>(d) * batch * units;
      Buffer dh_carry(ctx->input(1).flat<float>().data() + state_at,
                                  ctx->input(1).flat<float>().data() + state_at + batch * units);
      Buffer dc_carry(ctx->input(2).flat<float>().data() + state_at,
                                  ctx->input(2).flat<float>().data() + state_at + batch * units);
      Buffer dh_total(units), dh_new(static_cast<size_t>(batch) * units), work(gates + 2 * units);
      std::vector<bfloat16> scratch;
      const float* c0 = ctx->input(8).flat<float>().data() + state_at;
      const float* dh_out = d_h.flat<float>().data();
      for (int t = dims.steps - 1; t >= 0; --t) {
        float* d_z = d_projected->flat<float>().data() + dims.Row(t, d, 0) * gates;
        std::memset(d_z, 0, sizeof(float) * batch * gates);
        for (int b = 0; b < batch; ++b) {
          if (t >= len[b]) continue;  // past the length: the carried gradients pass unchanged
          const size_t row = dims.Row(t, d, b);
          Array(dh_total.data(), units) = ConstArray(dh_out + row * units, units) +
                                          ConstArray(dh_carry.data() + b * units, units);
          const float* c_prev = t == 0 ? c0 + b * units : saved.c + dims.Row(t - 1, d, b) * units;
          StepBackward(dims, w, dh_total.data(), dc_carry.data() + b * units, c_prev, row, saved, grads,
                       d_z + b * gates, work.data());
        }
        std::fill(dh_new.begin(), dh_new.end(), 0.0f);
        MatMulAdd(batch, d_z, transposed, dh_new.data(), &scratch);
        for (int b = 0; b < batch; ++b) {
          if (t < len[b]) std::memcpy(dh_carry.data() + b * units, dh_new.data() + b * units, sizeof(float) * units);
        }
      }
      std::memcpy(d_h0->flat<float>().data() + state_at, dh_carry.data(), sizeof(float) * batch * units);
      std::memcpy(d_c0->flat<float>().data() + state_at, dc_carry.data(), sizeof(float) * batch * units);
    });
  }
};

// ---------------------------------------------------------------------------------------------

Status ForwardShapes(InferenceContext* c) {
  ShapeHandle projected, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &projected));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &kernel));
  auto directions = c->Dim(projected, 0), steps = c->Dim(projected, 1), batch = c->Dim(projected, 2);
  auto gates = c->Dim(projected, 3), units = c->Dim(kernel, 1);
  auto per_step = [&](std::vector<tensorflow::shape_inference::DimensionHandle> last) {
    std::vector<tensorflow::shape_inference::DimensionHandle> d{directions, steps, batch};
    d.insert(d.end(), last.begin(), last.end());
    return c->MakeShape(d);
  };
  c->set_output(0, per_step({units}));
  c->set_output(1, c->MakeShape({directions, batch, units}));
  c->set_output(2, c->MakeShape({directions, batch, units}));
  c->set_output(3, per_step({gates}));
  c->set_output(4, per_step({gates}));
  c->set_output(5, per_step({c->MakeDim(kGates)}));
  c->set_output(6, per_step({units}));
  c->set_output(7, per_step({}));
  c->set_output(8, per_step({units}));
  c->set_output(9, per_step({units}));
  return Status();
}

Status GradShapes(InferenceContext* c) {
  ShapeHandle d_h, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &d_h));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 3, &kernel));
  auto directions = c->Dim(d_h, 0), batch = c->Dim(d_h, 2), units = c->Dim(d_h, 3);
  c->set_output(0, c->MakeShape({directions, c->Dim(d_h, 1), batch, c->Dim(kernel, 2)}));
  c->set_output(1, c->MakeShape({directions, batch, units}));
  c->set_output(2, c->MakeShape({directions, batch, units}));
  c->set_output(3, c->MakeShape({directions, c->MakeDim(kGates), units}));
  c->set_output(4, c->MakeShape({directions, c->MakeDim(kGates), units}));
  c->set_output(5, c->MakeShape({directions, units}));
  c->set_output(6, c->MakeShape({directions, units}));
  return Status();
}

}  // namespace asr

REGISTER_OP("AsrLayerNormLstm")
    .Attr("T: {float, bfloat16}")
    .Input("projected: float")
    .Input("kernel: T")
    .Input("gate_gain: float")
    .Input("gate_shift: float")
    .Input("state_gain: float")
    .Input("state_shift: float")
    .Input("h0: float")
    .Input("c0: float")
    .Input("lengths: int32")
    .Output("h: float")
    .Output("final_h: float")
    .Output("final_c: float")
    .Output("activations: float")
    .Output("gate_normed: float")
    .Output("gate_inv_std: float")
    .Output("state_normed: float")
    .Output("state_inv_std: float")
    .Output("c: float")
    .Output("tanh_c: float")
    .SetShapeFn(asr::ForwardShapes);

REGISTER_OP("AsrLayerNormLstmGrad")
    .Attr("T: {float, bfloat16}")
    .Input("d_h: float")
    .Input("d_final_h: float")
    .Input("d_final_c: float")
    .Input("kernel: T")
    .Input("gate_gain: float")
    .Input("gate_shift: float")
    .Input("state_gain: float")
    .Input("state_shift: float")
    .Input("c0: float")
    .Input("lengths: int32")
    .Input("activations: float")
    .Input("gate_normed: float")
    .Input("gate_inv_std: float")
    .Input("state_normed: float")
    .Input("state_inv_std: float")
    .Input("c: float")
    .Input("tanh_c: float")
    .Output("d_projected: float")
    .Output("d_h0: float")
    .Output("d_c0: float")
    .Output("d_gate_gain: float")
    .Output("d_gate_shift: float")
    .Output("d_state_gain: float")
    .Output("d_state_shift: float")
    .SetShapeFn(asr::GradShapes);

#define ASR_REGISTER(T)                                                                                         \
  REGISTER_KERNEL_BUILDER(Name("AsrLayerNormLstm").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),     \
                          asr::LayerNormLstmOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("AsrLayerNormLstmGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
                          asr::LayerNormLstmGradOp<T>);
ASR_REGISTER(float)
ASR_REGISTER(tensorflow::bfloat16)
