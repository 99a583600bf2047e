"""Run management beside the trainer: checkpoints and resume, the logger, signals, host-sync cadence, time
estimates and the memory and compile checks. train_gpt.py holds the model, the step and the loop; this module
holds what a run needs around them, and imports nothing of train_gpt.py."""

SEPARATOR = "=" * 100  # ends each source file copied into a log, and the hardware summary (tools/runlog.py reads it)
