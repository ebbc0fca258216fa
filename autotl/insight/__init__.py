"""Looking at searches: the HTML report and its plots, TensorBoard logs, and the progress shown while a search runs."""
