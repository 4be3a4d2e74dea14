# One entry point for people and CI.
PY ?= python3

.PHONY: setup demo test test-slow lint bench proto

setup:
	./scripts/setup.sh

demo: setup
	ztfm simulate --out runs/demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint:
	ruff check src tests bench
	ruff format --check src tests bench
	mypy

bench:
	$(PY) bench/detect.py

proto:
	$(PY) -m grpc_tools.protoc -Isrc --python_out=src --grpc_python_out=src --pyi_out=src src/ztfm/wire/*.proto
