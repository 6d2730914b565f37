# The two commands of the quick start; each sets itself up (scripts/bootstrap.sh).
#   make bench   the main job: time the models on this machine
#   make test    the test suite (tests/, then the benchmarks as tests)
SHELL := /bin/bash
.PHONY: bench test setup clean

setup:
	@bash scripts/bootstrap.sh >/dev/null

bench:
	@py=$$(bash scripts/bootstrap.sh) && "$$py" -m shg_fast bench $(ARGS)

test:
	@py=$$(bash scripts/bootstrap.sh) && "$$py" -m pytest tests -q $(ARGS) \
	  && "$$py" -m pytest benchmarks -q --benchmark-disable

clean:
	rm -rf build shg_fast/_C*.so *.egg-info .pytest_cache .benchmarks
