"""Side-by-side speed and memory harness: our ConvNeXt backbone vs timm and Hugging Face.

Run ``python -m benchmarks.backbone --help`` (or ``make bench``). Everything runs in one
process with the same random weights (loaded into ours through our converters) and the same
input, interleaved, so that the ratios of one run are meaningful on a noisy machine.
"""
