"""Tools on top of training runs: sweeps, benchmarks, the conventional yardstick, ONNX export."""
