"""Looking at searches: the HTML report and its plots, TensorBoard logs, the progress shown while a search runs, and
what `autotl search` and `autotl best` print at the end."""
