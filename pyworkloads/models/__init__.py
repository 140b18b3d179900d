"""One module per model: its Config (parsed from a Hugging Face config.json), named PRESETS,
pure forward functions over a weights dict keyed by HF tensor names, and a thin Model class.

Each module also offers the command-line hooks that ``pyworkloads demo|run|profile`` use:
``demo() -> str`` (a tiny random-weight run, returning a one-line result),
``add_run_arguments(parser)`` and ``run_cli(args)``.
"""
