"""Parsers of on-device tool output: text in, frozen records out, no I/O.

One module per tool (trtexec, TFLite benchmark_model, onnxruntime_perf_test, tegrastats,
nvpmodel / jetson_clocks, vcgencmd, /proc/cpuinfo and lscpu, sysfs thermal). Each accepts
output as users paste it: log prefixes, Markdown quote marks, code indentation, prompts
and unrelated lines are ignored; a text without the expected content raises
:class:`~device_agents.parsers.text.ParseError`.
"""
