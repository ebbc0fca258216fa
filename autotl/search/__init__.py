"""The search: the space, the trial model, the training recipe, the time budget, the portfolio of first trials,
KerasTuner's loop over the store, one two-phase trial, the refit, trials in their own processes, and the distributed
chief and workers."""
