"""Run folders on disk: the checkpoint format, the folder's files, recording epochs, resuming."""
