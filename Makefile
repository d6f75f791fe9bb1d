# readnext — the two quickstart commands are `make chat` and `make test`.
.PHONY: setup chat test bench eval clean

setup:
	scripts/setup.sh

chat:
	scripts/chat.sh

test:
	scripts/test.sh

bench:
	scripts/setup.sh && .venv/bin/python bench/run.py $(BENCH_FLAGS)

eval:
	scripts/setup.sh && .venv/bin/readnext eval --quick

clean:
	rm -rf .venv .pytest_cache
