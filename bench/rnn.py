"""Times one CTC training step of asr.rnn's bidirectional LayerNormLSTM (3 layers, --layers) against
stock Keras, and in mixed bfloat16 against float32, in its native loop and in its graph loop.

All models: 3 bidirectional layers of 256 units per direction, a dense projection to 29 letters
+ blank, CTC loss (tf.nn.ctc_loss, blank index 0, true logit and label lengths), gradients, Adam,
each as a tf.function train step over the same padded batch. Stock is
keras.layers.Bidirectional(keras.layers.LSTM(256, return_sequences=True)) x3 (no layer norm)
given the mask from the lengths. "ours-bf16" is ours with the cells under the mixed_bfloat16
policy (train.precision: matmuls in bf16, weights and everything elementwise in float32, see
asr.rnn). "ours" runs the layer-norm LSTM's native loop (asr.rnn.native, the default where it
builds), "ours-graph" the same model in asr.rnn's tf.while_loop (use_native(False) when traced).
Steps alternate between the models; warm-up is excluded. The default shapes are a
librispeech_small batch after frame stacking: 16 utterances x 400 model steps (12 s at 30 ms a
step); --features 117 --layers 4 gives the recipe's (3 stacked frames of 39; 4 layers since
2026-11-30; the defaults 39 and 3 are the historical figures in the README).

It also prints how many graph nodes the graph loops run per time step (forward and backward,
all layers): each runs at every step, and the executor's cost per node is the same in both
dtypes; the native loop runs none.

With --matmuls it then times the graph loop's matmul shapes alone in both dtypes (the per-step
recurrent ones, the all-steps input projections and gradients) and estimates how much of each
step they take: what bf16 can speed up, and what it cannot. --layouts adds each per-step
product's other layouts (e.g. U^T h^T, the states kept [U, B]) and the ratio that the fastest
layouts would allow.

    python bench/rnn.py [--repeats 5] [--batch 16] [--frames 400] [--features 39] [--layers 3]
                        [--matmuls [--layouts]] [--intra-op-threads N] [--inter-op-threads N]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from asr import rnn  # noqa: E402

NUM_FEATURES = 39  # MFCC + deltas per frame (--features)
NUM_UNITS = 256  # per direction
NUM_LAYERS = 3  # --layers
NUM_CLASSES = 30  # 29 output symbols + blank (index 0)
LABELS_PER_FRAME = 0.15  # a label length of about 15 symbols per 100 frames (10 ms each)


class OursModel(keras.Model):
    """asr.rnn.stack_bidirectional_dynamic_rnn of LayerNormLSTMCells + dense projection."""

    def __init__(self, precision="float32", layers=NUM_LAYERS):
        super().__init__()
        self.cells_fw = [rnn.LayerNormLSTMCell(NUM_UNITS, dtype=precision) for _ in range(layers)]
        self.cells_bw = [rnn.LayerNormLSTMCell(NUM_UNITS, dtype=precision) for _ in range(layers)]
        self.projection = keras.layers.Dense(NUM_CLASSES)  # float32, as asr.model's

    def call(self, features, lengths, training=False):
        outputs, _, _ = rnn.stack_bidirectional_dynamic_rnn(
            self.cells_fw, self.cells_bw, features, sequence_length=lengths, training=training
        )
        return self.projection(outputs)


class StockModel(keras.Model):
    """keras.layers.Bidirectional(keras.layers.LSTM) x3 with the mask from the lengths + dense."""

    def __init__(self, layers=NUM_LAYERS):
        super().__init__()
        self.layers_ = [
            keras.layers.Bidirectional(keras.layers.LSTM(NUM_UNITS, return_sequences=True)) for _ in range(layers)
        ]
        self.projection = keras.layers.Dense(NUM_CLASSES)

    def call(self, features, lengths, training=False):
        mask = tf.sequence_mask(lengths, tf.shape(features)[1])
        x = features
        for layer in self.layers_:
            x = layer(x, mask=mask, training=training)
        return self.projection(x)


def make_batch(batch_size, frames, num_features, seed=0):
    """A padded batch: features [B, T, F] (zero past each length), lengths [B] in [T/2, T], labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(frames // 2, frames + 1, size=batch_size).astype(np.int32)
    lengths[0] = frames  # the batch is padded to its longest sequence
    features = rng.standard_normal((batch_size, frames, num_features)).astype(np.float32)
    features *= (np.arange(frames)[None, :] < lengths[:, None])[..., None]
    label_lengths = np.maximum(1, (lengths * LABELS_PER_FRAME).astype(np.int32))
    labels = rng.integers(1, NUM_CLASSES, size=(batch_size, label_lengths.max())).astype(np.int32)
    labels *= np.arange(labels.shape[1])[None, :] < label_lengths[:, None]
    return tuple(tf.constant(a) for a in (features, lengths, labels, label_lengths))


def sparse_labels(labels, label_lengths):
    """Padded labels [B, L] and their true lengths -> a SparseTensor. With sparse labels,
    tf.nn.ctc_loss runs the C++ CTC kernel: on CPU ~0.05 s per step here, against ~0.9 s for its
    dense-label path, which would swamp the difference between the two models."""
    indices = tf.where(tf.sequence_mask(label_lengths, tf.shape(labels)[1]))
    return tf.SparseTensor(indices, tf.gather_nd(labels, indices), tf.shape(labels, out_type=tf.int64))


def make_train_step(model, num_features):
    """A tf.function step: forward, CTC loss, backward, Adam. Returns the mean loss."""
    optimizer = keras.optimizers.Adam(1e-3)
    spec = [
        tf.TensorSpec([None, None, num_features], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None], tf.int32),
    ]

    @tf.function(input_signature=spec)
    def train_step(features, lengths, labels, label_lengths):
        with tf.GradientTape() as tape:
            logits = model(features, lengths, training=True)
            losses = tf.nn.ctc_loss(
                sparse_labels(labels, label_lengths), logits, None, lengths, logits_time_major=False, blank_index=0
            )
            loss = tf.reduce_mean(losses)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def time_step(step, batch):
    """(wall seconds, CPU seconds of this process) for one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step(*batch).numpy()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_matmul(shape_a, shape_b, dtype, iterations, transpose_a=False, transpose_b=False):
    """Seconds per tf.matmul of operands of these shapes in dtype (each transposed by the matmul
    itself if asked), in a tf.while_loop of `iterations` (each iteration depends on the last, so
    none is hoisted out of the loop: the smaller operand depends on the last product, so that the
    dependency costs the least)."""
    a = tf.cast(tf.random.normal(shape_a), dtype)
    b = tf.cast(tf.random.normal(shape_b), dtype)
    a_smaller = np.prod(shape_a) <= np.prod(shape_b)

    @tf.function
    def run(a, b):
        def body(i, total):
            shift = tf.cast(total * 0.0, dtype)
            a_i, b_i = (a + shift, b) if a_smaller else (a, b + shift)
            product = tf.matmul(a_i, b_i, transpose_a=transpose_a, transpose_b=transpose_b)
            return i + 1, total + tf.cast(tf.reshape(product, [-1])[0], tf.float32)

        return tf.while_loop(lambda i, _: i < iterations, body, (0, tf.constant(0.0)))[1]

    run(a, b).numpy()  # trace and warm up
    start = time.perf_counter()
    run(a, b).numpy()
    return (time.perf_counter() - start) / iterations


def loop_nodes(step):
    """{"forward" | "backward": graph nodes in one iteration of each of the step's while loops
    (forward: the body as rewritten to save what its gradient needs), summed over the loops}:
    every node runs once per time step, and on a CPU each costs the executor time of its own."""
    graph = step.get_concrete_function().graph.as_graph_def()
    bodies = [function for function in graph.library.function if "_body_" in function.signature.name]
    forward = sum(len(f.node_def) for f in bodies if f.signature.name.endswith("_rewritten"))
    backward = sum(len(f.node_def) for f in bodies if "_grad_" in f.signature.name)
    return {"forward": forward, "backward": backward}


def step_matmuls(batch, frames, features, layers=NUM_LAYERS):
    """{shapes (a, b): count per training step} of ours' matmuls: per step and layer, the two
    directions' recurrent products and their gradients (two MatMuls each); per layer and
    direction, the input projection, its kernel's gradient, the input's gradient (not for the
    first layer, whose input needs none) and the recurrent kernel's gradient (gradient.py)."""
    rows, units, gates = batch * frames, NUM_UNITS, 4 * NUM_UNITS
    counts = {
        ((batch, units), (units, gates)): 2 * frames * layers,
        ((batch, gates), (gates, units)): 2 * frames * layers,
        ((units, rows), (rows, gates)): 2 * layers,
    }
    for layer in range(layers):
        inputs = features if layer == 0 else 2 * units
        for shapes in [((rows, inputs), (inputs, gates)), ((inputs, rows), (rows, gates))] + ([((rows, gates), (gates, inputs))] if layer else []):
            counts[shapes] = counts.get(shapes, 0) + 2
    return counts


