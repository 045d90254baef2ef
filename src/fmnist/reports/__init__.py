"""What runs show: figures, the written report, comparisons of several runs, TensorBoard."""
