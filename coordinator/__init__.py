"""The coordinator: pulls summaries from every region and merges them into global metrics."""
