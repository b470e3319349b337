"""Training the elastic supernet on a user's dataset (OFA's progressive shrinking).

`train(TrainConfig(...))` is the Python API; `ofa2-edge train` and
`torchrun --nproc_per_node N -m ofa2_edge.train ...` the commands.
"""

from ofa2_edge.train.loop import LOG_NAME, STATE_NAME, TrainConfig, evaluate_subnet, train
from ofa2_edge.train.recipe import Phase, Recipe

__all__ = ["LOG_NAME", "STATE_NAME", "Phase", "Recipe", "TrainConfig", "evaluate_subnet", "train"]
