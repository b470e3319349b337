"""Parsers of on-device tool output: text in, frozen records out, no I/O.

One module per tool (trtexec, TFLite benchmark_model, onnxruntime_perf_test, tegrastats,
nvpmodel / jetson_clocks, vcgencmd, /proc/cpuinfo and lscpu, sysfs thermal). Each accepts
output as users paste it: log prefixes, Markdown quote marks, code indentation, prompts
and unrelated lines are ignored; a text without the expected content raises
:class:`~device_agents.parsers.text.ParseError` (also for junk numbers: never a traceback).

The agent calls the sysfs/firmware ones (cpu, jetson, thermal, vcgencmd) for telemetry and
its probe; the benchmark-tool parsers (trtexec, tflite_benchmark, ort_perf_test,
tegrastats) have no caller on the device and are left out of the zipapp
(:mod:`device_agents.build`): they stay importable here for importing vendor tool output
on the host.
"""
