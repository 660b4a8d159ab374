# Two commands: `make demo` runs the main job, `make test` the tests. Both
# install what they need (build tools, model files) first.

CARGO ?= cargo
BIN := target/release/infllm
DEMO_PROMPT := <|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n

.PHONY: all deps models build test demo portable lint

all: build

deps:
	@scripts/install-deps

models:
	@models/fetch

build: deps
	$(CARGO) build --release

test: deps models
	$(CARGO) test --release

demo: build models
	$(BIN) -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$$(printf '$(DEMO_PROMPT)')" -n 64 --temp 0

# A binary for any x86-64 / aarch64 CPU (ggml without AVX: several times slower).
portable: deps
	RUSTFLAGS="-C target-cpu=generic" $(CARGO) build --release

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
