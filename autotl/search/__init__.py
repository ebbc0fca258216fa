"""The search: the space, the trial model, KerasTuner's loop over the store, one two-phase trial, trials in their own processes, and the distributed chief and workers."""
