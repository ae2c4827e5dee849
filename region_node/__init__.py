"""The region node: ingests observations, keeps them in-region, answers with summaries."""
