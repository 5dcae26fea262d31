"""In-process forward + score of ae-ref with onnxruntime (one intra-op thread), on the inputs
of benches/benches/hot_paths.rs (`ae_ref_forward_score`): the figure the fused dense kernel is
held to. Run it beside `cargo bench -p benches --bench hot_paths -- ae_ref_forward_score`, in
the same session, and compare medians:

    ../.venv-peer/bin/python benches/onnxruntime_forward.py [../shared/peers/model/ae_ref.onnx]
"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

model = sys.argv[1] if len(sys.argv) > 1 else "../shared/peers/model/ae_ref.onnx"
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
for batch in [1, 8, 64, 4096]:
    # The criterion bench's rows: ((i * 7919) % 1000) / 250 - 2.
    x = ((np.arange(batch * 32) * 7919 % 1000) / 250.0 - 2.0).astype(np.float32)
    x = x.reshape(batch, 32)
    calls = 300 if batch >= 4096 else 3000
    for _ in range(calls // 10):
        session.run(None, {name: x})
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, {name: x})
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    print(f"onnxruntime forward+score batch {batch}: median {statistics.median(rounds):.2f} µs "
          f"(rounds {min(rounds):.2f}–{max(rounds):.2f})")
