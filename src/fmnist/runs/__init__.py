"""Run folders on disk: the checkpoint format, the folder's files, recording epochs, resuming (and checking
a config.json edited by hand before resuming it)."""
