"""Data bigger than memory: train from a memory-mapped file and from a generator of batches.

`fit` takes a `np.memmap` (or any array-like with a shape and row indexing,
such as an h5py dataset) and reads one shuffled batch at a time: the same
batches, and the same weights, as training on the array in memory, while the
process holds only a few batches. A background thread prepares batch k+1
while the step runs on batch k. A generator of (X, y) batches works too: with
`steps_per_epoch`, each epoch takes that many batches and the next continues.

    python examples/15_out_of_core.py [--backend torch] [--quick] [--out DIR] [--keep-data]
"""

import time

import numpy as np
from _common import parse_args, save_figure

import nnx
from nnx.plot import plot_history

args = parse_args(__doc__, lambda p: p.add_argument("--keep-data", action="store_true",
                                                    help="keep the memory-mapped data files in --out"))
args.out.mkdir(parents=True, exist_ok=True)

# A two-class problem with 20 features, written to disk in chunks, as a real data set would be.
n, f, chunk = (20_000 if args.quick else 400_000), 20, 10_000
path = args.out / "15_out_of_core_X.float32"
labels_path = args.out / "15_out_of_core_y.float32"
rng = np.random.default_rng(0)
direction = rng.standard_normal(f).astype(np.float32)
X_file = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, f))
y_file = np.memmap(labels_path, dtype=np.float32, mode="w+", shape=(n,))
for start in range(0, n, chunk):
    block = rng.standard_normal((min(chunk, n - start), f), dtype=np.float32)
    X_file[start:start + block.shape[0]] = block
    y_file[start:start + block.shape[0]] = (block @ direction > 0).astype(np.float32)
X_file.flush()
y_file.flush()
del X_file, y_file
print(f"wrote {n:,} samples x {f} features ({n * f * 4 / 2**20:.1f} MiB) to {path.name}")

# Read-only maps: the pages come from the file when a batch needs them and the OS may drop them again.
X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, f))
y = np.memmap(labels_path, dtype=np.float32, mode="r", shape=(n,))
n_val = n // 10


def build():
    return nnx.Sequential(nnx.Dense(f, 16), nnx.ReLU(), nnx.Dense(16, 1), nnx.Sigmoid(),
                          backend=args.backend, seed=0)


epochs = 2 if args.quick else 5
model = build()
t0 = time.perf_counter()
history = model.fit(X[:n - n_val], y[:n - n_val], loss="bce", lr=0.01, epochs=epochs, batch_size=256,
                    validation_data=(X[n - n_val:], y[n - n_val:]), metrics=["accuracy"])
print(f"from the memmap: {time.perf_counter() - t0:.1f} s, loss {history['loss'][-1]:.4f}, "
      f"val_accuracy {history['val_accuracy'][-1]:.3f}")

# The same data as a generator: it never ends, so steps_per_epoch says where an epoch stops.
batch_size = 256
steps = (n - n_val) // batch_size


def batches(X, y):
    while True:
        for start in range(0, steps * batch_size, batch_size):
            yield X[start:start + batch_size], y[start:start + batch_size]


streamed = build()
t0 = time.perf_counter()
streamed_history = streamed.fit(batches(X, y), loss="bce", lr=0.01, epochs=epochs, steps_per_epoch=steps,
                                metrics=["accuracy"])
result = streamed.evaluate(X[n - n_val:], y[n - n_val:], metrics=["accuracy"], batch_size=1024)
print(f"from a generator: {time.perf_counter() - t0:.1f} s, loss {streamed_history['loss'][-1]:.4f}, "
      f"held-out accuracy {result['accuracy']:.3f}")

probs = model.backend.to_host(model.predict(X[:5]))[:, 0]
print("first five predictions:", " ".join(f"{p:.2f}" for p in probs), "| labels:", np.asarray(y[:5]))

fig = plot_history(history)
fig.suptitle("Training from a memory-mapped file")
fig.tight_layout()
save_figure(fig, args, "15_out_of_core_history.png")

del X, y
if not args.keep_data:  # scratch data: only the figure stays next to the other examples' figures
    path.unlink()
    labels_path.unlink()
