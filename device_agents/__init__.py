"""The on-device measurement agent of ofa2-edge.

Runs on the device with its own Python (3.8+) and only the standard library plus the
runtime that measures (onnxruntime, LiteRT, TensorRT). It ships as one zipapp built by
:mod:`device_agents.build`; ``python3 agent.pyz probe`` describes the device and
``python3 agent.pyz measure --request request.json`` prints one JSON record per model.
The host imports :mod:`device_agents.records` to validate what comes back.
"""

#: 0.3.0: `classify` (top-1 labels of a .npy image batch) beside probe and measure.
#: 0.4.1: energy per inference over the timed runs' time (before: the whole block window,
#: its warm-up runs counted as inferences: 1.3-2.4x too much on this CPU, quick protocol).
#: 0.4.2: the probe reports the agent's CPU set; the quiet gate looks only at those CPUs.
AGENT_VERSION = "0.4.2"
