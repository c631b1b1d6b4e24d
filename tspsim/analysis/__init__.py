"""Timeline → numbers and words: metrics, serving metrics, entry labels and the text report."""
