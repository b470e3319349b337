"""The OFA² multi-objective search: objectives, pymoo problem and algorithms, run folders."""
