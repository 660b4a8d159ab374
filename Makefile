# Two commands: `make demo` runs the main job, `make test` the tests. Both
# install what they need (build tools, model files) first. `make test` also
# builds the Vulkan variant (tests/vulkan.rs runs it on Mesa's lavapipe).

CARGO ?= cargo
BIN := target/release/infllm
# The Vulkan variant: its own target folder (ggml built with GGML_VULKAN).
VK_TARGET := target/vulkan
VK_SDK := target/vulkan-sdk
DEMO_PROMPT := <|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n

# ggml and llama.cpp are compiled three times (main, Vulkan and fuzz builds,
# each in its own target folder): through ccache when it is there (it is
# installed by scripts/install-deps), so the later builds reuse the objects.
# NOHASHDIR keeps the build folder (in the debug info, -g) out of the keys.
CCACHE = $$(command -v ccache >/dev/null && echo env CMAKE_C_COMPILER_LAUNCHER=ccache \
  CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_NOHASHDIR=1)

# Fuzz targets (fuzz/): cargo-fuzz on the stable compiler (RUSTC_BOOTSTRAP
# lets it pass libFuzzer's -Z flags), debug assertions on (overflow checks),
# no sanitizer (the code they reach is safe Rust). `make fuzz` runs each
# target FUZZ_SECONDS; `make test` runs each FUZZ_CI_SECONDS.
FUZZ_TARGETS := gguf_reader model_check session_load chat_template tokenizer
FUZZ_SECONDS ?= 600
FUZZ_CI_SECONDS ?= 20
# target-cpu=native as in .cargo/config.toml (cargo-fuzz's RUSTFLAGS replace
# it): ggml is then compiled with the main build's flags, so ccache serves it.
FUZZ := cd fuzz && RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C target-cpu=native" $(CCACHE) $(CARGO) fuzz

.PHONY: all deps models build vulkan test demo portable lint fuzz fuzz-ci fuzz-tools

all: build

deps:
	@scripts/install-deps

models:
	@models/fetch

build: deps
	$(CCACHE) $(CARGO) build --release

# Vulkan headers >= 1.4 in $(VK_SDK) when the system's are older (see the
# script). GGML_* variables reach ggml's CMake and rebuild it when they change,
# so the run-time GGML_VK_VISIBLE_DEVICES is kept out of the build.
vulkan: deps
	@scripts/install-vulkan
	env -u GGML_VK_VISIBLE_DEVICES $$([ -d $(VK_SDK) ] && echo VULKAN_SDK=$(CURDIR)/$(VK_SDK)) \
	  CARGO_TARGET_DIR=$(VK_TARGET) $(CCACHE) $(CARGO) build --release --features vulkan

test: deps models vulkan
	$(CCACHE) $(CARGO) test --release
	$(MAKE) fuzz-ci

demo: build models
	$(BIN) -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$$(printf '$(DEMO_PROMPT)')" -n 64 --temp 0

# A binary for any x86-64 / aarch64 CPU (ggml without AVX: several times slower).
portable: deps
	RUSTFLAGS="-C target-cpu=generic" $(CARGO) build --release

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

fuzz-tools:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --version 0.13.2 --locked

# -timeout: an input running over 10 s is a hang, reported as a crash.
fuzz: FUZZ_TIME = $(FUZZ_SECONDS)
fuzz-ci: FUZZ_TIME = $(FUZZ_CI_SECONDS)
fuzz fuzz-ci: deps models fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t for $(FUZZ_TIME) s"; \
	  ($(FUZZ) run -s none -a $$t -- -timeout=10 -rss_limit_mb=4096 -max_total_time=$(FUZZ_TIME)) || exit 1; \
	done
