# Entry points named in the README. Everything runs in .venv (created by `make setup`).
PY := .venv/bin/python

.PHONY: setup demo test test-core lint bench clean

setup:  ## create .venv with the full stack (idempotent; seconds when already set up)
	bash scripts/setup.sh

demo:  ## the README's main job: generated COCO data -> ConvNeXt V2 Mask R-CNN on CPU -> AP + predictions.png
	$(PY) -m detectron2_convnext.demo --out outputs/demo

test:  ## the test suite
	$(PY) -m pytest -q tests

test-core:  ## the core tier only (no framework stacks needed): backbone, converters, accelerator, export
	$(PY) -m pytest -q -m core tests

lint:  ## ruff (configured in pyproject.toml)
	$(PY) -m ruff check .

bench:  ## backbone speed/memory: ours vs timm vs HF
	$(PY) -m benchmarks.backbone

clean:  ## build artifacts and caches (keeps .venv and ~/.cache/convnext-backbone)
	rm -rf build dist outputs .pytest_cache *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
