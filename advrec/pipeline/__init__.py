"""The evaluation pipeline: the spec, the one study DAG, its step glue and the two executors."""
