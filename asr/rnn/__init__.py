"""Recurrent networks over padded batches: LSTM/GRU cells (plain and layer-normalised), dropout, fast masked loops.

Every loop takes `sequence_length` [batch] alongside inputs padded along time. A step at or past a
sequence's length leaves its state unchanged and emits exact zeros, so padding never reaches the
outputs, the final states or the gradients.

State order: `[h, c]` for the LSTM cells (as `keras.layers.LSTM`), `[h]` for the GRU cells; so
`state[0]` is always the hidden output. States are lists of tensors `[batch, num_units]`.

The package, each module importing only those listed above it:
  native.py    the layer-norm LSTM's whole loop as one C++ op (kernels/), compiled on first use
  gradient.py  the recurrent matmul h @ U, and U's gradient computed after the loop (KernelGradient)
  loop.py      the two step drivers: a tf.while_loop and its Python unrolling; forward_only
  cells.py     RecurrentCell, the base of the cells, and the LSTM and GRU cells
  dropout.py   DropoutWrapper and its masks
  api.py       dynamic_rnn, static_rnn, bidirectional_dynamic_rnn, stack_bidirectional_dynamic_rnn

The cell protocol: what the loops rely on, so what a new cell (a subclass of RecurrentCell) does.
U = num_units, G = GATES * U, D the input size.
1. Weights: the base's build makes `kernel` [D, G] and `recurrent_kernel` [U, G]; `_build_extra`
   makes the others. NUM_STATES states [B, U], states[0] being h, the step's output.
2. Two halves: `project_inputs(x [..., D]) -> [..., G]` runs once over all steps, before the loop
   (it adds `_input_bias()`, if any); `step_with(weights, projected_t, states) -> (output, new
   states)` runs inside it, given `weights = step_weights()`, read once before the loop.
3. `step_weights()` returns {name: tensor}: RECURRENT_KERNEL [U, G], read in the matmul dtype
   (`self._read(w, matmul=True)`) and used only through `recurrent_matmul(h, weights[RECURRENT_KERNEL])`
   (the loops may hand it frozen, paired or stacked: see gradient.py); every other entry is an
   elementwise weight in the state dtype, which the loops broadcast to [B, ...].
4. `step_with` also runs two directions at once: projected [2, B, G], states [2, B, U],
   elementwise weights [2, B, ...]. So it indexes axes from the end (axis=-1, -2), never 0 or 1.
5. ADDITIVE_RECURRENCE = True (the default) promises that projected_t enters the step only as
   z_t = projected_t + recurrent_matmul(h, kernel), so that dL/dprojected_t = dL/dz_t: the
   kernel's gradient is then computed after the loop (gradient.KernelGradient). A cell that
   multiplies any part of h @ U by something else (the GRUs' reset gate) sets it False.
6. Dtypes: matmul operands in `matmul_dtype` (the policy's compute dtype); projected, the states,
   outputs and all elementwise math in `state_dtype` (the variables' dtype, float32 under a mixed
   policy). `get_initial_state` gives zeros in the state dtype.
7. `fusion_key()`: two cells with equal keys run fused, their directions stacked as in 4; a cell
   adds to it whatever else changes its step's math (LSTMCell adds use_peepholes).

Why the loops are fast on CPU (a training step spends most of its time in them):
- the input half of the gate pre-activations, `W x`, is one matmul over all time steps before the
  loop (`project_inputs`); the loop body (`step_with`) only adds the recurrent matmul `h U`;
- everything runs time-major: a batch-major input is transposed once on the way in and once out;
- the two directions of a bidirectional layer run in ONE loop, on states stacked to [2, B, U];
- the loop runs max(sequence_length) steps, not the padded length;
- the backward loop is lean: the recurrent kernel's gradient is one big matmul after it
  (gradient.py), each step's input is popped off a TensorList (O(1) gradient, where a
  TensorArray read costs O(T)), layer norm has a hand-written gradient, and per-step weights are
  pre-broadcast to the batch (see the helpers for the measured reasons);
- dropout masks are sampled once per sequence; input and output dropout happen outside the loop.
Mixed precision (a cell made with dtype="mixed_bfloat16" or "mixed_float16"): only the matmul
operands are cast to the compute dtype (bf16/f16); the weights stay float32 (the optimizer updates
those), and the gate nonlinearities, layer norm, the carried states and the loop's outputs stay in
float32. On this project's CPU a bf16 matmul is ~2x faster than float32 (oneDNN, avx512_bf16) but a
bf16 elementwise op is ~5x SLOWER (Eigen converts every element to float and back), so the
elementwise half of each step is kept in float32 on purpose; it also keeps c's recurrence exact.
Dropout is reproducible: given a `dropout_seed` (a [2] integer tensor, e.g. (replica, step)), the
masks come from stateless random ops keyed by it and by each DropoutWrapper's seed, so a training
step draws the same masks whenever it runs, in a resumed run too.
A layer-norm LSTM runs faster still in the native op of native.py (its docstring says when):
its loop has no graph nodes per time step (the graph loop has ~1,040 per step of a 3-layer
bidirectional model, forward and backward, about 1 us each), its recurrent matmuls are register
tiles in float32 or AVX512-BF16, its elementwise math is Eigen's. `use_native(False)` or
ASR_NATIVE_RNN=0 keeps the graph loop (the two agree to float rounding; tests/test_native_rnn.py).
XLA was measured and is not used: compiling each step is slower on CPU (launch overhead), and
compiling a whole loop needs static shapes, so it would recompile for every padded length. Measured
again with only the layer-norm LSTM's elementwise step compiled (one XLA kernel forward, one for its
gradient, inside the loop): a step 3% slower in float32 and 8% in bf16 (bench/rnn.py, README).
"""

from asr.rnn.api import bidirectional_dynamic_rnn, dynamic_rnn, runs_native, stack_bidirectional_dynamic_rnn, static_rnn
from asr.rnn.cells import (
    LAYER_NORM_EPSILON,
    RECURRENT_KERNEL,
    BasicLSTMCell,
    GRUCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LSTMCell,
    RecurrentCell,
    _layer_norm,  # noqa: F401 (its gradient is tested against autodiff)
)
from asr.rnn.dropout import DropoutWrapper
from asr.rnn.gradient import recurrent_matmul
from asr.rnn.loop import forward_only
from asr.rnn.native import native_enabled, use_native

__all__ = [
    "LAYER_NORM_EPSILON",
    "RECURRENT_KERNEL",
    "BasicLSTMCell",
    "DropoutWrapper",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "RecurrentCell",
    "bidirectional_dynamic_rnn",
    "dynamic_rnn",
    "forward_only",
    "native_enabled",
    "recurrent_matmul",
    "runs_native",
    "stack_bidirectional_dynamic_rnn",
    "static_rnn",
    "use_native",
]
