"""Ensembles of front subnets (OFA³): search, score, export as one model, measure, bundle.

- `pool`: the candidates (a search run's front), their stored class probabilities from an
  accuracy table (members the table lacks are evaluated into it first), predicted latency
  on a device and MACs; the soft-vote scoring of member sets, on one split at a time.
- `search`: NSGA-II over member subsets (binary inclusion masks), run folder, resume.
- `export`: an ensemble as ONE model file (members side by side on a shared input).
- `measure`: that file measured by the device agent, sequential and parallel execution.
- `bundle`: a bundle that holds an ensemble.
"""