def per_step_layouts(batch):
    """{the per-step product as step_matmuls names it: [(label, shape_a, shape_b, transpose_a,
    transpose_b)]}: the three other ways tf.matmul can form it or its transpose (h U as U^T h^T
    with states kept [U, B]; dz U^T likewise) than the one asr.rnn uses, which matmul_table
    times already."""
    units, gates = NUM_UNITS, 4 * NUM_UNITS
    return {
        ((batch, units), (units, gates)): [
            ("h (U^T)^T", (batch, units), (gates, units), False, True),
            ("U^T h^T", (gates, units), (units, batch), False, False),
            ("(U)^T h^T", (units, gates), (units, batch), True, False),
        ],
        ((batch, gates), (gates, units)): [
            ("dz (U)^T", (batch, gates), (units, gates), False, True),
            ("U dz^T", (units, gates), (gates, batch), False, False),
            ("(U^T)^T dz^T", (gates, units), (gates, batch), True, False),
        ],
    }


def matmul_table(batch, frames, features, layers, step_float32, step_bf16, layouts=False):
    """Times each matmul shape of ours' training step (step_matmuls) in float32 and bf16, prints
    them with their counts, and the estimated matmul share of the measured steps (seconds).
    With layouts, also times each per-step product in its other layouts (per_step_layouts) and
    estimates the matmuls with the fastest layout of each, per dtype: the bf16/float32 ratio
    that a step could reach, and how short the rest of it would then have to be for 0.6."""
    totals = {tf.float32: 0.0, tf.bfloat16: 0.0}
    best = dict(totals)  # the same, with the fastest layout of each per-step product
    alternatives = per_step_layouts(batch) if layouts else {}
    for (shape_a, shape_b), count in step_matmuls(batch, frames, features, layers).items():
        iterations = 2000 if shape_a[0] == batch else 10  # the per-step products are 100x smaller
        seconds = {dtype: time_matmul(shape_a, shape_b, dtype, iterations) for dtype in totals}
        fastest = dict(seconds)
        for dtype in totals:
            totals[dtype] += count * seconds[dtype]
        name = f"{list(shape_a)} x {list(shape_b)}"
        print(f"  {name:>28}: float32 {seconds[tf.float32] * 1e6:7.0f} us, bf16 {seconds[tf.bfloat16] * 1e6:7.0f} us, "
              f"ratio {seconds[tf.bfloat16] / seconds[tf.float32]:.2f}, x{count} a step")
        for label, a, b, transpose_a, transpose_b in alternatives.get((shape_a, shape_b), []):
            form = {dtype: time_matmul(a, b, dtype, iterations, transpose_a, transpose_b) for dtype in totals}
            fastest = {dtype: min(fastest[dtype], form[dtype]) for dtype in totals}
            print(f"  {'as ' + label:>28}: float32 {form[tf.float32] * 1e6:7.0f} us, bf16 {form[tf.bfloat16] * 1e6:7.0f} us")
        for dtype in totals:
            best[dtype] += count * fastest[dtype]
    print(f"matmuls ~{totals[tf.float32]:.2f} s of the {step_float32:.2f} s float32 step, ~{totals[tf.bfloat16]:.2f} s of the "
          f"{step_bf16:.2f} s bf16 step (ratio {totals[tf.bfloat16] / totals[tf.float32]:.2f}); the rest ~{step_float32 - totals[tf.float32]:.2f} s "
          f"and ~{step_bf16 - totals[tf.bfloat16]:.2f} s")
    if layouts:
        rest_for_target = (0.6 * best[tf.float32] - best[tf.bfloat16]) / 0.4  # (m16 + r) / (m32 + r) = 0.6
        print(f"with the fastest layout of each per-step product: matmuls ~{best[tf.float32]:.2f} s float32, "
              f"~{best[tf.bfloat16]:.2f} s bf16 (ratio {best[tf.bfloat16] / best[tf.float32]:.2f}); a step reaches 0.6 only if "
              f"the rest takes under ~{max(rest_for_target, 0.0):.2f} s in both dtypes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--batch", type=int, default=16, help="utterances per batch")
    parser.add_argument("--frames", type=int, default=400, help="padded frames per utterance")
    parser.add_argument("--features", type=int, default=NUM_FEATURES, help="input values per step")
    parser.add_argument("--layers", type=int, default=NUM_LAYERS, help="bidirectional layers")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--matmuls", action="store_true", help="then time the step's matmul shapes in both dtypes")
    parser.add_argument("--layouts", action="store_true", help="with --matmuls: also each per-step product's other layouts")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="threads within one op (0: TensorFlow's default)")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="ops run side by side (0: TensorFlow's default)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    keras.utils.set_random_seed(0)
    batch = make_batch(args.batch, args.frames, args.features)
    if not (rnn.native_enabled("float32") and rnn.native_enabled("bfloat16")):
        raise SystemExit("bench/rnn.py: asr.rnn's native loop is unavailable here (see the warning above)")
    models = [  # name, model, whether its loops are native
        ("ours", OursModel(layers=args.layers), True),
        ("ours-bf16", OursModel("mixed_bfloat16", args.layers), True),
        ("ours-graph", OursModel(layers=args.layers), False),
        ("ours-graph-bf16", OursModel("mixed_bfloat16", args.layers), False),
        ("stock", StockModel(args.layers), False),
    ]
    steps = {}
    for name, model, native in models:
        model(batch[0][:1, :2], batch[1][:1] * 0 + 2)  # build the weights eagerly
        steps[name] = make_train_step(model, args.features)
        print(f"{name}: {model.count_params():,} parameters", flush=True)
    for name, model, native in models:
        start = time.perf_counter()
        previous = rnn.use_native(native)  # read when the step is traced, in its first call
        for _ in range(args.warmup):
            time_step(steps[name], batch)
        rnn.use_native(previous)
        print(f"{name}: trace + {args.warmup} warm-up steps {time.perf_counter() - start:.1f} s", flush=True)

    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(time_step(step, batch))
    wall = {name: statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    print(f"{args.layers} layers, batch {args.batch}, frames {args.frames} x {args.features} (lengths {int(batch[1].numpy().min())}..{args.frames}), "
          f"{args.repeats} repeats, {os.cpu_count()} CPUs, threads intra-op {args.intra_op_threads or 'default'} "
          f"inter-op {args.inter_op_threads or 'default'}, tf {tf.__version__}, keras {keras.__version__}")
    for name, t in times.items():
        all_wall = ", ".join(f"{w * 1000:.0f}" for w, _ in t)
        print(f"{name:>15}: median {wall[name] * 1000:8.1f} ms/step wall, {cpu[name] * 1000:8.1f} ms CPU"
              f"  (wall: {all_wall})")

    def ratio(label, a, b, note=""):
        print(f"ratio {label}: {wall[a] / wall[b]:.3f} wall, {cpu[a] / cpu[b]:.3f} CPU{note}")

    ratio("bf16/float32, native loop", "ours-bf16", "ours", "  (issue 9's target: <= 0.6)")
    ratio("bf16/float32, graph loop", "ours-graph-bf16", "ours-graph")
    ratio("native/graph, float32", "ours", "ours-graph")
    ratio("native/graph, bf16", "ours-bf16", "ours-graph-bf16")
    for name in ("ours", "ours-bf16", "ours-graph", "ours-graph-bf16"):
        ratio(f"{name}/stock", name, "stock")
    for name in ("ours", "ours-bf16", "ours-graph", "ours-graph-bf16"):
        nodes = loop_nodes(steps[name])
        print(f"{name:>15}: graph nodes per time step, all layers' loops: {nodes['forward']} forward, {nodes['backward']} backward")
    if args.matmuls:
        print("the graph loop's matmuls:")
        matmul_table(args.batch, args.frames, args.features, args.layers, wall["ours-graph"], wall["ours-graph-bf16"], args.layouts)


if __name__ == "__main__":
    main()
