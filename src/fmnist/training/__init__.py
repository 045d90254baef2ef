"""Training: the config and recipes, the builders (optimizer, schedule, loss), the epoch loop."""
